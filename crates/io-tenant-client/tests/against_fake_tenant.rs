//! The client against the fake tenant over real HTTP(S): TLS from a custom CA, a CONNECT proxy and its
//! bypass, every endpoint, every fault mode, and downloads that are verified or leave nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use io_tenant_client::{
    AgentSelector, CallObserver, CallOutcome, ClientConfig, DownloadFailure, DownloadRequest, ImageComponent,
    RetryPolicy, TenantClient, TenantError,
};
use test_fake_tenant::{Endpoint, FakeTenant, Fault, Listen, TenantConfig};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

const TOKEN: &str = "dt0c01.test";

struct Https {
    tenant: FakeTenant,
    ca_pem: String,
}

async fn https_tenant(config: TenantConfig) -> Https {
    let ca = test_kit::pki::CertificateAuthority::new("fake-tenant-ca").unwrap();
    let leaf = ca
        .issue_server_cert("fake-tenant", &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .unwrap();
    let tenant = FakeTenant::start(
        config,
        Listen::Https {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        },
    )
    .await
    .unwrap();
    Https {
        tenant,
        ca_pem: ca.cert_pem(),
    }
}

/// Fast retries so fault tests stay quick.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        ..Default::default()
    }
}

fn client_for(t: &Https) -> TenantClient {
    let mut config = ClientConfig::new(t.tenant.api_url(), TOKEN);
    config.trusted_cas_pem = Some(t.ca_pem.clone());
    config.retry = quick_retries();
    TenantClient::new(config).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tenant-client-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn every_endpoint_over_tls_from_a_custom_ca() {
    let t = https_tenant(TenantConfig::default()).await;
    let client = client_for(&t);
    let agent = AgentSelector::code_modules();
    let latest = client.latest_agent_version(&agent).await.unwrap();
    assert_eq!(latest, "1.277.0.20230914-094321");
    assert_eq!(client.available_versions(&agent).await.unwrap().len(), 2);
    t.tenant.publish_version("1.278.0.20231001-000000");
    assert_eq!(
        client.latest_agent_version(&agent).await.unwrap(),
        "1.278.0.20231001-000000"
    );

    let info = client.connection_info().await.unwrap();
    assert_eq!(info.tenant_uuid, "abc12345");
    assert_eq!(info.tenant_token, "tenant-token-abc");
    assert_eq!(info.communication_hosts.len(), 2);
    assert_eq!(info.communication_hosts[1].port, 9999);

    let config = client.process_module_config(0).await.unwrap().unwrap();
    assert!(!config.properties.is_empty());
    assert_eq!(
        client.process_module_config(config.revision).await.unwrap(),
        None,
        "304: unchanged"
    );

    let scopes = client.token_scopes(TOKEN).await.unwrap();
    assert!(scopes.contains(&"InstallerDownload".to_owned()));
    assert_eq!(
        t.tenant.request_count(Endpoint::ApiTokensLookup),
        1,
        "the current lookup first"
    );
    assert_eq!(t.tenant.request_count(Endpoint::TokenLookup), 0);
    let image = client.latest_image(ImageComponent::OneAgent).await.unwrap();
    assert_eq!(image.tag, "1.278.0.20231001-000000");
    client
        .send_event(&io_tenant_client::Event {
            event_type: "MARKED_FOR_TERMINATION".into(),
            start: 1,
            end: 2,
            description: "node drained".into(),
            attach_rules: io_tenant_client::AttachRules {
                entity_ids: vec!["HOST-1".into()],
            },
            source: "dynatrace-operator".into(),
        })
        .await
        .unwrap();
    assert_eq!(t.tenant.events().len(), 1);
    t.tenant.add_host(test_fake_tenant::Host {
        entity_id: "HOST-1".into(),
        ip_addresses: vec!["10.0.0.7".into()],
        agent_version: "1.277.0.20230914-094321".into(),
        network_zone: None,
    });
    let hosts = client.hosts().await.unwrap();
    assert_eq!(hosts[0].agent_version.as_deref(), Some("1.277.0.20230914-094321"));

    // Installer endpoints fall back to the API token when there is no PaaS token.
    assert!(
        t.tenant
            .requests()
            .iter()
            .all(|r| r.token.as_deref() == Some(TOKEN))
    );
    t.tenant.shutdown().await;
}

#[tokio::test]
async fn the_paas_token_is_used_for_installer_endpoints_only() {
    let mut config = TenantConfig::default();
    config.tokens.push(test_fake_tenant::TokenConfig {
        value: "dt0c01.paas".into(),
        scopes: vec!["InstallerDownload".into()],
    });
    let t = https_tenant(config).await;
    let mut config = ClientConfig::new(t.tenant.api_url(), TOKEN);
    config.paas_token = Some("dt0c01.paas".into());
    config.trusted_cas_pem = Some(t.ca_pem.clone());
    let client = TenantClient::new(config).unwrap();
    client
        .latest_agent_version(&AgentSelector::host_agent())
        .await
        .unwrap();
    client.hosts().await.unwrap();
    let tokens: Vec<_> = t
        .tenant
        .requests()
        .into_iter()
        .map(|r| (r.endpoint, r.token.unwrap_or_default()))
        .collect();
    assert_eq!(
        tokens,
        vec![
            (Endpoint::Metainfo, "dt0c01.paas".to_owned()),
            (Endpoint::Hosts, TOKEN.to_owned())
        ]
    );
    t.tenant.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_transport_error() {
    let t = https_tenant(TenantConfig::default()).await;
    let other_ca = test_kit::pki::CertificateAuthority::new("someone-else").unwrap();
    let mut config = ClientConfig::new(t.tenant.api_url(), TOKEN);
    config.trusted_cas_pem = Some(other_ca.cert_pem());
    config.retry.max_retries = 0;
    let err = TenantClient::new(config)
        .unwrap()
        .latest_agent_version(&AgentSelector::host_agent())
        .await
        .unwrap_err();
    assert!(matches!(err, TenantError::Transport { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    let mut skipping = ClientConfig::new(t.tenant.api_url(), TOKEN);
    skipping.skip_cert_check = true;
    assert!(
        TenantClient::new(skipping)
            .unwrap()
            .latest_agent_version(&AgentSelector::host_agent())
            .await
            .is_ok()
    );
    t.tenant.shutdown().await;
}

/// A minimal HTTP CONNECT proxy on 127.0.0.1 that counts the tunnels it opened.
async fn connect_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let tunnels = Arc::new(AtomicUsize::new(0));
    let counter = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut client = tokio::io::BufReader::new(client);
                let mut line = String::new();
                client.read_line(&mut line).await.ok()?;
                let target = line
                    .strip_prefix("CONNECT ")?
                    .split_whitespace()
                    .next()?
                    .to_owned();
                loop {
                    let mut header = String::new();
                    client.read_line(&mut header).await.ok()?;
                    if header == "\r\n" || header.is_empty() {
                        break;
                    }
                }
                let mut upstream = tokio::net::TcpStream::connect(target).await.ok()?;
                counter.fetch_add(1, Ordering::SeqCst);
                let mut client = client.into_inner();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .ok()?;
                tokio::io::copy_bidirectional(&mut client, &mut upstream)
                    .await
                    .ok()
            });
        }
    });
    (url, tunnels)
}

