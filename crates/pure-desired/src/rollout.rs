//! Progress of a OneAgent rollout, read from the DaemonSet and its pods.
//!
//! The DaemonSet controller does the recycling: a new version changes the pod template (its version
//! label), and the RollingUpdate strategy replaces the pods with at most `maxUnavailable` unavailable at
//! once, each replacement ready before the next goes. That keeps the rule in one place, survives any
//! restart of the operator (the state is in the cluster, not in the operator), and never recycles a node
//! twice. What the operator adds is visibility: how many nodes are done, how many wait, and which node
//! stops the rollout because its new pod did not become ready in time.

use k8s_openapi::api::apps::v1::DaemonSet;
use pure_api::dynakube::v1beta1::RolloutStatus;

/// The DaemonSet's template generation: its pods carry it in the label [`POD_TEMPLATE_GENERATION_LABEL`].
pub const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// The label the DaemonSet controller puts on its pods with the template generation they were made from.
pub const POD_TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
/// Phase of a resource whose OneAgent pods all run and are ready.
pub const PHASE_RUNNING: &str = "Running";
/// Phase while the DaemonSet controller has not caught up or pods are not ready yet.
pub const PHASE_DEPLOYING: &str = "Deploying";

/// The phase a OneAgent DaemonSet gives its DynaKube or OneAgent: [`PHASE_RUNNING`] once the DaemonSet
/// controller has observed the current generation and every pod it wants is ready, else
/// [`PHASE_DEPLOYING`]. The reference compared scheduled with ready pods, which reads Running before any
/// pod exists.
pub fn daemonset_phase(daemonset: &DaemonSet) -> &'static str {
    let Some(status) = &daemonset.status else {
        return PHASE_DEPLOYING;
    };
    let observed = status.observed_generation >= daemonset.metadata.generation;
    if observed && status.number_ready >= status.desired_number_scheduled {
        PHASE_RUNNING
    } else {
        PHASE_DEPLOYING
    }
}

/// How long a new OneAgent pod may take to become ready before the rollout counts as blocked.
pub const DEFAULT_READY_TIMEOUT_SECONDS: i64 = 300;

/// What the rollout needs to know about one OneAgent pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutPod {
    /// The pod's name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its `pod-template-generation` label.
    pub template_generation: Option<i64>,
    /// Whether its Ready condition is true.
    pub ready: bool,
    /// Whether it is being deleted.
    pub terminating: bool,
    /// When it was created (unix seconds).
    pub created: i64,
}

/// The DaemonSet's side of the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutDaemonSet {
    /// Its template generation (annotation [`TEMPLATE_GENERATION_ANNOTATION`]).
    pub template_generation: Option<i64>,
    /// `status.desiredNumberScheduled`: the nodes that should run a pod.
    pub desired_nodes: i32,
    /// Whether the DaemonSet controller has seen the current spec (`observedGeneration >= generation`).
    pub observed: bool,
}

/// The rollout's state and when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutProgress {
    /// What goes into `status.oneAgent.rollout`.
    pub status: RolloutStatus,
    /// Every wanted node runs a ready pod of the current template.
    pub complete: bool,
    /// Seconds until a new pod that is not ready yet times out: the reconcile requeues then instead of
    /// polling. `None` when nothing is waiting.
    pub recheck_in: Option<i64>,
}

/// The rollout's progress at `now` (unix seconds). A pod of the current template that has not become
/// ready within `ready_timeout` seconds of its creation blocks the rollout (the oldest such pod names the
/// node); the DaemonSet controller will not take more nodes down while it stays unavailable.
pub fn rollout_progress(
    daemonset: &RolloutDaemonSet,
    pods: &[RolloutPod],
    target_version: Option<&str>,
    now: i64,
    ready_timeout: i64,
) -> RolloutProgress {
    let current = |pod: &&RolloutPod| {
        !pod.terminating
            && daemonset.template_generation.is_some()
            && pod.template_generation == daemonset.template_generation
    };
    let mut done: Vec<&str> = pods
        .iter()
        .filter(current)
        .filter(|p| p.ready)
        .map(|p| p.node.as_str())
        .collect();
    done.sort_unstable();
    done.dedup();
    let nodes_done = i32::try_from(done.len()).unwrap_or(i32::MAX);
    let nodes_pending = (daemonset.desired_nodes - nodes_done).max(0);
    let waiting: Vec<&RolloutPod> = pods.iter().filter(current).filter(|p| !p.ready).collect();
    let blocked = waiting
        .iter()
        .filter(|p| now - p.created >= ready_timeout)
        .min_by_key(|p| (p.created, p.node.as_str()));
    let recheck_in = waiting
        .iter()
        .map(|p| p.created + ready_timeout - now)
        .filter(|wait| *wait > 0)
        .min();
    let complete = daemonset.observed && nodes_pending == 0 && waiting.is_empty();
    let version = target_version.unwrap_or("the current spec");
    let message = match blocked {
        Some(pod) => format!(
            "blocked on node {}: OneAgent pod {} has not become ready for {} s; {} of {} nodes run {version}. \
             Look at the pod's events and logs; the rollout continues once it is ready or deleted",
            pod.node,
            pod.name,
            now - pod.created,
            nodes_done,
            daemonset.desired_nodes
        ),
        None if complete => format!("all {nodes_done} nodes run {version}"),
        None => format!(
            "{nodes_done} of {} nodes run {version}, {nodes_pending} to go",
            daemonset.desired_nodes
        ),
    };
    RolloutProgress {
        status: RolloutStatus {
            target_version: target_version.map(str::to_owned),
            nodes_done,
            nodes_pending,
            blocked_node: blocked.map(|p| p.node.clone()),
            message: Some(message),
        },
        complete,
        recheck_in,
    }
}

