//! Pieces of the pods the operator runs or changes: environment variables, volumes with their mounts,
//! node affinity, security contexts, probes, labels, tolerations and the DaemonSet around a pod template.
//!
//! The OneAgent DaemonSet ([`crate::oneagent`]) and the legacy `OneAgent` DaemonSet ([`crate::legacy`])
//! are built from these; pod mutation (the init container and volumes added to application pods) and the
//! CSI driver's DaemonSet are meant to use them too, so each rule (which key of the trusted-CAs ConfigMap,
//! how a health check becomes a probe, ...) is written once. Every function is pure and returns the
//! Kubernetes type as it is serialized, so an object built from these pieces is the same byte for byte
//! whichever builder asks for it.

use std::collections::BTreeMap;

use pure_api::dynakube::{PROXY_SECRET_KEY, ProxySource};

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    Affinity, CSIVolumeSource, Capabilities, ConfigMapKeySelector, ConfigMapVolumeSource,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HostPathVolumeSource, KeyToPath, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SecretKeySelector, SecretVolumeSource, SecurityContext, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Label: what the object is.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label: the resource (DynaKube) the object was made for.
pub const LABEL_CREATED_BY: &str = "app.kubernetes.io/created-by";
/// Label: who manages the object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label: the version of what the object runs (the OneAgent version).
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
/// Label: the part the object plays (the OneAgent mode without underscores, `webhook`, ...).
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Value of [`LABEL_MANAGED_BY`] on everything this operator manages.
pub const MANAGED_BY_OPERATOR: &str = "dynatrace-operator";

/// The proxy variable the OneAgents read (`--set-proxy=$(https_proxy)`).
pub const PROXY_ENV: &str = "https_proxy";

/// The key of the trusted-CAs ConfigMap (`spec.trustedCAs`) with the PEM certificates.
pub const TRUSTED_CAS_KEY: &str = "certs";
/// The file the trusted CAs appear as in their volume.
pub const TRUSTED_CAS_FILE: &str = "certs.pem";

/// DNS policy of a pod on the host's network: with `hostNetwork` the API default `ClusterFirst` silently
/// falls back to the node's resolver, so cluster names would not resolve.
pub const HOST_NETWORK_DNS_POLICY: &str = "ClusterFirstWithHostNet";

// Health-check defaults for fields an image leaves at zero, and the cap on the readiness delay.
const DEFAULT_INTERVAL_SECONDS: i32 = 10;
const DEFAULT_START_PERIOD_SECONDS: i32 = 1200;
const DEFAULT_TIMEOUT_SECONDS: i32 = 30;
const DEFAULT_RETRIES: i32 = 3;
const MAX_READINESS_DELAY_SECONDS: i32 = 90;

// ---- environment ----

/// A variable with a literal value.
pub fn literal_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

/// A variable read from `source`.
pub fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(source),
    }
}

/// A variable with a field of the pod (`spec.nodeName`, `metadata.uid`, ...).
pub fn field_env(name: &str, field_path: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                api_version: None,
            }),
            ..Default::default()
        },
    )
}

/// A variable with the value of `key` in the Secret `secret` (in the pod's namespace).
pub fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: None,
            }),
            ..Default::default()
        },
    )
}

/// A variable with the value of `key` in the ConfigMap `config_map` (in the pod's namespace).
pub fn config_map_env(name: &str, config_map: &str, key: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: config_map.to_owned(),
                key: key.to_owned(),
                optional: None,
            }),
            ..Default::default()
        },
    )
}

/// The [`PROXY_ENV`] variable for `proxy`.
pub fn proxy_env(proxy: ProxySource<'_>) -> EnvVar {
    match proxy {
        ProxySource::Value(value) => literal_env(PROXY_ENV, value),
        ProxySource::Secret(secret) => secret_env(PROXY_ENV, secret, PROXY_SECRET_KEY),
    }
}

/// Adds `var` unless the list has a variable of that name already (the user's value wins); whether it
/// was added.
pub fn add_env_if_absent(env: &mut Option<Vec<EnvVar>>, var: EnvVar) -> bool {
    // No list is created unless something goes into it: `None` and `[]` serialize differently.
    if env.iter().flatten().any(|v| v.name == var.name) {
        return false;
    }
    env.get_or_insert_with(Vec::new).push(var);
    true
}

