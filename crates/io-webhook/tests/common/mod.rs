//! Helpers shared by the webhook tests: a server with a fresh certificate, and a small HTTPS client.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use io_webhook::{AppState, ClusterCache, Metrics, RunningServer, ServerConfig};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt as _};
use pure_api::dynakube::names::{ENRICHMENT_SECRET, INIT_SECRET};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use test_kit::TestNamespace;
use test_kit::pki::CertificateAuthority;

pub use pure_desired::mapping::INSTANCE_LABEL;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// A running webhook server and what a client needs to reach it.
pub struct TestServer {
    pub server: RunningServer,
    pub certs_dir: PathBuf,
    pub ca_pem: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Writes a serving certificate for 127.0.0.1 signed by a new CA into `dir`; returns the CA's PEM.
pub fn write_certificate(dir: &Path) -> String {
    let ca = CertificateAuthority::new("webhook-test-ca").unwrap();
    let leaf = ca
        .issue_server_cert("webhook", &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(io_webhook::tls::CERT_FILE), leaf.cert_pem).unwrap();
    std::fs::write(dir.join(io_webhook::tls::KEY_FILE), leaf.key_pem).unwrap();
    ca.cert_pem()
}

/// Starts a server on free ports of 127.0.0.1, with or without cluster caches.
pub async fn start(cluster: Option<ClusterCache>) -> TestServer {
    start_with(cluster, io_webhook::serve_options()).await
}

/// [`start`] with other connection limits and timeouts.
pub async fn start_with(cluster: Option<ClusterCache>, options: io_serving::ServeOptions) -> TestServer {
    start_full(cluster, None, options).await
}

/// A server with the given caches, injection settings and connection limits.
async fn start_full(
    cluster: Option<ClusterCache>,
    injection: Option<io_webhook::Injection>,
    options: io_serving::ServeOptions,
) -> TestServer {
    let certs_dir = std::env::temp_dir().join(format!(
        "webhook-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let ca_pem = write_certificate(&certs_dir);
    let config = ServerConfig {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        metrics_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        certificate_source: io_webhook::CertificateSource::Dir(certs_dir.clone()),
    };
    let metrics = injection
        .as_ref()
        .map_or_else(Metrics::new, |i| i.events.metrics().clone());
    let state = AppState {
        cluster,
        metrics,
        injection,
    };
    let server = io_webhook::start_with(&config, state, CancellationToken::new(), options)
        .await
        .unwrap();
    TestServer {
        server,
        certs_dir,
        ca_pem,
    }
}

/// Starts a server with cluster caches that injects pods (init image `init_image`, DynaKubes in
/// `webhook_namespace`), writing events through `client`.
pub async fn start_injecting(
    cluster: ClusterCache,
    client: kube::Client,
    init_image: &str,
    webhook_namespace: &str,
) -> TestServer {
    let metrics = Metrics::new();
    let injection = io_webhook::Injection {
        init_image: init_image.to_owned(),
        webhook_namespace: webhook_namespace.to_owned(),
        events: io_webhook::events::EventQueue::start(client, metrics, CancellationToken::new()),
    };
    start_full(Some(cluster), Some(injection), io_webhook::serve_options()).await
}

/// The CSI driver's DaemonSet (never scheduled), which the modes that use the driver look for in the
/// DynaKube's namespace.
pub async fn install_csi_driver_marker(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    // The installation's own DaemonSet (so the webhook's check is tested against what is installed),
    // kept off every node: no pods are wanted here.
    let mut installation = pure_install::Installation::new("registry.invalid/csi:1");
    installation.namespace = namespace.to_owned();
    let options = pure_install::csi::CsiDriverOptions {
        node_selector: std::collections::BTreeMap::from([("no-such-node".to_owned(), "true".to_owned())]),
        ..Default::default()
    };
    let daemonset = installation.csi_daemonset(&options);
    kube::Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client.clone(), namespace)
        .create(&Default::default(), &daemonset)
        .await?;
    Ok(())
}

/// An answer: status, body, and the TLS version that was negotiated.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub tls: Option<rustls::ProtocolVersion>,
}

fn client_config(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// One HTTP/1.1 request over TLS, trusting `ca_pem`, with the given TLS versions.
pub async fn https_with(
    addr: SocketAddr,
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<Answer> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca_pem, versions)));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    let version = tls.get_ref().1.protocol_version();
    exchange(&mut tls, method, path, body)
        .await
        .map(|(status, body)| Answer {
            status,
            body,
            tls: version,
        })
}

