//! Missed injection: running pods in the namespaces a DynaKube injects into that the webhook did not inject,
//! because they were created while the webhook was unavailable (its `failurePolicy` is `Ignore`, so the
//! API server admits them unchanged) or before their namespace was mapped. No peer of the reference finds
//! them; users find them weeks later, uninstrumented.
//!
//! The caller lists pod metadata page by page and feeds each pod to a [`Scan`]; [`Scan::finish`] gives the
//! count, a few examples and the workloads that may be restarted. [`next_status`] says whether the
//! DynaKube's `status.injection` must be written, [`event`] what to tell the user when the set changed,
//! [`plan_restarts`] which workloads to restart within the budget, and [`restart_patch`] how.
//!
//! **Never twice for one cause.** A restart sets [`RESTART_ANNOTATION`] in the pod template (which is what
//! makes the workload roll, like `kubectl rollout restart`), with a value unique to the restart, so every
//! pod it creates carries it. A missed pod with that annotation came from a restart of ours: the webhook
//! failed again for it, and restarting again would only loop while the webhook is down. Such a pod is a
//! new cause only when another pod with the same value in its namespace was injected, which proves that the
//! webhook worked after the restart and failed later (a scale-up during a later outage, for example).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use pure_api::annotations::{self, parse_bool};
use pure_api::dynakube::v1beta1::InjectionStatus;
use serde_json::json;

use crate::pod::{LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY_OPERATOR};

/// Pod-template annotation a restart sets (value: the workload and the time, unique per restart); the
/// pods it creates carry it.
pub const RESTART_ANNOTATION: &str = "dynatrace.com/missed-injection-restart";
/// Workload annotation a restart sets: why the operator restarted it, in words.
pub const RESTART_CAUSE_ANNOTATION: &str = "dynatrace.com/missed-injection-restart-cause";
/// How many pods the status and the event name.
pub const EXAMPLES: usize = 5;
/// An unchanged result is written again after this many seconds, so that `lastCheckTime` shows the checks
/// still run without a write every check.
pub const STATUS_REFRESH_SECONDS: i64 = 3600;
/// Reason of the warning event naming the missed pods.
pub const MISSED_REASON: &str = "PodsNotInjected";
/// Reason of the normal event when no missed pod is left.
pub const RESOLVED_REASON: &str = "AllPodsInjected";
/// Reason of the normal event naming the workloads restarted.
pub const RESTARTED_REASON: &str = "MissedInjectionRestart";
/// `app.kubernetes.io/name` of the OneAgent's own pods, which are never injected.
const ONEAGENT_APP_NAME: &str = "oneagent";
/// Event notes are limited to 1 kB.
const MAX_NOTE_BYTES: usize = 1000;

/// What the check needs to know about a running pod (from its metadata only).
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod's name.
    pub name: &'a str,
    /// Its annotations.
    pub annotations: Option<&'a BTreeMap<String, String>>,
    /// Its labels.
    pub labels: Option<&'a BTreeMap<String, String>>,
    /// Kind and name of its controller owner, if any.
    pub controller: Option<(&'a str, &'a str)>,
    /// It is being deleted.
    pub deleting: bool,
}

impl PodView<'_> {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations?.get(key).map(String::as_str)
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels?.get(key).map(String::as_str)
    }
}

/// How a running pod stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// The webhook saw it: injected, or left out with a reason.
    Injected,
    /// Not to be injected: opted out, an OpenShift debug pod, the OneAgent itself, or terminating.
    NotExpected,
    /// Should have been injected and was not.
    Missed,
}

