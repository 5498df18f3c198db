//! A bounded adversarial load on a webhook server in this process, on 127.0.0.1 only; prints the process's
//! resident memory before, at its peak and after, and the answers by status.
//!
//! `cargo run -p io-webhook --example adversarial_load [connections] [rounds] [string|deep|dense ...]`
//! (defaults 32, 6 and all three). Each connection sends, per round, an AdmissionReview with a 3 MB string,
//! one nested 100,000 levels deep, and one with an array of 500,000 small numbers (1 MB).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: a failed step ends it

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// `VmRSS` and `VmHWM` (peak) of this process, in MiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn review(object_spec: &str) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"dynatrace.com","version":"v1beta1","kind":"DynaKube"}},"resource":{{"group":"dynatrace.com","version":"v1beta1","resource":"dynakubes"}},"operation":"CREATE","userInfo":{{}},"name":"dk","namespace":"dynatrace","object":{{"apiVersion":"dynatrace.com/v1beta1","kind":"DynaKube","metadata":{{"name":"dk","namespace":"dynatrace"}},"spec":{object_spec}}}}}}}"#
    )
    .into_bytes()
}

async fn post(addr: SocketAddr, config: Arc<rustls::ClientConfig>, body: &[u8]) -> String {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        let head = format!(
            "POST /validate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body).await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer);
        Ok::<_, std::io::Error>(text.split_whitespace().nth(1).unwrap_or("?").to_owned())
    };
    match attempt.await {
        Ok(status) => status,
        Err(err) => format!("error ({})", err.kind()),
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(6);
    // Which bodies: any of "string", "deep", "dense"; all by default.
    let kinds: Vec<String> = args.collect();
    let wanted = |kind: &str| kinds.is_empty() || kinds.iter().any(|k| k == kind);

    let dir = std::env::temp_dir().join(format!("webhook-load-{}", std::process::id()));
    let ca = test_kit::pki::CertificateAuthority::new("load-ca").unwrap();
    let leaf = ca
        .issue_server_cert("webhook", &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(io_webhook::tls::CERT_FILE), leaf.cert_pem).unwrap();
    std::fs::write(dir.join(io_webhook::tls::KEY_FILE), leaf.key_pem).unwrap();
    let config = io_webhook::ServerConfig {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        metrics_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        certificate_source: io_webhook::CertificateSource::Dir(dir.clone()),
    };
    let state = io_webhook::AppState {
        cluster: None,
        metrics: io_webhook::Metrics::new(),
        injection: None,
    };
    let server = io_webhook::start(&config, state, CancellationToken::new())
        .await
        .unwrap();
    let addr = server.addr;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let big_string = Arc::new(review(&format!(
        r#"{{"apiUrl":"https://abc.live.dynatrace.com/api","tokens":"{}"}}"#,
        "x".repeat(3_000_000)
    )));
    let deep = Arc::new(review(&format!(
        r#"{{"apiUrl":"https://abc.live.dynatrace.com/api","x":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    )));
    let dense = Arc::new(review(&format!(
        r#"{{"apiUrl":"https://abc.live.dynatrace.com/api","x":[{}0]}}"#,
        "0,".repeat(500_000)
    )));

    // Warm up with one ordinary request, then take the baseline.
    let good =
        review(r#"{"apiUrl":"https://abc.live.dynatrace.com/api","oneAgent":{"classicFullStack":{}}}"#);
    post(addr, client.clone(), &good).await;
    let (baseline, _) = memory();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let bodies: Vec<_> = [("string", &big_string), ("deep", &deep), ("dense", &dense)]
            .into_iter()
            .filter(|(kind, _)| wanted(kind))
            .map(|(_, body)| (*body).clone())
            .collect();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..rounds {
                for body in &bodies {
                    statuses.push(post(addr, client.clone(), body.as_slice()).await);
                }
            }
            statuses
        }));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        for status in task.await.unwrap() {
            *counts.entry(status).or_default() += 1;
        }
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_good = post(addr, client.clone(), &good).await;
    let (after, peak) = memory();
    println!(
        "{connections} connections x {rounds} rounds x {kinds:?} bodies in {:.1} s; answers: {counts:?}; an ordinary \
         review afterwards: {after_good}",
        elapsed.as_secs_f64()
    );
    println!("resident memory: baseline {baseline} MiB, peak {peak} MiB, after {after} MiB");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
