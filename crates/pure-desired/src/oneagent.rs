//! The OneAgent DaemonSet of classicFullStack, hostMonitoring and cloudNativeFullStack (spec §7.2).
//!
//! One pod per selected node runs the OneAgent with the host's network, process namespace and root file
//! system. classicFullStack gets a writable host root; hostMonitoring and cloudNativeFullStack run
//! read-only by default, as an unprivileged user, with their state on a CSI volume.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, LocalObjectReference, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Volume,
};
use pure_api::dynakube::{DynaKube, HostInjectSpec, Mode, ProxySource};

use crate::hash::with_template_hash;
use crate::owner::owned_metadata;
use crate::pod::{
    self, HealthCheck, LABEL_COMPONENT, LABEL_VERSION, PROXY_ENV, ProbeKind, Volumes, config_map_env,
    field_env, literal_env,
};
use crate::{DesiredError, MISSING_CLUSTER_ID};

/// Name of the OneAgent container.
pub const CONTAINER_NAME: &str = "dynatrace-oneagent";
/// Service account of the OneAgent pods (installed by the Helm chart).
pub const SERVICE_ACCOUNT: &str = "dynatrace-dynakube-oneagent";
/// The CSI driver that provides the read-only OneAgent's storage.
pub const CSI_DRIVER: &str = "csi.oneagent.dynatrace.com";

/// Pod annotation that turns code-module injection off (never into the OneAgent itself).
pub const INJECT_ANNOTATION: &str = pure_api::annotations::INJECT;
/// Pod annotation that runs the OneAgent container without an AppArmor profile.
pub const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/dynatrace-oneagent";

const TERMINATION_GRACE_SECONDS: i64 = 80;
/// CPU request of a OneAgent container whose resources name none (or the CPU limit, when lower).
pub(crate) const DEFAULT_CPU_REQUEST: &str = "100m";
const READONLY_USER: i64 = 1000;

/// Capabilities of the unprivileged OneAgent (everything else is dropped).
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "NET_ADMIN",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETUID",
    "SYS_ADMIN",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_RESOURCE",
];

const TENANT_TOKEN_VOLUME: &str = "connection-info-secret";
const TENANT_TOKEN_KEY: &str = "tenant-token";
const TENANT_TOKEN_PATH: &str = "/var/lib/dynatrace/secrets/tokens/tenant-token";
const HOST_ROOT_VOLUME: &str = "host-root";
pub(crate) const HOST_ROOT_PATH: &str = "/mnt/root";
const STORAGE_VOLUME: &str = "osagent-storage";
const STORAGE_PATH: &str = "/mnt/volume_storage_mount";
const CERTS_VOLUME: &str = "certificates";
pub(crate) const CERTS_PATH: &str = "/mnt/dynatrace/certs";

const READONLY_MODE_ENV: &str = "ONEAGENT_READ_ONLY_MODE";
const DISABLE_CONTAINER_INJECTION_ENV: &str = "ONEAGENT_DISABLE_CONTAINER_INJECTION";

/// Architectures OneAgent images exist for (node affinity).
const ARCHITECTURES: &[&str] = &["amd64", "arm64", "ppc64le"];

/// What the OneAgent DaemonSet needs beyond the DynaKube's spec: values other reconcilers resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The OneAgent image (`status.oneAgent.imageID`).
    pub image: String,
    /// The OneAgent version (`status.oneAgent.version`); unknown for custom images.
    pub version: Option<String>,
    /// The cluster's id: the UID of the `kube-system` namespace.
    pub cluster_id: String,
    /// This operator's version.
    pub operator_version: String,
    /// The image's `HEALTHCHECK` (`status.oneAgent.healthcheck`); without it the pods get no probes.
    pub healthcheck: Option<HealthCheck>,
}

/// The health check the OneAgent images ship (`HEALTHCHECK CMD-SHELL /usr/bin/watchdog-healthcheck64`, with
/// the default timings). The reference reads it from the image's config in the registry; this operator
/// has no registry client yet, so every OneAgent image gets this one, which is what Dynatrace's images
/// declare. A custom image must provide the same script.
pub const ONEAGENT_HEALTHCHECK_SCRIPT: &str = "/usr/bin/watchdog-healthcheck64";

impl HealthCheck {
    /// The OneAgent images' health check ([`ONEAGENT_HEALTHCHECK_SCRIPT`]).
    pub fn oneagent_default() -> Self {
        Self {
            test: vec!["CMD-SHELL".to_owned(), ONEAGENT_HEALTHCHECK_SCRIPT.to_owned()],
            ..Self::default()
        }
    }
}

/// The OneAgent DaemonSet `<dk>-oneagent` for a DynaKube in classicFullStack, hostMonitoring or
/// cloudNativeFullStack mode, owned by the DynaKube, with its template hash set. Any other mode gives
/// [`DesiredError::NoOneAgent`]; a missing name, namespace, image or cluster id gives
/// [`DesiredError::Missing`]; a DynaKube without UID [`DesiredError::NoOwnerUid`].
pub fn daemonset(dynakube: &DynaKube, facts: &Facts) -> Result<DaemonSet, DesiredError> {
    let name = dynakube
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(DesiredError::Missing {
            dynakube: String::new(),
            field: "metadata.name",
            hint: "pass the DynaKube as read from the API server, which always sets it",
        })?;
    let missing = |field, hint| DesiredError::Missing {
        dynakube: name.clone(),
        field,
        hint,
    };
    if dynakube.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        return Err(missing(
            "metadata.namespace",
            "pass the DynaKube as read from the API server, which always sets it",
        ));
    }
    let (mode, host) = host_mode(dynakube, &name)?;
    if facts.image.is_empty() {
        return Err(missing(
            "status.oneAgent.imageID",
            "resolve the OneAgent image (version reconciler) before building the DaemonSet",
        ));
    }
    if facts.cluster_id.is_empty() {
        return Err(missing(MISSING_CLUSTER_ID.0, MISSING_CLUSTER_ID.1));
    }

    let readonly = dynakube.needs_readonly_one_agents();
    let proxy = oneagent_proxy(dynakube);

    let selector = selector_labels(&name);
    // The operator's labels win: a user label must not change the selector (the DaemonSet would no
    // longer select its pods) nor hide the version that rolls out updates.
    let mut labels = pod::labels_over(host.labels.as_ref(), &selector);
    labels.insert(LABEL_COMPONENT.to_owned(), mode.metadata_name().replace('_', ""));
    if let Some(version) = facts.version.as_deref().and_then(label_value) {
        labels.insert(LABEL_VERSION.to_owned(), version);
    }

    let volumes = volumes(dynakube, &name, readonly);
    let container = Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(facts.image.clone()),
        image_pull_policy: Some("Always".to_owned()),
        args: Some(args(dynakube, mode, host, proxy.is_some())),
        env: Some(env(&name, mode, host, facts, proxy, readonly)),
        resources: Some(resources(host)),
        security_context: Some(security_context(dynakube, readonly)),
        volume_mounts: Some(volumes.mounts),
        liveness_probe: probe(facts, ProbeKind::Liveness),
        readiness_probe: probe(facts, ProbeKind::Readiness),
        ..Default::default()
    };

    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(volumes.volumes),
        host_network: Some(true),
        host_pid: Some(true),
        host_ipc: Some(false),
        service_account_name: Some(SERVICE_ACCOUNT.to_owned()),
        automount_service_account_token: Some(false),
        image_pull_secrets: Some(vec![LocalObjectReference {
            name: dynakube.pull_secret_name(),
        }]),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        dns_policy: Some(pod::host_network_dns_policy(host.dns_policy.as_deref())),
        affinity: Some(pod::linux_node_affinity(&["kubernetes.io"], ARCHITECTURES)),
        node_selector: host.node_selector.clone().filter(|s| !s.is_empty()),
        tolerations: pod::tolerations(host.tolerations.as_deref(), &[]),
        priority_class_name: host.priority_class_name.clone().filter(|p| !p.is_empty()),
        ..Default::default()
    };

    let metadata = owned_metadata(
        dynakube,
        pure_api::dynakube::names::one_agent_daemonset(&name),
        labels.clone(),
    )?;
    let ds = pod::rolling_daemonset(
        metadata,
        selector,
        labels,
        Some(pod_annotations(host)),
        pod,
        dynakube.feature_flags().oneagent_max_unavailable(),
    );
    Ok(with_template_hash(ds))
}

