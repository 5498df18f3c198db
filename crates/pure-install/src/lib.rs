//! What an installation of the operator puts into a cluster: the ServiceAccounts, the RBAC, the operator and
//! webhook Deployments, the webhook Service, the ValidatingWebhookConfiguration and the CRDs (conversion
//! through the Service). Built from code so that local runs on the real node, the end-to-end tests and the
//! Helm chart (which is checked against these objects) install the same thing.
//!
//! The names follow the reference's chart: Deployments `dynatrace-operator` and `dynatrace-webhook`, Service
//! `dynatrace-webhook` (443 → 8443), ServiceAccounts `dynatrace-operator`, `dynatrace-webhook` and
//! `dynatrace-dynakube-oneagent`. The `caBundle`s are left empty: the operator's certificate controller
//! fills them.
//!
//! The CSI driver's objects (the `CSIDriver`, its DaemonSet, PriorityClass, ServiceAccount and RBAC) are
//! in [`csi`]; they are part of an installation unless [`Installation::csi_driver`] is `None`.
//!
//! Pure: no I/O. [`Installation::objects`] returns every object as JSON, in the order to apply them.

pub mod chart;
pub mod csi;
pub mod rbac;

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, Namespace, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pure_api::crd::ConversionEndpoint;
use pure_api::dynakube::names;
use pure_desired::pod::{LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_NAME, field_env};
use serde_json::Value;

/// Name of the operator's Deployment, ServiceAccount and RBAC objects.
pub const OPERATOR: &str = "dynatrace-operator";
/// Name of the webhook's Deployment, Service, ServiceAccount, RBAC objects and webhook configurations.
pub const WEBHOOK: &str = pure_webhook_certificates::WEBHOOK_NAME;
/// The ServiceAccount the DynaKube's OneAgent pods run as.
pub const ONEAGENT_SERVICE_ACCOUNT: &str = pure_desired::oneagent::SERVICE_ACCOUNT;
/// The ServiceAccount the legacy `OneAgent` resource's pods run as.
pub const LEGACY_ONEAGENT_SERVICE_ACCOUNT: &str = pure_desired::legacy::SERVICE_ACCOUNT;
/// The webhook server's HTTPS port in its container (the Service's 443 points at it).
pub const WEBHOOK_PORT: i32 = 8443;
/// The webhook server's plain-HTTP metrics and probe port.
pub const WEBHOOK_METRICS_PORT: i32 = 8383;
/// The operator's plain-HTTP health and metrics port.
pub const OPERATOR_HEALTH_PORT: i32 = 10080;
/// The user every container of the image runs as.
pub const IMAGE_USER: i64 = 1001;
/// Pod annotation that keeps the operator's own pods from being injected.
pub const INJECT_ANNOTATION: &str = "dynatrace.com/inject";
/// Field manager of an installation applied from these objects.
pub const FIELD_MANAGER: &str = "dynatrace-operator-install";

/// What varies between installations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// The operator's namespace (also where DynaKubes live).
    pub namespace: String,
    /// The `dynatrace-operator` image every container runs.
    pub image: String,
    /// `imagePullPolicy` of those containers (`IfNotPresent` for an image imported into the node).
    pub image_pull_policy: String,
    /// Webhook replicas (2 for high availability, as the reference's chart).
    pub webhook_replicas: i32,
    /// `nodeSelector` of the operator and webhook pods (none: any Linux node).
    pub node_selector: BTreeMap<String, String>,
    /// Log format of every component (`text` or `json`).
    pub log_format: String,
    /// The CSI driver and its options; `None`: not installed (the reference's `csidriver.enabled: false`).
    pub csi_driver: Option<csi::CsiDriverOptions>,
}

impl Installation {
    /// The defaults of the reference's chart for `image` in the namespace `dynatrace`.
    pub fn new(image: &str) -> Self {
        Self {
            namespace: "dynatrace".to_owned(),
            image: image.to_owned(),
            image_pull_policy: "IfNotPresent".to_owned(),
            webhook_replicas: 2,
            node_selector: BTreeMap::new(),
            log_format: "json".to_owned(),
            csi_driver: Some(csi::CsiDriverOptions::default()),
        }
    }

