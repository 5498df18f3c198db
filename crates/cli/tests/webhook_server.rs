//! The `webhook-server` subcommand as a real process against the test cluster: ready once its caches sync,
//! JSON logs, a clean exit on SIGTERM, and a clear error without a certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn serves_until_sigterm_and_exits_cleanly() {
    let cluster = test_kit::shared_cluster().await.unwrap();
    let client = cluster.client().await.unwrap();
    // The DynaKube cache needs the CRD.
    test_kit::install_operator_crds(&client).await.unwrap();
    let certs = std::env::temp_dir().join(format!("cli-webhook-certs-{}", std::process::id()));
    std::fs::create_dir_all(&certs).unwrap();
    let ca = test_kit::pki::CertificateAuthority::new("cli-test-ca").unwrap();
    let leaf = ca
        .issue_server_cert("webhook", &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .unwrap();
    std::fs::write(certs.join("tls.crt"), leaf.cert_pem).unwrap();
    std::fs::write(certs.join("tls.key"), leaf.key_pem).unwrap();

    let (port, metrics_port) = (
        test_kit::cluster::free_port().unwrap(),
        test_kit::cluster::free_port().unwrap(),
    );
    let server = Command::new(env!("CARGO_BIN_EXE_dynatrace-operator"))
        .args([
            "webhook-server",
            "--bind-address",
            "127.0.0.1",
            "--log-format",
            "json",
        ])
        .args([
            "--port",
            &port.to_string(),
            "--metrics-port",
            &metrics_port.to_string(),
        ])
        .arg("--certs-dir")
        .arg(&certs)
        .env("KUBECONFIG", cluster.kubeconfig())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed if the test fails before it stops the server itself.
    let mut server = test_kit::process::KillOnDrop(server);
    test_kit::eventually(
        "the webhook server to be ready",
        Duration::from_secs(60),
        || async {
            Ok(test_kit::http_get(metrics_port, "/readyz")
                .await
                .filter(|a| a.starts_with("HTTP/1.1 200")))
        },
    )
    .await
    .unwrap();
    let metrics = test_kit::http_get(metrics_port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("application/openmetrics-text") && metrics.ends_with("# EOF\n"),
        "{metrics}"
    );

    let pid = rustix::process::Pid::from_raw(i32::try_from(server.0.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.0.wait().unwrap();
        let mut logs = String::new();
        std::io::Read::read_to_string(&mut server.0.stdout.take().unwrap(), &mut logs).unwrap();
        (status, logs)
    });
    let (status, logs) = tokio::time::timeout(Duration::from_secs(20), status)
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}; logs:\n{logs}");
    let lines: Vec<serde_json::Value> = logs.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "shutting down"),
        "{logs}"
    );
    std::fs::remove_dir_all(certs).unwrap();
}

#[test]
fn a_missing_certificate_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_dynatrace-operator"))
        .args([
            "webhook-server",
            "--certs-dir",
            "/nonexistent/certs",
            "--port",
            "0",
            "--metrics-port",
            "0",
        ])
        // Any kubeconfig will do: the certificate is checked before the cluster is contacted.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/certs/tls.crt"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tls.key"),
        "the message names both files: {stderr}"
    );
}
