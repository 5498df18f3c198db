//! The init container's environment (spec §5 step 1, set by the pod webhook, §3.5–3.7) and the text of
//! every file it writes (§5 step 3).

use std::collections::BTreeMap;

/// The environment variables the webhook gives the init container and the application containers.
pub mod env {
    /// `silent` or `fail`.
    pub const FAILURE_POLICY: &str = "FAILURE_POLICY";
    /// The pod's name (field reference).
    pub const K8S_PODNAME: &str = "K8S_PODNAME";
    /// The pod's UID (field reference).
    pub const K8S_PODUID: &str = "K8S_PODUID";
    /// The pod's name without its generated suffix.
    pub const K8S_BASEPODNAME: &str = "K8S_BASEPODNAME";
    /// The UID of `kube-system`.
    pub const K8S_CLUSTER_ID: &str = "K8S_CLUSTER_ID";
    /// The pod's namespace (field reference).
    pub const K8S_NAMESPACE: &str = "K8S_NAMESPACE";
    /// The pod's node (field reference).
    pub const K8S_NODE_NAME: &str = "K8S_NODE_NAME";
    /// The code-module flavor.
    pub const FLAVOR: &str = "FLAVOR";
    /// The technologies, URL-query-escaped.
    pub const TECHNOLOGIES: &str = "TECHNOLOGIES";
    /// The install path in the application containers.
    pub const INSTALLPATH: &str = "INSTALLPATH";
    /// A download URL that replaces the tenant's.
    pub const INSTALLER_URL: &str = "INSTALLER_URL";
    /// The code-module version (`status.codeModules.version`).
    pub const VERSION: &str = "VERSION";
    /// `provisioned` (CSI) or `installer`.
    pub const MODE: &str = "MODE";
    /// Whether the CSI volume is read-only.
    pub const CSI_VOLUME_READONLY: &str = "CSI_VOLUME_READONLY";
    /// `true` when the code module is injected.
    pub const ONEAGENT_INJECTED: &str = "ONEAGENT_INJECTED";
    /// The number of application containers.
    pub const CONTAINERS_COUNT: &str = "CONTAINERS_COUNT";
    /// `true` when metadata enrichment is injected.
    pub const DATA_INGEST_INJECTED: &str = "DATA_INGEST_INJECTED";
    /// The workload's kind.
    pub const DT_WORKLOAD_KIND: &str = "DT_WORKLOAD_KIND";
    /// The workload's name.
    pub const DT_WORKLOAD_NAME: &str = "DT_WORKLOAD_NAME";
    /// The deployment-metadata string; its presence marks an injected application container.
    pub const DT_DEPLOYMENT_METADATA: &str = "DT_DEPLOYMENT_METADATA";
    /// The preload list of the dynamic linker.
    pub const LD_PRELOAD: &str = "LD_PRELOAD";
    /// The DynaKube's network zone.
    pub const DT_NETWORK_ZONE: &str = "DT_NETWORK_ZONE";
    /// Release version (label version detection).
    pub const DT_RELEASE_VERSION: &str = "DT_RELEASE_VERSION";
    /// Release product (label version detection).
    pub const DT_RELEASE_PRODUCT: &str = "DT_RELEASE_PRODUCT";
    /// Release stage (label version detection, from a namespace mapping only).
    pub const DT_RELEASE_STAGE: &str = "DT_RELEASE_STAGE";
    /// Release build version (label version detection, from a namespace mapping only).
    pub const DT_RELEASE_BUILD_VERSION: &str = "DT_RELEASE_BUILD_VERSION";

    /// `CONTAINER_<index>_NAME` (1-based).
    pub fn container_name(index: usize) -> String {
        format!("CONTAINER_{index}_NAME")
    }

    /// `CONTAINER_<index>_IMAGE` (1-based).
    pub fn container_image(index: usize) -> String {
        format!("CONTAINER_{index}_IMAGE")
    }