/// Classifies a pod of a namespace mapped to a DynaKube whose `automatic-injection` flag is
/// `automatic_injection` (spec §3.4): a pod counts as injected when the webhook marked it
/// (`dynakube.dynatrace.com/injected: "true"`, `oneagent.dynatrace.com/injected` `"true"` or `"false"` with
/// a reason, `data-ingest.dynatrace.com/injected: "true"`).
pub fn classify(pod: &PodView<'_>, automatic_injection: bool) -> PodState {
    let is_true = |key| pod.annotation(key).and_then(parse_bool) == Some(true);
    let is_false = |key| pod.annotation(key).and_then(parse_bool) == Some(false);
    let oneagent_seen = match pod
        .annotation(annotations::ONEAGENT_INJECTED)
        .and_then(parse_bool)
    {
        Some(true) => true,
        Some(false) => pod.annotation(annotations::ONEAGENT_REASON).is_some(),
        None => false,
    };
    if is_true(annotations::DYNAKUBE_INJECTED) || oneagent_seen || is_true(annotations::DATA_INGEST_INJECTED)
    {
        return PodState::Injected;
    }
    let oneagent_wanted = pod
        .annotation(annotations::ONEAGENT_INJECT)
        .and_then(parse_bool)
        .unwrap_or(automatic_injection);
    let openshift_debug = pod.annotation(annotations::OPENSHIFT_DEBUG_CONTAINER).is_some()
        && pod.annotation(annotations::OPENSHIFT_DEBUG_RESOURCE).is_some();
    let oneagent_itself = pod.label(LABEL_NAME) == Some(ONEAGENT_APP_NAME)
        && pod.label(LABEL_MANAGED_BY) == Some(MANAGED_BY_OPERATOR);
    if pod.deleting || is_false(annotations::INJECT) || !oneagent_wanted || openshift_debug || oneagent_itself
    {
        return PodState::NotExpected;
    }
    PodState::Missed
}

/// The kinds of controller owner whose workload can be restarted (a ReplicaSet through its Deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnerKind {
    /// Owned by a ReplicaSet: restartable when the ReplicaSet belongs to a Deployment.
    ReplicaSet,
    /// A StatefulSet's pod.
    StatefulSet,
    /// A DaemonSet's pod.
    DaemonSet,
}

impl OwnerKind {
    /// The kind of a pod's controller owner, when its workload can be restarted. Jobs (a restart would run
    /// them again), bare pods and other controllers never are.
    pub fn of(kind: &str) -> Option<Self> {
        match kind {
            "ReplicaSet" => Some(Self::ReplicaSet),
            "StatefulSet" => Some(Self::StatefulSet),
            "DaemonSet" => Some(Self::DaemonSet),
            _ => None,
        }
    }
}

/// A pod's controller owner that may be restarted, with one of its missed pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The namespace.
    pub namespace: String,
    /// The owner's kind.
    pub kind: OwnerKind,
    /// The owner's name.
    pub name: String,
    /// One missed pod of it (its name).
    pub pod: String,
}

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finding {
    /// How many running pods were missed.
    pub missed: usize,
    /// The first [`EXAMPLES`] of them as `namespace/name`, sorted.
    pub examples: Vec<String>,
    /// Owners of missed pods whose workload may be restarted, sorted by namespace, kind and name.
    pub candidates: Vec<Candidate>,
    /// Owners of missed pods that came from an earlier restart that did not help (same cause).
    pub held_back: usize,
    /// Missed pods no restart can reach: bare pods, Jobs' pods, pods of other controllers.
    pub not_restartable: usize,
}

/// The owner of missed pods, while scanning: one pod of it and the restart values its missed pods carry.
struct MissedOwner {
    pod: String,
    /// `None` for a pod without [`RESTART_ANNOTATION`].
    restarts: BTreeSet<Option<String>>,
}

/// Accumulates a check over pages of pods, keeping only what the result needs (a pod is not kept).
#[derive(Default)]
pub struct Scan {
    missed: usize,
    examples: BTreeSet<String>,
    not_restartable: usize,
    owners: BTreeMap<(String, OwnerKind, String), MissedOwner>,
    /// (namespace, restart value) of injected pods: restarts that worked.
    worked: HashSet<(String, String)>,
}

