//! The CustomResourceDefinitions, generated from the Rust types.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, JSONSchemaProps, ServiceReference, ValidationRule,
    WebhookClientConfig, WebhookConversion,
};
use kube::CustomResourceExt as _;
use kube::core::crd::merge_crds;

use crate::dynakube::{v1alpha1, v1beta1, v1beta2, v1beta3, v1beta4, v1beta5, v1beta6};
use crate::oneagent::OneAgent;

/// Name of the webhook Service in the Helm chart.
pub const WEBHOOK_SERVICE: &str = "dynatrace-webhook";
/// The namespace of the conversion Service in the Helm chart: rendered from the release.
pub const CHART_RELEASE_NAMESPACE: &str = "{{ .Release.Namespace }}";
/// Where the CRDs are committed, relative to the workspace root.
pub const CHART_CRDS_PATH: &str = "chart/templates/crds.yaml";

/// The CRDs as committed for the Helm chart: templates (not `crds/`, which Helm never upgrades) rendered
/// with `installCRD`, kept by `helm uninstall` so that the DynaKubes survive it.
pub fn chart_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut crds = all(&ConversionEndpoint::Service {
        namespace: CHART_RELEASE_NAMESPACE.to_owned(),
    });
    for crd in &mut crds {
        crd.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("helm.sh/resource-policy".to_owned(), "keep".to_owned());
    }
    let mut out = to_yaml(&crds)?;
    out.push_str("{{- end }}\n");
    Ok(out.replacen("\n---\n", "\n{{- if .Values.installCRD }}\n---\n", 1))
}

/// The DynaKube version the API server stores: the internal model, which holds every version's fields.
pub const DYNAKUBE_STORAGE_VERSION: &str = "v1beta1";

/// Path of the conversion endpoint on the webhook server.
pub const CONVERT_PATH: &str = "/convert";

/// Where the API server sends conversion requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversionEndpoint {
    /// The webhook Service in `namespace` (how the Helm chart installs it).
    Service {
        /// Namespace of the operator.
        namespace: String,
    },
    /// A URL, with the CA that signed the server's certificate (tests and local runs).
    Url {
        /// `https://host:port/convert`.
        url: String,
        /// PEM of the CA.
        ca_bundle_pem: String,
    },
}

/// The DynaKube CRD: v1alpha1 to v1beta6 served, conversion through the webhook. v1beta1 is stored: it is
/// the internal model, which holds every version's fields (see [`crate::dynakube::v1beta1`]), so an
/// object written in any version is stored without loss and the operator reads it without conversion.
pub fn dynakube(endpoint: &ConversionEndpoint) -> CustomResourceDefinition {
    let versions = vec![
        v1alpha1::DynaKube::crd(),
        v1beta1::DynaKube::crd(),
        v1beta2::DynaKube::crd(),
        v1beta3::DynaKube::crd(),
        v1beta4::DynaKube::crd(),
        v1beta5::DynaKube::crd(),
        v1beta6::DynaKube::crd(),
    ];
    let mut crd = match merge_crds(versions, DYNAKUBE_STORAGE_VERSION) {
        Ok(crd) => crd,
        // Both come from derives in this crate with the same names; a mismatch is a programming error
        // that the unit tests catch.
        Err(err) => unreachable!("DynaKube versions do not merge: {err}"),
    };
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            add_dynakube_rules(schema);
            deprecate_auto_update(&version.name, schema);
        }
    }
    let client_config = match endpoint {
        ConversionEndpoint::Service { namespace } => WebhookClientConfig {
            service: Some(ServiceReference {
                name: WEBHOOK_SERVICE.to_owned(),
                namespace: namespace.clone(),
                path: Some(CONVERT_PATH.to_owned()),
                port: Some(443),
            }),
            ..Default::default()
        },
        ConversionEndpoint::Url { url, ca_bundle_pem } => WebhookClientConfig {
            url: Some(url.clone()),
            ca_bundle: Some(k8s_openapi::ByteString(ca_bundle_pem.clone().into_bytes())),
            ..Default::default()
        },
    };
    crd.spec.conversion = Some(CustomResourceConversion {
        strategy: "Webhook".to_owned(),
        webhook: Some(WebhookConversion {
            client_config: Some(client_config),
            conversion_review_versions: vec!["v1".to_owned()],
        }),
    });
    crd
}