/// A TLS connection to `addr` that offers `alpn` and sends nothing.
pub async fn tls_connection(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[u8],
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = client_config(ca_pem, &[&rustls::version::TLS13]);
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    Ok(connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?)
}

/// One HTTP/1.1 POST over TLS that fails when the body cannot be sent completely (a reset while
/// sending), as most clients do.
pub async fn https_whole_body(
    addr: SocketAddr,
    ca_pem: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<Answer> {
    let mut tls = tls_connection(addr, ca_pem, b"http/1.1").await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    tls.flush().await?;
    exchange(&mut tls, "", "", b"")
        .await
        .map(|(status, body)| Answer {
            status,
            body,
            tls: None,
        })
}

/// One HTTP/1.1 request over TLS 1.2 or 1.3.
pub async fn https(
    addr: SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<Answer> {
    https_with(
        addr,
        ca_pem,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        method,
        path,
        body,
    )
    .await
}

/// One plain HTTP/1.1 request.
pub async fn http(addr: SocketAddr, path: &str) -> anyhow::Result<Answer> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    exchange(&mut tcp, "GET", path, b"")
        .await
        .map(|(status, body)| Answer {
            status,
            body,
            tls: None,
        })
}

async fn exchange<S>(stream: &mut S, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // An empty method: the request was sent already.
    if !method.is_empty() {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
    }
    // A server may answer and close before a huge body is sent completely.
    let _ = stream.write_all(body).await;
    let _ = stream.flush().await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, dechunk(&body)))
}

/// Undoes chunked transfer encoding when present (good enough for test bodies).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, tail)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if size == 0 || tail.len() < size {
            return if size == 0 { out } else { body.to_owned() };
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
}

/// A test namespace with `labels` and the Secrets the operator would have written there (init and
/// enrichment), once the namespace webhook has labelled it for `dynakube` (which also shows that the
/// webhook's caches know that DynaKube). Waits up to `wait`.
pub async fn mapped_namespace(
    dynakube: &str,
    labels: BTreeMap<&str, &str>,
    wait: std::time::Duration,
) -> anyhow::Result<TestNamespace> {
    let ns = TestNamespace::create().await?;
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    for name in [INIT_SECRET, ENRICHMENT_SECRET] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": name }, "stringData": { "config": "{}" }
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
    }
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    let mut attempt = 0;
    test_kit::eventually("the namespace webhook to label the namespace", wait, || {
        attempt += 1;
        let (namespaces, labels, name) = (namespaces.clone(), labels.clone(), ns.name.clone());
        async move {
            // A changing annotation makes every attempt an UPDATE the webhook sees.
            let patch = json!({ "metadata": {
                "labels": labels,
                "annotations": { "test.dynatrace.com/attempt": attempt.to_string() },
            }});
            let updated = namespaces
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            Ok(updated
                .labels()
                .get(INSTANCE_LABEL)
                .filter(|dk| dk.as_str() == dynakube)
                .map(drop))
        }
    })
    .await?;
    Ok(ns)
}

/// Creates `pod` (deleting each attempt that `wanted` rejects, as the webhook's caches catch up) until
/// `wanted` accepts what the API server stored, for up to `wait`.
pub async fn create_until(
    client: &kube::Client,
    namespace: &str,
    pod: &k8s_openapi::api::core::v1::Pod,
    wanted: impl Fn(&k8s_openapi::api::core::v1::Pod) -> bool,
    wait: std::time::Duration,
) -> anyhow::Result<k8s_openapi::api::core::v1::Pod> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    test_kit::eventually("the wanted pod", wait, || async {
        let created = pods.create(&PostParams::default(), pod).await?;
        if wanted(&created) {
            return Ok(Some(created));
        }
        pods.delete(&created.name_any(), &Default::default()).await?;
        // The name is reused: wait until it is free.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Ok(None)
    })
    .await
}
