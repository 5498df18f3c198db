//! The CSI driver `csi.oneagent.dynatrace.com` of an installation (spec §6.1): the `CSIDriver`, the
//! PriorityClass its pods run at, its ServiceAccount and RBAC, and the DaemonSet
//! `dynatrace-oneagent-csi-driver` whose two containers run our own image's `csi-server` and
//! `csi-provisioner` subcommands. The node-driver registration and the liveness probe are served in-process
//! by `csi-server`, so there is no third-party sidecar.
//!
//! The DaemonSet's name and namespace are the ones the webhook watches to decide "CSI driver installed"
//! ([`pure_api::dynakube::names::CSI_DAEMONSET`] in the operator's namespace).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, HostPathVolumeSource, PodSpec, ResourceRequirements, SecurityContext, ServiceAccount,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::{CSIDriver, CSIDriverSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pure_desired::pod::{self, field_env, literal_env};
use serde_json::Value;

use crate::{INJECT_ANNOTATION, Installation, http_probe, labels, port, selector, to_value};

/// The driver's name, as the kubelet and the pods' inline volumes know it.
pub const CSI_DRIVER: &str = pure_desired::oneagent::CSI_DRIVER;
/// Name of the DaemonSet, its ServiceAccount and its RBAC objects; the webhook watches for this name.
pub const CSI_DAEMONSET: &str = pure_api::dynakube::names::CSI_DAEMONSET;
/// The PriorityClass of the CSI pods (as the reference's chart): the node's agent storage must not be
/// evicted before the pods that mount it.
pub const PRIORITY_CLASS: &str = "dynatrace-high-priority";
/// The value of [`PRIORITY_CLASS`].
pub const PRIORITY_CLASS_VALUE: i32 = 1_000_000;
/// The kubelet's directory on a standard node.
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";
/// `csi-server`'s health and metrics port (`/livez`, `/readyz`, `/metrics`).
pub const SERVER_HEALTH_PORT: i32 = 10080;
/// `csi-provisioner`'s health and metrics port.
pub const PROVISIONER_HEALTH_PORT: i32 = 10090;
/// The CSI socket's directory in the server container.
pub const SOCKET_DIR: &str = "/csi";
/// The data directory in both containers (`pure_csi::layout`).
pub const DATA_DIR: &str = "/data";
/// The kubelet's plugin registration directory in the server container.
pub const REGISTRATION_DIR: &str = "/registration";
/// The label that lets OpenShift's restricted pods use the driver's ephemeral volumes.
pub const OPENSHIFT_PROFILE_LABEL: &str = "security.openshift.io/csi-ephemeral-volume-profile";

const SERVER: &str = "server";
const PROVISIONER: &str = "provisioner";

/// What varies in the CSI driver between installations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiDriverOptions {
    /// The kubelet's directory on the nodes (`--root-dir`), [`DEFAULT_KUBELET_DIR`] by default.
    pub kubelet_dir: String,
    /// Add the OpenShift ephemeral-volume profile label to the `CSIDriver`.
    pub openshift: bool,
    /// `nodeSelector` of the CSI pods besides Linux (none: every Linux node).
    pub node_selector: BTreeMap<String, String>,
    /// `MAX_UNMOUNTED_VOLUME_AGE` of the provisioner in days; unset: its default (7).
    pub max_unmounted_volume_age_days: Option<i64>,
    /// An existing PriorityClass to use instead of creating [`PRIORITY_CLASS`].
    pub priority_class: Option<String>,
}

impl Default for CsiDriverOptions {
    fn default() -> Self {
        Self {
            kubelet_dir: DEFAULT_KUBELET_DIR.to_owned(),
            openshift: false,
            node_selector: BTreeMap::new(),
            max_unmounted_volume_age_days: None,
            priority_class: None,
        }
    }
}

impl CsiDriverOptions {
    fn kubelet_path(&self, rest: &str) -> String {
        format!("{}/{rest}", self.kubelet_dir.trim_end_matches('/'))
    }

    /// The driver's directory on the node: its socket is there and, under `data`, its cache.
    pub fn plugin_dir(&self) -> String {
        self.kubelet_path(&format!("plugins/{CSI_DRIVER}"))
    }

    /// The socket path the kubelet dials, as the server registers it.
    pub fn kubelet_registration_path(&self) -> String {
        format!("{}/csi.sock", self.plugin_dir())
    }