/// The legacy OneAgent CRD.
pub fn oneagent() -> CustomResourceDefinition {
    let mut crd = OneAgent::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.x_kubernetes_validations = Some(vec![dns1035_name_rule()]);
        }
    }
    crd
}

/// Every CRD of the operator.
pub fn all(endpoint: &ConversionEndpoint) -> Vec<CustomResourceDefinition> {
    vec![dynakube(endpoint), oneagent()]
}

/// The CRDs as one multi-document YAML stream.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::from("# Generated by `dynatrace-operator crd`. Do not edit.\n");
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(crd)?);
    }
    Ok(out)
}

/// Rules that need no cluster state, checked by the API server itself so that they hold even when the
/// webhook is unavailable. The API server checks the schema before it calls validating webhooks, so a
/// rule placed here answers first; the apiUrl rules stay in the webhook, whose single answer lists every
/// problem of a DynaKube.
fn add_dynakube_rules(root: &mut JSONSchemaProps) {
    use crate::validation::messages;
    root.x_kubernetes_validations = Some(vec![dns1035_name_rule()]);
    let Some(one_agent) = root
        .properties
        .as_mut()
        .and_then(|p| p.get_mut("spec"))
        .and_then(|spec| spec.properties.as_mut())
        .and_then(|p| p.get_mut("oneAgent"))
    else {
        return;
    };
    // v1beta1 and later have the four modes; v1alpha1's oneAgent is the image settings.
    let Some(modes) = one_agent
        .properties
        .as_mut()
        .filter(|p| p.contains_key("cloudNativeFullStack"))
    else {
        return;
    };
    // Only `useCSIDriver: false` rules the image out (v1beta2's schema defaults it to false). Unset (v1beta1,
    // and v1beta3 on, which have no such field), whether the image can be used depends on the CSI driver
    // being installed, which only the webhook knows.
    if let Some(app) = modes.get_mut("applicationMonitoring").filter(|app| {
        app.properties
            .as_ref()
            .is_some_and(|p| p.contains_key("useCSIDriver"))
    }) {
        app.x_kubernetes_validations = Some(vec![ValidationRule {
            rule: "!has(self.codeModulesImage) || self.codeModulesImage == '' || \
                   !has(self.useCSIDriver) || self.useCSIDriver"
                .to_owned(),
            message: Some(messages::CODE_MODULES_IMAGE_WITHOUT_CSI.to_owned()),
            ..Default::default()
        }]);
    }
    one_agent.x_kubernetes_validations = Some(vec![ValidationRule {
        rule: "[has(self.classicFullStack), has(self.cloudNativeFullStack), \
               has(self.applicationMonitoring), has(self.hostMonitoring)].filter(m, m).size() <= 1"
            .to_owned(),
        message: Some(messages::CONFLICTING_ONE_AGENT_MODES.to_owned()),
        ..Default::default()
    }]);
}

/// `autoUpdate` is deprecated from v1beta3 on, and `kubectl explain` says so there. v1beta2 has no schema
/// default (the reference's is true): the API server would apply it whenever a v1beta2 client writes an
/// object back, adding `autoUpdate: true` that the user never wrote (and that v1beta3+ clients would then
/// be warned about). Unset means true in every version, so the behaviour is the reference's either way.
fn deprecate_auto_update(version: &str, root: &mut JSONSchemaProps) {
    if !matches!(version, "v1beta3" | "v1beta4" | "v1beta5" | "v1beta6") {
        return;
    }
    let Some(modes) = root
        .properties
        .as_mut()
        .and_then(|p| p.get_mut("spec"))
        .and_then(|spec| spec.properties.as_mut())
        .and_then(|p| p.get_mut("oneAgent"))
        .and_then(|one_agent| one_agent.properties.as_mut())
    else {
        return;
    };
    for mode in ["classicFullStack", "cloudNativeFullStack", "hostMonitoring"] {
        if let Some(auto_update) = modes
            .get_mut(mode)
            .and_then(|m| m.properties.as_mut())
            .and_then(|p| p.get_mut("autoUpdate"))
        {
            auto_update.description = Some(
                "Deprecated, to be removed: pin a version with `version` instead. Whether OneAgents are \
                 updated automatically to the environment's latest version (unset means true)."
                    .to_owned(),
            );
        }
    }
}