/// Sets `var`: replaces the first variable of that name in place (so the order stays), or appends it.
pub fn set_env(env: &mut Option<Vec<EnvVar>>, var: EnvVar) {
    let list = env.get_or_insert_with(Vec::new);
    match list.iter_mut().find(|v| v.name == var.name) {
        Some(existing) => *existing = var,
        None => list.push(var),
    }
}

/// The literal value of the first variable `name`, if it has one.
pub fn env_value<'a>(env: Option<&'a [EnvVar]>, name: &str) -> Option<&'a str> {
    env?.iter().find(|v| v.name == name)?.value.as_deref()
}

// ---- volumes and mounts ----

/// A mount of volume `name` at `path`; `readOnly` is left out unless true.
pub fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// A mount of one file (`sub_path`) of volume `name` at `path`.
pub fn sub_path_mount(name: &str, path: &str, sub_path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        sub_path: Some(sub_path.to_owned()),
        ..mount(name, path, read_only)
    }
}

/// Adds `mount` unless something is mounted at its path already (two mounts at one path make the pod
/// invalid); whether it was added.
pub fn add_mount_if_absent(mounts: &mut Option<Vec<VolumeMount>>, mount: VolumeMount) -> bool {
    if mounts.iter().flatten().any(|m| m.mount_path == mount.mount_path) {
        return false;
    }
    mounts.get_or_insert_with(Vec::new).push(mount);
    true
}

/// Adds `volume` unless the pod has a volume of that name already; whether it was added.
pub fn add_volume_if_absent(volumes: &mut Option<Vec<Volume>>, volume: Volume) -> bool {
    if volumes.iter().flatten().any(|v| v.name == volume.name) {
        return false;
    }
    volumes.get_or_insert_with(Vec::new).push(volume);
    true
}

/// Volume `name` with the node's directory `path` (no type check).
pub fn host_path_volume(name: &str, path: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_owned(),
            type_: None,
        }),
        ..Default::default()
    }
}

/// A hostPath volume whose path the kubelet checks (or creates) as `type_`, for example
/// `DirectoryOrCreate`.
pub fn host_path_volume_of_type(name: &str, path: &str, type_: &str) -> Volume {
    let mut volume = host_path_volume(name, path);
    if let Some(source) = volume.host_path.as_mut() {
        source.type_ = Some(type_.to_owned());
    }
    volume
}