    /// The kubelet's pod directory, where the volumes' target paths are.
    pub fn pods_dir(&self) -> String {
        self.kubelet_path("pods")
    }
}

impl Installation {
    /// The CSI driver's objects in the order to apply them: ServiceAccount, RBAC, PriorityClass (unless an
    /// existing one is named), `CSIDriver`, DaemonSet. Empty when the driver is not installed.
    pub fn csi_driver_objects(&self) -> Vec<Value> {
        let Some(options) = &self.csi_driver else {
            return Vec::new();
        };
        let mut out = vec![to_value(&ServiceAccount {
            metadata: self.meta(CSI_DAEMONSET, "csi-driver"),
            ..Default::default()
        })];
        out.extend(self.csi_rbac());
        if options.priority_class.is_none() {
            out.push(to_value(&priority_class()));
        }
        out.push(to_value(&csi_driver(options)));
        out.push(to_value(&self.csi_daemonset(options)));
        out
    }

    /// The DaemonSet `dynatrace-oneagent-csi-driver`: `server` and `provisioner`, both privileged (they
    /// mount), sharing the data directory with Bidirectional propagation so that their mounts reach the
    /// node and the pods.
    pub fn csi_daemonset(&self, options: &CsiDriverOptions) -> DaemonSet {
        let plugin_dir = options.plugin_dir();
        let pods_dir = options.pods_dir();
        let volumes = vec![
            host_path("plugin-dir", &format!("{plugin_dir}/"), "DirectoryOrCreate"),
            host_path("data-dir", &format!("{plugin_dir}/data"), "DirectoryOrCreate"),
            host_path("mountpoint-dir", &format!("{pods_dir}/"), "DirectoryOrCreate"),
            host_path(
                "registration-dir",
                &format!("{}/", options.kubelet_path("plugins_registry")),
                "Directory",
            ),
            pod::empty_dir_volume("server-tmp"),
            pod::empty_dir_volume("provisioner-tmp"),
        ];
        let server = Container {
            args: Some(vec![
                "csi-server".to_owned(),
                format!("--endpoint=unix://{SOCKET_DIR}/csi.sock"),
                "--node-id=$(KUBE_NODE_NAME)".to_owned(),
                format!("--data-dir={DATA_DIR}"),
                format!("--registration-dir={REGISTRATION_DIR}"),
                format!(
                    "--kubelet-registration-path={}",
                    options.kubelet_registration_path()
                ),
                format!("--health-probe-bind-address=0.0.0.0:{SERVER_HEALTH_PORT}"),
                format!("--log-format={}", self.log_format),
            ]),
            ports: Some(vec![port("server-health", SERVER_HEALTH_PORT)]),
            volume_mounts: Some(vec![
                pod::mount("plugin-dir", SOCKET_DIR, false),
                bidirectional("mountpoint-dir", &pods_dir),
                bidirectional("data-dir", DATA_DIR),
                pod::mount("registration-dir", REGISTRATION_DIR, false),
                pod::mount("server-tmp", "/tmp", false),
            ]),
            readiness_probe: Some(http_probe("/readyz", "server-health", 0)),
            liveness_probe: Some(http_probe("/livez", "server-health", 5)),
            resources: Some(fixed_resources("50m", "100Mi")),
            ..self.csi_container(SERVER, Vec::new())
        };
        let mut provisioner_env = Vec::new();
        if let Some(days) = options.max_unmounted_volume_age_days {
            provisioner_env.push(literal_env("MAX_UNMOUNTED_VOLUME_AGE", &days.to_string()));
        }
        let provisioner = Container {
            args: Some(vec![
                "csi-provisioner".to_owned(),
                "--node-id=$(KUBE_NODE_NAME)".to_owned(),
                format!("--data-dir={DATA_DIR}"),
                format!("--health-probe-bind-address=0.0.0.0:{PROVISIONER_HEALTH_PORT}"),
                format!("--log-format={}", self.log_format),
            ]),
            ports: Some(vec![port("prov-health", PROVISIONER_HEALTH_PORT)]),
            volume_mounts: Some(vec![
                bidirectional("data-dir", DATA_DIR),
                pod::mount("provisioner-tmp", "/tmp", false),
            ]),
            readiness_probe: Some(http_probe("/readyz", "prov-health", 0)),
            liveness_probe: Some(http_probe("/livez", "prov-health", 5)),
            resources: Some(fixed_resources("300m", "100Mi")),
            ..self.csi_container(PROVISIONER, provisioner_env)
        };
        let mut node_selector = options.node_selector.clone();
        node_selector.insert("kubernetes.io/os".to_owned(), "linux".to_owned());
        let spec = PodSpec {
            service_account_name: Some(CSI_DAEMONSET.to_owned()),
            containers: vec![server, provisioner],
            volumes: Some(volumes),
            node_selector: Some(node_selector),
            tolerations: Some(csi_tolerations()),
            priority_class_name: Some(
                options
                    .priority_class
                    .clone()
                    .unwrap_or_else(|| PRIORITY_CLASS.to_owned()),
            ),
            ..Default::default()
        };
        let mut pod_labels = labels("csi-driver");
        pod_labels.extend(selector(CSI_DAEMONSET));
        let annotations = BTreeMap::from([
            // The driver's own pods are never injected: their volumes would need the driver itself.
            (INJECT_ANNOTATION.to_owned(), "false".to_owned()),
            (
                "cluster-autoscaler.kubernetes.io/enable-ds-eviction".to_owned(),
                "false".to_owned(),
            ),
            (
                "kubectl.kubernetes.io/default-container".to_owned(),
                PROVISIONER.to_owned(),
            ),
        ]);
        let mut daemonset = pod::rolling_daemonset(
            self.meta(CSI_DAEMONSET, "csi-driver"),
            selector(CSI_DAEMONSET),
            pod_labels,
            Some(annotations),
            spec,
            1,
        );
        if let Some(spec) = daemonset.spec.as_mut() {
            spec.revision_history_limit = Some(1);
        }
        daemonset
    }