    /// Whether `name` is a `CONTAINER_<index>_NAME` or `CONTAINER_<index>_IMAGE` variable.
    pub fn is_container_var(name: &str) -> bool {
        name.strip_prefix("CONTAINER_")
            .and_then(|rest| rest.strip_suffix("_NAME").or_else(|| rest.strip_suffix("_IMAGE")))
            .is_some_and(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// `FAILURE_POLICY`: what a failed init does to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Log the error and exit 0: the application starts without (complete) monitoring. The default.
    Silent,
    /// Exit 1: the pod does not start.
    Fail,
}

impl FailurePolicy {
    /// `fail` is strict; anything else (also a missing or unknown value) is silent, so that a typo never
    /// blocks a pod.
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some("fail") => Self::Fail,
            _ => Self::Silent,
        }
    }
}

/// `MODE`: who puts the agent into `/mnt/bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The init container downloads and unpacks it.
    Installer,
    /// The CSI driver mounted it.
    Provisioned,
}

/// An application container of the pod (`CONTAINER_<i>_NAME` / `_IMAGE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Its name.
    pub name: String,
    /// Its image.
    pub image: String,
}

/// The pod facts both injections need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// `K8S_PODNAME`.
    pub pod_name: String,
    /// `K8S_PODUID`.
    pub pod_uid: String,
    /// `K8S_NAMESPACE`.
    pub namespace: String,
    /// `K8S_CLUSTER_ID`.
    pub cluster_id: String,
}

/// What the OneAgent injection needs (`ONEAGENT_INJECTED=true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneAgentEnv {
    /// `MODE`.
    pub mode: Mode,
    /// `TECHNOLOGIES`, comma-separated; empty means all.
    pub technologies: Vec<String>,
    /// `INSTALLPATH`: where the application containers see `/mnt/bin`.
    pub install_path: String,
    /// `CONTAINERS_COUNT` containers from `CONTAINER_<i>_NAME` / `_IMAGE`.
    pub containers: Vec<Container>,
    /// `K8S_NODE_NAME`.
    pub node_name: String,
    /// `K8S_BASEPODNAME`.
    pub base_pod_name: String,
    /// `INSTALLER_URL`: download from this URL (plain GET) instead of the environment.
    pub installer_url: Option<String>,
    /// `FLAVOR`, default by architecture.
    pub flavor: String,
    /// `VERSION`; `None` (or `latest`) downloads the latest.
    pub version: Option<String>,
    /// `CSI_VOLUME_READONLY=true`.
    pub csi_read_only: bool,
}

/// What metadata enrichment needs (`DATA_INGEST_INJECTED=true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichmentEnv {
    /// `DT_WORKLOAD_KIND` (`UNKNOWN` becomes empty).
    pub workload_kind: String,
    /// `DT_WORKLOAD_NAME` (`UNKNOWN` becomes empty).
    pub workload_name: String,
}

/// The whole environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitEnv {
    /// `FAILURE_POLICY`.
    pub failure_policy: FailurePolicy,
    /// Pod facts (present when either injection is on).
    pub pod: Option<PodFacts>,
    /// The OneAgent injection, when on.
    pub oneagent: Option<OneAgentEnv>,
    /// Metadata enrichment, when on.
    pub enrichment: Option<EnrichmentEnv>,
}

/// The environment is incomplete or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the init container's environment is incomplete: {}; the pod webhook sets these variables, so check \
     that the pod was mutated by this operator's webhook and not edited afterwards",
    describe(.missing, .invalid)
)]
pub struct EnvError {
    /// Variables that are needed but not set (or empty).
    pub missing: Vec<String>,
    /// Variables with a value that cannot be used, with the reason.
    pub invalid: Vec<(String, String)>,
}

fn describe(missing: &[String], invalid: &[(String, String)]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("{} missing ({})", missing.len(), missing.join(", ")));
    }
    for (name, reason) in invalid {
        parts.push(format!("{name} {reason}"));
    }
    parts.join("; ")
}

