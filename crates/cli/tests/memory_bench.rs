//! Memory at scale: the real `dynatrace-operator operator` process on a private cluster of 500 kwok nodes
//! and 1,000 namespaces selected by one cloudNativeFullStack DynaKube (against the fake tenant). Prints the
//! process's peak RSS (`VmHWM`), the time until every selected namespace is labelled and has its init
//! Secret, the API requests the operator made, its CPU time, its open sockets and its file-backed RSS per
//! mapped file.
//!
//! Too heavy for the test suite (a 500-node cluster on a 2-core machine); run it by hand:
//!
//! ```text
//! cargo test -p dynatrace-operator --test memory_bench -- --ignored --nocapture
//! ```
//!
//! `BENCH_NODES`, `BENCH_NAMESPACES` and `BENCH_SETTLE_SECS` change the shape and how long the operator
//! runs steady after the Secrets are written before the numbers are read; `BENCH_OPERATOR` runs another
//! build of the binary (to compare two versions).
//!
//! API requests are counted by the API server itself: the operator runs as its own ServiceAccount, and a
//! FlowSchema that matches only that account makes `apiserver_flowcontrol_dispatched_requests_total`
//! count exactly its requests (watches included; the test's own requests run as the admin and are not
//! counted).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use test_fake_tenant::{FakeTenant, Listen, TenantConfig};