/// The mode and the node OneAgent's settings, or why this DynaKube has no OneAgent DaemonSet.
fn host_mode<'a>(dynakube: &'a DynaKube, name: &str) -> Result<(Mode, &'a HostInjectSpec), DesiredError> {
    let no_one_agent = |reason: String| DesiredError::NoOneAgent {
        dynakube: name.to_owned(),
        reason,
    };
    const WANTED: &str = "classicFullStack, hostMonitoring or cloudNativeFullStack";
    let Some(one_agent) = dynakube.spec.one_agent.as_ref() else {
        return Err(no_one_agent(format!(
            "spec.oneAgent is not set; set {WANTED} to run OneAgents on the nodes"
        )));
    };
    let modes = one_agent.modes();
    match (modes.as_slice(), dynakube.host_spec()) {
        ([mode], Some(host)) => Ok((*mode, host)),
        ([Mode::ApplicationMonitoring], _) => Err(no_one_agent(
            "spec.oneAgent.applicationMonitoring only injects code modules into application pods; use \
             cloudNativeFullStack to run OneAgents on the nodes as well"
                .to_owned(),
        )),
        ([], _) => Err(no_one_agent(format!(
            "spec.oneAgent sets no mode; set {WANTED} to run OneAgents on the nodes"
        ))),
        (several, _) => Err(no_one_agent(format!(
            "spec.oneAgent sets {} modes ({}); set exactly one",
            several.len(),
            several.iter().map(|m| m.field()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The proxy the OneAgents use: none when the DynaKube has none or the `oneagent-ignore-proxy` flag is
/// set; a literal `value` wins over `valueFrom`, as everywhere else in the operator.
fn oneagent_proxy(dynakube: &DynaKube) -> Option<ProxySource<'_>> {
    if dynakube.feature_flags().oneagent_ignore_proxy() {
        return None;
    }
    dynakube.proxy()
}

/// name `oneagent`, created-by the DynaKube and managed-by: the labels the DaemonSet selects its pods by.
fn selector_labels(dynakube: &str) -> BTreeMap<String, String> {
    pod::app_selector_labels("oneagent", dynakube)
}

/// A value as a valid label value (at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both
/// ends), or nothing when no character survives. OneAgent versions are valid as they are.
fn label_value(value: &str) -> Option<String> {
    let replaced: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    let trimmed = replaced.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// User annotations plus the operator's. The user may choose an AppArmor profile, but not injection
/// into the OneAgent pod itself.
fn pod_annotations(host: &HostInjectSpec) -> BTreeMap<String, String> {
    let mut annotations = host.annotations.clone().unwrap_or_default();
    annotations
        .entry(APPARMOR_ANNOTATION.to_owned())
        .or_insert_with(|| "unconfined".to_owned());
    annotations.insert(INJECT_ANNOTATION.to_owned(), "false".to_owned());
    annotations
}

/// The installer arguments, in the order of the reference: proxy, network zone, operator version,
/// tenant, server, user arguments, host-id source.
fn args(dynakube: &DynaKube, mode: Mode, host: &HostInjectSpec, has_proxy: bool) -> Vec<String> {
    let mut args = Vec::new();
    // An empty value clears a proxy the OneAgent may have cached from an earlier configuration.
    args.push(if has_proxy {
        format!("--set-proxy=$({PROXY_ENV})")
    } else {
        "--set-proxy=".to_owned()
    });
    if let Some(zone) = dynakube.spec.network_zone.as_deref().filter(|z| !z.is_empty()) {
        args.push(format!("--set-network-zone={zone}"));
    }
    args.push("--set-host-property=OperatorVersion=$(DT_OPERATOR_VERSION)".to_owned());
    args.push("--set-tenant=$(DT_TENANT)".to_owned());
    args.push("--set-server={$(DT_SERVER)}".to_owned());
    // `spec.oneAgent.hostGroup` (v1beta2 and later) replaces a host group given as an argument.
    let host_group = dynakube
        .spec
        .one_agent
        .as_ref()
        .and_then(|o| o.host_group.as_deref())
        .filter(|g| !g.is_empty());
    args.extend(
        host.args
            .iter()
            .flatten()
            .filter(|a| host_group.is_none() || !a.starts_with("--set-host-group"))
            .cloned(),
    );
    if let Some(group) = host_group {
        args.push(format!("--set-host-group={group}"));
    }
    args.push(match mode {
        Mode::ClassicFullStack => "--set-host-id-source=auto".to_owned(),
        _ => "--set-host-id-source=k8s-node-name".to_owned(),
    });
    args
}

/// The container's environment: the user's variables, the operator's defaults for names the user did not
/// set, and the mode's switches; sorted by name so that the template hash is stable.
fn env(
    dynakube: &str,
    mode: Mode,
    host: &HostInjectSpec,
    facts: &Facts,
    proxy: Option<ProxySource<'_>>,
    readonly: bool,
) -> Vec<EnvVar> {
    use pure_api::dynakube::names;

    let mut env: BTreeMap<String, EnvVar> = host
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.clone()))
        .collect();

    let metadata = names::deployment_metadata_config_map(dynakube);
    let connection_info = names::connection_info_config_map(dynakube);
    let mut defaults = vec![
        field_env("DT_K8S_NODE_NAME", "spec.nodeName"),
        literal_env("DT_K8S_CLUSTER_ID", &facts.cluster_id),
        config_map_env("DT_DEPLOYMENT_METADATA", &metadata, "oneagent"),
        config_map_env("DT_OPERATOR_VERSION", &metadata, "operator"),
        config_map_env("DT_TENANT", &connection_info, "tenant-uuid"),
        config_map_env("DT_SERVER", &connection_info, "communication-endpoints"),
    ];
    defaults.extend(proxy.map(pod::proxy_env));
    for default in defaults {
        env.entry(default.name.clone()).or_insert(default);
    }

    // These must match the pod's mounts and the mode, so they replace a user value (the reference
    // appends them after the user's, and the last duplicate wins in the kubelet).
    if mode != Mode::ClassicFullStack {
        env.insert(
            DISABLE_CONTAINER_INJECTION_ENV.to_owned(),
            literal_env(DISABLE_CONTAINER_INJECTION_ENV, "true"),
        );
        if readonly {
            env.insert(
                READONLY_MODE_ENV.to_owned(),
                literal_env(READONLY_MODE_ENV, "true"),
            );
        }
    }
    env.into_values().collect()
}

/// The user's resources, with a CPU request of 100m when none is given. A CPU limit below 100m is used as
/// the request instead, because a request above the limit would make the DaemonSet invalid.
fn resources(host: &HostInjectSpec) -> ResourceRequirements {
    pod::with_default_cpu_request(
        host.one_agent_resources.clone().unwrap_or_default(),
        DEFAULT_CPU_REQUEST,
    )
}

/// Privileged when the flag says so, else only the capabilities the OneAgent needs (and the seccomp
/// profile of `secCompProfile` or the flag). Read-only OneAgents also run as user and group 1000.
fn security_context(dynakube: &DynaKube, readonly: bool) -> SecurityContext {
    let flags = dynakube.feature_flags();
    let mut context = if flags.oneagent_privileged() {
        pod::privileged()
    } else {
        SecurityContext {
            seccomp_profile: dynakube.oneagent_seccomp_profile().map(|profile| SeccompProfile {
                type_: "Localhost".to_owned(),
                localhost_profile: Some(profile.to_owned()),
            }),
            ..pod::only_capabilities(CAPABILITIES)
        }
    };
    if readonly {
        context.run_as_non_root = Some(true);
        context.run_as_user = Some(READONLY_USER);
        context.run_as_group = Some(READONLY_USER);
    }
    context
}

fn trusted_cas(dynakube: &DynaKube) -> Option<&str> {
    dynakube.spec.trusted_cas.as_deref().filter(|c| !c.is_empty())
}

/// The tenant token, the host's root, the volume storage (`storageHostPath`, else the CSI storage of
/// read-only OneAgents) and the trusted CAs, each with its mount.
fn volumes(dynakube: &DynaKube, name: &str, readonly: bool) -> Volumes {
    let mut volumes = Volumes::default();
    volumes
        .add_with(
            pod::secret_volume(
                TENANT_TOKEN_VOLUME,
                &pure_api::dynakube::names::tenant_secret(name),
            ),
            pod::sub_path_mount(TENANT_TOKEN_VOLUME, TENANT_TOKEN_PATH, TENANT_TOKEN_KEY, true),
        )
        .add(host_root_volume(), HOST_ROOT_PATH, readonly);
    // `storageHostPath` wins over the CSI driver's per-node storage, and gives classicFullStack and
    // writable OneAgents the same directory (they use it with ONEAGENT_ENABLE_VOLUME_STORAGE=true).
    if let Some(path) = dynakube.oneagent_storage_host_path() {
        volumes.add(
            pod::host_path_volume_of_type(STORAGE_VOLUME, path, "DirectoryOrCreate"),
            STORAGE_PATH,
            false,
        );
    } else if readonly {
        volumes.add(
            pod::csi_volume(
                STORAGE_VOLUME,
                CSI_DRIVER,
                &[("mode", "host"), ("dynakube", name)],
            ),
            STORAGE_PATH,
            false,
        );
    }
    if let Some(config_map) = trusted_cas(dynakube) {
        volumes.add(
            pod::trusted_cas_volume(CERTS_VOLUME, config_map),
            CERTS_PATH,
            false,
        );
    }
    volumes
}

/// The node's root file system, `host-root`.
pub(crate) fn host_root_volume() -> Volume {
    pod::host_path_volume(HOST_ROOT_VOLUME, "/")
}

/// A probe from the image's health check; none without one.
fn probe(facts: &Facts, kind: ProbeKind) -> Option<Probe> {
    facts
        .healthcheck
        .as_ref()
        .and_then(|health| pod::health_check_probe(health, kind))
}

#[cfg(test)]
mod tests {
    use crate::test_support::{assert_user_scheduling, container, pod, template};
    use pure_api::dynakube::v1beta1::DynaKubeProxy;
    use serde_json::json;

    use super::*;
    use crate::hash::TEMPLATE_HASH_ANNOTATION;
    use crate::pod::{LABEL_CREATED_BY, LABEL_MANAGED_BY, LABEL_NAME};
    use k8s_openapi::api::core::v1::{
        CSIVolumeSource, Capabilities, ConfigMapKeySelector, ConfigMapVolumeSource, EnvVarSource, ExecAction,
        HostPathVolumeSource, KeyToPath, NodeSelectorRequirement, ObjectFieldSelector, SecretKeySelector,
        SecretVolumeSource, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    const CLASSIC: &str = "classicFullStack";
    const HOST: &str = "hostMonitoring";
    const CLOUD: &str = "cloudNativeFullStack";
    const HOST_MODES: [&str; 3] = [CLASSIC, HOST, CLOUD];

    fn dynakube_with(mode: &str, settings: serde_json::Value) -> DynaKube {
        serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1",
            "kind": "DynaKube",
            "metadata": { "name": "dk", "namespace": "dynatrace", "uid": "dk-uid" },
            "spec": {
                "apiUrl": "https://abc12345.live.dynatrace.com/api",
                "oneAgent": { mode: settings }
            }
        }))
        .unwrap()
    }

    fn dynakube(mode: &str) -> DynaKube {
        dynakube_with(mode, json!({}))
    }

    fn flag(mut dk: DynaKube, suffix: &str, value: &str) -> DynaKube {
        dk.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(format!("feature.dynatrace.com/{suffix}"), value.to_owned());
        dk
    }

    fn facts() -> Facts {
        Facts {
            image: "abc12345.live.dynatrace.com/linux/oneagent:latest".into(),
            version: Some("1.277.0.20230914-094321".into()),
            cluster_id: "9b3e0e5c-kube-system-uid".into(),
            operator_version: "0.1.0".into(),
            healthcheck: None,
        }
    }

    fn build(dk: &DynaKube) -> DaemonSet {
        daemonset(dk, &facts()).unwrap()
    }

    fn args_of(ds: &DaemonSet) -> Vec<&str> {
        container(ds).args.iter().flatten().map(String::as_str).collect()
    }

    /// The env by name; also checks names are unique and sorted.
    fn env_of(ds: &DaemonSet) -> BTreeMap<&str, &EnvVar> {
        let env = container(ds).env.as_ref().unwrap();
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "env names unique and sorted");
        env.iter().map(|e| (e.name.as_str(), e)).collect()
    }

    fn literal<'a>(env: &BTreeMap<&str, &'a EnvVar>, name: &str) -> Option<&'a str> {
        env.get(name).and_then(|e| e.value.as_deref())
    }

    fn volume<'a>(ds: &'a DaemonSet, name: &str) -> Option<&'a Volume> {
        pod(ds).volumes.iter().flatten().find(|v| v.name == name)
    }

    fn mount_of<'a>(ds: &'a DaemonSet, name: &str) -> Option<&'a VolumeMount> {
        container(ds)
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == name)
    }

    fn hash(ds: &DaemonSet) -> &str {
        &ds.metadata.annotations.as_ref().unwrap()[TEMPLATE_HASH_ANNOTATION]
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    /// The rows of the §7.2 table that are the same in every mode.
    #[test]
    fn common_rows_in_every_mode() {
        for mode in HOST_MODES {
            let ds = build(&dynakube(mode));
            assert_eq!(ds.metadata.name.as_deref(), Some("dk-oneagent"), "{mode}");
            assert_eq!(ds.metadata.namespace.as_deref(), Some("dynatrace"));
            assert!(hash(&ds).parse::<u32>().is_ok());

            let labels = ds.metadata.labels.as_ref().unwrap();
            assert_eq!(labels[LABEL_NAME], "oneagent");
            assert_eq!(labels[LABEL_CREATED_BY], "dk");
            assert_eq!(labels[LABEL_MANAGED_BY], "dynatrace-operator");
            assert_eq!(labels[LABEL_VERSION], "1.277.0.20230914-094321");
            assert_eq!(
                template(&ds).metadata.as_ref().unwrap().labels.as_ref(),
                Some(labels)
            );
            let spec = ds.spec.as_ref().unwrap();
            assert_eq!(spec.selector.match_labels.as_ref(), Some(&selector_labels("dk")));
            assert_eq!(selector_labels("dk").len(), 3);

            let annotations = template(&ds)
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap();
            assert_eq!(
                annotations,
                &BTreeMap::from([
                    (APPARMOR_ANNOTATION.to_owned(), "unconfined".to_owned()),
                    (INJECT_ANNOTATION.to_owned(), "false".to_owned()),
                ])
            );

            let strategy = spec.update_strategy.as_ref().unwrap();
            assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
            assert_eq!(
                strategy.rolling_update.as_ref().unwrap().max_unavailable,
                Some(IntOrString::Int(1))
            );

            let c = container(&ds);
            assert_eq!(c.name, "dynatrace-oneagent");
            assert_eq!(
                c.image.as_deref(),
                Some("abc12345.live.dynatrace.com/linux/oneagent:latest")
            );
            assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));

            let p = pod(&ds);
            assert_eq!(
                (p.host_network, p.host_pid, p.host_ipc),
                (Some(true), Some(true), Some(false))
            );
            assert_eq!(
                p.service_account_name.as_deref(),
                Some("dynatrace-dynakube-oneagent")
            );
            assert_eq!(p.automount_service_account_token, Some(false));
            assert_eq!(
                p.image_pull_secrets,
                Some(vec![LocalObjectReference {
                    name: "dk-pull-secret".into()
                }])
            );
            assert_eq!(p.termination_grace_period_seconds, Some(80));
            assert_eq!(p.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
            assert_eq!(
                (&p.node_selector, &p.tolerations, &p.priority_class_name),
                (&None, &None, &None)
            );

            let terms = &p
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
                .unwrap()
                .node_selector_terms;
            assert_eq!(terms.len(), 1, "one term, so the expressions are ANDed");
            assert_eq!(
                terms[0].match_expressions,
                Some(vec![
                    NodeSelectorRequirement {
                        key: "kubernetes.io/arch".into(),
                        operator: "In".into(),
                        values: Some(strings(&["amd64", "arm64", "ppc64le"])),
                    },
                    NodeSelectorRequirement {
                        key: "kubernetes.io/os".into(),
                        operator: "In".into(),
                        values: Some(strings(&["linux"])),
                    },
                ])
            );

            let security = c.security_context.as_ref().unwrap();
            assert_eq!(security.privileged, None);
            assert_eq!(security.seccomp_profile, None);
            assert_eq!(
                security.capabilities,
                Some(Capabilities {
                    drop: Some(strings(&["ALL"])),
                    add: Some(strings(&[
                        "CHOWN",
                        "DAC_OVERRIDE",
                        "DAC_READ_SEARCH",
                        "FOWNER",
                        "FSETID",
                        "KILL",
                        "NET_ADMIN",
                        "NET_RAW",
                        "SETFCAP",
                        "SETGID",
                        "SETUID",
                        "SYS_ADMIN",
                        "SYS_CHROOT",
                        "SYS_PTRACE",
                        "SYS_RESOURCE",
                    ])),
                })
            );

            assert_eq!(
                volume(&ds, "connection-info-secret").unwrap().secret,
                Some(SecretVolumeSource {
                    secret_name: Some("dk-oneagent-tenant-secret".into()),
                    ..Default::default()
                })
            );
            assert_eq!(
                mount_of(&ds, "connection-info-secret"),
                Some(&VolumeMount {
                    name: "connection-info-secret".into(),
                    mount_path: "/var/lib/dynatrace/secrets/tokens/tenant-token".into(),
                    sub_path: Some("tenant-token".into()),
                    read_only: Some(true),
                    ..Default::default()
                })
            );
            assert_eq!(
                volume(&ds, "host-root").unwrap().host_path,
                Some(HostPathVolumeSource {
                    path: "/".into(),
                    type_: None
                })
            );
            assert_eq!(mount_of(&ds, "host-root").unwrap().mount_path, "/mnt/root");
            assert!(volume(&ds, "certificates").is_none());
            assert_eq!((&c.liveness_probe, &c.readiness_probe), (&None, &None));

            let env = env_of(&ds);
            assert_eq!(
                env["DT_K8S_NODE_NAME"].value_from.as_ref().unwrap().field_ref,
                Some(ObjectFieldSelector {
                    field_path: "spec.nodeName".into(),
                    api_version: None
                })
            );
            assert_eq!(
                literal(&env, "DT_K8S_CLUSTER_ID"),
                Some("9b3e0e5c-kube-system-uid")
            );
            for (name, config_map, key) in [
                ("DT_DEPLOYMENT_METADATA", "dk-deployment-metadata", "oneagent"),
                ("DT_OPERATOR_VERSION", "dk-deployment-metadata", "operator"),
                ("DT_TENANT", "dk-oneagent-connection-info", "tenant-uuid"),
                (
                    "DT_SERVER",
                    "dk-oneagent-connection-info",
                    "communication-endpoints",
                ),
            ] {
                assert_eq!(
                    env[name].value_from.as_ref().unwrap().config_map_key_ref,
                    Some(ConfigMapKeySelector {
                        name: config_map.into(),
                        key: key.into(),
                        optional: None
                    }),
                    "{name}"
                );
            }
            assert!(!env.contains_key("https_proxy"));
        }
    }

    /// The rows of the §7.2 table that differ by mode, with the default (read-only) flags.
    #[test]
    fn mode_specific_rows() {
        for (mode, component, host_id_source, readonly) in [
            (CLASSIC, "classicfullstack", "--set-host-id-source=auto", false),
            (HOST, "hostmonitoring", "--set-host-id-source=k8s-node-name", true),
            (
                CLOUD,
                "cloudnativefullstack",
                "--set-host-id-source=k8s-node-name",
                true,
            ),
        ] {
            let ds = build(&dynakube(mode));
            assert_eq!(ds.metadata.labels.as_ref().unwrap()[LABEL_COMPONENT], component);
            assert_eq!(args_of(&ds).last(), Some(&host_id_source), "{mode}");

            let env = env_of(&ds);
            let classic = mode == CLASSIC;
            assert_eq!(
                literal(&env, "ONEAGENT_DISABLE_CONTAINER_INJECTION"),
                (!classic).then_some("true"),
                "{mode}"
            );
            assert_eq!(
                literal(&env, "ONEAGENT_READ_ONLY_MODE"),
                readonly.then_some("true")
            );
            assert_readonly(&ds, readonly);
        }
    }

    fn assert_readonly(ds: &DaemonSet, readonly: bool) {
        let security = container(ds).security_context.as_ref().unwrap();
        let expected = readonly.then_some(1000);
        assert_eq!(security.run_as_non_root, readonly.then_some(true));
        assert_eq!(
            (security.run_as_user, security.run_as_group),
            (expected, expected)
        );
        assert_eq!(
            mount_of(ds, "host-root").unwrap().read_only,
            readonly.then_some(true)
        );
        match volume(ds, "osagent-storage") {
            Some(storage) => {
                assert!(readonly);
                assert_eq!(
                    storage.csi,
                    Some(CSIVolumeSource {
                        driver: "csi.oneagent.dynatrace.com".into(),
                        volume_attributes: Some(BTreeMap::from([
                            ("mode".into(), "host".into()),
                            ("dynakube".into(), "dk".into()),
                        ])),
                        ..Default::default()
                    })
                );
                let mount = mount_of(ds, "osagent-storage").unwrap();
                assert_eq!(mount.mount_path, "/mnt/volume_storage_mount");
                assert_eq!(mount.read_only, None);
            }
            None => {
                assert!(!readonly);
                assert!(mount_of(ds, "osagent-storage").is_none());
            }
        }
    }

    #[test]
    fn readonly_flag_off_gives_writable_oneagents_and_classic_ignores_it() {
        for mode in [HOST, CLOUD] {
            let ds = build(&flag(dynakube(mode), "oneagent-readonly-host-fs", "false"));
            assert_readonly(&ds, false);
            let env = env_of(&ds);
            assert_eq!(
                literal(&env, "ONEAGENT_DISABLE_CONTAINER_INJECTION"),
                Some("true")
            );
            assert!(!env.contains_key("ONEAGENT_READ_ONLY_MODE"));
        }
        let classic = build(&flag(dynakube(CLASSIC), "oneagent-readonly-host-fs", "true"));
        assert_readonly(&classic, false);
    }

    #[test]
    fn privileged_flag_replaces_capabilities_and_seccomp() {
        let dk = flag(
            flag(dynakube(HOST), "oneagent-privileged", "true"),
            "oneagent-seccomp-profile",
            "oneagent.json",
        );
        let ds = build(&dk);
        let security = container(&ds).security_context.as_ref().unwrap();
        assert_eq!(security.privileged, Some(true));
        assert_eq!(
            (&security.capabilities, &security.seccomp_profile),
            (&None, &None)
        );
        // Read-only mode still runs as the unprivileged user.
        assert_eq!(security.run_as_user, Some(1000));

        let classic = build(&flag(dynakube(CLASSIC), "oneagent-privileged", "true"));
        let security = container(&classic).security_context.as_ref().unwrap();
        assert_eq!(
            security,
            &SecurityContext {
                privileged: Some(true),
                ..Default::default()
            }
        );
    }

    #[test]
    fn seccomp_flag_sets_a_localhost_profile() {
        let ds = build(&flag(
            dynakube(CLASSIC),
            "oneagent-seccomp-profile",
            "profiles/oneagent.json",
        ));
        let security = container(&ds).security_context.as_ref().unwrap();
        assert_eq!(
            security.seccomp_profile,
            Some(SeccompProfile {
                type_: "Localhost".into(),
                localhost_profile: Some("profiles/oneagent.json".into()),
            })
        );
        assert!(security.capabilities.is_some());
    }

    #[test]
    fn the_sec_comp_profile_field_wins_over_the_flag() {
        for mode in HOST_MODES {
            let dk = flag(
                dynakube_with(mode, json!({ "secCompProfile": "profiles/field.json" })),
                "oneagent-seccomp-profile",
                "profiles/flag.json",
            );
            let ds = build(&dk);
            let security = container(&ds).security_context.as_ref().unwrap();
            assert_eq!(
                security.seccomp_profile,
                Some(SeccompProfile {
                    type_: "Localhost".into(),
                    localhost_profile: Some("profiles/field.json".into()),
                }),
                "{mode}"
            );
            assert!(security.capabilities.is_some(), "{mode}");
            // Privileged containers get no profile, whichever way it is given.
            let privileged = build(&flag(dk, "oneagent-privileged", "true"));
            let security = container(&privileged).security_context.as_ref().unwrap();
            assert_eq!(security.seccomp_profile, None, "{mode}");
        }
    }

    /// `storageHostPath` replaces the CSI storage of read-only OneAgents, and gives the other host modes
    /// the same volume at the same place.
    #[test]
    fn storage_host_path_becomes_the_volume_storage_in_every_host_mode() {
        let expected = Volume {
            name: "osagent-storage".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/var/opt/dynatrace".into(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Default::default()
        };
        let with_path = |mode| dynakube_with(mode, json!({ "storageHostPath": "/var/opt/dynatrace" }));
        let cases = [
            (CLASSIC, with_path(CLASSIC), false),
            (HOST, with_path(HOST), true),
            (CLOUD, with_path(CLOUD), true),
            (
                "hostMonitoring, read-only flag off",
                flag(with_path(HOST), "oneagent-readonly-host-fs", "false"),
                false,
            ),
        ];
        for (what, dk, readonly) in cases {
            let ds = build(&dk);
            assert_eq!(volume(&ds, "osagent-storage"), Some(&expected), "{what}");
            let mount = mount_of(&ds, "osagent-storage").unwrap();
            assert_eq!(mount.mount_path, "/mnt/volume_storage_mount", "{what}");
            assert_eq!(mount.read_only, None, "{what}");
            assert_eq!(
                mount_of(&ds, "host-root").unwrap().read_only,
                readonly.then_some(true),
                "{what}: the host root stays as the mode has it"
            );
        }
        // An empty field counts as unset: read-only OneAgents keep the CSI volume.
        let ds = build(&dynakube_with(HOST, json!({ "storageHostPath": "" })));
        assert_readonly(&ds, true);
    }

    fn with_proxy(mode: &str, value: Option<&str>, value_from: Option<&str>) -> DynaKube {
        let mut dk = dynakube(mode);
        dk.spec.proxy = Some(DynaKubeProxy {
            value: value.map(str::to_owned),
            value_from: value_from.map(str::to_owned),
        });
        dk
    }

    #[test]
    fn proxy_value_value_from_and_ignore_flag() {
        let literal_proxy = build(&with_proxy(CLASSIC, Some("http://proxy:3128"), None));
        assert_eq!(args_of(&literal_proxy)[0], "--set-proxy=$(https_proxy)");
        assert_eq!(
            literal(&env_of(&literal_proxy), "https_proxy"),
            Some("http://proxy:3128")
        );

        for dk in [
            with_proxy(HOST, None, Some("proxy-secret")),
            with_proxy(HOST, Some(""), Some("proxy-secret")),
        ] {
            let ds = build(&dk);
            assert_eq!(args_of(&ds)[0], "--set-proxy=$(https_proxy)");
            assert_eq!(
                env_of(&ds)["https_proxy"],
                &EnvVar {
                    name: "https_proxy".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "proxy-secret".into(),
                            key: "proxy".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                }
            );
        }

        let both = build(&with_proxy(
            CLOUD,
            Some("http://literal:3128"),
            Some("proxy-secret"),
        ));
        assert_eq!(
            literal(&env_of(&both), "https_proxy"),
            Some("http://literal:3128")
        );

        for dk in [
            flag(
                with_proxy(CLASSIC, Some("http://proxy:3128"), None),
                "oneagent-ignore-proxy",
                "true",
            ),
            flag(
                with_proxy(HOST, None, Some("proxy-secret")),
                "oneagent-ignore-proxy",
                "true",
            ),
            with_proxy(CLASSIC, Some(""), Some("")),
            dynakube(CLOUD),
        ] {
            let ds = build(&dk);
            assert_eq!(args_of(&ds)[0], "--set-proxy=", "clears a cached proxy");
            assert!(!env_of(&ds).contains_key("https_proxy"));
        }
    }

    #[test]
    fn args_in_order_with_network_zone_and_user_args() {
        let mut dk = with_proxy(CLOUD, Some("http://proxy:3128"), None);
        dk.spec.network_zone = Some("zone-a".into());
        dk.spec
            .one_agent
            .as_mut()
            .unwrap()
            .cloud_native_full_stack
            .as_mut()
            .unwrap()
            .host
            .args = Some(strings(&[
            "--set-host-group=prod",
            "--set-monitoring-mode=fullstack",
        ]));
        assert_eq!(
            args_of(&build(&dk)),
            [
                "--set-proxy=$(https_proxy)",
                "--set-network-zone=zone-a",
                "--set-host-property=OperatorVersion=$(DT_OPERATOR_VERSION)",
                "--set-tenant=$(DT_TENANT)",
                "--set-server={$(DT_SERVER)}",
                "--set-host-group=prod",
                "--set-monitoring-mode=fullstack",
                "--set-host-id-source=k8s-node-name",
            ]
        );
        assert_eq!(
            args_of(&build(&dynakube(CLASSIC))),
            [
                "--set-proxy=",
                "--set-host-property=OperatorVersion=$(DT_OPERATOR_VERSION)",
                "--set-tenant=$(DT_TENANT)",
                "--set-server={$(DT_SERVER)}",
                "--set-host-id-source=auto",
            ]
        );
    }

    /// v1beta2 and later: `spec.oneAgent.hostGroup` becomes the installer's argument and replaces one
    /// given in `args`.
    #[test]
    fn the_host_group_field_becomes_the_argument_and_wins() {
        let mut dk = dynakube(CLOUD);
        let one_agent = dk.spec.one_agent.as_mut().unwrap();
        one_agent.host_group = Some("from-field".into());
        one_agent.cloud_native_full_stack.as_mut().unwrap().host.args = Some(strings(&[
            "--set-host-group=from-arg",
            "--set-monitoring-mode=fullstack",
        ]));
        let ds = build(&dk);
        let args = args_of(&ds);
        assert!(args.contains(&"--set-host-group=from-field"), "{args:?}");
        assert!(!args.contains(&"--set-host-group=from-arg"), "{args:?}");
        assert!(args.contains(&"--set-monitoring-mode=fullstack"), "{args:?}");
    }

    #[test]
    fn user_env_overrides_defaults_but_not_the_mode_switches() {
        let dk = dynakube_with(
            HOST,
            json!({ "env": [
                { "name": "ZZZ", "value": "last" },
                { "name": "DT_K8S_CLUSTER_ID", "value": "my-cluster" },
                { "name": "AAA", "value": "first" },
                { "name": "ONEAGENT_READ_ONLY_MODE", "value": "false" },
                { "name": "https_proxy", "value": "http://user-proxy" },
            ]}),
        );
        let ds = build(&dk);
        let env = env_of(&ds);
        assert_eq!(literal(&env, "DT_K8S_CLUSTER_ID"), Some("my-cluster"));
        assert_eq!(literal(&env, "AAA"), Some("first"));
        assert_eq!(literal(&env, "ZZZ"), Some("last"));
        assert_eq!(literal(&env, "https_proxy"), Some("http://user-proxy"));
        assert_eq!(literal(&env, "ONEAGENT_READ_ONLY_MODE"), Some("true"));
        assert_eq!(env.len(), 11);
        assert_eq!(env.keys().next(), Some(&"AAA"));
        assert_eq!(env.keys().last(), Some(&"https_proxy"), "sorted by byte value");
    }

    #[test]
    fn user_labels_and_annotations_do_not_break_the_selector_or_injection() {
        let dk = dynakube_with(
            CLASSIC,
            json!({
                "labels": {
                    "app.kubernetes.io/name": "mine",
                    "app.kubernetes.io/created-by": "someone",
                    "app.kubernetes.io/managed-by": "helm",
                    "app.kubernetes.io/version": "v9",
                    "team": "platform",
                },
                "annotations": {
                    "dynatrace.com/inject": "true",
                    "container.apparmor.security.beta.kubernetes.io/dynatrace-oneagent": "localhost/oneagent",
                    "team": "platform",
                },
            }),
        );
        let ds = build(&dk);
        let labels = ds.metadata.labels.as_ref().unwrap();
        for (key, value) in selector_labels("dk") {
            assert_eq!(labels[&key], value);
        }
        assert_eq!(labels[LABEL_VERSION], "1.277.0.20230914-094321");
        assert_eq!(labels["team"], "platform");
        assert_eq!(
            ds.spec.as_ref().unwrap().selector.match_labels.as_ref(),
            Some(&selector_labels("dk"))
        );
        let template_meta = template(&ds).metadata.as_ref().unwrap();
        assert_eq!(template_meta.labels.as_ref(), Some(labels));
        let annotations = template_meta.annotations.as_ref().unwrap();
        assert_eq!(annotations[INJECT_ANNOTATION], "false");
        assert_eq!(annotations[APPARMOR_ANNOTATION], "localhost/oneagent");
        assert_eq!(annotations["team"], "platform");
    }

    #[test]
    fn version_label_only_when_known_and_valid() {
        let dk = dynakube(CLASSIC);
        for (version, label) in [
            (None, None),
            (Some(""), None),
            (Some("+++"), None),
            (Some("1.2.3+build/4"), Some("1.2.3_build_4")),
            (Some("-1.2.3-"), Some("1.2.3")),
        ] {
            let ds = daemonset(
                &dk,
                &Facts {
                    version: version.map(str::to_owned),
                    ..facts()
                },
            )
            .unwrap();
            assert_eq!(
                ds.metadata
                    .labels
                    .as_ref()
                    .unwrap()
                    .get(LABEL_VERSION)
                    .map(String::as_str),
                label,
                "{version:?}"
            );
        }
        let long = "1".repeat(100);
        assert_eq!(label_value(&long).map(|l| l.len()), Some(63));
    }

    #[test]
    fn trusted_cas_mount_the_config_map_certs() {
        let mut dk = dynakube(HOST);
        dk.spec.trusted_cas = Some("my-cas".into());
        let ds = build(&dk);
        assert_eq!(
            volume(&ds, "certificates").unwrap().config_map,
            Some(ConfigMapVolumeSource {
                name: "my-cas".into(),
                items: Some(vec![KeyToPath {
                    key: "certs".into(),
                    path: "certs.pem".into(),
                    mode: None
                }]),
                ..Default::default()
            })
        );
        assert_eq!(
            mount_of(&ds, "certificates").unwrap().mount_path,
            "/mnt/dynatrace/certs"
        );
    }

    #[test]
    fn the_default_healthcheck_runs_the_images_watchdog_script() {
        let (liveness, readiness) = probes(HealthCheck::oneagent_default());
        let liveness = liveness.unwrap();
        assert_eq!(
            liveness.exec.unwrap().command.unwrap(),
            strings(&["/bin/sh", "-c", ONEAGENT_HEALTHCHECK_SCRIPT])
        );
        assert_eq!(liveness.initial_delay_seconds, Some(1200));
        assert!(readiness.is_some());
        assert_eq!(
            HealthCheck::oneagent_default().to_status(),
            serde_json::json!({ "Test": ["CMD-SHELL", ONEAGENT_HEALTHCHECK_SCRIPT] })
        );
        let timed = HealthCheck {
            interval_seconds: Some(10),
            retries: Some(3),
            ..HealthCheck::oneagent_default()
        };
        assert_eq!(timed.to_status()["Interval"], 10_000_000_000_i64);
        assert_eq!(timed.to_status()["Retries"], 3);
    }

    fn probes(healthcheck: HealthCheck) -> (Option<Probe>, Option<Probe>) {
        let ds = daemonset(
            &dynakube(CLASSIC),
            &Facts {
                healthcheck: Some(healthcheck),
                ..facts()
            },
        )
        .unwrap();
        let c = container(&ds);
        (c.liveness_probe.clone(), c.readiness_probe.clone())
    }

    #[test]
    fn healthcheck_becomes_probes() {
        let (liveness, readiness) = probes(HealthCheck {
            test: strings(&["CMD-SHELL", "/usr/bin/watchdog-healthcheck64"]),
            ..Default::default()
        });
        let liveness = liveness.unwrap();
        assert_eq!(
            liveness,
            Probe {
                exec: Some(ExecAction {
                    command: Some(strings(&["/bin/sh", "-c", "/usr/bin/watchdog-healthcheck64"])),
                }),
                initial_delay_seconds: Some(1200),
                period_seconds: Some(10),
                timeout_seconds: Some(30),
                failure_threshold: Some(3),
                success_threshold: Some(1),
                ..Default::default()
            }
        );
        assert_eq!(
            readiness,
            Some(Probe {
                initial_delay_seconds: Some(90),
                ..liveness
            })
        );

        let (liveness, readiness) = probes(HealthCheck {
            test: strings(&["CMD", "/bin/check", "--quick"]),
            interval_seconds: Some(20),
            start_period_seconds: Some(60),
            timeout_seconds: Some(5),
            retries: Some(0),
        });
        let liveness = liveness.unwrap();
        assert_eq!(
            liveness.exec.as_ref().unwrap().command,
            Some(strings(&["/bin/check", "--quick"]))
        );
        assert_eq!(
            (
                liveness.initial_delay_seconds,
                liveness.period_seconds,
                liveness.timeout_seconds,
                liveness.failure_threshold
            ),
            (Some(60), Some(20), Some(5), Some(3))
        );
        assert_eq!(
            readiness.unwrap().initial_delay_seconds,
            Some(60),
            "below the cap"
        );

        for test in [
            vec![],
            strings(&["NONE"]),
            strings(&["CMD"]),
            strings(&["CMD-SHELL"]),
        ] {
            assert_eq!(
                probes(HealthCheck {
                    test: test.clone(),
                    ..Default::default()
                }),
                (None, None),
                "{test:?}"
            );
        }
    }

    fn resources_for(resources: serde_json::Value) -> ResourceRequirements {
        let ds = build(&dynakube_with(CLASSIC, json!({ "oneAgentResources": resources })));
        container(&ds).resources.clone().unwrap()
    }

    #[test]
    fn resources_get_a_default_cpu_request() {
        let cpu = |r: &ResourceRequirements| r.requests.as_ref().unwrap()["cpu"].0.clone();
        let none = container(&build(&dynakube(HOST))).resources.clone().unwrap();
        assert_eq!(cpu(&none), "100m");
        assert_eq!(none.limits, None);

        let memory_only = resources_for(json!({ "requests": { "memory": "512Mi" } }));
        assert_eq!(cpu(&memory_only), "100m");
        assert_eq!(memory_only.requests.as_ref().unwrap()["memory"].0, "512Mi");

        assert_eq!(
            cpu(&resources_for(json!({ "requests": { "cpu": "250m" } }))),
            "250m"
        );
        assert_eq!(cpu(&resources_for(json!({ "limits": { "cpu": "2" } }))), "100m");
        assert_eq!(cpu(&resources_for(json!({ "limits": { "cpu": "50m" } }))), "50m");
        assert_eq!(
            cpu(&resources_for(json!({ "limits": { "cpu": "0.05" } }))),
            "0.05"
        );
        assert_eq!(cpu(&resources_for(json!({ "limits": { "cpu": "1k" } }))), "100m");
    }

    #[test]
    fn scheduling_settings_come_from_the_host_spec() {
        let mut dk = dynakube_with(
            CLOUD,
            json!({
                "dnsPolicy": "Default",
                "nodeSelector": { "node-pool": "apps" },
                "tolerations": [{ "key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule" }],
                "priorityClassName": "high",
            }),
        );
        dk.spec.custom_pull_secret = Some("my-pull-secret".into());
        let dk = flag(dk, "oneagent-max-unavailable", "3");
        let ds = build(&dk);
        let p = pod(&ds);
        assert_user_scheduling(p);
        assert_eq!(p.image_pull_secrets.as_ref().unwrap()[0].name, "my-pull-secret");
        assert_eq!(
            ds.spec
                .as_ref()
                .unwrap()
                .update_strategy
                .as_ref()
                .unwrap()
                .rolling_update
                .as_ref()
                .unwrap()
                .max_unavailable,
            Some(IntOrString::Int(3))
        );
    }

    #[test]
    fn no_daemonset_without_a_host_mode() {
        let mut none = dynakube(CLASSIC);
        none.spec.one_agent = None;
        let mut empty = dynakube(CLASSIC);
        empty.spec.one_agent = Some(Default::default());
        let mut several = dynakube(CLASSIC);
        several.spec.one_agent.as_mut().unwrap().host_monitoring = Some(Default::default());
        for (dk, needle) in [
            (
                dynakube("applicationMonitoring"),
                "applicationMonitoring only injects code modules",
            ),
            (none, "spec.oneAgent is not set"),
            (empty, "spec.oneAgent sets no mode"),
            (
                several,
                "sets 2 modes (classicFullStack, hostMonitoring); set exactly one",
            ),
        ] {
            let err = daemonset(&dk, &facts()).unwrap_err();
            assert!(matches!(err, DesiredError::NoOneAgent { .. }), "{err:?}");
            let message = err.to_string();
            assert!(
                message.starts_with("DynaKube \"dk\" needs no OneAgent DaemonSet: "),
                "{message}"
            );
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn missing_facts_are_errors_that_say_what_to_do() {
        let dk = dynakube(CLASSIC);
        let no_image = daemonset(
            &dk,
            &Facts {
                image: String::new(),
                ..facts()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            no_image.contains("status.oneAgent.imageID") && no_image.contains("resolve"),
            "{no_image}"
        );
        let no_cluster = daemonset(
            &dk,
            &Facts {
                cluster_id: String::new(),
                ..facts()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(no_cluster.contains("kube-system"), "{no_cluster}");
        let mut no_namespace = dk.clone();
        no_namespace.metadata.namespace = None;
        assert!(
            daemonset(&no_namespace, &facts())
                .unwrap_err()
                .to_string()
                .contains("metadata.namespace")
        );
        // Without its UID the DynaKube could not own the DaemonSet, which would outlive it.
        let mut no_uid = dk.clone();
        no_uid.metadata.uid = None;
        assert!(matches!(
            daemonset(&no_uid, &facts()),
            Err(DesiredError::NoOwnerUid { .. })
        ));
    }

    #[test]
    fn hash_is_stable_and_follows_the_input() {
        let env_a = json!({ "env": [{ "name": "A", "value": "1" }, { "name": "B", "value": "2" }],
                            "labels": { "x": "1", "y": "2" } });
        let env_b = json!({ "labels": { "y": "2", "x": "1" },
                            "env": [{ "name": "B", "value": "2" }, { "name": "A", "value": "1" }] });
        let a = build(&dynakube_with(HOST, env_a.clone()));
        assert_eq!(a, build(&dynakube_with(HOST, env_a)), "same input, same object");
        assert_eq!(
            hash(&a),
            hash(&build(&dynakube_with(HOST, env_b))),
            "env order does not matter"
        );
        assert_eq!(hash(&a), crate::hash::template_hash(&a));

        let base = hash(&build(&dynakube(HOST))).to_owned();
        let newer = daemonset(
            &dynakube(HOST),
            &Facts {
                version: Some("1.279.0.20231010-101010".into()),
                ..facts()
            },
        )
        .unwrap();
        assert_ne!(hash(&newer), base, "a new version rolls the pods");
        assert_ne!(
            hash(&build(&flag(dynakube(HOST), "oneagent-privileged", "true"))),
            base
        );
        assert_ne!(hash(&build(&dynakube(CLOUD))), base);
    }

    /// A DynaKube that exercises most of the builder, per mode.
    fn rich(mode: &str) -> (DynaKube, Facts) {
        let mut dk = dynakube_with(
            mode,
            json!({
                "args": ["--set-host-group=prod"],
                "env": [{ "name": "ONEAGENT_ENABLE_VOLUME_STORAGE", "value": "true" }],
                "labels": { "team": "platform" },
                "annotations": { "example.com/owner": "platform" },
                "nodeSelector": { "node-pool": "apps" },
                "oneAgentResources": { "limits": { "memory": "1Gi" } },
            }),
        );
        dk.spec.network_zone = Some("zone-a".into());
        dk.spec.trusted_cas = Some("my-cas".into());
        dk.spec.proxy = Some(DynaKubeProxy {
            value: None,
            value_from: Some("proxy-secret".into()),
        });
        let facts = Facts {
            healthcheck: Some(HealthCheck {
                test: strings(&["CMD-SHELL", "/usr/bin/watchdog-healthcheck64"]),
                interval_seconds: Some(10),
                start_period_seconds: Some(1200),
                timeout_seconds: Some(30),
                retries: Some(3),
            }),
            ..facts()
        };
        (dk, facts)
    }

    #[test]
    fn snapshot_classic_full_stack() {
        let (dk, facts) = rich(CLASSIC);
        insta::assert_yaml_snapshot!(daemonset(&dk, &facts).unwrap());
    }

    #[test]
    fn snapshot_host_monitoring() {
        let (dk, facts) = rich(HOST);
        insta::assert_yaml_snapshot!(daemonset(&dk, &facts).unwrap());
    }

    #[test]
    fn snapshot_cloud_native_full_stack() {
        let (dk, facts) = rich(CLOUD);
        insta::assert_yaml_snapshot!(daemonset(&dk, &facts).unwrap());
    }
}