#[tokio::test]
async fn requests_go_through_the_proxy_unless_no_proxy_matches() {
    let t = https_tenant(TenantConfig::default()).await;
    let (proxy, tunnels) = connect_proxy().await;
    let mut config = ClientConfig::new(t.tenant.api_url(), TOKEN);
    config.trusted_cas_pem = Some(t.ca_pem.clone());
    config.proxy = Some(proxy.clone());
    TenantClient::new(config.clone())
        .unwrap()
        .latest_agent_version(&AgentSelector::host_agent())
        .await
        .unwrap();
    assert_eq!(
        tunnels.load(Ordering::SeqCst),
        1,
        "the request went through the proxy"
    );

    config.no_proxy = Some("example.com,127.0.0.1".into());
    TenantClient::new(config)
        .unwrap()
        .latest_agent_version(&AgentSelector::host_agent())
        .await
        .unwrap();
    assert_eq!(tunnels.load(Ordering::SeqCst), 1, "no-proxy bypassed the proxy");
    assert_eq!(t.tenant.request_count(Endpoint::Metainfo), 2);
    t.tenant.shutdown().await;
}

#[tokio::test]
async fn transient_faults_end_in_success_after_retries() {
    let t = https_tenant(TenantConfig::default()).await;
    let client = client_for(&t);
    let agent = AgentSelector::host_agent();

    t.tenant.set_fault(
        Endpoint::Metainfo,
        Fault::Throttle {
            retry_after_seconds: 1,
        },
        Some(1),
    );
    let started = std::time::Instant::now();
    client.latest_agent_version(&agent).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    assert_eq!(t.tenant.request_count(Endpoint::Metainfo), 2);

    t.tenant.clear_requests();
    t.tenant
        .set_fault(Endpoint::Versions, Fault::Unavailable, Some(2));
    client.available_versions(&agent).await.unwrap();
    assert_eq!(t.tenant.request_count(Endpoint::Versions), 3);
    t.tenant.shutdown().await;
}