const OPERATOR_NS: &str = "dynatrace";
const DYNAKUBE: &str = "dynakube";
const OPERATOR_ACCOUNT: &str = "dynatrace-operator";
const FLOW_SCHEMA: &str = "bench-dynatrace-operator";
const INSTANCE_LABEL: &str = "dynakube.internal.dynatrace.com/instance";
const INIT_SECRET: &str = "dynatrace-dynakube-config";
const ENRICHMENT_SECRET: &str = "dynatrace-data-ingest-endpoint";
const SELECTED: (&str, &str) = ("bench.dynatrace.com/inject", "yes");
/// The operator's log, relative to the workspace.
const LOG: &str = "target/memory-bench-operator.log";
/// How long the operator may take to label the namespaces and write their Secrets.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(600);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy (500 kwok nodes, 1,000 namespaces): run by hand with --ignored --nocapture"]
async fn operator_memory_at_scale() {
    let nodes = usize::try_from(env_or("BENCH_NODES", 500)).unwrap();
    let namespaces = usize::try_from(env_or("BENCH_NAMESPACES", 1000)).unwrap();
    let settle = Duration::from_secs(env_or("BENCH_SETTLE_SECS", 30));

    let started = Instant::now();
    let cluster = test_kit::start_private_cluster(nodes).await.unwrap();
    eprintln!("cluster with {nodes} nodes up after {:?}", started.elapsed());
    let client = cluster.client().await.unwrap();
    test_kit::install_operator_crds(&client).await.unwrap();
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();

    create(
        &client,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": OPERATOR_NS } }),
    )
    .await;
    let names: Vec<String> = (0..namespaces).map(|i| format!("bench-{i:04}")).collect();
    let created = Instant::now();
    futures::stream::iter(names.iter().map(|name| {
        create(
            &client,
            json!({ "apiVersion": "v1", "kind": "Namespace",
                    "metadata": { "name": name, "labels": { SELECTED.0: SELECTED.1 } } }),
        )
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>()
    .await;
    eprintln!("{namespaces} namespaces created in {:?}", created.elapsed());

    let kubeconfig = operator_identity(&client, cluster.kubeconfig()).await;
    create(
        &client,
        json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": "dynatrace-dynakube-oneagent", "namespace": OPERATOR_NS } }),
    )
    .await;
    create(
        &client,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": DYNAKUBE, "namespace": OPERATOR_NS },
                "stringData": { "apiToken": "dt0c01.test" } }),
    )
    .await;
    create(
        &client,
        json!({ "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
                "metadata": { "name": DYNAKUBE, "namespace": OPERATOR_NS },
                "spec": { "apiUrl": tenant.api_url(),
                          "namespaceSelector": { "matchLabels": { SELECTED.0: SELECTED.1 } },
                          "oneAgent": { "cloudNativeFullStack": {} } } }),
    )
    .await;

    let requests_before = operator_requests(&client).await;
    let port = test_kit::cluster::free_port().unwrap();
    let log_path = test_kit::tools::workspace_root().join(LOG);
    let log = std::fs::File::create(&log_path).unwrap();
    let binary = std::env::var_os("BENCH_OPERATOR").map_or_else(
        || env!("CARGO_BIN_EXE_dynatrace-operator").into(),
        std::path::PathBuf::from,
    );
    let operator = Command::new(&binary)
        .args(["operator", "--health-address", &format!("127.0.0.1:{port}")])
        .args(["--namespace", OPERATOR_NS])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let operator_started = Instant::now();
    let pid = operator.id();
    let mut operator = test_kit::process::KillOnDrop(operator);

    let selector = format!("{INSTANCE_LABEL}={DYNAKUBE}");
    let mut samples = Vec::new();
    let labelled_after = wait_for(
        "every selected namespace to be labelled",
        operator_started,
        pid,
        &mut samples,
        || async {
            let list = Api::<Namespace>::all(client.clone())
                .list_metadata(&ListParams::default().labels(&selector))
                .await
                .unwrap();
            list.items.len() >= namespaces
        },
    )
    .await;
    let secrets_after = wait_for(
        "every selected namespace to have its init Secret",
        operator_started,
        pid,
        &mut samples,
        || async {
            let list = Api::<Secret>::all(client.clone())
                .list_metadata(&ListParams::default().fields(&format!("metadata.name={INIT_SECRET}")))
                .await
                .unwrap();
            list.items.len() >= namespaces
        },
    )
    .await;
    let steady_until = Instant::now() + settle;
    while Instant::now() < steady_until {
        samples.push(status_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        operator.0.try_wait().unwrap().is_none(),
        "the operator exited; see {}",
        log_path.display()
    );
    assert_not_forbidden(&log_path);
    let peak = status_kib(pid, "VmHWM:");
    let rss = status_kib(pid, "VmRSS:");
    let anon = status_kib(pid, "RssAnon:");
    let file = status_kib(pid, "RssFile:");
    let requests = operator_requests(&client).await - requests_before;
    let steady = samples.iter().rev().take(10).copied().max().unwrap_or(rss);

    println!();
    println!(
        "operator memory at scale: {nodes} kwok nodes, {namespaces} selected namespaces, 1 cloudNativeFullStack DynaKube"
    );
    println!("  peak RSS (VmHWM)                 {:>8.1} MiB", mib(peak));
    println!(
        "  RSS after {:>3} s steady            {:>8.1} MiB (anon {:.1}, file {:.1})",
        settle.as_secs(),
        mib(steady),
        mib(anon),
        mib(file)
    );
    println!(
        "  every namespace labelled after   {:>8.1} s",
        labelled_after.as_secs_f64()
    );
    println!(
        "  every init Secret written after  {:>8.1} s",
        secrets_after.as_secs_f64()
    );
    println!(
        "  API requests by the operator     {requests:>8} (until {:.0} s after start)",
        operator_started.elapsed().as_secs_f64()
    );
    println!("  CPU time of the operator         {:>8.1} s", cpu_seconds(pid));
    println!("  open sockets (API connections)   {:>8}", open_sockets(pid));
    for (path, kib) in file_rss(pid).into_iter().take(4) {
        println!("  file-backed RSS {:>8.1} MiB  {path}", mib(kib));
    }
    println!();

    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let _ = tokio::task::spawn_blocking(move || operator.0.wait()).await;
    tenant.shutdown().await;
}

/// Waits until `done` holds, sampling the operator's RSS meanwhile; returns the time since `since`.
async fn wait_for<F, Fut>(
    what: &str,
    since: Instant,
    pid: u32,
    samples: &mut Vec<u64>,
    mut done: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    while since.elapsed() < SETTLE_TIMEOUT {
        assert_not_forbidden(&test_kit::tools::workspace_root().join(LOG));
        if done().await {
            return since.elapsed();
        }
        samples.push(status_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out after {SETTLE_TIMEOUT:?} waiting for {what}");
}

/// Fails when the operator's log shows a request the narrow RBAC refused.
fn assert_not_forbidden(log_path: &std::path::Path) {
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    let forbidden: Vec<&str> = log.lines().filter(|l| l.contains("forbidden")).collect();
    assert!(forbidden.is_empty(), "the operator was refused: {forbidden:#?}");
}

/// A field of `/proc/<pid>/status` in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU time of a process so far, from `/proc/<pid>/stat` (in USER_HZ, 100 per second on
/// Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which is in parentheses and may hold spaces); utime and stime
    // are the 14th and 15th fields of the line, the 12th and 13th after the name.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    #[allow(clippy::cast_precision_loss)] // tick counts are far below 2^52
    let seconds = ticks as f64 / 100.0;
    seconds
}

/// How many sockets the process holds open: its connections to the API server and the tenant, and its
/// listening health port.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// Resident file-backed memory per mapped file (from `/proc/<pid>/smaps`), largest first, in KiB.
fn file_rss(pid: u32) -> Vec<(String, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut by_path: BTreeMap<String, u64> = BTreeMap::new();
    let mut path: Option<String> = None;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            // A mapping's header: address range, perms, offset, device, inode, path.
            path = fields
                .get(5)
                .filter(|p| p.starts_with('/'))
                .map(|p| (*p).to_owned());
        } else if let (Some(p), Some(&"Rss:")) = (&path, fields.first()) {
            *by_path.entry(p.clone()).or_default() += fields[1].parse::<u64>().unwrap_or(0);
        }
    }
    let mut sorted: Vec<(String, u64)> = by_path.into_iter().collect();
    sorted.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    sorted
}

#[allow(clippy::cast_precision_loss)] // KiB counts are far below 2^52
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Creates an object given as JSON (its kind from `apiVersion`/`kind`, looked up by discovery).
async fn create(client: &Client, object: Value) {
    test_kit::setup::apply_objects(client, &[object], "memory-bench")
        .await
        .unwrap();
}

/// Gives the operator an identity of its own (a ServiceAccount with the narrow Secret RBAC) and a FlowSchema that
/// matches only it, so the API server counts its requests; returns the path of its kubeconfig.
async fn operator_identity(client: &Client, admin_kubeconfig: &std::path::Path) -> std::path::PathBuf {
    create(
        client,
        json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NS } }),
    )
    .await;
    // Secrets and ConfigMaps as narrow as the README's "RBAC for Secrets" says: in the cluster only the
    // per-namespace Secrets by name (list/watch included: a list with a `metadata.name` field selector is
    // authorized by `resourceNames`) and `create`; everything else only in the namespace of the DynaKube.
    // The other kinds broadly, as this benchmark is not about them.
    let everything = json!(["*"]);
    create(
        client,
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": { "name": "bench-dynatrace-operator" },
                "rules": [
                    { "apiGroups": [""], "resources": ["nodes", "namespaces", "pods", "events", "serviceaccounts"],
                      "verbs": everything },
                    { "apiGroups": ["apps", "dynatrace.com", "events.k8s.io", "coordination.k8s.io",
                                    "admissionregistration.k8s.io", "apiextensions.k8s.io"],
                      "resources": everything, "verbs": everything },
                    { "apiGroups": [""], "resources": ["secrets"], "verbs": ["create"] },
                    { "apiGroups": [""], "resources": ["secrets"],
                      "resourceNames": [INIT_SECRET, ENRICHMENT_SECRET],
                      "verbs": ["get", "list", "watch", "update", "patch", "delete"] },
                ] }),
    )
    .await;
    create(
        client,
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": { "name": "bench-dynatrace-operator" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "bench-dynatrace-operator" },
                "subjects": [{ "kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NS }] }),
    )
    .await;
    create(
        client,
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": { "name": "bench-dynatrace-operator", "namespace": OPERATOR_NS },
                "rules": [{ "apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": everything }] }),
    )
    .await;
    create(
        client,
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": "bench-dynatrace-operator", "namespace": OPERATOR_NS },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": "bench-dynatrace-operator" },
                "subjects": [{ "kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NS }] }),
    )
    .await;
    create(
        client,
        json!({ "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
                "metadata": { "name": FLOW_SCHEMA },
                "spec": {
                    "matchingPrecedence": 100,
                    "priorityLevelConfiguration": { "name": "workload-high" },
                    "distinguisherMethod": { "type": "ByUser" },
                    "rules": [{
                        "subjects": [{ "kind": "ServiceAccount",
                                       "serviceAccount": { "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NS } }],
                        "resourceRules": [{ "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                            "clusterScope": true, "namespaces": ["*"] }],
                        "nonResourceRules": [{ "verbs": ["*"], "nonResourceURLs": ["*"] }],
                    }],
                } }),
    )
    .await;
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": { "audiences": [], "expirationSeconds": 86400 },
    }))
    .unwrap();
    let token = Api::<ServiceAccount>::namespaced(client.clone(), OPERATOR_NS)
        .create_token_request(OPERATOR_ACCOUNT, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let text = std::fs::read_to_string(admin_kubeconfig).unwrap();
    let mut config: Value = serde_saphyr::from_str(&text).unwrap();
    config["users"][0]["user"] = json!({ "token": token });
    let path = admin_kubeconfig.with_file_name("operator-bench-kubeconfig");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();

    // The API server applies a new FlowSchema within a moment; wait until a request shows up under it.
    let operator = test_kit::cluster::client_from_kubeconfig(&path).await.unwrap();
    test_kit::eventually(
        "the FlowSchema to count the operator's requests",
        Duration::from_secs(30),
        || async {
            Api::<Namespace>::all(operator.clone())
                .get_metadata(OPERATOR_NS)
                .await?;
            Ok((operator_requests(client).await > 0).then_some(()))
        },
    )
    .await
    .unwrap();
    path
}

/// The API server's count of requests under the operator's FlowSchema.
async fn operator_requests(client: &Client) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    let counts: BTreeMap<&str, u64> = text
        .lines()
        .filter(|l| l.starts_with("apiserver_flowcontrol_dispatched_requests_total{"))
        .filter(|l| l.contains(&format!("flow_schema=\"{FLOW_SCHEMA}\"")))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series, value.parse::<f64>().ok()? as u64))
        })
        .collect();
    counts.values().sum()
}
