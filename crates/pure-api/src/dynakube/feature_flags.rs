//! Feature flags: DynaKube annotations with the prefix `feature.dynatrace.com/`. The legacy prefix
//! `alpha.operator.dynatrace.com/feature-` is read when the new key is absent.

use std::collections::BTreeMap;

/// Prefix of feature-flag annotations.
pub const PREFIX: &str = "feature.dynatrace.com/";
/// Deprecated prefix, still read as a fallback.
pub const LEGACY_PREFIX: &str = "alpha.operator.dynatrace.com/feature-";

/// Suffixes of the flags this operator knows (OneAgent and injection). Used to warn about unknown flags.
pub const KNOWN: &[&str] = &[
    PUBLIC_REGISTRY,
    HOSTS_REQUESTS,
    DISABLE_HOSTS_REQUESTS,
    NO_PROXY,
    API_REQUEST_THRESHOLD,
    READONLY_HOST_FS,
    DISABLE_READONLY_HOST_FS,
    MULTIPLE_OSAGENTS_ON_NODE,
    MAX_UNAVAILABLE,
    IGNORE_PROXY,
    INITIAL_CONNECT_RETRY_MS,
    PRIVILEGED,
    SECCOMP_PROFILE,
    WEBHOOK_REINVOCATION_POLICY,
    DISABLE_WEBHOOK_REINVOCATION_POLICY,
    METADATA_ENRICHMENT,
    DISABLE_METADATA_ENRICHMENT,
    IGNORE_UNKNOWN_STATE,
    IGNORED_NAMESPACES,
    AUTOMATIC_INJECTION,
    LABEL_VERSION_DETECTION,
    INJECTION_FAILURE_POLICY,
    INIT_CONTAINER_SECCOMP_PROFILE,
    MAX_CSI_MOUNT_ATTEMPTS,
    INJECTION_READONLY_VOLUME,
    RESTART_MISSED_INJECTIONS,
    RESTART_MISSED_INJECTIONS_BUDGET,
];

/// Resolve images from the public registry.
pub const PUBLIC_REGISTRY: &str = "public-registry";
/// Allow requests to the hosts API.
pub const HOSTS_REQUESTS: &str = "hosts-requests";
/// Deprecated negative form of [`HOSTS_REQUESTS`].
pub const DISABLE_HOSTS_REQUESTS: &str = "disable-hosts-requests";
/// NO_PROXY list for the operator's client and the init container.
pub const NO_PROXY: &str = "no-proxy";
/// Minimum minutes between calls to the Dynatrace API.
pub const API_REQUEST_THRESHOLD: &str = "dynatrace-api-request-threshold";
/// Read-only host file system for OneAgents.
pub const READONLY_HOST_FS: &str = "oneagent-readonly-host-fs";
/// Deprecated negative form of [`READONLY_HOST_FS`].
pub const DISABLE_READONLY_HOST_FS: &str = "disable-oneagent-readonly-host-fs";
/// Skip the node-selector conflict check between DynaKubes.
pub const MULTIPLE_OSAGENTS_ON_NODE: &str = "multiple-osagents-on-node";
/// maxUnavailable of the OneAgent DaemonSet's rolling update.
pub const MAX_UNAVAILABLE: &str = "oneagent-max-unavailable";
/// Do not give the proxy to OneAgents.
pub const IGNORE_PROXY: &str = "oneagent-ignore-proxy";
/// `initialConnectRetryMs` written by the init container.
pub const INITIAL_CONNECT_RETRY_MS: &str = "oneagent-initial-connect-retry-ms";
/// Run OneAgents privileged.
pub const PRIVILEGED: &str = "oneagent-privileged";
/// Localhost seccomp profile for OneAgents.
pub const SECCOMP_PROFILE: &str = "oneagent-seccomp-profile";
/// Mutate containers added by later webhooks on reinvocation.
pub const WEBHOOK_REINVOCATION_POLICY: &str = "webhook-reinvocation-policy";
/// Deprecated negative form of [`WEBHOOK_REINVOCATION_POLICY`].
pub const DISABLE_WEBHOOK_REINVOCATION_POLICY: &str = "disable-webhook-reinvocation-policy";
/// Metadata enrichment of injected pods.
pub const METADATA_ENRICHMENT: &str = "metadata-enrichment";
/// Deprecated negative form of [`METADATA_ENRICHMENT`].
pub const DISABLE_METADATA_ENRICHMENT: &str = "disable-metadata-enrichment";
/// Inject even if the node's tenant is unknown.
pub const IGNORE_UNKNOWN_STATE: &str = "ignore-unknown-state";
/// JSON array of namespace regexes never injected.
pub const IGNORED_NAMESPACES: &str = "ignored-namespaces";
/// Inject every pod of a selected namespace (else only pods that opt in).
pub const AUTOMATIC_INJECTION: &str = "automatic-injection";
/// Add `DT_RELEASE_*` variables from pod labels.
pub const LABEL_VERSION_DETECTION: &str = "label-version-detection";
/// `silent` or `fail`: what the init container does on errors.
pub const INJECTION_FAILURE_POLICY: &str = "injection-failure-policy";
/// RuntimeDefault seccomp profile on the init container.
pub const INIT_CONTAINER_SECCOMP_PROFILE: &str = "init-container-seccomp-profile";
/// Failed CSI mounts before an empty volume is mounted instead.
pub const MAX_CSI_MOUNT_ATTEMPTS: &str = "max-csi-mount-attempts";
/// Mount the CSI volume read-only.
pub const INJECTION_READONLY_VOLUME: &str = "injection-readonly-volume";

