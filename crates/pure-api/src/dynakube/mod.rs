//! The `DynaKube` custom resource.
//!
//! [`DynaKube`] is the internal model: the storage version, which every other served version converts to
//! and from ([`conversion`]). Code outside this module uses only the internal model, so adding an API
//! version does not touch it.

pub mod conversion;
pub mod feature_flags;
pub mod later;
pub mod v1alpha1;
pub mod v1beta1;
pub mod v1beta2;
pub mod v1beta3;
pub mod v1beta4;
pub mod v1beta5;
pub mod v1beta6;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt as _;
use url::Url;

use crate::selector::{Labels, selector_matches, selector_problems};

pub use feature_flags::FeatureFlags;
pub use v1beta1::{
    AppInjectionSpec, ApplicationMonitoringSpec, CloudNativeFullStackSpec, DynaKube, DynaKubeSpec,
    DynaKubeStatus, HostInjectSpec, OneAgentSpec,
};

/// The example API URL from the documentation, which is never a real environment.
pub const EXAMPLE_API_URL: &str = "https://ENVIRONMENTID.live.dynatrace.com/api";

/// How a DynaKube uses the CSI driver for code modules and read-only OneAgents
/// ([`DynaKube::csi_driver_use`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsiDriverUse {
    /// Never: the init container of each pod downloads the code modules.
    Never,
    /// When the CSI driver is installed; else as [`CsiDriverUse::Never`].
    IfInstalled,
    /// Always: validation denies the DynaKube while the CSI driver is not installed (the webhook warns
    /// when it injects such a DynaKube's pods without it).
    Required,
}

impl CsiDriverUse {
    /// Whether the CSI driver is used, given whether it is installed. A driver that is not installed is
    /// never used, even when required: validation denies such a DynaKube, and one that got in before the
    /// driver went away falls back to downloads rather than volumes that cannot mount.
    pub fn uses(self, installed: bool) -> bool {
        self.may_use() && installed
    }

    /// Whether the CSI driver may be used (when installed): it then serves this DynaKube.
    pub fn may_use(self) -> bool {
        self != Self::Never
    }
}

/// What a DynaKube does for the pods of one namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespacePurposes {
    /// OneAgent code modules are injected.
    pub inject: bool,
    /// Pods are enriched with metadata.
    pub enrich: bool,
}

impl NamespacePurposes {
    /// Either: the namespace belongs to the DynaKube.
    pub fn any(self) -> bool {
        self.inject || self.enrich
    }
}

/// The namespace selectors of a DynaKube ([`DynaKube::namespace_selectors`]), ignored namespaces aside.
///
/// DynaKubes that inject code modules (cloudNativeFullStack, applicationMonitoring) select namespaces for
/// both parts. Metadata enrichment runs when [`DynaKube::metadata_enrichment_enabled`], in the namespaces
/// `spec.metadataEnrichment.namespaceSelector` selects, independently of the injection selector; without
/// it, enrichment follows the injection selector (the behaviour before the field). classicFullStack and
/// hostMonitoring DynaKubes select namespaces for enrichment only (`inject` is `None`), and only through an
/// explicit `spec.metadataEnrichment.namespaceSelector`: without it they select none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceSelectors {
    /// The code-module injection selector (`spec.namespaceSelector`, per mode from v1beta2 on); `None`
    /// when the DynaKube does not inject code modules. Empty selects every namespace.
    pub inject: Option<LabelSelector>,
    /// The metadata-enrichment selector; `None` when enrichment is off.
    pub enrich: Option<LabelSelector>,
}

impl NamespaceSelectors {
    /// What the DynaKube does in a namespace with these labels. An invalid selector selects nothing
    /// (check [`NamespaceSelectors::problems`] first).
    pub fn purposes(&self, labels: &Labels) -> NamespacePurposes {
        let matches = |s: &Option<LabelSelector>| s.as_ref().is_some_and(|s| selector_matches(s, labels));
        NamespacePurposes {
            inject: matches(&self.inject),
            enrich: matches(&self.enrich),
        }
    }

    /// Whether the DynaKube claims namespaces at all (for either part).
    pub fn claims_namespaces(&self) -> bool {
        self.inject.is_some() || self.enrich.is_some()
    }

    /// Why a selector is invalid; empty when both are valid.
    pub fn problems(&self) -> Vec<String> {
        self.inject
            .iter()
            .chain(&self.enrich)
            .flat_map(selector_problems)
            .collect()
    }
}

/// The OneAgent deployment modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// `classicFullStack`
    ClassicFullStack,
    /// `cloudNativeFullStack`
    CloudNativeFullStack,
    /// `applicationMonitoring`
    ApplicationMonitoring,
    /// `hostMonitoring`
    HostMonitoring,
}