/// Volume `name` with every key of the Secret `secret`.
pub fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An empty directory `name` that lives as long as the pod.
pub fn empty_dir_volume(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

/// Volume `name` served by the CSI driver `driver` with `attributes`.
pub fn csi_volume(name: &str, driver: &str, attributes: &[(&str, &str)]) -> Volume {
    Volume {
        name: name.to_owned(),
        csi: Some(CSIVolumeSource {
            driver: driver.to_owned(),
            volume_attributes: Some(
                attributes
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Volume `name` with the trusted-CAs ConfigMap `config_map`: its key [`TRUSTED_CAS_KEY`] as
/// [`TRUSTED_CAS_FILE`].
pub fn trusted_cas_volume(name: &str, config_map: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            items: Some(vec![KeyToPath {
                key: TRUSTED_CAS_KEY.to_owned(),
                path: TRUSTED_CAS_FILE.to_owned(),
                mode: None,
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The volumes of a pod and the mounts of its container, added in pairs so that neither is forgotten and
/// both lists keep the same order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Volumes {
    /// For `spec.volumes`.
    pub volumes: Vec<Volume>,
    /// For the container's `volumeMounts`.
    pub mounts: Vec<VolumeMount>,
}

impl Volumes {
    /// Adds `volume` mounted whole at `path`.
    pub fn add(&mut self, volume: Volume, path: &str, read_only: bool) -> &mut Self {
        let mount = mount(&volume.name, path, read_only);
        self.add_with(volume, mount)
    }

    /// Adds `volume` with a mount of its own making (a `subPath`, a propagation, ...), which must name it.
    pub fn add_with(&mut self, volume: Volume, mount: VolumeMount) -> &mut Self {
        debug_assert_eq!(volume.name, mount.name, "a mount names its volume");
        self.volumes.push(volume);
        self.mounts.push(mount);
        self
    }
}

// ---- scheduling ----

/// A required node affinity for Linux nodes of `architectures`: one term per label prefix (the terms are
/// ORed, the arch and os expressions of a term ANDed). `["kubernetes.io"]` for today's clusters; add
/// `"beta.kubernetes.io"` for clusters before Kubernetes 1.14, which only have the beta labels.
pub fn linux_node_affinity(label_prefixes: &[&str], architectures: &[&str]) -> Affinity {
    let requirement = |key: String, values: &[&str]| NodeSelectorRequirement {
        key,
        operator: "In".to_owned(),
        values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
    };
    let term = |prefix: &str| NodeSelectorTerm {
        match_expressions: Some(vec![
            requirement(format!("{prefix}/arch"), architectures),
            requirement(format!("{prefix}/os"), &["linux"]),
        ]),
        match_fields: None,
    };
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: label_prefixes.iter().map(|prefix| term(prefix)).collect(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The user's tolerations followed by the operator's that the user does not already have; `None` when
/// there are none, so that an empty list is not written.
pub fn tolerations(user: Option<&[Toleration]>, operator: &[Toleration]) -> Option<Vec<Toleration>> {
    let mut merged: Vec<Toleration> = user.unwrap_or_default().to_vec();
    for toleration in operator {
        if !merged.contains(toleration) {
            merged.push(toleration.clone());
        }
    }
    (!merged.is_empty()).then_some(merged)
}

/// The user's DNS policy for a pod on the host's network, else [`HOST_NETWORK_DNS_POLICY`].
pub fn host_network_dns_policy(user: Option<&str>) -> String {
    user.filter(|p| !p.is_empty())
        .unwrap_or(HOST_NETWORK_DNS_POLICY)
        .to_owned()
}

// ---- security ----

/// A privileged container.
pub fn privileged() -> SecurityContext {
    SecurityContext {
        privileged: Some(true),
        ..Default::default()
    }
}

/// A container that drops every capability but `capabilities`.
pub fn only_capabilities(capabilities: &[&str]) -> SecurityContext {
    SecurityContext {
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: Some(capabilities.iter().map(|c| (*c).to_owned()).collect()),
        }),
        ..Default::default()
    }
}

// ---- resources ----

/// `resources` with the CPU request `default` when none is given, or the CPU limit instead when that is
/// below `default` (a request above the limit would make the pod invalid).
pub fn with_default_cpu_request(mut resources: ResourceRequirements, default: &str) -> ResourceRequirements {
    let default_millis = cpu_millis(default);
    let limit = resources
        .limits
        .as_ref()
        .and_then(|l| l.get("cpu"))
        .filter(|l| cpu_millis(&l.0).zip(default_millis).is_some_and(|(l, d)| l < d))
        .cloned();
    resources
        .requests
        .get_or_insert_with(Default::default)
        .entry("cpu".to_owned())
        .or_insert_with(|| limit.unwrap_or_else(|| Quantity(default.to_owned())));
    resources
}

/// A CPU quantity in millicores, for the plain (`0.05`, `1`) and milli (`50m`) forms; other forms are
/// not needed to compare a limit with a default request.
fn cpu_millis(quantity: &str) -> Option<f64> {
    let text = quantity.trim();
    match text.strip_suffix('m') {
        Some(millis) => millis.parse::<f64>().ok(),
        None => text.parse::<f64>().ok().map(|cores| cores * 1000.0),
    }
    .filter(|m| m.is_finite())
}

// ---- probes ----

/// A container image's `HEALTHCHECK`, with durations in seconds. Zero or absent fields take the defaults
/// (interval 10 s, start period 1200 s, timeout 30 s, 3 retries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthCheck {
    /// The test as in the image config: `["CMD-SHELL", "<script>"]`, `["CMD", "<exe>", "<arg>", ...]`
    /// or `["NONE"]`.
    pub test: Vec<String>,
    /// Time between checks.
    pub interval_seconds: Option<i32>,
    /// Time the container gets to start before failures count.
    pub start_period_seconds: Option<i32>,
    /// Time one check may take.
    pub timeout_seconds: Option<i32>,
    /// Consecutive failures that make the container unhealthy.
    pub retries: Option<i32>,
}

impl HealthCheck {
    /// As a status records it: the image config's shape (`Test`, and the durations in nanoseconds when
    /// set).
    pub fn to_status(&self) -> serde_json::Value {
        let mut value = serde_json::json!({ "Test": self.test });
        let nanos = |seconds: i32| i64::from(seconds) * 1_000_000_000;
        for (key, seconds) in [
            ("Interval", self.interval_seconds),
            ("Timeout", self.timeout_seconds),
            ("StartPeriod", self.start_period_seconds),
        ] {
            if let Some(seconds) = seconds {
                value[key] = nanos(seconds).into();
            }
        }
        if let Some(retries) = self.retries {
            value["Retries"] = retries.into();
        }
        value
    }
}

/// The command that runs `script` in `/bin/sh`.
pub fn shell_command(script: &str) -> Vec<String> {
    vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]
}

/// A probe that runs `command` in the container; the caller sets the timings.
pub fn exec_probe(command: Vec<String>) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command),
        }),
        ..Default::default()
    }
}

/// Which probe [`health_check_probe`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Restarts the container when the check fails; waits the whole start period.
    Liveness,
    /// Takes the pod out of service when the check fails; waits at most 90 s before its first check.
    Readiness,
}

/// A probe from an image's health check: `CMD-SHELL x` runs `/bin/sh -c x`, `CMD a b` runs `a b`. None
/// for `NONE` or an empty test.
pub fn health_check_probe(health: &HealthCheck, kind: ProbeKind) -> Option<Probe> {
    let command = match health.test.split_first() {
        Some((test, script)) if test == "CMD-SHELL" && !script.is_empty() => shell_command(&script.join(" ")),
        Some((test, command)) if test == "CMD" && !command.is_empty() => command.to_vec(),
        _ => return None,
    };
    let or_default = |value: Option<i32>, default: i32| value.filter(|v| *v > 0).unwrap_or(default);
    let start_period = or_default(health.start_period_seconds, DEFAULT_START_PERIOD_SECONDS);
    Some(Probe {
        initial_delay_seconds: Some(match kind {
            ProbeKind::Liveness => start_period,
            ProbeKind::Readiness => start_period.min(MAX_READINESS_DELAY_SECONDS),
        }),
        period_seconds: Some(or_default(health.interval_seconds, DEFAULT_INTERVAL_SECONDS)),
        timeout_seconds: Some(or_default(health.timeout_seconds, DEFAULT_TIMEOUT_SECONDS)),
        failure_threshold: Some(or_default(health.retries, DEFAULT_RETRIES)),
        success_threshold: Some(1),
        ..exec_probe(command)
    })
}

// ---- labels and the DaemonSet ----

/// The selector labels of an operator-managed workload: [`LABEL_NAME`] `name`, [`LABEL_CREATED_BY`]
/// `created_by` and [`LABEL_MANAGED_BY`] [`MANAGED_BY_OPERATOR`].
pub fn app_selector_labels(name: &str, created_by: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), name.to_owned()),
        (LABEL_CREATED_BY.to_owned(), created_by.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY_OPERATOR.to_owned()),
    ])
}

