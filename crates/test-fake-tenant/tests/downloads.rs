//! Installer downloads and injected faults over real HTTP on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::io::Read as _;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;
use serde_json::json;
use test_fake_tenant::{CHECKSUM_HEADER, Endpoint, Fault, HostileArchive};

const PAYLOAD: &str = "agent/lib64/liboneagentproc.so";

struct Download {
    content_length: u64,
    checksum: String,
    body: Vec<u8>,
}

async fn download(url: &str) -> Download {
    let response = client(None)
        .get(url)
        .header("Authorization", format!("Api-Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let content_length = response.content_length().unwrap();
    let checksum = response.headers()[CHECKSUM_HEADER].to_str().unwrap().to_owned();
    let body = response.bytes().await.unwrap().to_vec();
    Download {
        content_length,
        checksum,
        body,
    }
}

fn entries(zip: &[u8]) -> Vec<(String, u64)> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    (0..archive.len())
        .map(|i| {
            let file = archive.by_index(i).unwrap();
            (file.name().unwrap().into_owned(), file.size())
        })
        .collect()
}

fn read_entry(zip: &[u8], name: &str) -> Vec<u8> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let mut file = archive.by_name(name).unwrap();
    assert_eq!(file.compression(), zip::CompressionMethod::Stored);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    bytes
}

#[tokio::test]
async fn latest_archive_is_a_valid_stable_zip() {
    let tenant = start().await;
    let url = installer(
        &tenant,
        "unix/paas/latest?bitness=64&flavor=musl&arch=arm&skipMetadata=true&include=java&include=nodejs",
    );
    let first = download(&url).await;
    assert_eq!(first.content_length, first.body.len() as u64);
    assert_eq!(first.checksum, sha256_hex(&first.body));

    let names: Vec<_> = entries(&first.body);
    assert_eq!(
        names,
        [
            (
                "manifest.json".to_owned(),
                read_entry(&first.body, "manifest.json").len() as u64
            ),
            (format!("agent/bin/{LATEST}/"), 0),
            (
                format!("agent/bin/{LATEST}/oneagentutil"),
                read_entry(&first.body, &format!("agent/bin/{LATEST}/oneagentutil")).len() as u64
            ),
            (
                "agent/conf/ruxitagentproc.conf".to_owned(),
                format!("[general]\nversion {LATEST}\n").len() as u64
            ),
            (PAYLOAD.to_owned(), 64 * 1024),
        ]
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&read_entry(&first.body, "manifest.json")).unwrap();
    assert_eq!(
        manifest,
        json!({"version": LATEST, "os": "unix", "type": "paas", "arch": "arm", "flavor": "musl",
            "technologies": ["java", "nodejs"]})
    );
    let payload = read_entry(&first.body, PAYLOAD);
    assert_eq!(payload.len(), 64 * 1024);
    assert!(
        payload.iter().filter(|&&b| b == 0).count() < 1024,
        "payload looks empty"
    );

    let second = download(&url).await;
    assert_eq!(second.body, first.body);
    assert_eq!(second.checksum, first.checksum);
    assert_eq!(tenant.request_count(Endpoint::Download), 2);

    // The same payload in a fresh tenant: it only depends on the version.
    let other = start().await;
    let again = download(&installer(
        &other,
        "unix/paas/latest?flavor=musl&arch=arm&include=java",
    ))
    .await;
    assert_eq!(read_entry(&again.body, PAYLOAD), payload);
    other.shutdown().await;
    tenant.shutdown().await;
}

#[tokio::test]
async fn a_specific_version_and_its_payload() {
    let tenant = start().await;
    let older = download(&installer(&tenant, &format!("unix/default/version/{OLDER}"))).await;
    let manifest: serde_json::Value =
        serde_json::from_slice(&read_entry(&older.body, "manifest.json")).unwrap();
    assert_eq!(manifest["version"], OLDER);
    assert_eq!(manifest["flavor"], "default");
    assert_eq!(manifest["technologies"], json!([]));
    assert!(
        entries(&older.body)
            .iter()
            .any(|(name, _)| name == &format!("agent/bin/{OLDER}/"))
    );

    let latest = download(&installer(&tenant, &format!("unix/default/version/{LATEST}"))).await;
    assert_ne!(
        read_entry(&older.body, PAYLOAD),
        read_entry(&latest.body, PAYLOAD)
    );
    let via_latest = download(&installer(&tenant, "unix/default/latest")).await;
    assert_eq!(via_latest.body, latest.body);
    tenant.shutdown().await;
}