/// Records every attempt the client reports.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(&'static str, CallOutcome)>>);

impl CallObserver for Recorder {
    fn observe(&self, endpoint: &'static str, outcome: CallOutcome, _elapsed: Duration) {
        self.0.lock().unwrap().push((endpoint, outcome));
    }
}

#[tokio::test]
async fn every_attempt_is_reported_to_the_observer_with_its_outcome() {
    let t = https_tenant(TenantConfig::default()).await;
    let recorder = Arc::new(Recorder::default());
    let mut config = ClientConfig::new(t.tenant.api_url(), TOKEN);
    config.trusted_cas_pem = Some(t.ca_pem.clone());
    config.retry = quick_retries();
    config.observer = Some(recorder.clone());
    let client = TenantClient::new(config).unwrap();

    t.tenant
        .set_fault(Endpoint::Versions, Fault::Unavailable, Some(1));
    client
        .available_versions(&AgentSelector::host_agent())
        .await
        .unwrap();
    t.tenant
        .set_fault(Endpoint::ConnectionInfo, Fault::Unauthorized, None);
    client.connection_info().await.unwrap_err();
    let seen = recorder.0.lock().unwrap().clone();
    let outcomes: Vec<_> = seen.iter().map(|(_, outcome)| outcome.as_str()).collect();
    assert_eq!(outcomes, ["server_error", "success", "unauthorized"], "{seen:?}");
    assert_eq!(seen[0].0, seen[1].0, "a retry reports the same endpoint");
    assert_ne!(seen[1].0, seen[2].0);
    t.tenant.shutdown().await;
}