    /// Every object, in the order to apply them: the namespace, the CRDs, ServiceAccounts, RBAC, the CSI
    /// driver's objects, the webhook Service and Deployment, the webhook configuration, then the operator.
    pub fn objects(&self) -> Vec<Value> {
        let mut out = vec![to_value(&Namespace {
            metadata: ObjectMeta {
                name: Some(self.namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        })];
        let endpoint = ConversionEndpoint::Service {
            namespace: self.namespace.clone(),
        };
        out.extend(pure_api::crd::all(&endpoint).iter().map(to_value));
        for account in [
            OPERATOR,
            WEBHOOK,
            ONEAGENT_SERVICE_ACCOUNT,
            LEGACY_ONEAGENT_SERVICE_ACCOUNT,
        ] {
            out.push(to_value(&ServiceAccount {
                metadata: self.meta(account, component_of(account)),
                ..Default::default()
            }));
        }
        out.extend(self.rbac());
        out.extend(self.csi_driver_objects());
        out.push(to_value(&self.webhook_service()));
        out.push(to_value(&self.webhook_deployment()));
        out.push(to_value(&self.validating_webhook_configuration()));
        out.push(to_value(&self.mutating_webhook_configuration()));
        out.push(to_value(&self.operator_deployment()));
        out
    }

    fn meta(&self, name: &str, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels(component)),
            ..Default::default()
        }
    }

