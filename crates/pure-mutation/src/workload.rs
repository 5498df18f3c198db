//! The workload a pod belongs to (spec §3.7): its controller owner references followed upward through the
//! well-known workload kinds. The I/O side answers each step from its caches.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Kind and name of the workload of [`UNKNOWN`] when it cannot be told.
pub const UNKNOWN: &str = "UNKNOWN";
/// Longest owner chain followed; real chains have at most three steps (Pod → ReplicaSet → Deployment),
/// the bound only stops a cycle in broken metadata.
const MAX_DEPTH: usize = 8;

/// The pod's workload, as the init container reports it for metadata enrichment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    /// The workload's kind (`Deployment`, `StatefulSet`, ..., `Pod` for a bare pod), or [`UNKNOWN`].
    pub kind: String,
    /// The workload's name, or [`UNKNOWN`].
    pub name: String,
}

impl Workload {
    /// The workload that cannot be told.
    pub fn unknown() -> Self {
        Self {
            kind: UNKNOWN.to_owned(),
            name: UNKNOWN.to_owned(),
        }
    }
}

/// A controller owner reference, in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerRef {
    /// `apps/v1`, `batch/v1`, `v1`, ...
    pub api_version: String,
    /// `ReplicaSet`, `Deployment`, ...
    pub kind: String,
    /// The owner's name.
    pub name: String,
}

/// What the I/O side knows about an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The owner exists; this is its own controller reference (`None` when it has none).
    Found(Option<OwnerRef>),
    /// The owner is not known (not in the cache yet, or deleted): the walk stops at it.
    Missing,
}

/// The kinds whose names are meaningful workloads, by API group and kind.
fn is_well_known(owner: &OwnerRef) -> bool {
    let group = owner.api_version.rsplit_once('/').map_or("", |(group, _)| group);
    matches!(
        (group, owner.kind.as_str()),
        ("apps", "ReplicaSet" | "Deployment" | "StatefulSet" | "DaemonSet")
            | ("", "ReplicationController")
            | ("batch", "Job" | "CronJob")
            | ("apps.openshift.io", "DeploymentConfig")
    )
}

impl OwnerRef {
    /// The controller owner reference in an object's metadata, for [`Lookup::Found`].
    pub fn controller_of(metadata: &ObjectMeta) -> Option<Self> {
        metadata
            .owner_references
            .as_ref()?
            .iter()
            .find(|r| r.controller == Some(true))
            .map(|r| Self {
                api_version: r.api_version.clone(),
                kind: r.kind.clone(),
                name: r.name.clone(),
            })
    }
}