    /// A container of our image that runs as root and privileged: the CSI containers mount overlays and
    /// bind mounts and write the node's driver directories.
    fn csi_container(&self, name: &str, extra_env: Vec<EnvVar>) -> Container {
        let mut env = vec![
            field_env("KUBE_NODE_NAME", "spec.nodeName"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ];
        env.extend(extra_env);
        Container {
            name: name.to_owned(),
            image: Some(self.image.clone()),
            image_pull_policy: Some(self.image_pull_policy.clone()),
            env: Some(env),
            security_context: Some(SecurityContext {
                run_as_user: Some(0),
                run_as_group: Some(0),
                run_as_non_root: Some(false),
                read_only_root_filesystem: Some(true),
                ..pod::privileged()
            }),
            ..Default::default()
        }
    }
}

/// The `CSIDriver`: no attach step (node-only driver), pod information on every publish (the app volume
/// needs the pod's name and namespace for its event), inline ephemeral volumes only.
pub fn csi_driver(options: &CsiDriverOptions) -> CSIDriver {
    let mut driver_labels = labels("csi-driver");
    if options.openshift {
        driver_labels.insert(OPENSHIFT_PROFILE_LABEL.to_owned(), "restricted".to_owned());
    }
    CSIDriver {
        metadata: ObjectMeta {
            name: Some(CSI_DRIVER.to_owned()),
            labels: Some(driver_labels),
            ..Default::default()
        },
        spec: CSIDriverSpec {
            attach_required: Some(false),
            pod_info_on_mount: Some(true),
            volume_lifecycle_modes: Some(vec!["Ephemeral".to_owned()]),
            ..Default::default()
        },
    }
}

/// The PriorityClass [`PRIORITY_CLASS`] (not the cluster's default).
pub fn priority_class() -> PriorityClass {
    PriorityClass {
        metadata: ObjectMeta {
            name: Some(PRIORITY_CLASS.to_owned()),
            labels: Some(labels("csi-driver")),
            ..Default::default()
        },
        value: PRIORITY_CLASS_VALUE,
        global_default: Some(false),
        description: Some(
            "Dynatrace OneAgent CSI driver: serves the code modules of the pods on its node".to_owned(),
        ),
        ..Default::default()
    }
}

/// Master/control-plane nodes, nodes tainted by architecture and nodes the autoscaler is draining: the
/// pods there still need their volumes unpublished.
fn csi_tolerations() -> Vec<Toleration> {
    let toleration = |key: &str, operator: &str, values: Option<&str>, effect: &str| Toleration {
        key: Some(key.to_owned()),
        operator: Some(operator.to_owned()),
        value: values.map(str::to_owned),
        effect: Some(effect.to_owned()),
        ..Default::default()
    };
    let mut out = vec![
        toleration("node-role.kubernetes.io/master", "Exists", None, "NoSchedule"),
        toleration(
            "node-role.kubernetes.io/control-plane",
            "Exists",
            None,
            "NoSchedule",
        ),
    ];
    for arch in ["amd64", "arm64", "ppc64le", "s390x"] {
        out.push(toleration(
            "kubernetes.io/arch",
            "Equal",
            Some(arch),
            "NoSchedule",
        ));
    }
    out.push(toleration(
        "ToBeDeletedByClusterAutoscaler",
        "Exists",
        None,
        "NoSchedule",
    ));
    out
}

fn host_path(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        host_path: Some(HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some(type_.to_owned()),
        }),
        ..pod::host_path_volume(name, path)
    }
}