#[tokio::test]
async fn concurrent_first_downloads_share_one_archive() {
    let mut config = config();
    config.archive_payload_bytes = 1 << 20;
    let tenant = start_with(config).await;
    let url = installer(&tenant, "unix/paas/latest?include=all");
    let downloads = futures::future::join_all((0..6).map(|_| download(&url))).await;
    for d in &downloads {
        assert_eq!(d.body, downloads[0].body);
        assert_eq!(d.checksum, sha256_hex(&d.body));
    }
    assert_eq!(std::fs::read_dir(tenant.cache_dir()).unwrap().count(), 1);
    tenant.shutdown().await;
}

#[tokio::test]
async fn an_8_mib_archive_streams_with_the_right_checksum() {
    let mut config = config();
    config.archive_payload_bytes = 8 << 20;
    let tenant = start_with(config).await;
    let response = client(None)
        .get(installer(&tenant, "unix/paas/latest"))
        .header("Authorization", format!("Api-Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    let length = response.content_length().unwrap();
    let checksum = response.headers()[CHECKSUM_HEADER].to_str().unwrap().to_owned();
    assert!(length > 8 << 20);
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let (mut received, mut stream) = (0u64, response.bytes_stream());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        received += chunk.len() as u64;
        sha2::Digest::update(&mut hasher, &chunk);
    }
    assert_eq!(received, length);
    assert_eq!(hex::encode(sha2::Digest::finalize(hasher)), checksum);
    tenant.shutdown().await;
}

#[tokio::test]
async fn latency_delays_then_answers() {
    let tenant = start().await;
    let url = installer(&tenant, "unix/paas/latest/metainfo");
    tenant.set_fault(Endpoint::Metainfo, Fault::Latency { millis: 300 }, Some(1));
    let started = Instant::now();
    let body = json(get(&url, Some(TOKEN)).await, 200).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(body["latestAgentVersion"], LATEST);
    tenant.shutdown().await;
}

#[tokio::test]
async fn throttle_unavailable_and_unauthorized_run_out() {
    let tenant = start().await;
    let url = installer(&tenant, "connectioninfo");

    tenant.set_fault(
        Endpoint::ConnectionInfo,
        Fault::Throttle {
            retry_after_seconds: 7,
        },
        Some(2),
    );
    for _ in 0..2 {
        let response = get(&url, Some(TOKEN)).await;
        assert_eq!(response.headers()["retry-after"], "7");
        expect_error(response, 429).await;
    }
    json(get(&url, Some(TOKEN)).await, 200).await;

    tenant.set_fault(Endpoint::ConnectionInfo, Fault::Unavailable, Some(1));
    let response = get(&url, Some(TOKEN)).await;
    assert_eq!(response.headers()["retry-after"], "1");
    expect_error(response, 503).await;
    json(get(&url, Some(TOKEN)).await, 200).await;

    // Until cleared, and only on its endpoint.
    tenant.set_fault(Endpoint::ConnectionInfo, Fault::Unauthorized, None);
    for _ in 0..3 {
        expect_error(get(&url, Some(TOKEN)).await, 401).await;
    }
    let metainfo = installer(&tenant, "unix/paas/latest/metainfo");
    json(get(&metainfo, Some(TOKEN)).await, 200).await;
    tenant.clear_faults();
    json(get(&url, Some(TOKEN)).await, 200).await;

    let statuses: Vec<u16> = tenant.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 200, 503, 200, 401, 401, 401, 200, 200]);
    tenant.shutdown().await;
}