/// The pod's workload: the top-most well-known owner on its controller chain.
/// - A pod without a controller is its own workload (kind `Pod`), or [`Workload::unknown`] when it has no
///   name yet (only `generateName`).
/// - A pod whose controller is not a well-known kind gives [`Workload::unknown`].
/// - The walk stops below an owner of an unknown kind, and at an owner `lookup` cannot find (a cache
///   that lags shows the ReplicaSet instead of its Deployment rather than nothing).
pub fn workload(pod: &Pod, lookup: impl Fn(&OwnerRef) -> Lookup) -> Workload {
    let Some(mut current) = OwnerRef::controller_of(&pod.metadata) else {
        return match pod.metadata.name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => Workload {
                kind: "Pod".to_owned(),
                name: name.to_owned(),
            },
            None => Workload::unknown(),
        };
    };
    if !is_well_known(&current) {
        return Workload::unknown();
    }
    for _ in 0..MAX_DEPTH {
        match lookup(&current) {
            Lookup::Found(Some(parent)) if is_well_known(&parent) => current = parent,
            Lookup::Found(_) | Lookup::Missing => break,
        }
    }
    Workload {
        kind: current.kind,
        name: current.name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owner(api_version: &str, kind: &str, name: &str) -> OwnerRef {
        OwnerRef {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
        }
    }

    fn pod(name: Option<&str>, controller: Option<OwnerRef>, other: Option<OwnerRef>) -> Pod {
        let reference = |o: OwnerRef, controller: bool| OwnerReference {
            api_version: o.api_version,
            kind: o.kind,
            name: o.name,
            uid: "uid".to_owned(),
            controller: controller.then_some(true),
            ..Default::default()
        };
        let mut pod = Pod::default();
        pod.metadata.name = name.map(str::to_owned);
        let references: Vec<_> = other
            .map(|o| reference(o, false))
            .into_iter()
            .chain(controller.map(|o| reference(o, true)))
            .collect();
        pod.metadata.owner_references = (!references.is_empty()).then_some(references);
        pod
    }

    /// A cluster of Deployment `web` → ReplicaSet `web-5d9` and CronJob `nightly` → Job `nightly-1`.
    fn cluster(o: &OwnerRef) -> Lookup {
        match (o.kind.as_str(), o.name.as_str()) {
            ("ReplicaSet", "web-5d9") => Lookup::Found(Some(owner("apps/v1", "Deployment", "web"))),
            ("Deployment", "web") => Lookup::Found(None),
            ("Job", "nightly-1") => Lookup::Found(Some(owner("batch/v1", "CronJob", "nightly"))),
            ("CronJob", "nightly") => Lookup::Found(None),
            ("ReplicaSet", "rollout-abc") => {
                Lookup::Found(Some(owner("argoproj.io/v1alpha1", "Rollout", "rollout")))
            }
            ("ReplicaSet", "loop") => Lookup::Found(Some(owner("apps/v1", "ReplicaSet", "loop"))),
            _ => Lookup::Missing,
        }
    }

    fn kind_name(w: Workload) -> (String, String) {
        (w.kind, w.name)
    }

    #[test]
    fn owner_chains() {
        let cases = [
            (
                pod(None, Some(owner("apps/v1", "ReplicaSet", "web-5d9")), None),
                ("Deployment", "web"),
            ),
            (
                pod(Some("n"), Some(owner("batch/v1", "Job", "nightly-1")), None),
                ("CronJob", "nightly"),
            ),
            (
                pod(None, Some(owner("apps/v1", "StatefulSet", "db")), None),
                ("StatefulSet", "db"),
            ),
            (
                pod(None, Some(owner("v1", "ReplicationController", "rc")), None),
                ("ReplicationController", "rc"),
            ),
            (
                pod(
                    None,
                    Some(owner("apps.openshift.io/v1", "DeploymentConfig", "dc")),
                    None,
                ),
                ("DeploymentConfig", "dc"),
            ),
            (pod(Some("bare"), None, None), ("Pod", "bare")),
            (pod(None, None, None), (UNKNOWN, UNKNOWN)),
            (
                pod(Some("x"), Some(owner("example.com/v1", "Thing", "t")), None),
                (UNKNOWN, UNKNOWN),
            ),
            (
                pod(None, Some(owner("apps/v1", "ReplicaSet", "rollout-abc")), None),
                ("ReplicaSet", "rollout-abc"),
            ),
            (
                pod(None, Some(owner("apps/v1", "ReplicaSet", "not-cached")), None),
                ("ReplicaSet", "not-cached"),
            ),
            (
                pod(None, Some(owner("apps/v1", "ReplicaSet", "loop")), None),
                ("ReplicaSet", "loop"),
            ),
            (
                pod(
                    Some("p"),
                    Some(owner("apps/v1", "ReplicaSet", "web-5d9")),
                    Some(owner("v1", "ConfigMap", "c")),
                ),
                ("Deployment", "web"),
            ),
            (
                pod(Some("p"), None, Some(owner("apps/v1", "ReplicaSet", "web-5d9"))),
                ("Pod", "p"),
            ),
        ];
        for (pod, (kind, name)) in cases {
            assert_eq!(
                kind_name(workload(&pod, cluster)),
                (kind.to_owned(), name.to_owned()),
                "{:?}",
                pod.metadata.owner_references
            );
        }
    }
}