impl Mode {
    /// The field name in `spec.oneAgent`.
    pub fn field(self) -> &'static str {
        match self {
            Self::ClassicFullStack => "classicFullStack",
            Self::CloudNativeFullStack => "cloudNativeFullStack",
            Self::ApplicationMonitoring => "applicationMonitoring",
            Self::HostMonitoring => "hostMonitoring",
        }
    }

    /// The name used in the deployment-metadata string (`orchestration_tech=Operator-<name>`).
    pub fn metadata_name(self) -> &'static str {
        match self {
            Self::ClassicFullStack => "classic_fullstack",
            Self::CloudNativeFullStack => "cloud_native_fullstack",
            Self::ApplicationMonitoring => "application_monitoring",
            Self::HostMonitoring => "host_monitoring",
        }
    }
}

impl OneAgentSpec {
    /// Every mode that is set, in field order (more than one is invalid).
    pub fn modes(&self) -> Vec<Mode> {
        [
            (self.classic_full_stack.is_some(), Mode::ClassicFullStack),
            (self.cloud_native_full_stack.is_some(), Mode::CloudNativeFullStack),
            (self.application_monitoring.is_some(), Mode::ApplicationMonitoring),
            (self.host_monitoring.is_some(), Mode::HostMonitoring),
        ]
        .into_iter()
        .filter_map(|(set, mode)| set.then_some(mode))
        .collect()
    }
}

/// Where a proxy URL comes from. Empty strings in the spec count as unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySource<'a> {
    /// Written in the spec (`proxy.value`).
    Value(&'a str),
    /// The key [`PROXY_SECRET_KEY`] of this Secret in the resource's namespace (`proxy.valueFrom`).
    Secret(&'a str),
}

/// Key of the proxy URL in a proxy Secret.
pub const PROXY_SECRET_KEY: &str = "proxy";
/// Key of the PEM certificates in a trusted-CAs ConfigMap.
pub const TRUSTED_CAS_KEY: &str = "certs";

impl v1beta1::DynaKubeProxy {
    /// The proxy, with `value_wins` deciding which field wins when both are set.
    pub(crate) fn source(&self, value_wins: bool) -> Option<ProxySource<'_>> {
        let value = self
            .value
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(ProxySource::Value);
        let secret = self
            .value_from
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(ProxySource::Secret);
        if value_wins {
            value.or(secret)
        } else {
            secret.or(value)
        }
    }
}