/// `"true"`: the operator restarts the workloads (Deployments, StatefulSets, DaemonSets) of running pods
/// the webhook did not inject.
pub const RESTART_MISSED_INJECTIONS: &str = "restart-missed-injections";
/// At most this many workloads restarted per check interval for missed injections.
pub const RESTART_MISSED_INJECTIONS_BUDGET: &str = "restart-missed-injections-budget";

/// Default for [`RESTART_MISSED_INJECTIONS_BUDGET`].
pub const DEFAULT_RESTART_MISSED_INJECTIONS_BUDGET: u32 = 5;
/// Default for [`API_REQUEST_THRESHOLD`], in minutes.
pub const DEFAULT_API_REQUEST_THRESHOLD_MINUTES: u32 = 15;
/// Default for [`MAX_CSI_MOUNT_ATTEMPTS`].
pub const DEFAULT_MAX_CSI_MOUNT_ATTEMPTS: u32 = 10;

/// Read access to the feature flags of one DynaKube.
#[derive(Debug, Clone, Copy)]
pub struct FeatureFlags<'a> {
    annotations: Option<&'a BTreeMap<String, String>>,
}

impl<'a> FeatureFlags<'a> {
    /// Flags from a DynaKube's annotations.
    pub fn new(annotations: Option<&'a BTreeMap<String, String>>) -> Self {
        Self { annotations }
    }