    /// The Service `dynatrace-webhook`: 443 → the webhook's HTTPS port.
    pub fn webhook_service(&self) -> Service {
        Service {
            metadata: self.meta(WEBHOOK, "webhook"),
            spec: Some(ServiceSpec {
                selector: Some(selector(WEBHOOK)),
                ports: Some(vec![ServicePort {
                    name: Some("https".to_owned()),
                    port: 443,
                    target_port: Some(IntOrString::String("server-port".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The webhook Deployment: `webhook-server` serving the certificate straight from the operator's Secret.
    pub fn webhook_deployment(&self) -> Deployment {
        let container = Container {
            args: Some(vec![
                "webhook-server".to_owned(),
                format!("--certs-secret={}", names::WEBHOOK_CERTS_SECRET),
                // Injected pods run `init` from the webhook's own image.
                format!("--init-image={}", self.image),
                format!("--log-format={}", self.log_format),
            ]),
            ports: Some(vec![
                port("server-port", WEBHOOK_PORT),
                port("metrics", WEBHOOK_METRICS_PORT),
            ]),
            readiness_probe: Some(http_probe("/readyz", "metrics", 0)),
            liveness_probe: Some(http_probe("/livez", "metrics", 15)),
            ..self.container("webhook")
        };
        self.deployment(WEBHOOK, "webhook", self.webhook_replicas, container)
    }

    /// The operator Deployment: `operator`, one replica, leader election on.
    pub fn operator_deployment(&self) -> Deployment {
        let container = Container {
            args: Some(vec![
                "operator".to_owned(),
                format!("--log-format={}", self.log_format),
            ]),
            ports: Some(vec![port("server-port", OPERATOR_HEALTH_PORT)]),
            readiness_probe: Some(http_probe("/readyz", "server-port", 0)),
            liveness_probe: Some(http_probe("/livez", "server-port", 15)),
            ..self.container("operator")
        };
        self.deployment(OPERATOR, "operator", 1, container)
    }

    fn container(&self, name: &str) -> Container {
        Container {
            name: name.to_owned(),
            image: Some(self.image.clone()),
            image_pull_policy: Some(self.image_pull_policy.clone()),
            env: Some(vec![
                field_env("POD_NAMESPACE", "metadata.namespace"),
                field_env("POD_NAME", "metadata.name"),
            ]),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                privileged: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                run_as_user: Some(IMAGE_USER),
                run_as_group: Some(IMAGE_USER),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_owned()]),
                    ..Default::default()
                }),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn deployment(&self, name: &str, component: &str, replicas: i32, container: Container) -> Deployment {
        let mut pod_labels = labels(component);
        pod_labels.extend(selector(name));
        Deployment {
            metadata: self.meta(name, component),
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                revision_history_limit: Some(1),
                selector: LabelSelector {
                    match_labels: Some(selector(name)),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        annotations: Some(BTreeMap::from([(
                            INJECT_ANNOTATION.to_owned(),
                            "false".to_owned(),
                        )])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: Some(name.to_owned()),
                        containers: vec![container],
                        node_selector: Some(self.node_selector_with_os()),
                        security_context: Some(PodSecurityContext {
                            run_as_non_root: Some(true),
                            seccomp_profile: Some(SeccompProfile {
                                type_: "RuntimeDefault".to_owned(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node_selector_with_os(&self) -> BTreeMap<String, String> {
        let mut selector = self.node_selector.clone();
        selector.insert("kubernetes.io/os".to_owned(), "linux".to_owned());
        selector
    }

    /// The ValidatingWebhookConfiguration `dynatrace-webhook`: DynaKube and OneAgent creates and updates go
    /// to the Service's `/validate`; `caBundle` is set by the operator.
    pub fn validating_webhook_configuration(&self) -> ValidatingWebhookConfiguration {
        let mut configuration = validating_webhook_configuration(
            WEBHOOK,
            WebhookClientConfig {
                service: Some(ServiceReference {
                    name: WEBHOOK.to_owned(),
                    namespace: self.namespace.clone(),
                    path: Some("/validate".to_owned()),
                    port: Some(443),
                }),
                ..Default::default()
            },
        );
        configuration.metadata.labels = Some(labels("webhook"));
        configuration
    }
}

impl Installation {
    /// The MutatingWebhookConfiguration `dynatrace-webhook`: pod creates in mapped namespaces go to the
    /// Service's `/inject`, namespace creates and updates to `/label-ns`; `caBundle` is set by the operator.
    pub fn mutating_webhook_configuration(&self) -> MutatingWebhookConfiguration {
        let service = |path: &str| WebhookClientConfig {
            service: Some(ServiceReference {
                name: WEBHOOK.to_owned(),
                namespace: self.namespace.clone(),
                path: Some(path.to_owned()),
                port: Some(443),
            }),
            ..Default::default()
        };
        let mut configuration =
            mutating_webhook_configuration(WEBHOOK, service(INJECT_PATH), service(LABEL_NAMESPACE_PATH));
        configuration.metadata.labels = Some(labels("webhook"));
        configuration
    }
}

/// Name of the pod webhook, as in the reference's Helm chart.
pub const POD_WEBHOOK_NAME: &str = "webhook.pod.dynatrace.com";
/// Name of the namespace webhook, as in the reference's Helm chart.
pub const NAMESPACE_WEBHOOK_NAME: &str = "webhook.ns.dynatrace.com";
/// The webhook server's path for pods.
pub const INJECT_PATH: &str = "/inject";
/// The webhook server's path for namespaces.
pub const LABEL_NAMESPACE_PATH: &str = "/label-ns";
/// How long the API server waits for the mutating webhooks (the reference's default at HEAD). Our
/// answers take a millisecond; the timeout only matters when the webhook cannot be reached.
pub const MUTATING_TIMEOUT_SECONDS: i32 = 10;

/// A MutatingWebhookConfiguration `name` (spec §3.1 at HEAD): pod creates in the namespaces the operator
/// labelled with `dynakube.internal.dynatrace.com/instance` go to `pods`, namespace creates and updates to
/// `namespaces`. Both fail open (`failurePolicy: Ignore`): an unreachable webhook never stops a pod or a
/// namespace. Pods are re-sent when a later webhook changed them (`reinvocationPolicy: IfNeeded`), so
/// containers added after ours are injected too.
pub fn mutating_webhook_configuration(
    name: &str,
    pods: WebhookClientConfig,
    namespaces: WebhookClientConfig,
) -> MutatingWebhookConfiguration {
    let webhook =
        |name: &str, client_config, resource: &str, scope: &str, operations: &[&str]| MutatingWebhook {
            name: name.to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            side_effects: "None".to_owned(),
            failure_policy: Some("Ignore".to_owned()),
            reinvocation_policy: Some("IfNeeded".to_owned()),
            timeout_seconds: Some(MUTATING_TIMEOUT_SECONDS),
            client_config,
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_owned()]),
                operations: Some(operations.iter().map(|o| (*o).to_owned()).collect()),
                resources: Some(vec![resource.to_owned()]),
                scope: Some(scope.to_owned()),
            }]),
            ..Default::default()
        };
    let mut pod_webhook = webhook(POD_WEBHOOK_NAME, pods, "pods", "Namespaced", &["CREATE"]);
    pod_webhook.namespace_selector = Some(LabelSelector {
        match_expressions: Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                key: pure_desired::mapping::INSTANCE_LABEL.to_owned(),
                operator: "Exists".to_owned(),
                values: None,
            },
        ]),
        match_labels: None,
    });
    let namespace_webhook = webhook(
        NAMESPACE_WEBHOOK_NAME,
        namespaces,
        "namespaces",
        "Cluster",
        &["CREATE", "UPDATE"],
    );
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        webhooks: Some(vec![pod_webhook, namespace_webhook]),
    }
}

/// Name of the validating webhook, as in the reference's Helm chart.
pub const VALIDATING_WEBHOOK_NAME: &str = "webhook.dynatrace.com";

/// A ValidatingWebhookConfiguration `name` that sends DynaKube and OneAgent creates and updates (every
/// served version) to `client_config`: the Service in an installation, a URL in local runs and tests.
pub fn validating_webhook_configuration(
    name: &str,
    client_config: WebhookClientConfig,
) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: VALIDATING_WEBHOOK_NAME.to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            side_effects: "None".to_owned(),
            failure_policy: Some("Fail".to_owned()),
            timeout_seconds: Some(10),
            client_config,
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["dynatrace.com".to_owned()]),
                api_versions: Some(vec!["v1alpha1".to_owned(), "v1beta1".to_owned()]),
                operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()]),
                resources: Some(vec!["dynakubes".to_owned(), "oneagents".to_owned()]),
                scope: Some("Namespaced".to_owned()),
            }]),
            ..Default::default()
        }]),
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: &str, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port.to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..Default::default()
        }),
        initial_delay_seconds: (initial_delay > 0).then_some(initial_delay),
        period_seconds: Some(10),
        ..Default::default()
    }
}