impl Scan {
    /// An empty scan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one running pod of a mapped namespace.
    pub fn add(&mut self, pod: &PodView<'_>, automatic_injection: bool) {
        let restart = pod.annotation(RESTART_ANNOTATION);
        match classify(pod, automatic_injection) {
            PodState::NotExpected => {}
            PodState::Injected => {
                if let Some(value) = restart {
                    self.worked.insert((pod.namespace.to_owned(), value.to_owned()));
                }
            }
            PodState::Missed => {
                self.missed += 1;
                self.examples.insert(format!("{}/{}", pod.namespace, pod.name));
                if self.examples.len() > EXAMPLES {
                    self.examples.pop_last();
                }
                let owner = pod
                    .controller
                    .and_then(|(kind, name)| Some((OwnerKind::of(kind)?, name)));
                let Some((kind, name)) = owner else {
                    self.not_restartable += 1;
                    return;
                };
                self.owners
                    .entry((pod.namespace.to_owned(), kind, name.to_owned()))
                    .or_insert_with(|| MissedOwner {
                        pod: pod.name.to_owned(),
                        restarts: BTreeSet::new(),
                    })
                    .restarts
                    .insert(restart.map(str::to_owned));
            }
        }
    }

    /// The result. An owner is a candidate when one of its missed pods did not come from a restart of
    /// ours, or came from one that worked for another pod (see the module documentation).
    pub fn finish(self) -> Finding {
        let mut candidates = Vec::new();
        let mut held_back = 0;
        for ((namespace, kind, name), owner) in self.owners {
            let new_cause = owner.restarts.iter().any(|restart| match restart {
                None => true,
                Some(value) => self.worked.contains(&(namespace.clone(), value.clone())),
            });
            if new_cause {
                candidates.push(Candidate {
                    namespace,
                    kind,
                    name,
                    pod: owner.pod,
                });
            } else {
                held_back += 1;
            }
        }
        Finding {
            missed: self.missed,
            examples: self.examples.into_iter().collect(),
            candidates,
            held_back,
            not_restartable: self.not_restartable,
        }
    }
}

/// The kinds of workload that are restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Deployment => "deployment",
            Self::StatefulSet => "statefulset",
            Self::DaemonSet => "daemonset",
        })
    }
}

/// A workload to restart, with the missed pod that is the reason.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    /// The namespace.
    pub namespace: String,
    /// The kind.
    pub kind: WorkloadKind,
    /// The name.
    pub name: String,
    /// A missed pod of it (its name).
    pub pod: String,
}

impl Workload {
    /// The workload of a candidate whose owner is itself the workload; `None` for a ReplicaSet, whose
    /// Deployment the caller looks up.
    pub fn direct(candidate: &Candidate) -> Option<Self> {
        let kind = match candidate.kind {
            OwnerKind::ReplicaSet => return None,
            OwnerKind::StatefulSet => WorkloadKind::StatefulSet,
            OwnerKind::DaemonSet => WorkloadKind::DaemonSet,
        };
        Some(Self {
            namespace: candidate.namespace.clone(),
            kind,
            name: candidate.name.clone(),
            pod: candidate.pod.clone(),
        })
    }