    /// The raw value of a flag: the new key first, then the legacy one.
    pub fn raw(&self, suffix: &str) -> Option<&'a str> {
        let annotations = self.annotations?;
        annotations
            .get(&format!("{PREFIX}{suffix}"))
            .or_else(|| annotations.get(&format!("{LEGACY_PREFIX}{suffix}")))
            .map(String::as_str)
    }

    fn is_true(&self, suffix: &str) -> bool {
        self.raw(suffix) == Some("true")
    }

    /// A flag that is on unless turned off: off when the flag is `"false"`, or when the deprecated
    /// `disable-*` flag is `"true"` and the flag itself is not set.
    fn enabled_unless_disabled(&self, suffix: &str, disable_suffix: &str) -> bool {
        match self.raw(suffix) {
            Some(value) => value != "false",
            None => !self.is_true(disable_suffix),
        }
    }

    /// Resolve images from the public registry.
    pub fn public_registry(&self) -> bool {
        self.is_true(PUBLIC_REGISTRY)
    }

    /// Requests to the hosts API are allowed (default true).
    pub fn hosts_requests(&self) -> bool {
        self.enabled_unless_disabled(HOSTS_REQUESTS, DISABLE_HOSTS_REQUESTS)
    }

    /// NO_PROXY list (default empty).
    pub fn no_proxy(&self) -> &'a str {
        self.raw(NO_PROXY).unwrap_or_default()
    }

    /// Minimum minutes between calls to the Dynatrace API; a negative or unparsable value means 15.
    pub fn api_request_threshold_minutes(&self) -> u32 {
        self.raw(API_REQUEST_THRESHOLD)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(DEFAULT_API_REQUEST_THRESHOLD_MINUTES)
    }

    /// OneAgents run with a read-only host file system (default true).
    pub fn readonly_host_fs(&self) -> bool {
        self.enabled_unless_disabled(READONLY_HOST_FS, DISABLE_READONLY_HOST_FS)
    }

    /// More than one OneAgent may run on a node (skips the node-selector conflict check).
    pub fn multiple_osagents_on_node(&self) -> bool {
        self.is_true(MULTIPLE_OSAGENTS_ON_NODE)
    }

    /// maxUnavailable of the OneAgent DaemonSet (default 1; invalid values mean 1).
    pub fn oneagent_max_unavailable(&self) -> i32 {
        self.raw(MAX_UNAVAILABLE)
            .and_then(|v| v.trim().parse().ok())
            .filter(|v| *v > 0)
            .unwrap_or(1)
    }

    /// OneAgents do not get the proxy.
    pub fn oneagent_ignore_proxy(&self) -> bool {
        self.is_true(IGNORE_PROXY)
    }

    /// `initialConnectRetryMs` for the init container, when set to 0 or more.
    pub fn initial_connect_retry_ms(&self) -> Option<u64> {
        self.raw(INITIAL_CONNECT_RETRY_MS)
            .and_then(|v| v.trim().parse().ok())
    }

    /// OneAgents run privileged.
    pub fn oneagent_privileged(&self) -> bool {
        self.is_true(PRIVILEGED)
    }

    /// Localhost seccomp profile of OneAgents, when set.
    pub fn oneagent_seccomp_profile(&self) -> Option<&'a str> {
        self.raw(SECCOMP_PROFILE).filter(|v| !v.is_empty())
    }

    /// Reinvoked admissions mutate newly added containers (default true).
    pub fn webhook_reinvocation_policy(&self) -> bool {
        self.enabled_unless_disabled(WEBHOOK_REINVOCATION_POLICY, DISABLE_WEBHOOK_REINVOCATION_POLICY)
    }

    /// Metadata enrichment of injected pods (default true).
    pub fn metadata_enrichment(&self) -> bool {
        self.enabled_unless_disabled(METADATA_ENRICHMENT, DISABLE_METADATA_ENRICHMENT)
    }

    /// Inject even if the node's tenant is unknown.
    pub fn ignore_unknown_state(&self) -> bool {
        self.is_true(IGNORE_UNKNOWN_STATE)
    }

    /// Namespace regexes never injected, when the flag holds a valid JSON array of strings.
    pub fn ignored_namespaces(&self) -> Option<Vec<String>> {
        self.raw(IGNORED_NAMESPACES)
            .and_then(|v| serde_json::from_str(v).ok())
    }

    /// Every pod of a selected namespace is injected (default true).
    pub fn automatic_injection(&self) -> bool {
        self.raw(AUTOMATIC_INJECTION) != Some("false")
    }

    /// `DT_RELEASE_*` variables from pod labels.
    pub fn label_version_detection(&self) -> bool {
        self.is_true(LABEL_VERSION_DETECTION)
    }

    /// The init container fails the pod on errors (`fail`) instead of starting it without monitoring.
    pub fn injection_fails_pod(&self) -> bool {
        self.raw(INJECTION_FAILURE_POLICY) == Some("fail")
    }

    /// RuntimeDefault seccomp profile on the init container.
    pub fn init_container_seccomp_profile(&self) -> bool {
        self.is_true(INIT_CONTAINER_SECCOMP_PROFILE)
    }

    /// Failed CSI mounts before an empty volume is mounted (default 10; negative or invalid means 10).
    pub fn max_csi_mount_attempts(&self) -> u32 {
        self.raw(MAX_CSI_MOUNT_ATTEMPTS)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(DEFAULT_MAX_CSI_MOUNT_ATTEMPTS)
    }

    /// The CSI volume is mounted read-only.
    pub fn injection_readonly_volume(&self) -> bool {
        self.is_true(INJECTION_READONLY_VOLUME)
    }

    /// The operator restarts the workloads of pods the webhook missed.
    pub fn restart_missed_injections(&self) -> bool {
        self.is_true(RESTART_MISSED_INJECTIONS)
    }

    /// Workloads restarted for missed injections per check interval (default 5; `0` restarts none; an
    /// invalid value means the default).
    pub fn restart_missed_injections_budget(&self) -> u32 {
        self.raw(RESTART_MISSED_INJECTIONS_BUDGET)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(DEFAULT_RESTART_MISSED_INJECTIONS_BUDGET)
    }

    /// Annotations that use the deprecated prefix, as (annotation, replacement) pairs.
    pub fn legacy_prefixed(&self) -> Vec<(&'a str, String)> {
        self.annotations
            .into_iter()
            .flatten()
            .filter_map(|(key, _)| {
                let suffix = key.strip_prefix(LEGACY_PREFIX)?;
                Some((key.as_str(), format!("{PREFIX}{suffix}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_without_annotations() {
        let f = FeatureFlags::new(None);
        assert!(f.hosts_requests() && f.readonly_host_fs() && f.automatic_injection());
        assert!(f.metadata_enrichment() && f.webhook_reinvocation_policy());
        assert!(!f.public_registry() && !f.multiple_osagents_on_node() && !f.oneagent_privileged());
        assert_eq!(f.api_request_threshold_minutes(), 15);
        assert_eq!(f.oneagent_max_unavailable(), 1);
        assert_eq!(f.max_csi_mount_attempts(), 10);
        assert_eq!(f.initial_connect_retry_ms(), None);
        assert!(!f.restart_missed_injections());
        assert_eq!(f.restart_missed_injections_budget(), 5);
        assert_eq!(f.no_proxy(), "");
    }

    #[test]
    fn new_prefix_wins_over_legacy() {
        let a = flags(&[
            ("feature.dynatrace.com/oneagent-max-unavailable", "3"),
            (
                "alpha.operator.dynatrace.com/feature-oneagent-max-unavailable",
                "5",
            ),
            ("alpha.operator.dynatrace.com/feature-public-registry", "true"),
        ]);
        let f = FeatureFlags::new(Some(&a));
        assert_eq!(f.oneagent_max_unavailable(), 3);
        assert!(f.public_registry(), "legacy prefix is a fallback");
        assert_eq!(
            f.legacy_prefixed(),
            vec![
                (
                    "alpha.operator.dynatrace.com/feature-oneagent-max-unavailable",
                    "feature.dynatrace.com/oneagent-max-unavailable".to_owned()
                ),
                (
                    "alpha.operator.dynatrace.com/feature-public-registry",
                    "feature.dynatrace.com/public-registry".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn disable_style_pairs() {
        let off_new = flags(&[("feature.dynatrace.com/oneagent-readonly-host-fs", "false")]);
        assert!(!FeatureFlags::new(Some(&off_new)).readonly_host_fs());
        let off_old = flags(&[("feature.dynatrace.com/disable-oneagent-readonly-host-fs", "true")]);
        assert!(!FeatureFlags::new(Some(&off_old)).readonly_host_fs());
        let new_wins = flags(&[
            ("feature.dynatrace.com/oneagent-readonly-host-fs", "true"),
            ("feature.dynatrace.com/disable-oneagent-readonly-host-fs", "true"),
        ]);
        assert!(FeatureFlags::new(Some(&new_wins)).readonly_host_fs());
    }

    #[test]
    fn invalid_numbers_fall_back_to_defaults() {
        let a = flags(&[
            ("feature.dynatrace.com/dynatrace-api-request-threshold", "-4"),
            ("feature.dynatrace.com/max-csi-mount-attempts", "many"),
            ("feature.dynatrace.com/oneagent-max-unavailable", "0"),
            ("feature.dynatrace.com/ignored-namespaces", "not json"),
        ]);
        let f = FeatureFlags::new(Some(&a));
        assert_eq!(f.api_request_threshold_minutes(), 15);
        assert_eq!(f.max_csi_mount_attempts(), 10);
        assert_eq!(f.oneagent_max_unavailable(), 1);
        assert_eq!(f.ignored_namespaces(), None);
    }

    #[test]
    fn restart_of_missed_injections_is_opt_in_with_a_budget() {
        let on = flags(&[
            ("feature.dynatrace.com/restart-missed-injections", "true"),
            ("feature.dynatrace.com/restart-missed-injections-budget", "2"),
        ]);
        let f = FeatureFlags::new(Some(&on));
        assert!(f.restart_missed_injections());
        assert_eq!(f.restart_missed_injections_budget(), 2);
        let odd = flags(&[
            ("feature.dynatrace.com/restart-missed-injections", "yes"),
            ("feature.dynatrace.com/restart-missed-injections-budget", "-1"),
        ]);
        let f = FeatureFlags::new(Some(&odd));
        assert!(!f.restart_missed_injections());
        assert_eq!(f.restart_missed_injections_budget(), 5);
    }
}
