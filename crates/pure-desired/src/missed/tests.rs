use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A pod of namespace `app` owned by `owner` (kind, name) with `annotations`.
struct Pod {
    namespace: &'static str,
    name: String,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    owner: Option<(&'static str, &'static str)>,
    deleting: bool,
}

fn pod(name: &str, owner: Option<(&'static str, &'static str)>, annotations: &[(&str, &str)]) -> Pod {
    Pod {
        namespace: "app",
        name: name.to_owned(),
        annotations: map(annotations),
        labels: BTreeMap::new(),
        owner,
        deleting: false,
    }
}

impl Pod {
    fn view(&self) -> PodView<'_> {
        PodView {
            namespace: self.namespace,
            name: &self.name,
            annotations: Some(&self.annotations),
            labels: Some(&self.labels),
            controller: self.owner,
            deleting: self.deleting,
        }
    }
}

fn scan(pods: &[Pod]) -> Finding {
    let mut scan = Scan::new();
    for p in pods {
        scan.add(&p.view(), true);
    }
    scan.finish()
}

const RS: Option<(&str, &str)> = Some(("ReplicaSet", "web-5d4f"));

#[test]
fn a_pod_the_webhook_saw_is_injected() {
    for annotations in [
        &[("dynakube.dynatrace.com/injected", "true")][..],
        &[("oneagent.dynatrace.com/injected", "true")],
        &[
            ("oneagent.dynatrace.com/injected", "false"),
            ("oneagent.dynatrace.com/reason", "EmptyConnectionInfo"),
        ],
        &[("data-ingest.dynatrace.com/injected", "true")],
    ] {
        assert_eq!(
            classify(&pod("p", RS, annotations).view(), true),
            PodState::Injected,
            "{annotations:?}"
        );
    }
    // `false` without a reason is not the webhook's doing.
    let odd = pod("p", RS, &[("oneagent.dynatrace.com/injected", "false")]);
    assert_eq!(classify(&odd.view(), true), PodState::Missed);
}

#[test]
fn opted_out_debug_oneagent_and_terminating_pods_do_not_count() {
    for annotations in [
        &[("dynatrace.com/inject", "false")][..],
        &[("oneagent.dynatrace.com/inject", "false")],
        &[("dynatrace.com/inject", "0")],
        &[
            ("debug.openshift.io/source-container", "app"),
            ("debug.openshift.io/source-resource", "pods/x"),
        ],
    ] {
        assert_eq!(
            classify(&pod("p", RS, annotations).view(), true),
            PodState::NotExpected,
            "{annotations:?}"
        );
    }
    let mut oneagent = pod("dk-oneagent-x", Some(("DaemonSet", "dk-oneagent")), &[]);
    oneagent.labels = map(&[
        ("app.kubernetes.io/name", "oneagent"),
        ("app.kubernetes.io/managed-by", "dynatrace-operator"),
    ]);
    assert_eq!(classify(&oneagent.view(), true), PodState::NotExpected);
    let mut leaving = pod("p", RS, &[]);
    leaving.deleting = true;
    assert_eq!(classify(&leaving.view(), true), PodState::NotExpected);
    // Half a debug pod is an ordinary pod.
    let half = pod("p", RS, &[("debug.openshift.io/source-container", "app")]);
    assert_eq!(classify(&half.view(), true), PodState::Missed);
}

#[test]
fn without_automatic_injection_only_pods_that_opt_in_count() {
    let plain = pod("p", RS, &[]);
    assert_eq!(classify(&plain.view(), false), PodState::NotExpected);
    let opted_in = pod("p", RS, &[("oneagent.dynatrace.com/inject", "true")]);
    assert_eq!(classify(&opted_in.view(), false), PodState::Missed);
    assert_eq!(classify(&plain.view(), true), PodState::Missed);
}