impl DynaKube {
    /// The proxy of the operator's calls and of the OneAgents: a literal `spec.proxy.value` wins over
    /// `valueFrom` (the reference's rule for DynaKubes).
    pub fn proxy(&self) -> Option<ProxySource<'_>> {
        self.spec.proxy.as_ref()?.source(true)
    }

    /// The ConfigMap whose key [`TRUSTED_CAS_KEY`] holds CAs to trust (`spec.trustedCAs`).
    pub fn trusted_cas_config_map(&self) -> Option<&str> {
        self.spec.trusted_cas.as_deref().filter(|n| !n.is_empty())
    }

    /// The ActiveGate's TLS Secret (`spec.activeGate.tlsSecretName`, kept among its other fields).
    pub fn activegate_tls_secret(&self) -> Option<&str> {
        self.spec
            .active_gate
            .as_ref()?
            .other
            .get("tlsSecretName")?
            .as_str()
            .filter(|n| !n.is_empty())
    }

    /// The feature flags in this DynaKube's annotations.
    pub fn feature_flags(&self) -> FeatureFlags<'_> {
        FeatureFlags::new(self.metadata.annotations.as_ref())
    }

    /// The OneAgent mode, when exactly one is set.
    pub fn mode(&self) -> Option<Mode> {
        match self.spec.one_agent.as_ref()?.modes().as_slice() {
            [mode] => Some(*mode),
            _ => None,
        }
    }

    /// The settings of the node OneAgent (classicFullStack, hostMonitoring or cloudNativeFullStack).
    pub fn host_spec(&self) -> Option<&HostInjectSpec> {
        let one_agent = self.spec.one_agent.as_ref()?;
        match self.mode()? {
            Mode::ClassicFullStack => one_agent.classic_full_stack.as_ref(),
            Mode::HostMonitoring => one_agent.host_monitoring.as_ref(),
            Mode::CloudNativeFullStack => one_agent.cloud_native_full_stack.as_ref().map(|c| &c.host),
            Mode::ApplicationMonitoring => None,
        }
    }

    /// The settings of code-module injection (cloudNativeFullStack or applicationMonitoring).
    pub fn app_injection_spec(&self) -> Option<&AppInjectionSpec> {
        let one_agent = self.spec.one_agent.as_ref()?;
        match self.mode()? {
            Mode::CloudNativeFullStack => one_agent.cloud_native_full_stack.as_ref().map(|c| &c.app),
            Mode::ApplicationMonitoring => one_agent.application_monitoring.as_ref().map(|a| &a.app),
            _ => None,
        }
    }

    /// A OneAgent DaemonSet is needed (classicFullStack, hostMonitoring, cloudNativeFullStack).
    pub fn needs_one_agent(&self) -> bool {
        matches!(
            self.mode(),
            Some(Mode::ClassicFullStack | Mode::HostMonitoring | Mode::CloudNativeFullStack)
        )
    }

    /// Code modules are injected into pods (cloudNativeFullStack, applicationMonitoring).
    pub fn needs_app_injection(&self) -> bool {
        matches!(
            self.mode(),
            Some(Mode::CloudNativeFullStack | Mode::ApplicationMonitoring)
        )
    }

    /// OneAgents run with a read-only host file system (hostMonitoring and cloudNativeFullStack, unless the
    /// feature flag turns it off).
    pub fn needs_readonly_one_agents(&self) -> bool {
        matches!(
            self.mode(),
            Some(Mode::HostMonitoring | Mode::CloudNativeFullStack)
        ) && self.feature_flags().readonly_host_fs()
    }

    /// How this DynaKube uses the CSI driver; the one place of the rule:
    /// - [`CsiDriverUse::Required`]: cloudNativeFullStack, read-only OneAgents (hostMonitoring unless the
    ///   flag turns it off) whose storage is the CSI `host` volume (no `storageHostPath`),
    ///   applicationMonitoring with `useCSIDriver: true`;
    /// - [`CsiDriverUse::Never`]: applicationMonitoring with `useCSIDriver: false` (v1beta2's default), and
    ///   classicFullStack;
    /// - [`CsiDriverUse::IfInstalled`]: applicationMonitoring without `useCSIDriver` (v1beta3 and later
    ///   have no such field, v1beta1 leaves it unset): the CSI driver when it is installed, else each
    ///   pod's init container downloads the code modules.
    pub fn csi_driver_use(&self) -> CsiDriverUse {
        let csi_storage = self.needs_readonly_one_agents() && self.oneagent_storage_host_path().is_none();
        if matches!(self.mode(), Some(Mode::CloudNativeFullStack)) || csi_storage {
            return CsiDriverUse::Required;
        }
        if self.mode() != Some(Mode::ApplicationMonitoring) {
            return CsiDriverUse::Never;
        }
        let use_csi_driver = self
            .spec
            .one_agent
            .as_ref()
            .and_then(|o| o.application_monitoring.as_ref())
            .and_then(|a| a.use_csi_driver);
        match use_csi_driver {
            Some(true) => CsiDriverUse::Required,
            Some(false) => CsiDriverUse::Never,
            None => CsiDriverUse::IfInstalled,
        }
    }

    /// Whether metadata enrichment runs: `spec.metadataEnrichment.enabled` when set (v1beta2 and later),
    /// else the deprecated `metadata-enrichment` feature flag (default true). The field wins over the flag,
    /// as in the reference's later versions, where the flag is gone.
    pub fn metadata_enrichment_enabled(&self) -> bool {
        self.spec
            .metadata_enrichment
            .as_ref()
            .and_then(|m| m.enabled)
            .unwrap_or_else(|| self.feature_flags().metadata_enrichment())
    }

    /// The namespaces whose pods are enriched: `spec.metadataEnrichment.namespaceSelector`, `None` when
    /// unset (every namespace the DynaKube may use, as an empty selector).
    pub fn metadata_enrichment_selector(&self) -> Option<&LabelSelector> {
        self.spec
            .metadata_enrichment
            .as_ref()?
            .namespace_selector
            .as_ref()
    }

    /// The selectors of the namespaces this DynaKube injects code modules into and enriches
    /// ([`NamespaceSelectors`]); the one place of the rule for mapping, validation and the webhook. Both
    /// are `None` when the DynaKube claims no namespace.
    pub fn namespace_selectors(&self) -> NamespaceSelectors {
        if matches!(self.mode(), Some(Mode::ClassicFullStack | Mode::HostMonitoring)) {
            // Enrichment only, and only with an explicit selector: an empty one would start enriching
            // every pod of every namespace for existing users of these modes (the reference does so).
            return NamespaceSelectors {
                inject: None,
                enrich: self
                    .metadata_enrichment_enabled()
                    .then(|| self.metadata_enrichment_selector().cloned())
                    .flatten(),
            };
        }
        if !self.needs_app_injection() {
            return NamespaceSelectors::default();
        }
        let inject = self.spec.namespace_selector.clone().unwrap_or_default();
        let enrich = self.metadata_enrichment_enabled().then(|| {
            self.metadata_enrichment_selector()
                .cloned()
                .unwrap_or_else(|| inject.clone())
        });
        NamespaceSelectors {
            inject: Some(inject),
            enrich,
        }
    }

    /// OneAgents follow the environment's latest version (`autoUpdate` unset or true; never for
    /// applicationMonitoring).
    pub fn should_auto_update_one_agent(&self) -> bool {
        self.host_spec().is_some_and(|h| h.auto_update.unwrap_or(true))
    }

    /// Minimum minutes between calls to the Dynatrace API for the same purpose (token scopes, connection
    /// info, versions). `spec.dynatraceApiRequestThreshold` (v1beta2 and later) wins over the
    /// `dynatrace-api-request-threshold` flag; without either it is 15. 0 means no throttling, as for the
    /// flag and in the reference (a zero interval is always over).
    pub fn api_request_threshold_minutes(&self) -> u32 {
        self.spec
            .dynatrace_api_request_threshold
            .map_or_else(|| self.feature_flags().api_request_threshold_minutes(), u32::from)
    }

    /// The Localhost seccomp profile of the OneAgent container: the host mode's `secCompProfile`
    /// (v1beta2 and later) wins over the `oneagent-seccomp-profile` flag. Empty values count as unset; none
    /// without a node OneAgent.
    pub fn oneagent_seccomp_profile(&self) -> Option<&str> {
        self.host_spec()?
            .sec_comp_profile
            .as_deref()
            .filter(|p| !p.is_empty())
            .or_else(|| self.feature_flags().oneagent_seccomp_profile())
    }

    /// The host directory for the OneAgent's volume storage: the host mode's `storageHostPath` (v1beta4
    /// and later), when set and not empty.
    pub fn oneagent_storage_host_path(&self) -> Option<&str> {
        self.host_spec()?
            .storage_host_path
            .as_deref()
            .filter(|p| !p.is_empty())
    }

    /// The host group: `spec.oneAgent.hostGroup` (v1beta2 and later), else a `--set-host-group=<group>`
    /// argument (cloudNativeFullStack only).
    pub fn host_group(&self) -> Option<&str> {
        if let Some(group) = self
            .spec
            .one_agent
            .as_ref()
            .and_then(|o| o.host_group.as_deref())
            .filter(|g| !g.is_empty())
        {
            return Some(group);
        }
        if self.mode() != Some(Mode::CloudNativeFullStack) {
            return None;
        }
        self.host_spec()?.args.as_ref()?.iter().find_map(|arg| {
            let mut parts = arg.split('=');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("--set-host-group"), Some(group), None) => Some(group),
                _ => None,
            }
        })
    }

    /// Name of the token Secret: `spec.tokens`, or the DynaKube's name.
    pub fn tokens_secret_name(&self) -> String {
        self.spec
            .tokens
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| self.name_any())
    }

    /// Name of the pull secret: `spec.customPullSecret`, or `<name>-pull-secret`.
    pub fn pull_secret_name(&self) -> String {
        self.spec
            .custom_pull_secret
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| names::pull_secret(&self.name_any()))
    }

    /// The environment id from the API URL: `<id>` of `/e/<id>/api`, else the first label of the host.
    pub fn tenant_uuid(&self) -> Option<String> {
        tenant_uuid_from_api_url(&self.spec.api_url)
    }

    /// The default OneAgent image in the environment's registry: `<host>/linux/oneagent:<tag>`, where the
    /// tag is `latest` or the pinned version cut to `major.minor.patch`.
    pub fn default_one_agent_image(&self) -> Option<String> {
        let host = Url::parse(&self.spec.api_url).ok()?.host_str()?.to_owned();
        let tag = self
            .host_spec()
            .and_then(|h| h.version.as_deref())
            .filter(|v| !v.is_empty())
            .map_or_else(
                || "latest".to_owned(),
                |v| v.split('.').take(3).collect::<Vec<_>>().join("."),
            );
        Some(format!("{host}/linux/oneagent:{tag}"))
    }
}