/// The flavor for the running architecture: `multidistro` on x86-64, `default` elsewhere.
pub fn default_flavor(arch: &str) -> &'static str {
    if arch == "x86_64" {
        "multidistro"
    } else {
        "default"
    }
}

/// The installer's `arch` for the running architecture.
pub fn installer_arch(arch: &str) -> &'static str {
    match arch {
        "aarch64" => "arm",
        "powerpc64" => "ppcle",
        "s390x" => "s390",
        _ => "x86",
    }
}

impl InitEnv {
    /// Reads the environment through `get` (empty values count as unset), collecting every problem
    /// instead of stopping at the first. `arch` is [`std::env::consts::ARCH`] of the running binary.
    pub fn read(get: impl Fn(&str) -> Option<String>, arch: &str) -> Result<Self, EnvError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let mut missing = Vec::new();
        let mut invalid = Vec::new();
        let mut need = |name: &str| {
            get(name).unwrap_or_else(|| {
                missing.push(name.to_owned());
                String::new()
            })
        };
        let flag = |name: &str| get(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let failure_policy = FailurePolicy::parse(get(env::FAILURE_POLICY).as_deref());
        let oneagent_on = flag(env::ONEAGENT_INJECTED);
        let enrichment_on = flag(env::DATA_INGEST_INJECTED);
        let pod = (oneagent_on || enrichment_on).then(|| PodFacts {
            pod_name: need(env::K8S_PODNAME),
            pod_uid: need(env::K8S_PODUID),
            namespace: need(env::K8S_NAMESPACE),
            cluster_id: need(env::K8S_CLUSTER_ID),
        });
        let oneagent = oneagent_on.then(|| {
            let mode_value = need(env::MODE);
            let technologies = need(env::TECHNOLOGIES);
            let install_path = need(env::INSTALLPATH);
            let node_name = need(env::K8S_NODE_NAME);
            let base_pod_name = need(env::K8S_BASEPODNAME);
            let count = need(env::CONTAINERS_COUNT);
            let mode = match mode_value.as_str() {
                "installer" => Mode::Installer,
                "provisioned" => Mode::Provisioned,
                "" => Mode::Installer,
                other => {
                    invalid.push((
                        env::MODE.to_owned(),
                        format!("is {other:?}, not \"installer\" or \"provisioned\""),
                    ));
                    Mode::Installer
                }
            };
            let mut containers = Vec::new();
            match count.trim().parse::<usize>() {
                Ok(count) => {
                    for i in 1..=count {
                        containers.push(Container {
                            name: need(&env::container_name(i)),
                            image: need(&env::container_image(i)),
                        });
                    }
                }
                Err(_) if count.is_empty() => {}
                Err(_) => invalid.push((
                    env::CONTAINERS_COUNT.to_owned(),
                    format!("is {count:?}, not a number of containers"),
                )),
            }
            for container in &containers {
                if !container.name.is_empty() && !safe_file_name(&container.name) {
                    invalid.push((
                        "CONTAINER_*_NAME".to_owned(),
                        format!("{:?} is not a container name", container.name),
                    ));
                }
            }
            OneAgentEnv {
                mode,
                // The webhook query-escapes the annotation's value (`java%2Cnodejs`), as the reference
                // does, so that it can go into a URL as it is.
                technologies: percent_encoding::percent_decode_str(&technologies)
                    .decode_utf8_lossy()
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty() && *t != "all")
                    .map(str::to_owned)
                    .collect(),
                install_path,
                containers,
                node_name,
                base_pod_name,
                installer_url: get(env::INSTALLER_URL),
                flavor: get(env::FLAVOR).unwrap_or_else(|| default_flavor(arch).to_owned()),
                version: get(env::VERSION).filter(|v| v != "latest"),
                csi_read_only: flag(env::CSI_VOLUME_READONLY),
            }
        });
        let unknown = |v: String| if v == "UNKNOWN" { String::new() } else { v };
        let enrichment = enrichment_on.then(|| EnrichmentEnv {
            workload_kind: unknown(need(env::DT_WORKLOAD_KIND)),
            workload_name: unknown(need(env::DT_WORKLOAD_NAME)),
        });
        if missing.is_empty() && invalid.is_empty() {
            Ok(Self {
                failure_policy,
                pod,
                oneagent,
                enrichment,
            })
        } else {
            Err(EnvError { missing, invalid })
        }
    }
}

