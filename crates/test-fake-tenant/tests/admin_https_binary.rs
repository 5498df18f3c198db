//! HTTPS with a testkit certificate, the admin API, and the `fake-tenant` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use test_fake_tenant::{Endpoint, FakeTenant, Fault, Listen, RequestRecord};

#[tokio::test]
async fn serves_https_with_a_testkit_certificate() {
    let ca = test_kit::pki::CertificateAuthority::new("fake-tenant-test-ca").unwrap();
    let leaf = ca
        .issue_server_cert("fake-tenant", &["localhost"], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    let tenant = FakeTenant::start(
        config(),
        Listen::Https {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        },
    )
    .await
    .unwrap();
    assert!(tenant.base_url().starts_with("https://127.0.0.1:"));
    assert_eq!(tenant.api_url(), format!("{}/api", tenant.base_url()));

    let https = client(Some(&ca.cert_pem()));
    let response = https
        .get(installer(&tenant, "unix/paas/latest/metainfo"))
        .header("Authorization", format!("Api-Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(json(response, 200).await["latestAgentVersion"], LATEST);
    let archive = https
        .get(installer(&tenant, "unix/paas/latest"))
        .header("Authorization", format!("Api-Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    let checksum = archive.headers()[test_fake_tenant::CHECKSUM_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(sha256_hex(&archive.bytes().await.unwrap()), checksum);

    // A client that does not trust the CA fails the handshake.
    let untrusting = client(None)
        .get(installer(&tenant, "unix/paas/latest/metainfo"))
        .send()
        .await;
    assert!(untrusting.is_err());
    tenant.shutdown().await;
}

#[tokio::test]
async fn serves_http2_with_faults_over_tls_and_cleartext() {
    let ca = test_kit::pki::CertificateAuthority::new("fake-tenant-test-ca").unwrap();
    let leaf = ca
        .issue_server_cert("fake-tenant", &[], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    let tenant = FakeTenant::start(
        config(),
        Listen::Https {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        },
    )
    .await
    .unwrap();
    let h2 = client_h2(Some(&ca.cert_pem()));
    let url = installer(&tenant, "unix/paas/latest");
    let fetch = || {
        h2.get(&url)
            .header("Authorization", format!("Api-Token {TOKEN}"))
            .send()
    };

    let good = fetch().await.unwrap();
    assert_eq!(good.version(), reqwest::Version::HTTP_2);
    let checksum = good.headers()[test_fake_tenant::CHECKSUM_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    let length = good.content_length().unwrap();
    let good = good.bytes().await.unwrap();
    assert_eq!((good.len() as u64, sha256_hex(&good)), (length, checksum.clone()));

    tenant.set_fault(Endpoint::Download, Fault::CutAfter { bytes: 5000 }, Some(1));
    let cut = fetch().await.unwrap();
    assert_eq!(cut.content_length(), Some(length));
    let (mut received, mut stream, mut failed) = (0usize, cut.bytes_stream(), false);
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        match chunk {
            Ok(chunk) => received += chunk.len(),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(
        failed && received <= 5000,
        "failed: {failed}, received {received}"
    );

    tenant.set_fault(Endpoint::Download, Fault::Corrupt, Some(1));
    let corrupt = fetch().await.unwrap().bytes().await.unwrap();
    assert_eq!(corrupt.len() as u64, length);
    assert_ne!(sha256_hex(&corrupt), checksum);
    tenant.shutdown().await;

    let cleartext = start().await;
    let response = client_h2(None)
        .get(installer(&cleartext, "unix/paas/latest/metainfo"))
        .header("Authorization", format!("Api-Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(json(response, 200).await["latestAgentVersion"], LATEST);
    cleartext.shutdown().await;
}

#[tokio::test]
async fn admin_api() {
    let tenant = start().await;
    let admin = |path: &str| format!("{}/admin/{path}", tenant.base_url());
    let http = client(None);

    let published = http
        .post(admin("versions"))
        .body(r#"{"version":"1.280.0.20240101-000000"}"#)
        .send()
        .await
        .unwrap();
    let body = json(published, 200).await;
    assert_eq!(body["latestAgentVersion"], "1.280.0.20240101-000000");
    let metainfo = installer(&tenant, "unix/paas/latest/metainfo");
    let body = json(get(&metainfo, Some(TOKEN)).await, 200).await;
    assert_eq!(body["latestAgentVersion"], "1.280.0.20240101-000000");
    for bad in [r#"{"version":"a/b"}"#, r#"{"versions":"1"}"#, "nope"] {
        let response = http.post(admin("versions")).body(bad).send().await.unwrap();
        expect_error(response, 400).await;
    }

    let set = http
        .put(admin("faults"))
        .body(
            json!({"endpoint": "metainfo", "fault": {"kind": "throttle", "retry_after_seconds": 2}, "count": 1})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(set.status().as_u16(), 204);
    expect_error(get(&metainfo, Some(TOKEN)).await, 429).await;
    json(get(&metainfo, Some(TOKEN)).await, 200).await;

    let forever = json!({"endpoint": "metainfo", "fault": {"kind": "unavailable"}}).to_string();
    let set = http.put(admin("faults")).body(forever).send().await.unwrap();
    assert_eq!(set.status().as_u16(), 204);
    expect_error(get(&metainfo, Some(TOKEN)).await, 503).await;
    expect_error(get(&metainfo, Some(TOKEN)).await, 503).await;
    let cleared = http.delete(admin("faults")).send().await.unwrap();
    assert_eq!(cleared.status().as_u16(), 204);
    json(get(&metainfo, Some(TOKEN)).await, 200).await;
    for bad in [
        json!({"endpoint": "metainfo", "fault": {"kind": "corrupt"}}).to_string(),
        json!({"endpoint": "admin", "fault": {"kind": "unavailable"}}).to_string(),
        json!({"endpoint": "nowhere", "fault": {"kind": "unavailable"}}).to_string(),
        json!({"endpoint": "download", "fault": {"kind": "explode"}}).to_string(),
        "{".to_owned(),
    ] {
        let response = http.put(admin("faults")).body(bad).send().await.unwrap();
        expect_error(response, 400).await;
    }

    let snake = json!({"entity_id": "HOST-1", "ip_addresses": ["10.0.0.1"],
        "agent_version": LATEST, "network_zone": "zone-a"});
    let camel = json!({"entityId": "HOST-2", "ipAddresses": ["10.0.0.2"], "agentVersion": OLDER});
    for host in [snake, camel] {
        let response = http
            .post(admin("hosts"))
            .body(host.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }
    let bad_version = json!({"entity_id": "HOST-3", "ip_addresses": [], "agent_version": "latest"});
    let response = http
        .post(admin("hosts"))
        .body(bad_version.to_string())
        .send()
        .await
        .unwrap();
    expect_error(response, 400).await;
    let hosts_url = format!("{}/v1/entity/infrastructure/hosts", tenant.api_url());
    let hosts = json(get(&hosts_url, Some(TOKEN)).await, 200).await;
    assert_eq!(hosts[0]["networkZoneId"], "zone-a");
    assert_eq!(hosts[1]["entityId"], "HOST-2");
    assert_eq!(hosts[1]["agentVersion"]["minor"], 276);

    let log: Vec<RequestRecord> = http
        .get(admin("requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log.len(), tenant.requests().len() - 1);
    assert_eq!(log[0].endpoint, Endpoint::Admin);
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str()),
        ("POST", "/admin/versions")
    );
    assert!(
        log.iter()
            .any(|r| r.endpoint == Endpoint::Metainfo && r.status == 429)
    );
    let cleared = http.delete(admin("requests")).send().await.unwrap();
    assert_eq!(cleared.status().as_u16(), 204);
    // Only the DELETE itself is logged after clearing.
    assert_eq!(tenant.requests().len(), 1);

    let events: serde_json::Value = http
        .get(admin("events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events, json!([]));
    tenant.set_fault(Endpoint::Admin, Fault::Unavailable, None);
    let still_works = http.get(admin("events")).send().await.unwrap();
    assert_eq!(still_works.status().as_u16(), 200);
    tenant.shutdown().await;
}

#[tokio::test]
async fn the_binary_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("tenant.json");
    std::fs::write(
        &config_path,
        json!({"environmentId": "xyz98765", "versions": ["1.290.0.20240601-101010"],
            "tokens": [{"value": "dt0c01.bin", "scopes": ["InstallerDownload"]}]})
        .to_string(),
    )
    .unwrap();
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let built = oci_layout(&layout, &[("1.290.0", b"binary")]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-tenant"))
        .args(["--config"])
        .arg(&config_path)
        .args(["--payload-bytes", "2048"])
        .arg(format!("--image=linux/oneagent:1.290.0={}", layout.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let api_url = line
        .trim()
        .strip_prefix("fake tenant listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(
        api_url.starts_with("http://127.0.0.1:") && api_url.ends_with("/api"),
        "{api_url}"
    );

    let http = client(None);
    let get = |path: &str| {
        http.get(format!("{api_url}/v1/deployment/installer/agent/{path}"))
            .header("Authorization", "Api-Token dt0c01.bin")
            .send()
    };
    let body = json(get("unix/paas/latest/metainfo").await.unwrap(), 200).await;
    assert_eq!(body["latestAgentVersion"], "1.290.0.20240601-101010");
    let info = json(get("connectioninfo").await.unwrap(), 200).await;
    assert_eq!(info["tenantUUID"], "xyz98765");
    let archive = get("unix/paas/latest").await.unwrap().bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
    assert_eq!(
        zip.by_name("agent/lib64/liboneagentproc.so").unwrap().size(),
        2048
    );
    // The --image is served as latest, the binary's only version.
    let base = api_url.trim_end_matches("/api");
    let manifest = http
        .head(format!("{base}/v2/linux/oneagent/manifests/latest"))
        .basic_auth("xyz98765", Some("dt0c01.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status().as_u16(), 200);
    assert_eq!(
        manifest.headers()["docker-content-digest"],
        built[0].manifest_digest.as_str()
    );

    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        None
    })
    .await
    .unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn the_binary_rejects_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("tenant.json");
    std::fs::write(&config_path, r#"{"environment_id":"snake"}"#).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fake-tenant"))
        .arg("--config")
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a valid tenant configuration"), "{stderr}");
    assert!(stderr.contains("environment_id"), "{stderr}");

    // An --image that cannot be loaded stops the binary with the reason.
    let output = Command::new(env!("CARGO_BIN_EXE_fake-tenant"))
        .arg(format!("--image=linux/oneagent:1.0.0={}", dir.path().display()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot load --image linux/oneagent:1.0.0"),
        "{stderr}"
    );
    assert!(stderr.contains("neither index.json"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_fake-tenant"))
        .arg("--image=linux/oneagent")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("<name>:<tag>=<path>"), "{stderr}");
}