/// The environment id in an API URL: `<id>` of a `/e/<id>/api` path (Managed), else the first label of
/// the host name (SaaS).
pub fn tenant_uuid_from_api_url(api_url: &str) -> Option<String> {
    let url = Url::parse(api_url).ok()?;
    let mut segments = url.path_segments()?;
    if let (Some("e"), Some(id)) = (segments.next(), segments.next())
        && !id.is_empty()
    {
        return Some(id.to_owned());
    }
    url.host_str()?
        .split('.')
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

/// Names of the objects the operator derives from a DynaKube (in its namespace unless noted).
pub mod names {
    /// The OneAgent DaemonSet.
    pub fn one_agent_daemonset(dynakube: &str) -> String {
        format!("{dynakube}-oneagent")
    }
    /// The legacy DaemonSet name, deleted after a rollout.
    pub fn legacy_classic_daemonset(dynakube: &str) -> String {
        format!("{dynakube}-classic")
    }
    /// The Secret with the tenant token (key `tenant-token`).
    pub fn tenant_secret(dynakube: &str) -> String {
        format!("{dynakube}-oneagent-tenant-secret")
    }
    /// The ConfigMap with connection info (keys `tenant-uuid`, `communication-endpoints`).
    pub fn connection_info_config_map(dynakube: &str) -> String {
        format!("{dynakube}-oneagent-connection-info")
    }
    /// The deployment-metadata ConfigMap.
    pub fn deployment_metadata_config_map(dynakube: &str) -> String {
        format!("{dynakube}-deployment-metadata")
    }
    /// The generated pull secret.
    pub fn pull_secret(dynakube: &str) -> String {
        format!("{dynakube}-pull-secret")
    }
    /// Per-namespace Secret with the injection configuration.
    pub const INIT_SECRET: &str = "dynatrace-dynakube-config";
    /// Per-namespace Secret with the metadata-enrichment endpoint.
    pub const ENRICHMENT_SECRET: &str = "dynatrace-data-ingest-endpoint";
    /// The webhook certificate Secret (operator namespace).
    pub const WEBHOOK_CERTS_SECRET: &str = "dynatrace-webhook-certs";
    /// The CSI driver DaemonSet (operator namespace).
    pub const CSI_DAEMONSET: &str = "dynatrace-oneagent-csi-driver";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynakube(one_agent: serde_json::Value) -> DynaKube {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "dynatrace.com/v1beta1",
            "kind": "DynaKube",
            "metadata": { "name": "dk", "namespace": "dynatrace" },
            "spec": { "apiUrl": "https://abc12345.live.dynatrace.com/api", "oneAgent": one_agent }
        }))
        .unwrap()
    }

    #[test]
    fn a_literal_proxy_wins_for_dynakubes_and_value_from_for_oneagents() {
        let both = serde_json::json!({ "value": "http://proxy:3128", "valueFrom": "proxy-secret" });
        let mut dk = dynakube(serde_json::json!({}));
        dk.spec.proxy = serde_json::from_value(both.clone()).unwrap();
        assert_eq!(dk.proxy(), Some(ProxySource::Value("http://proxy:3128")));
        let oneagent: crate::oneagent::OneAgent = serde_json::from_value(serde_json::json!({
            "apiVersion": "dynatrace.com/v1alpha1", "kind": "OneAgent",
            "metadata": { "name": "oa" },
            "spec": { "apiUrl": "https://x/api", "proxy": both },
        }))
        .unwrap();
        assert_eq!(oneagent.proxy(), Some(ProxySource::Secret("proxy-secret")));
        dk.spec.proxy = serde_json::from_value(serde_json::json!({ "value": "", "valueFrom": "s" })).unwrap();
        assert_eq!(
            dk.proxy(),
            Some(ProxySource::Secret("s")),
            "an empty value counts as unset"
        );
        dk.spec.proxy = serde_json::from_value(serde_json::json!({ "value": "", "valueFrom": "" })).unwrap();
        assert_eq!(dk.proxy(), None);
        dk.spec.trusted_cas = Some(String::new());
        assert_eq!(dk.trusted_cas_config_map(), None);
        dk.spec.active_gate =
            serde_json::from_value(serde_json::json!({ "tlsSecretName": "ag-tls" })).unwrap();
        assert_eq!(dk.activegate_tls_secret(), Some("ag-tls"));
    }

    #[test]
    fn mode_predicates_follow_the_reference() {
        let classic = dynakube(serde_json::json!({ "classicFullStack": {} }));
        assert_eq!(classic.mode(), Some(Mode::ClassicFullStack));
        assert!(classic.needs_one_agent() && !classic.needs_app_injection());
        assert_eq!(classic.csi_driver_use(), CsiDriverUse::Never);

        let cloud = dynakube(serde_json::json!({ "cloudNativeFullStack": {} }));
        assert!(cloud.needs_one_agent() && cloud.needs_app_injection());
        assert_eq!(cloud.csi_driver_use(), CsiDriverUse::Required);
        assert!(cloud.needs_readonly_one_agents());

        let host = dynakube(serde_json::json!({ "hostMonitoring": {} }));
        assert!(host.needs_one_agent() && !host.needs_app_injection());
        assert_eq!(host.csi_driver_use(), CsiDriverUse::Required);

        let app = dynakube(serde_json::json!({ "applicationMonitoring": {} }));
        assert!(!app.needs_one_agent() && app.needs_app_injection());
        assert!(!app.should_auto_update_one_agent());
        let app_csi = dynakube(serde_json::json!({ "applicationMonitoring": { "useCSIDriver": true } }));
        assert_eq!(app_csi.csi_driver_use(), CsiDriverUse::Required);

        let two = dynakube(serde_json::json!({ "classicFullStack": {}, "hostMonitoring": {} }));
        assert_eq!(two.mode(), None);
        assert_eq!(
            two.spec.one_agent.unwrap().modes(),
            vec![Mode::ClassicFullStack, Mode::HostMonitoring]
        );
    }

    /// The field names of the reference's manifests, where camelCase would spell them differently.
    #[test]
    fn trusted_cas_keeps_the_reference_spelling_in_every_type() {
        let v1beta1: DynaKube = serde_json::from_value(serde_json::json!({
            "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube", "metadata": { "name": "dk" },
            "spec": { "apiUrl": "https://x/api", "trustedCAs": "my-cas" },
        }))
        .unwrap();
        assert_eq!(v1beta1.spec.trusted_cas.as_deref(), Some("my-cas"));
        assert!(
            serde_json::to_string(&v1beta1.spec)
                .unwrap()
                .contains("\"trustedCAs\":\"my-cas\"")
        );
        let v1alpha1: crate::dynakube::v1alpha1::DynaKube = serde_json::from_value(serde_json::json!({
            "apiVersion": "dynatrace.com/v1alpha1", "kind": "DynaKube", "metadata": { "name": "dk" },
            "spec": { "apiUrl": "https://x/api", "trustedCAs": "my-cas" },
        }))
        .unwrap();
        assert_eq!(v1alpha1.spec.trusted_cas.as_deref(), Some("my-cas"));
        let legacy: crate::oneagent::OneAgent = serde_json::from_value(serde_json::json!({
            "apiVersion": "dynatrace.com/v1alpha1", "kind": "OneAgent", "metadata": { "name": "oa" },
            "spec": { "apiUrl": "https://x/api", "trustedCAs": "my-cas" },
        }))
        .unwrap();
        assert_eq!(legacy.spec.trusted_cas.as_deref(), Some("my-cas"));
    }

    #[test]
    fn readonly_host_fs_flag_turns_off_csi_for_host_monitoring() {
        let mut host = dynakube(serde_json::json!({ "hostMonitoring": {} }));
        host.metadata.annotations = Some(
            [(
                "feature.dynatrace.com/oneagent-readonly-host-fs".to_owned(),
                "false".to_owned(),
            )]
            .into(),
        );
        assert_eq!(host.csi_driver_use(), CsiDriverUse::Never);
    }

    /// With `storageHostPath` the read-only OneAgent keeps its data in that host directory, not on the CSI
    /// `host` volume, so hostMonitoring needs no CSI driver; cloudNativeFullStack still does for its code
    /// modules.
    #[test]
    fn storage_host_path_frees_host_monitoring_from_the_csi_driver() {
        let host = dynakube(serde_json::json!({ "hostMonitoring": { "storageHostPath": "/var/opt/dt" } }));
        assert_eq!(host.csi_driver_use(), CsiDriverUse::Never);
        let cloud =
            dynakube(serde_json::json!({ "cloudNativeFullStack": { "storageHostPath": "/var/opt/dt" } }));
        assert_eq!(cloud.csi_driver_use(), CsiDriverUse::Required);
    }

    /// applicationMonitoring: `useCSIDriver` true requires the driver, false never uses it, absent (v1beta3
    /// and later, or v1beta1 without the field) follows whether it is installed.
    #[test]
    fn application_monitoring_csi_use_follows_use_csi_driver_or_the_driver() {
        let cases = [
            (serde_json::json!({}), CsiDriverUse::IfInstalled, [false, true]),
            (
                serde_json::json!({ "useCSIDriver": true }),
                CsiDriverUse::Required,
                [false, true],
            ),
            (
                serde_json::json!({ "useCSIDriver": false }),
                CsiDriverUse::Never,
                [false, false],
            ),
        ];
        for (app, expected, uses) in cases {
            let dk = dynakube(serde_json::json!({ "applicationMonitoring": app }));
            assert_eq!(dk.csi_driver_use(), expected, "{app}");
            assert_eq!([expected.uses(false), expected.uses(true)], uses, "{app}");
            assert_eq!(expected.may_use(), uses[1], "{app}");
        }
        for mode in ["classicFullStack", "cloudNativeFullStack", "hostMonitoring"] {
            let dk = dynakube(serde_json::json!({ mode: { "useCSIDriver": false } }));
            assert_ne!(dk.csi_driver_use(), CsiDriverUse::IfInstalled, "{mode}");
        }
    }

    /// Enrichment selects namespaces by its own selector when set, independently of the injection
    /// selector: a namespace may be injected only, enriched only, or both; without an enrichment selector
    /// it follows the injection selector, and with enrichment off nothing is enriched.
    #[test]
    fn namespace_purposes_per_selector() {
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let inject_only = labels(&[("inject", "yes")]);
        let enrich_only = labels(&[("enrich", "yes")]);
        let both = labels(&[("inject", "yes"), ("enrich", "yes")]);
        let neither = labels(&[]);
        let purposes = |inject, enrich| NamespacePurposes { inject, enrich };

        let mut dk = dynakube(serde_json::json!({ "applicationMonitoring": {} }));
        dk.spec.namespace_selector =
            serde_json::from_value(serde_json::json!({ "matchLabels": { "inject": "yes" } })).unwrap();
        let follows = dk.namespace_selectors();
        assert_eq!(follows.purposes(&inject_only), purposes(true, true));
        assert_eq!(follows.purposes(&enrich_only), purposes(false, false));

        dk.spec.metadata_enrichment = serde_json::from_value(
            serde_json::json!({ "namespaceSelector": { "matchLabels": { "enrich": "yes" } } }),
        )
        .unwrap();
        let own = dk.namespace_selectors();
        assert_eq!(own.purposes(&inject_only), purposes(true, false));
        assert_eq!(own.purposes(&enrich_only), purposes(false, true));
        assert_eq!(own.purposes(&both), purposes(true, true));
        assert_eq!(own.purposes(&neither), purposes(false, false));
        assert!(!own.purposes(&neither).any() && own.purposes(&enrich_only).any());

        dk.spec.metadata_enrichment.as_mut().unwrap().enabled = Some(false);
        assert_eq!(dk.namespace_selectors().purposes(&both), purposes(true, false));

        let classic = dynakube(serde_json::json!({ "classicFullStack": {} }));
        assert_eq!(
            classic.namespace_selectors().purposes(&both),
            purposes(false, false)
        );

        dk.spec.metadata_enrichment = serde_json::from_value(serde_json::json!({
            "namespaceSelector": { "matchExpressions": [{ "key": "enrich", "operator": "Bogus" }] }
        }))
        .unwrap();
        assert_eq!(dk.namespace_selectors().problems().len(), 1);
        assert_eq!(
            dk.namespace_selectors().purposes(&enrich_only),
            purposes(false, false)
        );
    }

    /// Every mode, with and without an enrichment selector and with enrichment off: the injecting modes
    /// select for both parts; classicFullStack and hostMonitoring select for enrichment only, and only
    /// through an explicit `metadataEnrichment.namespaceSelector` (no selector claims no namespace).
    #[test]
    fn namespace_selectors_per_mode() {
        let selector = |label: &str| -> LabelSelector {
            serde_json::from_value(serde_json::json!({ "matchLabels": { label: "yes" } })).unwrap()
        };
        for mode in [
            "classicFullStack",
            "hostMonitoring",
            "cloudNativeFullStack",
            "applicationMonitoring",
        ] {
            let injecting = matches!(mode, "cloudNativeFullStack" | "applicationMonitoring");
            let mut dk = dynakube(serde_json::json!({ mode: {} }));
            let plain = dk.namespace_selectors();
            assert_eq!(plain.inject.is_some(), injecting, "{mode}");
            assert_eq!(plain.enrich.is_some(), injecting, "{mode} without a selector");

            dk.spec.metadata_enrichment = serde_json::from_value(
                serde_json::json!({ "namespaceSelector": { "matchLabels": { "enrich": "yes" } } }),
            )
            .unwrap();
            let own = dk.namespace_selectors();
            assert_eq!(own.inject.is_some(), injecting, "{mode}");
            assert_eq!(own.enrich, Some(selector("enrich")), "{mode} with a selector");

            dk.spec.metadata_enrichment.as_mut().unwrap().enabled = Some(false);
            let off = dk.namespace_selectors();
            assert_eq!(off.inject.is_some(), injecting, "{mode}");
            assert_eq!(off.enrich, None, "{mode} with enrichment off");
        }
    }

    /// The field `metadataEnrichment.enabled` wins over the deprecated flag; without the field the flag
    /// decides (default on).
    #[test]
    fn metadata_enrichment_field_wins_over_the_flag() {
        let flag = |value: Option<&str>| {
            value.map(|v| {
                [(
                    "feature.dynatrace.com/metadata-enrichment".to_owned(),
                    v.to_owned(),
                )]
                .into_iter()
                .collect()
            })
        };
        for (field, flag_value, expected) in [
            (None, None, true),
            (None, Some("false"), false),
            (None, Some("true"), true),
            (Some(false), None, false),
            (Some(false), Some("true"), false),
            (Some(true), Some("false"), true),
            (Some(true), None, true),
        ] {
            let mut dk = dynakube(serde_json::json!({ "applicationMonitoring": {} }));
            dk.metadata.annotations = flag(flag_value);
            dk.spec.metadata_enrichment = Some(v1beta1::MetadataEnrichment {
                enabled: field,
                namespace_selector: None,
            });
            assert_eq!(
                dk.metadata_enrichment_enabled(),
                expected,
                "field {field:?}, flag {flag_value:?}"
            );
        }
        let mut dk = dynakube(serde_json::json!({ "applicationMonitoring": {} }));
        assert!(dk.metadata_enrichment_selector().is_none());
        dk.spec.metadata_enrichment = serde_json::from_value(
            serde_json::json!({ "namespaceSelector": { "matchLabels": { "enrich": "yes" } } }),
        )
        .unwrap();
        assert!(dk.metadata_enrichment_selector().is_some());
    }

    #[test]
    fn host_group_only_from_a_well_formed_arg_in_cloud_native() {
        let cloud =
            dynakube(serde_json::json!({ "cloudNativeFullStack": { "args": ["--set-host-group=prod"] } }));
        assert_eq!(cloud.host_group(), Some("prod"));
        let odd =
            dynakube(serde_json::json!({ "cloudNativeFullStack": { "args": ["--set-host-group=a=b"] } }));
        assert_eq!(odd.host_group(), None);
        let classic =
            dynakube(serde_json::json!({ "classicFullStack": { "args": ["--set-host-group=prod"] } }));
        assert_eq!(classic.host_group(), None);
    }

    fn with_annotation(mut dk: DynaKube, key: &str, value: &str) -> DynaKube {
        dk.metadata
            .annotations
            .get_or_insert_default()
            .insert(key.to_owned(), value.to_owned());
        dk
    }

    #[test]
    fn the_api_request_threshold_field_wins_over_the_flag() {
        const FLAG: &str = "feature.dynatrace.com/dynatrace-api-request-threshold";
        let plain = dynakube(serde_json::json!({ "hostMonitoring": {} }));
        assert_eq!(plain.api_request_threshold_minutes(), 15, "default");
        let flagged = with_annotation(plain.clone(), FLAG, "3");
        assert_eq!(flagged.api_request_threshold_minutes(), 3, "the flag alone");
        for (field, expected) in [(0, 0), (7, 7), (u16::MAX, 65535)] {
            let mut dk = flagged.clone();
            dk.spec.dynatrace_api_request_threshold = Some(field);
            assert_eq!(
                dk.api_request_threshold_minutes(),
                expected,
                "field {field} over the flag"
            );
            dk.metadata.annotations = None;
            assert_eq!(
                dk.api_request_threshold_minutes(),
                expected,
                "field {field} alone"
            );
        }
    }

    #[test]
    fn the_sec_comp_profile_field_wins_over_the_flag_in_every_host_mode() {
        const FLAG: &str = "feature.dynatrace.com/oneagent-seccomp-profile";
        for mode in ["classicFullStack", "hostMonitoring", "cloudNativeFullStack"] {
            let plain = dynakube(serde_json::json!({ mode: {} }));
            assert_eq!(plain.oneagent_seccomp_profile(), None, "{mode}");
            let flagged = with_annotation(plain, FLAG, "from-flag.json");
            assert_eq!(
                flagged.oneagent_seccomp_profile(),
                Some("from-flag.json"),
                "{mode}"
            );
            let both = with_annotation(
                dynakube(serde_json::json!({ mode: { "secCompProfile": "from-field.json" } })),
                FLAG,
                "from-flag.json",
            );
            assert_eq!(both.oneagent_seccomp_profile(), Some("from-field.json"), "{mode}");
            let empty = with_annotation(
                dynakube(serde_json::json!({ mode: { "secCompProfile": "" } })),
                FLAG,
                "from-flag.json",
            );
            assert_eq!(
                empty.oneagent_seccomp_profile(),
                Some("from-flag.json"),
                "{mode}: an empty field counts as unset"
            );
        }
        let app = dynakube(serde_json::json!({ "applicationMonitoring": {} }));
        assert_eq!(with_annotation(app, FLAG, "x").oneagent_seccomp_profile(), None);
    }

    #[test]
    fn the_storage_host_path_of_every_host_mode() {
        for mode in ["classicFullStack", "hostMonitoring", "cloudNativeFullStack"] {
            let dk = dynakube(serde_json::json!({ mode: { "storageHostPath": "/var/opt/dt" } }));
            assert_eq!(dk.oneagent_storage_host_path(), Some("/var/opt/dt"), "{mode}");
            let empty = dynakube(serde_json::json!({ mode: { "storageHostPath": "" } }));
            assert_eq!(empty.oneagent_storage_host_path(), None, "{mode}");
        }
        let app = dynakube(serde_json::json!({ "applicationMonitoring": {} }));
        assert_eq!(app.oneagent_storage_host_path(), None);
    }

    #[test]
    fn derived_names_and_urls() {
        let mut dk =
            dynakube(serde_json::json!({ "classicFullStack": { "version": "1.277.0.20230914-094321" } }));
        assert_eq!(dk.tokens_secret_name(), "dk");
        assert_eq!(dk.pull_secret_name(), "dk-pull-secret");
        assert_eq!(dk.tenant_uuid().as_deref(), Some("abc12345"));
        assert_eq!(
            dk.default_one_agent_image().as_deref(),
            Some("abc12345.live.dynatrace.com/linux/oneagent:1.277.0")
        );
        dk.spec.tokens = Some("my-tokens".into());
        dk.spec.custom_pull_secret = Some("mine".into());
        assert_eq!(dk.tokens_secret_name(), "my-tokens");
        assert_eq!(dk.pull_secret_name(), "mine");
        assert_eq!(
            tenant_uuid_from_api_url("https://managed.example.com/e/1234-abcd/api").as_deref(),
            Some("1234-abcd")
        );
        assert_eq!(names::one_agent_daemonset("dk"), "dk-oneagent");
    }
}