/// A Kubernetes container name is a DNS label; anything that could leave `/mnt/share` is refused.
fn safe_file_name(name: &str) -> bool {
    !name.contains('/') && name != "." && name != ".." && !name.contains('\0')
}

/// The host tenant of the pod's node (§5 step 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTenant {
    /// No host OneAgent (not cloudNativeFullStack, or `-`).
    None,
    /// The node's host agent reports to this tenant.
    Tenant(String),
    /// cloudNativeFullStack, but the node is not in `monitoringNodes` (its tenant is not known yet).
    Unknown,
}

/// The node's host tenant from the init configuration's `hasHost` and `monitoringNodes`.
pub fn host_tenant(has_host: bool, monitoring_nodes: &BTreeMap<String, String>, node: &str) -> HostTenant {
    if !has_host {
        return HostTenant::None;
    }
    match monitoring_nodes.get(node).map(String::as_str) {
        None => HostTenant::Unknown,
        Some("-") | Some("") => HostTenant::None,
        Some(tenant) => HostTenant::Tenant(tenant.to_owned()),
    }
}

/// `/mnt/share/ld.so.preload`: the agent library under the install path.
pub fn ld_so_preload(install_path: &str) -> String {
    format!(
        "{}/agent/lib64/liboneagentproc.so\n",
        install_path.trim_end_matches('/')
    )
}

/// The name of a container's configuration file in `/mnt/share`.
pub fn container_conf_name(container: &str) -> String {
    format!("container_{container}.conf")
}

/// `/mnt/share/container_<name>.conf`. The `[host]` part is written only when the node's host agent
/// reports to the application's tenant (`tenant_uuid`), so processes are grouped under that host.
pub fn container_conf(
    pod: &PodFacts,
    oneagent: &OneAgentEnv,
    container: &Container,
    host: &HostTenant,
    tenant_uuid: &str,
) -> String {
    let mut text = format!(
        "[container]\n\
         containerName {name}\n\
         imageName {image}\n\
         k8s_fullpodname {pod}\n\
         k8s_poduid {uid}\n\
         k8s_containername {name}\n\
         k8s_basepodname {base}\n\
         k8s_namespace {namespace}\n\
         k8s_cluster_id {cluster}\n",
        name = container.name,
        image = container.image,
        pod = pod.pod_name,
        uid = pod.pod_uid,
        base = oneagent.base_pod_name,
        namespace = pod.namespace,
        cluster = pod.cluster_id,
    );
    if let HostTenant::Tenant(tenant) = host
        && tenant == tenant_uuid
    {
        text.push_str(&format!(
            "k8s_node_name {}\n[host]\ntenant {tenant}\nisCloudNativeFullStack true\n",
            oneagent.node_name
        ));
    }
    text
}

/// `/mnt/share/curl_options.conf`, when `initialConnectRetry` is set (≥ 0).
pub fn curl_options(initial_connect_retry_ms: i64) -> Option<String> {
    (initial_connect_retry_ms >= 0).then(|| format!("initialConnectRetryMs {initial_connect_retry_ms}\n"))
}

/// The enrichment metadata, key → value, as both enrichment files hold it.
pub fn enrichment_metadata(pod: &PodFacts, enrichment: &EnrichmentEnv) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("k8s.pod.uid", pod.pod_uid.clone()),
        ("k8s.pod.name", pod.pod_name.clone()),
        ("k8s.namespace.name", pod.namespace.clone()),
        ("dt.kubernetes.workload.kind", enrichment.workload_kind.clone()),
        ("dt.kubernetes.workload.name", enrichment.workload_name.clone()),
        ("dt.kubernetes.cluster.id", pod.cluster_id.clone()),
    ])
}