#[test]
fn counts_names_a_few_and_finds_each_restartable_owner_once() {
    let mut pods: Vec<Pod> = (0..8).map(|i| pod(&format!("web-{i}"), RS, &[])).collect();
    pods.push(pod("db-0", Some(("StatefulSet", "db")), &[]));
    pods.push(pod("agent-x", Some(("DaemonSet", "agent")), &[]));
    pods.push(pod("batch-1", Some(("Job", "batch")), &[]));
    pods.push(pod("bare", None, &[]));
    pods.push(pod("ok", RS, &[("dynakube.dynatrace.com/injected", "true")]));
    let finding = scan(&pods);
    assert_eq!(finding.missed, 12);
    assert_eq!(
        finding.examples,
        ["app/agent-x", "app/bare", "app/batch-1", "app/db-0", "app/web-0"]
    );
    assert_eq!(finding.not_restartable, 2, "the Job's pod and the bare pod");
    let owners: Vec<(OwnerKind, &str)> = finding
        .candidates
        .iter()
        .map(|c| (c.kind, c.name.as_str()))
        .collect();
    assert_eq!(
        owners,
        [
            (OwnerKind::ReplicaSet, "web-5d4f"),
            (OwnerKind::StatefulSet, "db"),
            (OwnerKind::DaemonSet, "agent"),
        ]
    );
    assert_eq!(finding.candidates[0].pod, "web-0");
    assert_eq!(finding.held_back, 0);
}

#[test]
fn pods_of_a_restart_that_did_not_help_are_not_restarted_again() {
    let restarted = [(RESTART_ANNOTATION, "deployment/web@2026-01-01T00:00:00Z")];
    // The webhook is still down: every pod of the restart is missed again.
    let finding = scan(&[
        pod("web-a", Some(("ReplicaSet", "web-2")), &restarted),
        pod("web-b", Some(("ReplicaSet", "web-2")), &restarted),
    ]);
    assert_eq!(finding.missed, 2);
    assert!(finding.candidates.is_empty());
    assert_eq!(finding.held_back, 1);
}

#[test]
fn a_restart_that_worked_makes_a_later_miss_a_new_cause() {
    let restarted = [(RESTART_ANNOTATION, "deployment/web@2026-01-01T00:00:00Z")];
    let mut injected = restarted.to_vec();
    injected.push(("dynakube.dynatrace.com/injected", "true"));
    // The restart's pods were injected, then a scale-up happened during a later outage.
    let finding = scan(&[
        pod("web-a", Some(("ReplicaSet", "web-2")), &injected),
        pod("web-b", Some(("ReplicaSet", "web-2")), &restarted),
    ]);
    assert_eq!(finding.candidates.len(), 1);
    assert_eq!(finding.candidates[0].pod, "web-b");
    // The same value in another namespace proves nothing here.
    let mut elsewhere = pod("web-a", Some(("ReplicaSet", "web-2")), &injected);
    elsewhere.namespace = "other";
    let finding = scan(&[elsewhere, pod("web-b", Some(("ReplicaSet", "web-2")), &restarted)]);
    assert!(finding.candidates.is_empty());
}

fn workload(kind: WorkloadKind, name: &str, pod: &str) -> Workload {
    Workload {
        namespace: "app".to_owned(),
        kind,
        name: name.to_owned(),
        pod: pod.to_owned(),
    }
}

#[test]
fn the_budget_limits_restarts_and_a_workload_counts_once() {
    let workloads = vec![
        workload(WorkloadKind::StatefulSet, "db", "db-0"),
        workload(WorkloadKind::Deployment, "web", "web-new-1"),
        workload(WorkloadKind::Deployment, "web", "web-old-1"),
        workload(WorkloadKind::Deployment, "api", "api-1"),
    ];
    let (now, deferred) = plan_restarts(workloads.clone(), 2);
    assert_eq!(
        now,
        [
            workload(WorkloadKind::Deployment, "api", "api-1"),
            workload(WorkloadKind::Deployment, "web", "web-new-1"),
        ]
    );
    assert_eq!(deferred, 1);
    let (now, deferred) = plan_restarts(workloads, 0);
    assert!(now.is_empty());
    assert_eq!(deferred, 3);
}