/// Reason of the rollout condition while the DaemonSet cannot create its pods.
pub const PODS_NOT_CREATED_REASON: &str = "PodsNotCreated";

/// Why the DaemonSet controller cannot create OneAgent pods, in words a user can act on, when pods are
/// missing (`desired` nodes want one, `current` have one) and the DaemonSet's latest `FailedCreate` event
/// says why. `None` while every node has its pod, or while no failure was reported (pods on their way).
pub fn pods_not_created(
    daemonset: &str,
    desired: i32,
    current: i32,
    failed_create: Option<&str>,
) -> Option<String> {
    let message = failed_create.filter(|m| !m.trim().is_empty())?;
    if current >= desired {
        return None;
    }
    Some(format!(
        "the DaemonSet {daemonset} cannot create OneAgent pods: {} of {desired} nodes have none. The \
         DaemonSet controller reports: {}. {}",
        desired - current,
        message.trim(),
        failed_create_hint(message)
    ))
}

/// What to do about a `FailedCreate` message of the DaemonSet controller.
pub fn failed_create_hint(message: &str) -> &'static str {
    let message = message.to_ascii_lowercase();
    if message.contains("serviceaccount") || message.contains("service account") {
        "Create the ServiceAccount the pods use (the Helm chart installs dynatrace-dynakube-oneagent for \
         DynaKubes and dynatrace-oneagent for OneAgent resources), or set the one to use in the spec"
    } else if message.contains("podsecurity") || message.contains("pod security") {
        "OneAgent pods need host access: label the namespace with pod-security.kubernetes.io/enforce=privileged"
    } else if message.contains("security context constraint") {
        "Grant the pods' ServiceAccount an OpenShift SecurityContextConstraints that allows privileged host \
         access (the Helm chart installs one)"
    } else if message.contains("exceeded quota") || message.contains("resourcequota") {
        "Raise the namespace's ResourceQuota or lower the OneAgent resources in the spec"
    } else if message.contains("limitrange") || message.contains("limit range") {
        "Adjust the namespace's LimitRange or the OneAgent resources in the spec"
    } else {
        "Fix what the message names; the DaemonSet controller retries on its own"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pods_with_a_failed_create_are_reported_with_what_to_do() {
        let message = pods_not_created(
            "dk-oneagent",
            3,
            0,
            Some(r#"pods "dk-oneagent-" is forbidden: error looking up service account dynatrace/dynatrace-dynakube-oneagent: serviceaccount "dynatrace-dynakube-oneagent" not found"#),
        )
        .unwrap();
        assert!(
            message.starts_with(
                "the DaemonSet dk-oneagent cannot create OneAgent pods: 3 of 3 nodes have none."
            ),
            "{message}"
        );
        assert!(
            message.contains("serviceaccount \"dynatrace-dynakube-oneagent\" not found"),
            "{message}"
        );
        assert!(
            message.ends_with("or set the one to use in the spec"),
            "{message}"
        );
        assert_eq!(
            pods_not_created("dk-oneagent", 3, 3, Some("anything")),
            None,
            "every node has its pod"
        );
        assert_eq!(
            pods_not_created("dk-oneagent", 3, 1, None),
            None,
            "pods on their way"
        );
        assert_eq!(pods_not_created("dk-oneagent", 3, 1, Some(" ")), None);
    }

    #[test]
    fn each_kind_of_refusal_gets_its_hint() {
        for (message, hint) in [
            (
                "violates PodSecurity \"baseline:latest\": host namespaces",
                "pod-security.kubernetes.io/enforce=privileged",
            ),
            (
                "unable to validate against any security context constraint",
                "SecurityContextConstraints",
            ),
            ("exceeded quota: compute, requested: cpu=1", "ResourceQuota"),
            (
                "maximum cpu usage per Container is 100m (LimitRange)",
                "LimitRange",
            ),
            ("something else", "retries on its own"),
        ] {
            assert!(failed_create_hint(message).contains(hint), "{message}");
        }
    }

    const NOW: i64 = 1_700_000_000;

    fn ds(generation: i64, desired: i32) -> RolloutDaemonSet {
        RolloutDaemonSet {
            template_generation: Some(generation),
            desired_nodes: desired,
            observed: true,
        }
    }

    fn pod(node: &str, generation: i64, ready: bool, age: i64) -> RolloutPod {
        RolloutPod {
            name: format!("oneagent-{node}-{generation}"),
            node: node.to_owned(),
            template_generation: Some(generation),
            ready,
            terminating: false,
            created: NOW - age,
        }
    }

    fn progress(daemonset: &RolloutDaemonSet, pods: &[RolloutPod]) -> RolloutProgress {
        rollout_progress(daemonset, pods, Some("1.2.3"), NOW, DEFAULT_READY_TIMEOUT_SECONDS)
    }

    #[test]
    fn every_node_on_the_current_template_and_ready_is_complete() {
        let pods = [pod("a", 2, true, 10), pod("b", 2, true, 20)];
        let p = progress(&ds(2, 2), &pods);
        assert!(p.complete);
        assert_eq!((p.status.nodes_done, p.status.nodes_pending), (2, 0));
        assert_eq!(p.status.blocked_node, None);
        assert_eq!(p.recheck_in, None);
        assert_eq!(p.status.message.as_deref(), Some("all 2 nodes run 1.2.3"));
    }

    #[test]
    fn old_pods_and_new_pods_not_ready_yet_are_pending_with_a_recheck_at_their_timeout() {
        let pods = [
            pod("a", 2, true, 50),
            pod("b", 2, false, 100),
            pod("c", 1, true, 9_000),
        ];
        let p = progress(&ds(2, 3), &pods);
        assert!(!p.complete);
        assert_eq!((p.status.nodes_done, p.status.nodes_pending), (1, 2));
        assert_eq!(p.status.blocked_node, None);
        assert_eq!(p.recheck_in, Some(DEFAULT_READY_TIMEOUT_SECONDS - 100));
        assert_eq!(
            p.status.message.as_deref(),
            Some("1 of 3 nodes run 1.2.3, 2 to go")
        );
    }

    #[test]
    fn a_new_pod_not_ready_after_the_timeout_blocks_and_names_its_node() {
        let pods = [
            pod("a", 2, true, 900),
            pod("b", 2, false, 400),
            pod("c", 2, false, 350),
            pod("d", 1, true, 9_000),
        ];
        let p = progress(&ds(2, 4), &pods);
        assert!(!p.complete);
        assert_eq!(
            p.status.blocked_node.as_deref(),
            Some("b"),
            "the oldest stuck pod"
        );
        let message = p.status.message.unwrap();
        assert!(
            message
                .starts_with("blocked on node b: OneAgent pod oneagent-b-2 has not become ready for 400 s")
        );
        assert!(message.contains("1 of 4 nodes run 1.2.3"), "{message}");
        assert_eq!(p.recheck_in, None, "both stuck pods timed out already");
    }

    #[test]
    fn terminating_pods_and_duplicates_do_not_count() {
        let mut leaving = pod("a", 2, true, 10);
        leaving.terminating = true;
        let pods = [leaving, pod("b", 2, true, 10), pod("b", 2, true, 5)];
        let p = progress(&ds(2, 2), &pods);
        assert_eq!((p.status.nodes_done, p.status.nodes_pending), (1, 1));
        assert!(!p.complete);
    }

    #[test]
    fn an_unobserved_spec_is_not_complete_even_if_the_pods_look_done() {
        let mut daemonset = ds(2, 1);
        daemonset.observed = false;
        let p = progress(&daemonset, &[pod("a", 2, true, 10)]);
        assert!(!p.complete);
    }

    #[test]
    fn a_daemonset_without_template_generation_counts_nothing_as_current() {
        let daemonset = RolloutDaemonSet {
            template_generation: None,
            desired_nodes: 1,
            observed: true,
        };
        let p = progress(&daemonset, &[pod("a", 1, true, 10)]);
        assert_eq!(p.status.nodes_done, 0);
        assert!(!p.complete);
    }

    #[test]
    fn no_nodes_wanted_is_complete() {
        let p = rollout_progress(&ds(1, 0), &[], None, NOW, 300);
        assert!(p.complete);
        assert_eq!(
            p.status.message.as_deref(),
            Some("all 0 nodes run the current spec")
        );
    }
}
