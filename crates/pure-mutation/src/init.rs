//! The init container's base (spec §3.5): name, image, the environment every mode needs, the security
//! context derived from the pod and its first container, and the resources.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, Pod, ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use pure_api::dynakube::DynaKube;
use pure_desired::pod::{field_env, literal_env};

use crate::PodRequest;
use crate::names::{ANNOTATION_FAILURE_POLICY, INIT_CONTAINER_NAME, env};

/// User and group of the init container when neither the pod nor its first container sets one.
pub(crate) const DEFAULT_USER: i64 = 1001;

/// The init container before the OneAgent and enrichment parts are added.
pub(crate) fn base(req: &PodRequest<'_>, dynakube: &DynaKube, csi: bool) -> Container {
    let pod = req.pod;
    Container {
        name: INIT_CONTAINER_NAME.to_owned(),
        image: Some(req.settings.init_image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(vec!["init".to_owned()]),
        env: Some(vec![
            literal_env(env::FAILURE_POLICY, failure_policy(pod, dynakube)),
            field_env(env::K8S_PODNAME, "metadata.name"),
            field_env(env::K8S_PODUID, "metadata.uid"),
            literal_env(env::K8S_BASEPODNAME, &base_pod_name(pod)),
            literal_env(env::K8S_CLUSTER_ID, &req.settings.cluster_id),
            field_env(env::K8S_NAMESPACE, "metadata.namespace"),
            field_env(env::K8S_NODE_NAME, "spec.nodeName"),
        ]),
        security_context: Some(security_context(
            pod,
            dynakube.feature_flags().init_container_seccomp_profile(),
        )),
        resources: resources(dynakube, csi),
        ..Default::default()
    }
}

/// `fail` or `silent`: the pod's annotation when it says one of them, else the DynaKube's flag.
fn failure_policy(pod: &Pod, dynakube: &DynaKube) -> &'static str {
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_FAILURE_POLICY))
        .map(String::as_str);
    match annotation {
        Some("fail") => "fail",
        Some("silent") => "silent",
        _ if dynakube.feature_flags().injection_fails_pod() => "fail",
        _ => "silent",
    }
}

/// The pod's name (or `generateName`) cut before its last `-`: `web-7d9f-` → `web-7d9f`.
pub(crate) fn base_pod_name(pod: &Pod) -> String {
    let name = pod
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or_default();
    name.rsplit_once('-').map_or(name, |(base, _)| base).to_owned()
}

/// Read-only root, no privilege escalation, no capabilities; the user and group of the pod, then of the
/// first container, else 1001. Non-root whenever the user is not 0. `RuntimeDefault` seccomp with the
/// flag, or when the application containers set a profile the pod does not (Pod Security `restricted`
/// needs one on every container).
pub(crate) fn security_context(pod: &Pod, seccomp_flag: bool) -> SecurityContext {
    let spec = pod.spec.as_ref();
    let pod_context = spec.and_then(|s| s.security_context.as_ref());
    let first = spec
        .and_then(|s| s.containers.first())
        .and_then(|c| c.security_context.as_ref());
    let user = first
        .and_then(|c| c.run_as_user)
        .or(pod_context.and_then(|p| p.run_as_user))
        .unwrap_or(DEFAULT_USER);
    let group = first
        .and_then(|c| c.run_as_group)
        .or(pod_context.and_then(|p| p.run_as_group))
        .unwrap_or(DEFAULT_USER);
    let pod_has_profile = pod_context.is_some_and(|p| p.seccomp_profile.is_some());
    let containers_have_profile = spec.is_some_and(|s| {
        s.containers.iter().any(|c| {
            c.security_context
                .as_ref()
                .is_some_and(|c| c.seccomp_profile.is_some())
        })
    });
    SecurityContext {
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        run_as_user: Some(user),
        run_as_group: Some(group),
        run_as_non_root: Some(user != 0),
        seccomp_profile: (seccomp_flag || (containers_have_profile && !pod_has_profile)).then(|| {
            SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }
        }),
        ..Default::default()
    }
}

/// The DynaKube's `initResources`; else, with CSI (the init container only writes small files),
/// requests 30m/30Mi and limits 100m/60Mi; else none (it downloads and unpacks the code module).
fn resources(dynakube: &DynaKube, csi: bool) -> Option<ResourceRequirements> {
    if let Some(resources) = dynakube
        .app_injection_spec()
        .and_then(|a| a.init_resources.clone())
    {
        return Some(resources);
    }
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    csi.then(|| ResourceRequirements {
        requests: Some(quantities("30m", "30Mi")),
        limits: Some(quantities("100m", "60Mi")),
        ..Default::default()
    })
}