/// The user's labels with the selector labels over them: a user label must not take the pods out of the
/// selector.
pub fn labels_over(
    user: Option<&BTreeMap<String, String>>,
    selector: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = user.cloned().unwrap_or_default();
    labels.extend(selector.clone());
    labels
}

/// A DaemonSet that selects its pods by `selector` and replaces them by rolling update, at most
/// `max_unavailable` at a time. Its template's `labels` must include `selector`.
pub fn rolling_daemonset(
    metadata: ObjectMeta,
    selector: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
    pod: PodSpec,
    max_unavailable: i32,
) -> DaemonSet {
    DaemonSet {
        metadata,
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations,
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(max_unavailable)),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toleration(key: &str) -> Toleration {
        Toleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn volumes_and_mounts_come_in_pairs_in_order() {
        let mut volumes = Volumes::default();
        volumes
            .add(host_path_volume("root", "/"), "/mnt/root", false)
            .add_with(
                secret_volume("token", "dk-secret"),
                sub_path_mount("token", "/etc/token", "token", true),
            )
            .add(empty_dir_volume("share"), "/mnt/share", false);
        let names: Vec<_> = volumes.volumes.iter().map(|v| v.name.as_str()).collect();
        let mounts: Vec<_> = volumes.mounts.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["root", "token", "share"]);
        assert_eq!(mounts, names);
        assert_eq!(volumes.mounts[0].read_only, None, "false is left out");
        assert_eq!(volumes.mounts[1].read_only, Some(true));
        assert_eq!(volumes.mounts[1].sub_path.as_deref(), Some("token"));
    }

    #[test]
    fn env_sources() {
        assert_eq!(
            proxy_env(ProxySource::Secret("proxy-secret"))
                .value_from
                .and_then(|s| s.secret_key_ref)
                .map(|s| (s.name, s.key)),
            Some(("proxy-secret".to_owned(), "proxy".to_owned()))
        );
        assert_eq!(
            proxy_env(ProxySource::Value("http://proxy:3128"))
                .value
                .as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(
            field_env("K8S_PODUID", "metadata.uid")
                .value_from
                .and_then(|s| s.field_ref)
                .map(|f| f.field_path),
            Some("metadata.uid".to_owned())
        );
    }

    #[test]
    fn ensure_helpers_add_once_and_keep_the_users_entries() {
        let mut env = None;
        assert!(add_env_if_absent(&mut env, literal_env("A", "1")));
        assert!(
            !add_env_if_absent(&mut env, literal_env("A", "2")),
            "the user's value wins"
        );
        set_env(&mut env, literal_env("B", "1"));
        set_env(&mut env, literal_env("A", "3"));
        let list = env.clone().unwrap_or_default();
        assert_eq!(
            list.iter()
                .map(|v| (v.name.as_str(), v.value.as_deref()))
                .collect::<Vec<_>>(),
            [("A", Some("3")), ("B", Some("1"))],
            "set_env replaces in place"
        );
        assert_eq!(env_value(env.as_deref(), "B"), Some("1"));
        assert_eq!(env_value(env.as_deref(), "C"), None);

        let mut mounts = None;
        assert!(add_mount_if_absent(&mut mounts, mount("a", "/x", false)));
        assert!(
            !add_mount_if_absent(&mut mounts, mount("b", "/x", true)),
            "one mount per path"
        );
        let mut volumes = None;
        assert!(add_volume_if_absent(&mut volumes, empty_dir_volume("a")));
        assert!(!add_volume_if_absent(&mut volumes, secret_volume("a", "s")));
        assert_eq!(volumes.map(|v| v.len()), Some(1));
    }

    #[test]
    fn node_affinity_has_one_term_per_prefix() {
        let affinity = linux_node_affinity(&["beta.kubernetes.io", "kubernetes.io"], &["amd64"]);
        let terms = affinity
            .node_affinity
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .map(|s| s.node_selector_terms)
            .unwrap_or_default();
        let keys: Vec<Vec<String>> = terms
            .iter()
            .map(|t| {
                t.match_expressions
                    .iter()
                    .flatten()
                    .map(|e| e.key.clone())
                    .collect()
            })
            .collect();
        assert_eq!(
            keys,
            [
                ["beta.kubernetes.io/arch", "beta.kubernetes.io/os"],
                ["kubernetes.io/arch", "kubernetes.io/os"]
            ]
        );
    }

    #[test]
    fn tolerations_merge_without_repeats() {
        assert_eq!(tolerations(None, &[]), None);
        assert_eq!(tolerations(Some(&[]), &[]), None);
        let user = [toleration("a"), toleration("b")];
        assert_eq!(
            tolerations(Some(&user), &[toleration("b"), toleration("c")]),
            Some(vec![toleration("a"), toleration("b"), toleration("c")])
        );
    }

    #[test]
    fn default_cpu_request_stays_below_the_limit() {
        let with_limit = |limit: &str| ResourceRequirements {
            limits: Some(BTreeMap::from([("cpu".to_owned(), Quantity(limit.to_owned()))])),
            ..Default::default()
        };
        let request = |r: ResourceRequirements| r.requests.unwrap_or_default()["cpu"].0.clone();
        assert_eq!(
            request(with_default_cpu_request(Default::default(), "100m")),
            "100m"
        );
        assert_eq!(
            request(with_default_cpu_request(with_limit("50m"), "100m")),
            "50m"
        );
        assert_eq!(
            request(with_default_cpu_request(with_limit("0.05"), "100m")),
            "0.05"
        );
        assert_eq!(request(with_default_cpu_request(with_limit("2"), "100m")), "100m");
    }

    #[test]
    fn health_check_probes() {
        let health = HealthCheck {
            test: vec!["CMD".to_owned(), "/bin/check".to_owned(), "-q".to_owned()],
            ..Default::default()
        };
        let liveness = health_check_probe(&health, ProbeKind::Liveness);
        let readiness = health_check_probe(&health, ProbeKind::Readiness);
        assert_eq!(
            liveness
                .as_ref()
                .and_then(|p| p.exec.clone())
                .and_then(|e| e.command),
            Some(vec!["/bin/check".to_owned(), "-q".to_owned()])
        );
        assert_eq!(liveness.and_then(|p| p.initial_delay_seconds), Some(1200));
        assert_eq!(readiness.and_then(|p| p.initial_delay_seconds), Some(90));
        let none = HealthCheck {
            test: vec!["NONE".to_owned()],
            ..Default::default()
        };
        assert_eq!(health_check_probe(&none, ProbeKind::Liveness), None);
    }
}
