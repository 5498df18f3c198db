//! The `operator` subcommand as a real process against the test cluster: probes and metrics on its health
//! address, a clean exit on SIGTERM within the shutdown grace period, and leader election between two
//! replicas with failover when the leader is killed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn serves_probes_and_metrics_and_stops_on_sigterm() {
    let cluster = test_kit::shared_cluster().await.unwrap();
    let client = cluster.client().await.unwrap();
    test_kit::install_operator_crds(&client).await.unwrap();
    let namespace = test_kit::TestNamespace::create().await.unwrap();
    let port = test_kit::cluster::free_port().unwrap();
    let operator = Command::new(env!("CARGO_BIN_EXE_dynatrace-operator"))
        .args(["operator", "--health-address", &format!("127.0.0.1:{port}")])
        .args(["--namespace", &namespace.name])
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed if the test fails before it stops the operator itself.
    let mut operator = test_kit::process::KillOnDrop(operator);
    test_kit::eventually("the operator to be ready", Duration::from_secs(60), || async {
        Ok(test_kit::http_get(port, "/readyz")
            .await
            .filter(|a| a.starts_with("HTTP/1.1 200")))
    })
    .await
    .unwrap();
    assert!(
        test_kit::http_get(port, "/livez")
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        test_kit::http_get(port, "/metrics")
            .await
            .unwrap()
            .contains("# EOF")
    );

    let pid = rustix::process::Pid::from_raw(i32::try_from(operator.0.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || operator.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < io_controller::SHUTDOWN_GRACE + Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Starts an operator replica whose Lease lives in `namespace`, with a short lease for a quick failover.
fn replica(
    kubeconfig: &std::path::Path,
    namespace: &str,
    name: &str,
) -> (test_kit::process::KillOnDrop, u16) {
    let port = test_kit::cluster::free_port().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_dynatrace-operator"))
        .args(["operator", "--health-address", &format!("127.0.0.1:{port}")])
        .args(["--namespace", namespace, "--pod-name", name])
        .env("KUBECONFIG", kubeconfig)
        .env("LEADER_ELECTION_LEASE_DURATION", "4")
        .env("LEADER_ELECTION_RENEW_DEADLINE", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (test_kit::process::KillOnDrop(child), port)
}

/// The replica's leader gauge and reconcile count, from its /metrics (None while it does not answer).
async fn leader_state(port: u16) -> Option<(bool, u64)> {
    let text = test_kit::http_get(port, "/metrics").await?;
    let leading = text
        .lines()
        .any(|l| l.starts_with("dynatrace_operator_leader{") && l.ends_with(" 1"));
    let reconciles = text
        .lines()
        .filter(|l| l.starts_with("dynatrace_operator_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    Some((leading, reconciles))
}

/// A DynaKube without its token Secret: the leader reconciles it into status condition Tokens=False.
async fn create_dynakube(client: &kube::Client, namespace: &str, name: &str) {
    let dynakube: pure_api::dynakube::DynaKube = serde_json::from_value(serde_json::json!({
        "apiVersion": "dynatrace.com/v1beta1",
        "kind": "DynaKube",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "apiUrl": "https://abc12345.live.dynatrace.com/api", "oneAgent": { "classicFullStack": {} } }
    }))
    .unwrap();
    kube::Api::<pure_api::dynakube::DynaKube>::namespaced(client.clone(), namespace)
        .create(&Default::default(), &dynakube)
        .await
        .unwrap();
}

async fn wait_reconciled(client: &kube::Client, namespace: &str, name: &str, within: Duration) {
    let api = kube::Api::<pure_api::dynakube::DynaKube>::namespaced(client.clone(), namespace);
    test_kit::eventually(&format!("DynaKube {name} reconciled"), within, || async {
        let dynakube = api.get(name).await?;
        Ok(dynakube
            .status
            .and_then(|s| s.conditions)
            .filter(|c| c.iter().any(|c| c.type_ == "Tokens" && c.status == "False")))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_standby_replica_takes_over_when_the_leader_dies() {
    // A private cluster: the replicas watch DynaKubes everywhere, and no other test's operator may
    // reconcile the objects this test counts.
    let cluster = test_kit::start_private_cluster(1).await.unwrap();
    let client = cluster.client().await.unwrap();
    test_kit::install_operator_crds(&client).await.unwrap();
    let namespace = test_kit::TestNamespace::create_in(&cluster).await.unwrap();
    let ns = namespace.name.as_str();

    let mut replicas = vec![
        replica(cluster.kubeconfig(), ns, "operator-a"),
        replica(cluster.kubeconfig(), ns, "operator-b"),
    ];
    let leader = test_kit::eventually("one replica to lead", Duration::from_secs(60), || async {
        let mut states = Vec::new();
        for (_, port) in &replicas {
            states.push(leader_state(*port).await);
        }
        let leaders: Vec<usize> = (0..states.len())
            .filter(|&i| states[i].is_some_and(|(leading, _)| leading))
            .collect();
        anyhow::ensure!(leaders.len() <= 1, "two leaders at once: {states:?}");
        Ok(leaders.first().copied())
    })
    .await
    .unwrap();
    let standby = 1 - leader;

    create_dynakube(&client, ns, "before-failover").await;
    wait_reconciled(&client, ns, "before-failover", Duration::from_secs(30)).await;
    let (standby_leads, standby_reconciles) = leader_state(replicas[standby].1).await.unwrap();
    assert!(!standby_leads, "the standby claims to lead");
    assert_eq!(
        standby_reconciles, 0,
        "the standby reconciled while the other replica led"
    );

    // SIGKILL: no chance to release the Lease, so the standby must wait for it to expire.
    let (mut dead, _) = replicas.remove(leader);
    dead.0.kill().unwrap();
    dead.0.wait().unwrap();
    let killed = Instant::now();
    let survivor_port = replicas[0].1;
    create_dynakube(&client, ns, "after-failover").await;
    wait_reconciled(&client, ns, "after-failover", Duration::from_secs(30)).await;
    let took_over = killed.elapsed();
    let (leads, reconciles) = leader_state(survivor_port).await.unwrap();
    assert!(leads, "the survivor reconciles without leading");
    assert!(reconciles > 0);
    // The Lease lasts 4 s; allow for its expiry, the standby's wait and the reconcile itself.
    assert!(took_over < Duration::from_secs(20), "took {took_over:?}");
    eprintln!("failover took {took_over:?}");
}