fn component_of(account: &str) -> &'static str {
    match account {
        OPERATOR => "operator",
        WEBHOOK => "webhook",
        _ => "oneagent",
    }
}

fn labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), OPERATOR.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.to_owned()),
        (
            LABEL_MANAGED_BY.to_owned(),
            "dynatrace-operator-install".to_owned(),
        ),
    ])
}

fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("internal.dynatrace.com/app".to_owned(), name.to_owned())])
}

fn to_value<T: serde::Serialize + k8s_openapi::Resource>(object: &T) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("apiVersion".to_owned(), Value::String(T::API_VERSION.to_owned()));
        map.insert("kind".to_owned(), Value::String(T::KIND.to_owned()));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install() -> Installation {
        Installation::new("dynatrace-operator:0.1.0-dev")
    }

    fn kinds(objects: &[Value]) -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn every_object_has_its_kind_and_the_namespace_comes_first() {
        let objects = install().objects();
        let kinds = kinds(&objects);
        assert_eq!(kinds[0], "Namespace/dynatrace");
        assert!(kinds[1].starts_with("CustomResourceDefinition/"));
        for expected in [
            "Deployment/dynatrace-operator",
            "Deployment/dynatrace-webhook",
            "Service/dynatrace-webhook",
            "ValidatingWebhookConfiguration/dynatrace-webhook",
            "MutatingWebhookConfiguration/dynatrace-webhook",
            "ServiceAccount/dynatrace-dynakube-oneagent",
            "ClusterRole/dynatrace-operator",
            "RoleBinding/dynatrace-webhook",
        ] {
            assert!(
                kinds.contains(&expected.to_owned()),
                "{expected} missing from {kinds:?}"
            );
        }
        // The operator comes last: it starts reconciling at once, so everything it needs must exist.
        assert_eq!(kinds.last().unwrap(), "Deployment/dynatrace-operator");
        for object in &objects {
            assert!(object["apiVersion"].is_string(), "{object}");
        }
    }

    #[test]
    fn the_mutating_webhooks_fail_open_and_only_pods_of_mapped_namespaces_are_sent() {
        let install = install();
        let configuration = install.mutating_webhook_configuration();
        let webhooks = configuration.webhooks.unwrap();
        assert_eq!(webhooks.len(), 2);
        for webhook in &webhooks {
            assert_eq!(
                webhook.failure_policy.as_deref(),
                Some("Ignore"),
                "{}",
                webhook.name
            );
            assert_eq!(webhook.reinvocation_policy.as_deref(), Some("IfNeeded"));
            assert_eq!(webhook.timeout_seconds, Some(10));
            assert_eq!(webhook.admission_review_versions, ["v1"]);
            assert_eq!(webhook.side_effects, "None");
            let service = webhook.client_config.service.as_ref().unwrap();
            assert_eq!((service.name.as_str(), service.port), (WEBHOOK, Some(443)));
        }
        let (pods, namespaces) = (&webhooks[0], &webhooks[1]);
        assert_eq!(pods.name, POD_WEBHOOK_NAME);
        let path = |w: &MutatingWebhook| w.client_config.service.as_ref().unwrap().path.clone();
        assert_eq!(path(pods).as_deref(), Some(INJECT_PATH));
        assert_eq!(path(namespaces).as_deref(), Some(LABEL_NAMESPACE_PATH));
        let selector = pods.namespace_selector.as_ref().unwrap();
        let requirement = &selector.match_expressions.as_ref().unwrap()[0];
        assert_eq!(requirement.key, pure_desired::mapping::INSTANCE_LABEL);
        assert_eq!(requirement.operator, "Exists");
        let rules = |w: &MutatingWebhook| w.rules.clone().unwrap()[0].clone();
        assert_eq!(rules(pods).resources.unwrap(), ["pods"]);
        assert_eq!(rules(pods).operations.unwrap(), ["CREATE"]);
        assert_eq!(rules(namespaces).resources.unwrap(), ["namespaces"]);
        assert_eq!(rules(namespaces).operations.unwrap(), ["CREATE", "UPDATE"]);
        assert!(namespaces.namespace_selector.is_none());
        // The webhook tells injected pods to run `init` from its own image.
        let deployment = install.webhook_deployment();
        let args = deployment.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert!(
            args.contains(&format!("--init-image={}", install.image)),
            "{args:?}"
        );
    }

    #[test]
    fn the_crds_convert_through_the_webhook_service() {
        let objects = install().objects();
        let crd = objects
            .iter()
            .find(|o| o["metadata"]["name"] == "dynakubes.dynatrace.com")
            .unwrap();
        let service = &crd["spec"]["conversion"]["webhook"]["clientConfig"]["service"];
        assert_eq!(service["name"], WEBHOOK);
        assert_eq!(service["namespace"], "dynatrace");
    }

    #[test]
    fn the_service_selects_the_webhook_pods_and_targets_their_https_port() {
        let install = install();
        let service = install.webhook_service();
        let deployment = install.webhook_deployment();
        let template = deployment.spec.unwrap().template;
        let pod_labels = template.metadata.unwrap().labels.unwrap();
        for (key, value) in service.spec.as_ref().unwrap().selector.as_ref().unwrap() {
            assert_eq!(pod_labels.get(key), Some(value));
        }
        let container = &template.spec.unwrap().containers[0];
        let target = service.spec.unwrap().ports.unwrap()[0]
            .target_port
            .clone()
            .unwrap();
        let IntOrString::String(target) = target else {
            panic!()
        };
        assert!(
            container
                .ports
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p.name.as_deref() == Some(&target) && p.container_port == WEBHOOK_PORT)
        );
    }

    #[test]
    fn containers_run_as_the_image_user_with_nothing_extra() {
        for deployment in [install().operator_deployment(), install().webhook_deployment()] {
            let spec = deployment.spec.unwrap().template.spec.unwrap();
            let context = spec.containers[0].security_context.clone().unwrap();
            assert_eq!(context.run_as_user, Some(IMAGE_USER));
            assert_eq!(context.read_only_root_filesystem, Some(true));
            assert_eq!(context.allow_privilege_escalation, Some(false));
            assert_eq!(context.capabilities.unwrap().drop.unwrap(), vec!["ALL"]);
            assert_eq!(spec.node_selector.unwrap()["kubernetes.io/os"], "linux");
        }
    }

    #[test]
    fn no_rule_uses_a_wildcard_and_secrets_across_the_cluster_are_named() {
        for object in install().rbac() {
            for rule in object["rules"].as_array().into_iter().flatten() {
                let text = rule.to_string();
                assert!(!text.contains('*'), "wildcard in {text}");
                let cluster_wide = object["kind"] == "ClusterRole";
                let reads_secrets = rule["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == "secrets")
                    && rule["verbs"].as_array().unwrap().iter().any(|v| v != "create");
                if cluster_wide && reads_secrets {
                    assert!(
                        rule["resourceNames"].is_array(),
                        "cluster-wide Secret access by name only: {text}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_node_selector_is_kept_next_to_the_os() {
        let mut install = install();
        install
            .node_selector
            .insert("kubernetes.io/hostname".into(), "real".into());
        let selector = install
            .operator_deployment()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .node_selector
            .unwrap();
        assert_eq!(selector["kubernetes.io/hostname"], "real");
        assert_eq!(selector["kubernetes.io/os"], "linux");
    }
}