/// `dt_metadata.properties`: `key=value` lines.
pub fn enrichment_properties(metadata: &BTreeMap<&'static str, String>) -> String {
    metadata.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// `dt_metadata.json`: one JSON object.
pub fn enrichment_json(metadata: &BTreeMap<&'static str, String>) -> String {
    serde_json::Value::Object(
        metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
            .collect(),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_env() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            ("FAILURE_POLICY", "fail"),
            ("ONEAGENT_INJECTED", "true"),
            ("DATA_INGEST_INJECTED", "true"),
            ("K8S_PODNAME", "app-7d9f-x1"),
            ("K8S_PODUID", "uid-1"),
            ("K8S_NAMESPACE", "apps"),
            ("K8S_CLUSTER_ID", "cluster-1"),
            ("K8S_NODE_NAME", "node-1"),
            ("K8S_BASEPODNAME", "app-7d9f"),
            ("MODE", "installer"),
            ("TECHNOLOGIES", "java,nodejs"),
            ("INSTALLPATH", "/opt/dynatrace/oneagent-paas"),
            ("CONTAINERS_COUNT", "2"),
            ("CONTAINER_1_NAME", "app"),
            ("CONTAINER_1_IMAGE", "registry/app:1"),
            ("CONTAINER_2_NAME", "sidecar"),
            ("CONTAINER_2_IMAGE", "registry/sidecar:2"),
            ("DT_WORKLOAD_KIND", "Deployment"),
            ("DT_WORKLOAD_NAME", "UNKNOWN"),
            ("VERSION", "latest"),
        ])
    }

    fn read(env: &BTreeMap<&'static str, &'static str>) -> Result<InitEnv, EnvError> {
        InitEnv::read(|name| env.get(name).map(|v| (*v).to_owned()), "x86_64")
    }

    #[test]
    fn reads_a_complete_environment() {
        let env = read(&full_env()).unwrap();
        assert_eq!(env.failure_policy, FailurePolicy::Fail);
        let oneagent = env.oneagent.unwrap();
        assert_eq!(oneagent.mode, Mode::Installer);
        assert_eq!(oneagent.technologies, ["java", "nodejs"]);
        // As the webhook writes it: query-escaped.
        let mut escaped = full_env();
        escaped.insert("TECHNOLOGIES", "java%2Cnodejs");
        assert_eq!(
            read(&escaped).unwrap().oneagent.unwrap().technologies,
            ["java", "nodejs"]
        );
        assert_eq!(oneagent.containers.len(), 2);
        assert_eq!(oneagent.containers[1].image, "registry/sidecar:2");
        assert_eq!(oneagent.flavor, "multidistro");
        assert_eq!(oneagent.version, None, "latest is the default");
        assert!(!oneagent.csi_read_only);
        let enrichment = env.enrichment.unwrap();
        assert_eq!(enrichment.workload_kind, "Deployment");
        assert_eq!(enrichment.workload_name, "", "UNKNOWN becomes empty");
    }

    #[test]
    fn every_missing_variable_is_named_at_once() {
        let mut env = full_env();
        env.remove("K8S_PODUID");
        env.remove("CONTAINER_2_IMAGE");
        env.insert("MODE", "csi");
        let err = read(&env).unwrap_err();
        assert_eq!(err.missing, ["K8S_PODUID", "CONTAINER_2_IMAGE"]);
        let text = err.to_string();
        assert!(
            text.contains("2 missing (K8S_PODUID, CONTAINER_2_IMAGE)"),
            "{text}"
        );
        assert!(text.contains("MODE is \"csi\""), "{text}");
    }

    #[test]
    fn nothing_injected_needs_nothing() {
        let env = InitEnv::read(|_| None, "aarch64").unwrap();
        assert_eq!(env.failure_policy, FailurePolicy::Silent);
        assert!(env.pod.is_none() && env.oneagent.is_none() && env.enrichment.is_none());
    }

    #[test]
    fn failure_policy_is_strict_only_for_fail() {
        assert_eq!(FailurePolicy::parse(Some("fail")), FailurePolicy::Fail);
        assert_eq!(FailurePolicy::parse(Some(" fail ")), FailurePolicy::Fail);
        for value in [None, Some("silent"), Some("Fail"), Some("")] {
            assert_eq!(FailurePolicy::parse(value), FailurePolicy::Silent, "{value:?}");
        }
    }

    #[test]
    fn a_container_name_cannot_leave_the_share_directory() {
        let mut env = full_env();
        env.insert("CONTAINER_1_NAME", "../../etc/x");
        assert!(
            read(&env)
                .unwrap_err()
                .to_string()
                .contains("not a container name")
        );
    }

    #[test]
    fn container_conf_with_and_without_the_host_part() {
        let env = read(&full_env()).unwrap();
        let (pod, oneagent) = (env.pod.unwrap(), env.oneagent.unwrap());
        let container = &oneagent.containers[0];
        let without = container_conf(&pod, &oneagent, container, &HostTenant::None, "abc");
        assert_eq!(
            without,
            "[container]\ncontainerName app\nimageName registry/app:1\nk8s_fullpodname app-7d9f-x1\n\
             k8s_poduid uid-1\nk8s_containername app\nk8s_basepodname app-7d9f\nk8s_namespace apps\n\
             k8s_cluster_id cluster-1\n"
        );
        let with = container_conf(
            &pod,
            &oneagent,
            container,
            &HostTenant::Tenant("abc".into()),
            "abc",
        );
        assert_eq!(
            with,
            format!("{without}k8s_node_name node-1\n[host]\ntenant abc\nisCloudNativeFullStack true\n")
        );
        let other = container_conf(
            &pod,
            &oneagent,
            container,
            &HostTenant::Tenant("zzz".into()),
            "abc",
        );
        assert_eq!(
            other, without,
            "another tenant's host agent does not group the processes"
        );
        assert_eq!(
            container_conf(&pod, &oneagent, container, &HostTenant::Unknown, "abc"),
            without
        );
    }

    #[test]
    fn host_tenant_decision() {
        let nodes = BTreeMap::from([("a".to_owned(), "t".to_owned()), ("b".to_owned(), "-".to_owned())]);
        assert_eq!(host_tenant(false, &nodes, "a"), HostTenant::None);
        assert_eq!(host_tenant(true, &nodes, "a"), HostTenant::Tenant("t".into()));
        assert_eq!(host_tenant(true, &nodes, "b"), HostTenant::None);
        assert_eq!(host_tenant(true, &nodes, "c"), HostTenant::Unknown);
    }

    #[test]
    fn small_files() {
        assert_eq!(
            ld_so_preload("/opt/x/"),
            "/opt/x/agent/lib64/liboneagentproc.so\n"
        );
        assert_eq!(curl_options(-1), None);
        assert_eq!(
            curl_options(6000).as_deref(),
            Some("initialConnectRetryMs 6000\n")
        );
        assert_eq!(container_conf_name("app"), "container_app.conf");
        let env = read(&full_env()).unwrap();
        let metadata = enrichment_metadata(&env.pod.unwrap(), &env.enrichment.unwrap());
        let properties = enrichment_properties(&metadata);
        assert!(properties.contains("k8s.pod.uid=uid-1\n"), "{properties}");
        assert!(
            properties.contains("dt.kubernetes.workload.name=\n"),
            "{properties}"
        );
        let json: serde_json::Value = serde_json::from_str(&enrichment_json(&metadata)).unwrap();
        assert_eq!(json["dt.kubernetes.cluster.id"], "cluster-1");
        assert_eq!(json.as_object().unwrap().len(), 6);
    }
}
