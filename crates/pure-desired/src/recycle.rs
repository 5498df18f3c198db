//! Per-node OneAgent updates of the legacy `OneAgent` resource in installer mode (spec §7.4).
//!
//! There the pod template does not change with the version (the installer fetches the latest agent when
//! the pod starts), so the DaemonSet controller has nothing to roll out: the operator deletes the pods
//! whose host reports an older agent, one at a time, and the DaemonSet recreates them. The reference
//! polled inside its reconcile for up to `waitReadySeconds` per node; here each step is one decision from
//! what the cluster shows, so a restart of the operator resumes where it was:
//! - a pod created after the target version was adopted (`target_since`) already runs it, whatever the
//!   hosts API still says, so no node is recycled twice;
//! - nothing is deleted while any pod is missing, not ready or terminating;
//! - a replacement that is not ready within `waitReadySeconds` blocks the update and names its node.

use std::collections::BTreeMap;

use crate::version::{is_downgrade, parse_version};

/// What the plan needs to know about one pod of the legacy DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAgentPod {
    /// The pod's name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its host IP, the key of the hosts API.
    pub host_ip: Option<String>,
    /// Whether it is ready.
    pub ready: bool,
    /// Whether it is being deleted.
    pub terminating: bool,
    /// When it was created (unix seconds).
    pub created: i64,
}

/// The next step of a per-node update.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecyclePlan {
    /// Nodes whose pod runs an older agent and predates the target, in node order.
    pub outdated: Vec<String>,
    /// The pod to delete now, if any.
    pub delete: Option<String>,
    /// The node whose replacement did not become ready within the wait, and for how long it waited.
    pub blocked: Option<(String, i64)>,
    /// Seconds until a replacement that is not ready yet times out (requeue then instead of polling).
    pub recheck_in: Option<i64>,
}