fn dns1035_name_rule() -> ValidationRule {
    ValidationRule {
        rule: "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
            .to_owned(),
        message: Some(crate::validation::messages::NAME_VIOLATES_DNS1035.to_owned()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> ConversionEndpoint {
        ConversionEndpoint::Service {
            namespace: "dynatrace".into(),
        }
    }

    #[test]
    fn dynakube_serves_every_version_and_stores_v1beta1() {
        let crd = dynakube(&service());
        let mut versions: Vec<_> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        versions.sort();
        assert_eq!(
            versions,
            vec![
                ("v1alpha1", true, false),
                ("v1beta1", true, true),
                ("v1beta2", true, false),
                ("v1beta3", true, false),
                ("v1beta4", true, false),
                ("v1beta5", true, false),
                ("v1beta6", true, false),
            ]
        );
        assert_eq!(crd.spec.names.short_names, Some(vec!["dk".to_owned()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["dynatrace".to_owned()]));
        let conversion = crd.spec.conversion.unwrap();
        assert_eq!(conversion.strategy, "Webhook");
        let service = conversion
            .webhook
            .unwrap()
            .client_config
            .unwrap()
            .service
            .unwrap();
        assert_eq!(
            (service.name.as_str(), service.path.as_deref()),
            ("dynatrace-webhook", Some("/convert"))
        );
    }

    #[test]
    fn printer_columns_match_the_reference() {
        let crd = dynakube(&service());
        let columns = |name: &str| -> Vec<String> {
            let version = crd.spec.versions.iter().find(|v| v.name == name).unwrap();
            version
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.clone())
                .collect()
        };
        assert_eq!(columns("v1alpha1"), vec!["ApiUrl", "Tokens", "Age"]);
        for version in ["v1beta1", "v1beta2", "v1beta3", "v1beta4", "v1beta5", "v1beta6"] {
            assert_eq!(columns(version), vec!["ApiUrl", "Status", "Age"], "{version}");
        }
        let oneagent = oneagent();
        let names: Vec<_> = oneagent.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, vec!["ApiUrl", "Tokens", "Version", "Phase", "Age"]);
    }

    /// The schema of `spec` in one version.
    fn spec_schema(crd: &CustomResourceDefinition, version: &str) -> JSONSchemaProps {
        let version = crd.spec.versions.iter().find(|v| v.name == version).unwrap();
        let root = version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        root.properties.as_ref().unwrap()["spec"].clone()
    }

    /// The schema at a dotted path below `spec`, if the version has it.
    fn field(spec: &JSONSchemaProps, path: &str) -> Option<JSONSchemaProps> {
        path.split('.')
            .try_fold(spec.clone(), |schema, key| schema.properties?.get(key).cloned())
    }

    #[test]
    fn each_version_has_exactly_the_reference_fields() {
        let crd = dynakube(&service());
        let has = |version: &str, path: &str| field(&spec_schema(&crd, version), path).is_some();
        for later in ["v1beta2", "v1beta3", "v1beta4", "v1beta5", "v1beta6"] {
            assert!(
                has(later, "oneAgent.cloudNativeFullStack.namespaceSelector"),
                "{later}"
            );
            assert!(
                has(later, "oneAgent.applicationMonitoring.namespaceSelector"),
                "{later}"
            );
            assert!(has(later, "oneAgent.hostGroup"), "{later}");
            assert!(has(later, "oneAgent.hostMonitoring.secCompProfile"), "{later}");
            assert!(has(later, "metadataEnrichment.namespaceSelector"), "{later}");
            assert!(has(later, "dynatraceApiRequestThreshold"), "{later}");
            assert!(
                !has(later, "namespaceSelector"),
                "{later}: the selector is per mode"
            );
            assert!(
                !has(later, "routing") && !has(later, "kubernetesMonitoring"),
                "{later}"
            );
        }
        assert!(has("v1beta2", "oneAgent.applicationMonitoring.useCSIDriver"));
        assert!(!has("v1beta3", "oneAgent.applicationMonitoring.useCSIDriver"));
        assert!(!has("v1beta2", "logMonitoring") && has("v1beta3", "logMonitoring"));
        for section in ["kspm", "extensions", "templates"] {
            assert!(has("v1beta3", section) && has("v1beta6", section), "{section}");
        }
        assert!(!has("v1beta3", "telemetryIngest") && has("v1beta4", "telemetryIngest"));
        assert!(!has("v1beta3", "oneAgent.classicFullStack.storageHostPath"));
        assert!(has("v1beta4", "oneAgent.classicFullStack.storageHostPath"));
        assert!(has("v1beta6", "oneAgent.cloudNativeFullStack.storageHostPath"));
        // The storage version holds every version's fields.
        for path in [
            "namespaceSelector",
            "routing",
            "oneAgent.hostGroup",
            "oneAgent.applicationMonitoring.useCSIDriver",
            "oneAgent.cloudNativeFullStack.storageHostPath",
            "metadataEnrichment",
            "telemetryIngest",
        ] {
            assert!(has("v1beta1", path), "{path}");
        }
        let v1beta6 = spec_schema(&crd, "v1beta6");
        let default = |path: &str| field(&v1beta6, path).and_then(|f| f.default).map(|d| d.0);
        assert_eq!(
            default("dynatraceApiRequestThreshold"),
            Some(serde_json::json!(15))
        );
        assert_eq!(
            default("metadataEnrichment.enabled"),
            Some(serde_json::json!(true))
        );
        let auto_update = |version: &str, mode: &str| {
            field(
                &spec_schema(&crd, version),
                &format!("oneAgent.{mode}.autoUpdate"),
            )
            .unwrap()
        };
        for mode in ["classicFullStack", "cloudNativeFullStack", "hostMonitoring"] {
            for version in ["v1beta1", "v1beta2", "v1beta3", "v1beta6"] {
                let field = auto_update(version, mode);
                assert_eq!(field.default, None, "{version} {mode}: unset means true");
                assert_eq!(
                    field.description.unwrap_or_default().starts_with("Deprecated"),
                    !matches!(version, "v1beta1" | "v1beta2"),
                    "{version} {mode}"
                );
            }
        }
        let rules = |version: &str| {
            field(&spec_schema(&crd, version), "oneAgent.applicationMonitoring")
                .and_then(|f| f.x_kubernetes_validations)
                .map_or(0, |r| r.len())
        };
        assert_eq!(
            (rules("v1beta2"), rules("v1beta3")),
            (1, 0),
            "the useCSIDriver rule where it exists"
        );
        for version in ["v1beta1", "v1beta2", "v1beta6"] {
            let modes_rule = field(&spec_schema(&crd, version), "oneAgent")
                .unwrap()
                .x_kubernetes_validations;
            assert_eq!(
                modes_rule.map(|r| r.len()),
                Some(1),
                "{version}: one mode at most"
            );
        }
    }

    #[test]
    fn field_descriptions_come_from_doc_comments() {
        let yaml = to_yaml(&all(&service())).unwrap();
        assert!(
            yaml.contains("cached per node by the CSI driver"),
            "cloudNativeFullStack has no description"
        );
        assert!(yaml.contains("x-kubernetes-validations"));
    }
}
