//! The `operator` subcommand as a real process against the test cluster: probes and metrics on its health
//! address, and a clean exit on SIGTERM within the shutdown grace period.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn serves_probes_and_metrics_and_stops_on_sigterm() {
    let cluster = testkit::shared_cluster().await.unwrap();
    let client = cluster.client().await.unwrap();
    let endpoint = api::crd::ConversionEndpoint::Service {
        namespace: "dynatrace".into(),
    };
    webhook::registration::apply_crds(&client, &endpoint, "cli-tests")
        .await
        .unwrap();
    let port = testkit::cluster::free_port().unwrap();
    let operator = Command::new(env!("CARGO_BIN_EXE_dynatrace-operator"))
        .args(["operator", "--health-address", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed if the test fails before it stops the operator itself.
    let mut operator = testkit::process::KillOnDrop(operator);
    testkit::eventually("the operator to be ready", Duration::from_secs(60), || async {
        Ok(testkit::http_get(port, "/readyz")
            .await
            .filter(|a| a.starts_with("HTTP/1.1 200")))
    })
    .await
    .unwrap();
    assert!(
        testkit::http_get(port, "/livez")
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        testkit::http_get(port, "/metrics")
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
        started.elapsed() < controller::SHUTDOWN_GRACE + Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