/// Decides the next step at `now` (unix seconds). `host_versions` maps host IPs to the agent version the
/// hosts API reports; `desired_nodes` is the DaemonSet's `desiredNumberScheduled`.
pub fn recycle_plan(
    pods: &[NodeAgentPod],
    host_versions: &BTreeMap<String, String>,
    target: &str,
    target_since: i64,
    desired_nodes: i32,
    now: i64,
    wait_ready_seconds: i64,
) -> RecyclePlan {
    let target_ok = parse_version(target).is_ok();
    let mut outdated: Vec<&NodeAgentPod> = pods
        .iter()
        .filter(|p| target_ok && !p.terminating && p.created < target_since)
        .filter(|p| {
            let version = p.host_ip.as_ref().and_then(|ip| host_versions.get(ip));
            version.is_some_and(|v| v != target && parse_version(v).is_ok() && is_downgrade(target, v))
        })
        .collect();
    outdated.sort_by(|a, b| a.node.cmp(&b.node));
    let mut plan = RecyclePlan {
        outdated: outdated.iter().map(|p| p.node.clone()).collect(),
        ..RecyclePlan::default()
    };
    let live: Vec<&NodeAgentPod> = pods.iter().filter(|p| !p.terminating).collect();
    let unready: Vec<&&NodeAgentPod> = live.iter().filter(|p| !p.ready).collect();
    plan.blocked = unready
        .iter()
        .filter(|p| p.created >= target_since && now - p.created >= wait_ready_seconds)
        .min_by_key(|p| (p.created, p.node.as_str()))
        .map(|p| (p.node.clone(), now - p.created));
    plan.recheck_in = unready
        .iter()
        .map(|p| p.created + wait_ready_seconds - now)
        .filter(|wait| *wait > 0)
        .min();
    let settled = unready.is_empty()
        && live.len() == pods.len()
        && i32::try_from(live.len()).unwrap_or(i32::MAX) >= desired_nodes;
    if settled {
        plan.delete = outdated.first().map(|p| p.name.clone());
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const SINCE: i64 = NOW - 100;
    const OLD: &str = "1.277.0.20230914-094321";
    const NEW: &str = "1.278.0.20231001-000000";

    fn pod(node: &str, created: i64, ready: bool) -> NodeAgentPod {
        NodeAgentPod {
            name: format!("oa-{node}"),
            node: node.to_owned(),
            host_ip: Some(format!("10.0.0.{}", node.len())),
            ready,
            terminating: false,
            created,
        }
    }

    fn hosts(pods: &[NodeAgentPod], version: &str) -> BTreeMap<String, String> {
        pods.iter()
            .filter_map(|p| Some((p.host_ip.clone()?, version.to_owned())))
            .collect()
    }

    fn plan(pods: &[NodeAgentPod], versions: &BTreeMap<String, String>) -> RecyclePlan {
        recycle_plan(pods, versions, NEW, SINCE, 3, NOW, 300)
    }

    fn three(created: [i64; 3], ready: [bool; 3]) -> Vec<NodeAgentPod> {
        ["a", "bb", "ccc"]
            .iter()
            .zip(created.iter().zip(ready))
            .map(|(node, (created, ready))| pod(node, *created, ready))
            .collect()
    }

    #[test]
    fn deletes_the_first_outdated_pod_when_everything_is_ready() {
        let pods = three([NOW - 9000; 3], [true; 3]);
        let p = plan(&pods, &hosts(&pods, OLD));
        assert_eq!(p.outdated, ["a", "bb", "ccc"]);
        assert_eq!(p.delete.as_deref(), Some("oa-a"));
        assert_eq!((p.blocked, p.recheck_in), (None, None));
    }

    #[test]
    fn a_pod_created_after_the_target_is_never_outdated_even_if_the_host_lags() {
        let pods = three([NOW - 50, NOW - 9000, NOW - 9000], [true; 3]);
        let p = plan(&pods, &hosts(&pods, OLD));
        assert_eq!(p.outdated, ["bb", "ccc"]);
        assert_eq!(p.delete.as_deref(), Some("oa-bb"));
    }

    #[test]
    fn waits_while_a_replacement_is_missing_unready_or_a_pod_terminates() {
        let mut pods = three([NOW - 9000; 3], [true; 3]);
        let versions = hosts(&pods, OLD);
        let missing = &pods[1..];
        assert_eq!(plan(missing, &versions).delete, None, "a node has no pod yet");
        pods[0].created = NOW - 20;
        pods[0].ready = false;
        let p = plan(&pods, &versions);
        assert_eq!(p.delete, None);
        assert_eq!(p.recheck_in, Some(280));
        assert_eq!(p.blocked, None);
        pods[0].ready = true;
        pods[1].terminating = true;
        assert_eq!(plan(&pods, &versions).delete, None, "a pod is terminating");
    }

    #[test]
    fn a_replacement_not_ready_within_the_wait_blocks_and_names_its_node() {
        let mut pods = three([NOW - 9000; 3], [true; 3]);
        pods[2].created = NOW - 90;
        pods[2].ready = false;
        let p = recycle_plan(&pods, &hosts(&pods, OLD), NEW, SINCE, 3, NOW, 60);
        assert_eq!(p.blocked, Some(("ccc".to_owned(), 90)));
        assert_eq!(p.delete, None);
        // An old pod that is not ready is not a blocked replacement: the update just waits.
        let mut old = three([NOW - 9000; 3], [true; 3]);
        old[0].ready = false;
        let p = recycle_plan(&old, &hosts(&old, OLD), NEW, SINCE, 3, NOW, 60);
        assert_eq!((p.blocked, p.delete), (None, None));
    }

    #[test]
    fn up_to_date_newer_unknown_or_unparsable_hosts_are_left_alone() {
        let pods = three([NOW - 9000; 3], [true; 3]);
        let mut versions = BTreeMap::new();
        versions.insert("10.0.0.1".to_owned(), NEW.to_owned());
        versions.insert("10.0.0.2".to_owned(), "1.300.0.20250101-000000".to_owned());
        // 10.0.0.3 unknown to the hosts API
        let p = plan(&pods, &versions);
        assert!(p.outdated.is_empty(), "{p:?}");
        assert_eq!(p.delete, None);
        let mut garbage = BTreeMap::new();
        garbage.insert("10.0.0.1".to_owned(), "not-a-version".to_owned());
        assert!(plan(&pods, &garbage).outdated.is_empty());
        assert!(
            recycle_plan(&pods, &hosts(&pods, OLD), "latest", SINCE, 3, NOW, 60)
                .outdated
                .is_empty()
        );
    }
}