#[tokio::test]
async fn lasting_faults_end_in_typed_errors_with_bounded_calls() {
    let t = https_tenant(TenantConfig::default()).await;
    let client = client_for(&t);
    let agent = AgentSelector::host_agent();

    t.tenant.set_fault(Endpoint::Metainfo, Fault::Unavailable, None);
    let err = client.latest_agent_version(&agent).await.unwrap_err();
    assert!(matches!(err, TenantError::Unavailable { .. }), "{err}");
    assert_eq!(
        t.tenant.request_count(Endpoint::Metainfo),
        4,
        "one attempt and three retries"
    );

    t.tenant.clear_faults();
    t.tenant.clear_requests();
    t.tenant.set_fault(
        Endpoint::Metainfo,
        Fault::Throttle {
            retry_after_seconds: 600,
        },
        None,
    );
    let err = client.latest_agent_version(&agent).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(600)));
    assert_eq!(
        t.tenant.request_count(Endpoint::Metainfo),
        1,
        "a long Retry-After is left to the caller"
    );

    t.tenant.clear_faults();
    t.tenant.clear_requests();
    t.tenant
        .set_fault(Endpoint::ConnectionInfo, Fault::Unauthorized, None);
    let err = client.connection_info().await.unwrap_err();
    assert!(
        matches!(err, TenantError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert_eq!(
        t.tenant.request_count(Endpoint::ConnectionInfo),
        1,
        "a rejected token is not retried"
    );
    assert!(
        !err.to_string().contains(TOKEN),
        "errors never show the token: {err}"
    );

    let mut slow = ClientConfig::new(t.tenant.api_url(), TOKEN);
    slow.trusted_cas_pem = Some(t.ca_pem.clone());
    slow.request_timeout = Duration::from_millis(200);
    slow.retry = RetryPolicy {
        max_retries: 0,
        ..quick_retries()
    };
    t.tenant
        .set_fault(Endpoint::Versions, Fault::Latency { millis: 2_000 }, None);
    let err = TenantClient::new(slow)
        .unwrap()
        .available_versions(&agent)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TenantError::Transport { timeout: true, .. }),
        "{err}"
    );

    let wrong = ClientConfig {
        trusted_cas_pem: Some(t.ca_pem.clone()),
        ..ClientConfig::new(t.tenant.api_url(), "dt0c01.wrong")
    };
    let err = TenantClient::new(wrong).unwrap().hosts().await.unwrap_err();
    assert!(
        matches!(err, TenantError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    t.tenant.shutdown().await;
}

fn latest_code_modules() -> DownloadRequest {
    DownloadRequest {
        agent: AgentSelector::code_modules(),
        version: None,
        technologies: vec!["java".into()],
        skip_metadata: true,
        expected_sha256: None,
    }
}

#[tokio::test]
async fn downloads_are_verified_and_report_progress() {
    let t = https_tenant(TenantConfig {
        archive_payload_bytes: 3 * 1024 * 1024,
        ..TenantConfig::default()
    })
    .await;
    let client = client_for(&t);
    let dir = temp_dir("download");
    let mut reports = 0;
    let file = client
        .download_agent(&latest_code_modules(), &dir.join("agent.zip"), |p| {
            reports += 1;
            assert!(p.total.is_some_and(|total| p.received <= total));
        })
        .await
        .unwrap();
    assert!(file.size > 3 * 1024 * 1024 && reports > 0);
    let bytes = std::fs::read(&file.path).unwrap();
    use sha2::Digest as _;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), file.sha256);
    assert_eq!(files_in(&dir), vec!["agent.zip"]);

    let pinned = DownloadRequest {
        version: Some("1.276.0.20230901-120000".into()),
        ..latest_code_modules()
    };
    client
        .download_agent(&pinned, &dir.join("old.zip"), |_| {})
        .await
        .unwrap();
    let missing = DownloadRequest {
        version: Some("9.9.9.20990101-000000".into()),
        ..latest_code_modules()
    };
    let err = client
        .download_agent(&missing, &dir.join("missing.zip"), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(files_in(&dir), vec!["agent.zip", "old.zip"]);
    t.tenant.shutdown().await;
}