    /// The Deployment that owns a candidate ReplicaSet.
    pub fn deployment(candidate: &Candidate, deployment: &str) -> Self {
        Self {
            namespace: candidate.namespace.clone(),
            kind: WorkloadKind::Deployment,
            name: deployment.to_owned(),
            pod: candidate.pod.clone(),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The workloads to restart now: each once (two ReplicaSets of one Deployment are one workload), in a
/// stable order, at most `budget`; and how many wait for a later check.
pub fn plan_restarts(workloads: Vec<Workload>, budget: usize) -> (Vec<Workload>, usize) {
    let mut seen = HashSet::new();
    let mut unique: Vec<Workload> = workloads
        .into_iter()
        .filter(|w| seen.insert((w.namespace.clone(), w.kind, w.name.clone())))
        .collect();
    unique.sort();
    let deferred = unique.len().saturating_sub(budget);
    unique.truncate(budget);
    (unique, deferred)
}

/// The merge patch that restarts `workload` for DynaKube `dynakube` at `now` (RFC 3339): the pod template
/// gets [`RESTART_ANNOTATION`] (which rolls the pods, like `kubectl rollout restart`) and the workload
/// [`RESTART_CAUSE_ANNOTATION`].
pub fn restart_patch(workload: &Workload, dynakube: &str, now: &str) -> serde_json::Value {
    let value = format!("{}/{}@{now}", workload.kind, workload.name);
    let cause = format!(
        "pod {}/{} ran without the OneAgent code module of DynaKube {dynakube} (created while the webhook \
         was unavailable or before the namespace was mapped); restarted by dynatrace-operator at {now}",
        workload.namespace, workload.pod
    );
    json!({
        "metadata": { "annotations": { RESTART_CAUSE_ANNOTATION: cause } },
        "spec": { "template": { "metadata": { "annotations": { RESTART_ANNOTATION: value } } } },
    })
}

/// The status to write after a check, or `None` when the stored one still says the same: the count and
/// examples are unchanged and it was written less than [`STATUS_REFRESH_SECONDS`] ago.
pub fn next_status(
    stored: Option<&InjectionStatus>,
    finding: &Finding,
    now: &Time,
) -> Option<InjectionStatus> {
    let fresh = InjectionStatus {
        pods_not_injected: i64::try_from(finding.missed).unwrap_or(i64::MAX),
        examples: (!finding.examples.is_empty()).then(|| finding.examples.clone()),
        last_check_time: Some(now.clone()),
    };
    let Some(stored) = stored else {
        return Some(fresh);
    };
    let same = stored.pods_not_injected == fresh.pods_not_injected && stored.examples == fresh.examples;
    let recent = stored.last_check_time.as_ref().is_some_and(|last| {
        let age = now.0.as_second().saturating_sub(last.0.as_second());
        (0..STATUS_REFRESH_SECONDS).contains(&age)
    });
    (!same || !recent).then_some(fresh)
}

/// Whether an event is a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something went as intended.
    Normal,
    /// The user should look.
    Warning,
}

/// The event about the result of a check when it differs from the stored one (count or examples):
/// severity, reason, note. `restart_budget` is the budget when restarts are on.
pub fn event(
    stored: Option<&InjectionStatus>,
    finding: &Finding,
    restart_budget: Option<u32>,
    interval_minutes: u64,
) -> Option<(Severity, &'static str, String)> {
    let before = stored.map_or(0, |s| s.pods_not_injected);
    let before_examples = stored.and_then(|s| s.examples.as_deref()).unwrap_or_default();
    let count = i64::try_from(finding.missed).unwrap_or(i64::MAX);
    if count == before && before_examples == finding.examples.as_slice() {
        return None;
    }
    if count == 0 {
        return Some((
            Severity::Normal,
            RESOLVED_REASON,
            "every running pod in the namespaces this DynaKube injects into has the OneAgent code module"
                .to_owned(),
        ));
    }
    let mut named = finding.examples.join(", ");
    if finding.missed > finding.examples.len() {
        named.push_str(&format!(" and {} more", finding.missed - finding.examples.len()));
    }
    let what_to_do = match restart_budget {
        Some(budget) => format!(
            "feature.dynatrace.com/restart-missed-injections is on: the operator restarts their \
             Deployments, StatefulSets and DaemonSets, at most {budget} every {interval_minutes} min and \
             once per cause; restart Jobs and bare pods yourself once the webhook works"
        ),
        None => "once the webhook works, restart their workloads (kubectl rollout restart), or set \
                 feature.dynatrace.com/restart-missed-injections: \"true\" on this DynaKube to let the \
                 operator restart Deployments, StatefulSets and DaemonSets"
            .to_owned(),
    };
    let note = format!(
        "{count} running pod(s) have no OneAgent code module: {named}. They were created while the \
         webhook was unavailable or before their namespace was mapped to this DynaKube. Check the webhook \
         (Deployment dynatrace-webhook, its events and logs); {what_to_do}"
    );
    Some((Severity::Warning, MISSED_REASON, truncate(note)))
}

/// The note of the event naming the workloads restarted in a check (`None` when none was).
pub fn restarted_note(restarted: &[Workload], deferred: usize) -> Option<String> {
    if restarted.is_empty() {
        return None;
    }
    let names: Vec<String> = restarted
        .iter()
        .map(|w| format!("{w} (pod {} not injected)", w.pod))
        .collect();
    let mut note = format!(
        "restarted {} workload(s) whose pods were not injected: {}",
        restarted.len(),
        names.join(", ")
    );
    if deferred > 0 {
        note.push_str(&format!("; {deferred} more wait for the next check (budget)"));
    }
    Some(truncate(note))
}

fn truncate(mut note: String) -> String {
    if note.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