#[test]
fn the_restart_patch_rolls_the_template_and_records_the_cause() {
    let patch = restart_patch(
        &workload(WorkloadKind::Deployment, "web", "web-5d4f-x"),
        "dynakube",
        "2026-01-01T00:00:00Z",
    );
    assert_eq!(
        patch["spec"]["template"]["metadata"]["annotations"][RESTART_ANNOTATION],
        "deployment/web@2026-01-01T00:00:00Z"
    );
    let cause = patch["metadata"]["annotations"][RESTART_CAUSE_ANNOTATION]
        .as_str()
        .unwrap();
    assert!(cause.contains("pod app/web-5d4f-x"), "{cause}");
    assert!(cause.contains("DynaKube dynakube"), "{cause}");
}

fn time(at: &str) -> Time {
    Time(at.parse().unwrap())
}

fn finding(missed: usize, examples: &[&str]) -> Finding {
    Finding {
        missed,
        examples: examples.iter().map(|e| (*e).to_owned()).collect(),
        ..Finding::default()
    }
}

#[test]
fn the_status_is_written_when_the_result_changes_or_hourly() {
    let t0 = time("2026-01-01T00:00:00Z");
    let first = next_status(None, &finding(0, &[]), &t0).unwrap();
    assert_eq!(first.pods_not_injected, 0);
    assert_eq!(first.examples, None);
    assert_eq!(first.last_check_time, Some(t0.clone()));
    let stored = next_status(None, &finding(2, &["app/a", "app/b"]), &t0).unwrap();
    let later = time("2026-01-01T00:05:00Z");
    assert_eq!(
        next_status(Some(&stored), &finding(2, &["app/a", "app/b"]), &later),
        None
    );
    let changed = next_status(Some(&stored), &finding(2, &["app/a", "app/c"]), &later).unwrap();
    assert_eq!(changed.examples.unwrap(), ["app/a", "app/c"]);
    assert_eq!(
        next_status(Some(&stored), &finding(1, &["app/a"]), &later)
            .unwrap()
            .pods_not_injected,
        1
    );
    let hour = time("2026-01-01T01:00:00Z");
    assert!(next_status(Some(&stored), &finding(2, &["app/a", "app/b"]), &hour).is_some());
    // A stored time in the future (a clock jumped) is refreshed.
    let past = time("2025-12-31T00:00:00Z");
    assert!(next_status(Some(&stored), &finding(2, &["app/a", "app/b"]), &past).is_some());
}

#[test]
fn the_event_names_the_pods_and_what_to_do_only_when_the_set_changes() {
    let t0 = time("2026-01-01T00:00:00Z");
    let seven: Vec<String> = (0..5).map(|i| format!("app/p{i}")).collect();
    let found = Finding {
        missed: 7,
        examples: seven,
        ..Finding::default()
    };
    let (severity, reason, note) = event(None, &found, None, 5).unwrap();
    assert_eq!((severity, reason), (Severity::Warning, MISSED_REASON));
    assert!(
        note.starts_with("7 running pod(s) have no OneAgent code module: app/p0, app/p1"),
        "{note}"
    );
    assert!(note.contains("app/p4 and 2 more"), "{note}");
    assert!(
        note.contains("webhook was unavailable or before their namespace was mapped"),
        "{note}"
    );
    assert!(note.contains("restart-missed-injections: \"true\""), "{note}");
    let (_, _, note) = event(None, &found, Some(3), 5).unwrap();
    assert!(
        note.contains("at most 3 every 5 min and once per cause"),
        "{note}"
    );

    let stored = next_status(None, &found, &t0).unwrap();
    assert_eq!(event(Some(&stored), &found, None, 5), None, "same set, no event");
    let (severity, reason, _) = event(Some(&stored), &finding(0, &[]), None, 5).unwrap();
    assert_eq!((severity, reason), (Severity::Normal, RESOLVED_REASON));
    assert_eq!(
        event(None, &finding(0, &[]), None, 5),
        None,
        "nothing was ever missed"
    );
}

#[test]
fn the_restart_note_names_workloads_and_the_deferred_rest() {
    assert_eq!(restarted_note(&[], 3), None);
    let note = restarted_note(&[workload(WorkloadKind::Deployment, "web", "web-1")], 2).unwrap();
    assert_eq!(
        note,
        "restarted 1 workload(s) whose pods were not injected: deployment app/web (pod web-1 not \
         injected); 2 more wait for the next check (budget)"
    );
}