fn bidirectional(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        mount_propagation: Some("Bidirectional".to_owned()),
        ..pod::mount(name, path, false)
    }
}

/// Requests equal to limits (the reference's defaults), so the pods are Guaranteed.
fn fixed_resources(cpu: &str, memory: &str) -> ResourceRequirements {
    let amounts = BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.to_owned())),
        ("memory".to_owned(), Quantity(memory.to_owned())),
    ]);
    ResourceRequirements {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install() -> Installation {
        Installation::new("dynatrace-operator:0.1.0-dev")
    }

    fn daemonset_spec(install: &Installation) -> PodSpec {
        let options = install.csi_driver.clone().unwrap();
        install
            .csi_daemonset(&options)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
        spec.containers.iter().find(|c| c.name == name).unwrap()
    }

    fn mount<'a>(container: &'a Container, name: &str) -> &'a VolumeMount {
        let mounts = container.volume_mounts.as_ref().unwrap();
        mounts.iter().find(|m| m.name == name).unwrap()
    }

    fn host_path_of(spec: &PodSpec, name: &str) -> (String, String) {
        let volume = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == name)
            .unwrap();
        let host = volume.host_path.clone().unwrap();
        (host.path, host.type_.unwrap())
    }

    #[test]
    fn the_driver_is_one_name_for_the_object_the_server_the_injected_pods_and_the_host_oneagent() {
        assert_eq!(CSI_DRIVER, pure_csi::DRIVER_NAME);
        assert_eq!(CSI_DRIVER, pure_mutation::names::CSI_DRIVER);
        assert_eq!(CSI_DRIVER, pure_desired::oneagent::CSI_DRIVER);
    }

    #[test]
    fn the_csi_driver_is_node_only_with_pod_info_for_inline_volumes() {
        let driver = csi_driver(&CsiDriverOptions::default());
        assert_eq!(
            driver.metadata.name.as_deref(),
            Some("csi.oneagent.dynatrace.com")
        );
        assert_eq!(driver.spec.attach_required, Some(false));
        assert_eq!(driver.spec.pod_info_on_mount, Some(true));
        assert_eq!(driver.spec.volume_lifecycle_modes.unwrap(), ["Ephemeral"]);
        assert!(
            !driver
                .metadata
                .labels
                .unwrap()
                .contains_key(OPENSHIFT_PROFILE_LABEL)
        );
        let openshift = csi_driver(&CsiDriverOptions {
            openshift: true,
            ..CsiDriverOptions::default()
        });
        assert_eq!(
            openshift.metadata.labels.unwrap()[OPENSHIFT_PROFILE_LABEL],
            "restricted"
        );
    }

    #[test]
    fn the_daemonset_runs_server_and_provisioner_of_our_image_with_the_contracts_arguments() {
        let install = install();
        let daemonset = install.csi_daemonset(&CsiDriverOptions::default());
        assert_eq!(daemonset.metadata.name.as_deref(), Some(CSI_DAEMONSET));
        assert_eq!(daemonset.metadata.namespace.as_deref(), Some("dynatrace"));
        let spec = daemonset.spec.clone().unwrap();
        let strategy = spec.update_strategy.unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        assert_eq!(
            strategy.rolling_update.unwrap().max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
        );
        let template = spec.template;
        let annotations = template.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations[INJECT_ANNOTATION], "false");
        assert_eq!(
            annotations["kubectl.kubernetes.io/default-container"],
            "provisioner"
        );
        let pod = template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(CSI_DAEMONSET));
        assert_eq!(pod.priority_class_name.as_deref(), Some(PRIORITY_CLASS));
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["server", "provisioner"]);
        assert!(pod.init_containers.is_none(), "no sidecar or init image");

        let server = container(&pod, "server");
        assert_eq!(server.image.as_deref(), Some("dynatrace-operator:0.1.0-dev"));
        assert_eq!(
            server.args.clone().unwrap(),
            [
                "csi-server",
                "--endpoint=unix:///csi/csi.sock",
                "--node-id=$(KUBE_NODE_NAME)",
                "--data-dir=/data",
                "--registration-dir=/registration",
                "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.oneagent.dynatrace.com/csi.sock",
                "--health-probe-bind-address=0.0.0.0:10080",
                "--log-format=json",
            ]
        );
        let provisioner = container(&pod, "provisioner");
        assert_eq!(
            provisioner.args.clone().unwrap(),
            [
                "csi-provisioner",
                "--node-id=$(KUBE_NODE_NAME)",
                "--data-dir=/data",
                "--health-probe-bind-address=0.0.0.0:10090",
                "--log-format=json",
            ]
        );
        for (container, port) in [(server, 10080), (provisioner, 10090)] {
            let context = container.security_context.clone().unwrap();
            assert_eq!(context.privileged, Some(true), "{}", container.name);
            assert_eq!(context.run_as_user, Some(0));
            let env = container.env.as_deref();
            let node = env.unwrap().iter().find(|e| e.name == "KUBE_NODE_NAME").unwrap();
            let field = node.value_from.clone().unwrap().field_ref.unwrap().field_path;
            assert_eq!(field, "spec.nodeName");
            assert!(env.unwrap().iter().any(|e| e.name == "POD_NAMESPACE"));
            let ports = container.ports.clone().unwrap();
            assert_eq!(ports[0].container_port, port);
            for probe in [&container.liveness_probe, &container.readiness_probe] {
                let get = probe.clone().unwrap().http_get.unwrap();
                assert_eq!(
                    get.port,
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                        ports[0].name.clone().unwrap()
                    )
                );
            }
            let resources = container.resources.clone().unwrap();
            assert_eq!(resources.requests, resources.limits);
        }
        let cpu = |c: &Container| c.resources.clone().unwrap().limits.unwrap()["cpu"].0.clone();
        assert_eq!((cpu(server).as_str(), cpu(provisioner).as_str()), ("50m", "300m"));
    }

    #[test]
    fn the_host_paths_and_propagation_follow_the_kubelet_dir() {
        let mut install = install();
        install.csi_driver = Some(CsiDriverOptions {
            kubelet_dir: "/var/data/kubelet/".to_owned(),
            ..CsiDriverOptions::default()
        });
        let pod = daemonset_spec(&install);
        let plugin = "/var/data/kubelet/plugins/csi.oneagent.dynatrace.com";
        assert_eq!(
            host_path_of(&pod, "plugin-dir"),
            (format!("{plugin}/"), "DirectoryOrCreate".to_owned())
        );
        assert_eq!(
            host_path_of(&pod, "data-dir"),
            (format!("{plugin}/data"), "DirectoryOrCreate".to_owned())
        );
        assert_eq!(
            host_path_of(&pod, "mountpoint-dir"),
            (
                "/var/data/kubelet/pods/".to_owned(),
                "DirectoryOrCreate".to_owned()
            )
        );
        assert_eq!(
            host_path_of(&pod, "registration-dir"),
            (
                "/var/data/kubelet/plugins_registry/".to_owned(),
                "Directory".to_owned()
            )
        );
        let server = container(&pod, "server");
        assert!(
            server
                .args
                .as_ref()
                .unwrap()
                .contains(&format!("--kubelet-registration-path={plugin}/csi.sock"))
        );
        assert_eq!(mount(server, "plugin-dir").mount_path, "/csi");
        assert_eq!(mount(server, "registration-dir").mount_path, "/registration");
        // The target paths the kubelet passes are under its pods dir: same path inside the container.
        let pods = mount(server, "mountpoint-dir");
        assert_eq!(pods.mount_path, "/var/data/kubelet/pods");
        assert_eq!(pods.mount_propagation.as_deref(), Some("Bidirectional"));
        for name in ["server", "provisioner"] {
            let data = mount(container(&pod, name), "data-dir");
            assert_eq!(data.mount_path, "/data");
            assert_eq!(data.mount_propagation.as_deref(), Some("Bidirectional"));
        }
    }

    #[test]
    fn options_reach_the_pods() {
        let mut install = install();
        install.csi_driver = Some(CsiDriverOptions {
            node_selector: BTreeMap::from([("pool".to_owned(), "apps".to_owned())]),
            max_unmounted_volume_age_days: Some(0),
            priority_class: Some("existing".to_owned()),
            ..CsiDriverOptions::default()
        });
        let pod = daemonset_spec(&install);
        let selector = pod.node_selector.clone().unwrap();
        assert_eq!(selector["pool"], "apps");
        assert_eq!(selector["kubernetes.io/os"], "linux");
        assert_eq!(pod.priority_class_name.as_deref(), Some("existing"));
        let env = container(&pod, "provisioner").env.clone().unwrap();
        let age = env.iter().find(|e| e.name == "MAX_UNMOUNTED_VOLUME_AGE").unwrap();
        assert_eq!(age.value.as_deref(), Some("0"));
        assert!(
            !container(&pod, "server")
                .env
                .clone()
                .unwrap()
                .iter()
                .any(|e| e.name == "MAX_UNMOUNTED_VOLUME_AGE")
        );
        // An existing PriorityClass is used, not created.
        let kinds: Vec<String> = install
            .csi_driver_objects()
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_owned())
            .collect();
        assert!(!kinds.contains(&"PriorityClass".to_owned()), "{kinds:?}");
    }

    #[test]
    fn the_pods_tolerate_control_plane_arch_and_autoscaler_taints() {
        let pod = daemonset_spec(&install());
        let keys: Vec<String> = pod
            .tolerations
            .unwrap()
            .into_iter()
            .filter_map(|t| t.key)
            .collect();
        for key in [
            "node-role.kubernetes.io/master",
            "node-role.kubernetes.io/control-plane",
            "kubernetes.io/arch",
            "ToBeDeletedByClusterAutoscaler",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
        }
    }

    #[test]
    fn the_installation_carries_the_csi_objects_before_the_webhook_and_none_when_disabled() {
        let objects = install().objects();
        let position = |kind: &str, name: &str| {
            objects
                .iter()
                .position(|o| o["kind"] == kind && o["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{kind}/{name} missing"))
        };
        let daemonset = position("DaemonSet", CSI_DAEMONSET);
        assert!(position("ServiceAccount", CSI_DAEMONSET) < daemonset);
        assert!(position("RoleBinding", CSI_DAEMONSET) < daemonset);
        assert!(position("PriorityClass", PRIORITY_CLASS) < daemonset);
        assert!(position("CSIDriver", CSI_DRIVER) < daemonset);
        assert!(daemonset < position("Deployment", crate::WEBHOOK));
        let class = &objects[position("PriorityClass", PRIORITY_CLASS)];
        assert_eq!(class["value"], PRIORITY_CLASS_VALUE);
        assert_eq!(class["globalDefault"], false);

        let mut disabled = install();
        disabled.csi_driver = None;
        let objects = disabled.objects();
        assert!(
            !objects
                .iter()
                .any(|o| o["kind"] == "DaemonSet" || o["kind"] == "CSIDriver"),
            "no CSI objects when disabled"
        );
    }

    #[test]
    fn the_csi_rbac_is_least_privilege() {
        let rbac = install().csi_rbac();
        let rules = |kind: &str| -> Vec<Value> {
            rbac.iter().find(|o| o["kind"] == kind).unwrap()["rules"]
                .as_array()
                .unwrap()
                .clone()
        };
        let cluster = rules("ClusterRole");
        for rule in &cluster {
            let resources = rule["resources"].to_string();
            assert!(
                !resources.contains("secrets") && !resources.contains("configmaps"),
                "no Secret or ConfigMap access across the cluster: {rule}"
            );
            assert!(
                !rule["verbs"].to_string().contains("delete"),
                "nothing deleted across the cluster: {rule}"
            );
        }
        let namespaced = rules("Role");
        let dynakubes = namespaced
            .iter()
            .find(|r| r["resources"][0] == "dynakubes")
            .unwrap();
        assert_eq!(dynakubes["verbs"], serde_json::json!(["get", "list", "watch"]));
        for rule in cluster.iter().chain(&namespaced) {
            assert!(!rule.to_string().contains('*'), "wildcard in {rule}");
        }
    }
}