#[tokio::test]
async fn cut_after_drops_the_connection_mid_body() {
    let tenant = start().await;
    let url = installer(&tenant, "unix/paas/latest");
    let good = download(&url).await;
    tenant.set_fault(Endpoint::Download, Fault::CutAfter { bytes: 1000 }, Some(1));

    let response = client(None)
        .get(&url)
        .header("Authorization", format!("Api-Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.content_length(), Some(good.content_length));
    let (mut received, mut failed) = (Vec::new(), false);
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => received.extend_from_slice(&chunk),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body ended without an error");
    assert_eq!(received.len(), 1000);
    assert_eq!(received, good.body[..1000]);

    // The count ran out: the next download is whole again.
    let next = download(&url).await;
    assert_eq!(next.body, good.body);
    tenant.shutdown().await;
}

#[tokio::test]
async fn corrupt_keeps_length_and_checksum_header_but_flips_bytes() {
    let tenant = start().await;
    let url = installer(&tenant, "unix/paas/latest");
    let good = download(&url).await;
    tenant.set_fault(Endpoint::Download, Fault::Corrupt, Some(1));
    // A failed request does not use up a body fault.
    let unauthorized = client(None).get(&url).send().await.unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);

    let bad = download(&url).await;
    assert_eq!(bad.content_length, good.content_length);
    assert_eq!(bad.body.len(), good.body.len());
    assert_eq!(bad.checksum, good.checksum);
    assert_ne!(sha256_hex(&bad.body), bad.checksum);
    let differing: Vec<usize> = (0..good.body.len())
        .filter(|&i| good.body[i] != bad.body[i])
        .collect();
    assert_eq!(differing.len(), 16);
    let middle = good.body.len() / 2;
    assert!(
        differing.iter().all(|&i| i.abs_diff(middle) <= 16),
        "{differing:?}"
    );

    let next = download(&url).await;
    assert_eq!(sha256_hex(&next.body), next.checksum);
    tenant.shutdown().await;
}

#[tokio::test]
async fn download_faults_do_not_touch_other_endpoints() {
    let tenant = start().await;
    tenant.set_fault(Endpoint::Metainfo, Fault::Corrupt, None);
    let url = installer(&tenant, "unix/paas/latest/metainfo");
    json(get(&url, Some(TOKEN)).await, 200).await;
    tenant.set_fault(
        Endpoint::Download,
        Fault::Throttle {
            retry_after_seconds: 1,
        },
        Some(1),
    );
    expect_error(
        get(&installer(&tenant, "unix/paas/latest"), Some(TOKEN)).await,
        429,
    )
    .await;
    let good = download(&installer(&tenant, "unix/paas/latest")).await;
    assert_eq!(sha256_hex(&good.body), good.checksum);
    tenant.shutdown().await;
}

#[tokio::test]
async fn a_client_leaving_during_generation_does_not_break_the_archive() {
    let mut config = config();
    config.archive_payload_bytes = 4 << 20;
    let tenant = start_with(config).await;
    let url = installer(&tenant, "unix/paas/latest");
    // Gives up while the archive is still being generated.
    let impatient = client(None)
        .get(&url)
        .header("Authorization", format!("Api-Token {TOKEN}"))
        .timeout(Duration::from_millis(5))
        .send()
        .await;
    assert!(impatient.is_err());
    let whole = download(&url).await;
    assert_eq!(sha256_hex(&whole.body), whole.checksum);
    assert_eq!(read_entry(&whole.body, PAYLOAD).len(), 4 << 20);
    let files: Vec<_> = std::fs::read_dir(tenant.cache_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".zip"), "{files:?}");
    tenant.shutdown().await;
}

#[tokio::test]
async fn an_agent_library_is_served_as_liboneagentproc() {
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("lib.so");
    std::fs::write(&library, b"\x7fELF not really").unwrap();
    let tenant = start_with(test_fake_tenant::TenantConfig {
        agent_library: Some(library),
        archive_payload_bytes: 1000,
        ..config()
    })
    .await;
    let archive = download(&installer(&tenant, "unix/paas/latest")).await;
    assert_eq!(read_entry(&archive.body, PAYLOAD), b"\x7fELF not really");
    assert_eq!(read_entry(&archive.body, "agent/lib64/payload.bin").len(), 1000);
}

#[tokio::test]
async fn hostile_archives_on_demand_through_the_admin_api() {
    let tenant = start().await;
    for kind in HostileArchive::ALL {
        let fault = serde_json::to_value(Fault::Hostile { archive: kind }).unwrap();
        let response = client(None)
            .put(format!("{}/admin/faults", tenant.base_url()))
            .json(&json!({ "endpoint": "download", "fault": fault, "count": 1 }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{kind:?}: {}", response.status());
        let hostile = download(&installer(&tenant, "unix/paas/latest")).await;
        assert_eq!(hostile.checksum, sha256_hex(&hostile.body), "{kind:?}");
        assert_eq!(hostile.content_length, hostile.body.len() as u64);
        let names: Vec<String> = {
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&hostile.body)).unwrap();
            (0..archive.len())
                .map(|i| String::from_utf8_lossy(archive.by_index_raw(i).unwrap().name_raw()).into_owned())
                .collect()
        };
        assert_eq!(
            names.last().map(String::as_str),
            Some(kind.bad_entry()),
            "{kind:?}: {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "agent/lib64/liboneagentproc.so"),
            "{kind:?}"
        );
        // Used once: the next download is the real archive.
        let real = download(&installer(&tenant, "unix/paas/latest")).await;
        assert!(
            entries(&real.body)
                .iter()
                .all(|(name, _)| !name.contains("evil") && !name.contains("bomb"))
        );
    }
    let json = serde_json::to_string(&Fault::Hostile {
        archive: HostileArchive::ZipSlip,
    })
    .unwrap();
    assert_eq!(json, r#"{"kind":"hostile","archive":"zip_slip"}"#);
}