#[tokio::test]
async fn broken_downloads_are_retried_or_leave_nothing_behind() {
    let t = https_tenant(TenantConfig {
        archive_payload_bytes: 2 * 1024 * 1024,
        ..TenantConfig::default()
    })
    .await;
    let client = client_for(&t);
    let dir = temp_dir("broken");

    // Cut once: the retry completes it.
    t.tenant
        .set_fault(Endpoint::Download, Fault::CutAfter { bytes: 100_000 }, Some(1));
    client
        .download_agent(&latest_code_modules(), &dir.join("retried.zip"), |_| {})
        .await
        .unwrap();
    assert_eq!(t.tenant.request_count(Endpoint::Download), 2);

    // Cut every time: a typed error and no file.
    t.tenant
        .set_fault(Endpoint::Download, Fault::CutAfter { bytes: 100_000 }, None);
    let err = client
        .download_agent(&latest_code_modules(), &dir.join("cut.zip"), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TenantError::Download {
                reason: DownloadFailure::Interrupted { .. } | DownloadFailure::Incomplete { .. },
                ..
            }
        ),
        "{err}"
    );

    // Corrupted on the server: detected by the checksum, not retried.
    t.tenant.clear_faults();
    t.tenant.clear_requests();
    t.tenant.set_fault(Endpoint::Download, Fault::Corrupt, None);
    let err = client
        .download_agent(&latest_code_modules(), &dir.join("corrupt.zip"), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TenantError::Download {
                reason: DownloadFailure::ChecksumMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(t.tenant.request_count(Endpoint::Download), 1);

    assert_eq!(
        files_in(&dir),
        vec!["retried.zip"],
        "no partial or unverified file is left"
    );
    t.tenant.shutdown().await;
}

#[tokio::test]
async fn connection_info_of_a_network_zone_falls_back_to_the_default() {
    let t = https_tenant(TenantConfig::default()).await;
    let with_zone = |zone: &str| {
        let mut config = ClientConfig::new(t.tenant.api_url(), TOKEN);
        config.trusted_cas_pem = Some(t.ca_pem.clone());
        config.network_zone = Some(zone.to_owned());
        TenantClient::new(config).unwrap()
    };
    let zone_a = with_zone("zone-a").connection_info().await.unwrap();
    assert_eq!(zone_a.communication_hosts[0].host, "zone-a.example");
    let unknown = with_zone("nowhere").connection_info().await.unwrap();
    assert_eq!(
        unknown.communication_hosts.len(),
        2,
        "the default zone's endpoints"
    );
    let query = &t.tenant.requests()[1].query;
    assert!(
        query.contains("networkZone=nowhere") && query.contains("defaultZoneFallback=true"),
        "{query}"
    );
    t.tenant.shutdown().await;
}

/// An environment without `/v2/apiTokens/lookup` (404) is asked with `/v1/tokens/lookup`, once it said so.
#[tokio::test]
async fn token_lookup_falls_back_to_v1_where_v2_is_missing() {
    let t = https_tenant(TenantConfig::default()).await;
    let client = client_for(&t);
    t.tenant
        .set_fault(Endpoint::ApiTokensLookup, Fault::NotFound, None);
    for _ in 0..2 {
        let scopes = client.token_scopes(TOKEN).await.unwrap();
        assert!(scopes.contains(&"DataExport".to_owned()), "{scopes:?}");
    }
    assert_eq!(
        t.tenant.request_count(Endpoint::ApiTokensLookup),
        1,
        "asked v2 once"
    );
    assert_eq!(t.tenant.request_count(Endpoint::TokenLookup), 2);
    // Another error of v2 is an error, not a reason to ask v1.
    let fresh = client_for(&t);
    t.tenant
        .set_fault(Endpoint::ApiTokensLookup, Fault::Unauthorized, None);
    let err = fresh.token_scopes(TOKEN).await.unwrap_err();
    assert!(
        matches!(err, TenantError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert_eq!(t.tenant.request_count(Endpoint::TokenLookup), 2);
    t.tenant.shutdown().await;
}

/// The cluster's monitored entity through settings 2.0: not there, created with its Kubernetes settings
/// object, then found, its object listed by scope and its effective value read; a second object for the
/// same cluster is refused with the environment's reason.
#[tokio::test]
async fn kubernetes_cluster_settings_and_entity() {
    let t = https_tenant(TenantConfig::default()).await;
    let client = client_for(&t);
    let uid = "5f0c6c8e-kube-system";
    assert_eq!(client.kubernetes_cluster_entity(uid).await.unwrap(), None);
    let object = io_tenant_client::NewSettingsObject {
        schema_id: "builtin:cloud.kubernetes".into(),
        scope: "environment".into(),
        value: serde_json::json!({
            "enabled": true, "label": "prod-eu", "clusterIdEnabled": true, "clusterId": uid,
        }),
    };
    let object_id = client.create_settings_object(&object).await.unwrap();
    let entity = client.kubernetes_cluster_entity(uid).await.unwrap().unwrap();
    assert!(entity.entity_id.starts_with("KUBERNETES_CLUSTER-"), "{entity:?}");
    assert_eq!(entity.display_name, "prod-eu");
    let objects = client
        .settings_objects("builtin:cloud.kubernetes", &entity.entity_id)
        .await
        .unwrap();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].object_id, object_id);
    assert_eq!(objects[0].value["clusterId"], uid);
    let effective = client
        .effective_settings("builtin:cloud.kubernetes", &entity.entity_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(effective["label"], "prod-eu");

    let err = client.create_settings_object(&object).await.unwrap_err();
    assert!(
        matches!(err, TenantError::Server { status: 400, .. })
            && err.to_string().contains("already monitored"),
        "{err}"
    );
    assert_eq!(t.tenant.settings_objects().len(), 1);
    t.tenant.shutdown().await;
}
