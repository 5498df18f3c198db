//! Helpers shared by the integration tests: an HTTP(S) client and request shorthands.

#![allow(dead_code, missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sha2::{Digest as _, Sha256};
use test_fake_tenant::{FakeTenant, Listen, TenantConfig, TokenConfig};

pub const TOKEN: &str = "dt0c01.test";
/// A token with only `DataExport`.
pub const EXPORT_ONLY: &str = "dt0c01.EXPORT.secret";
pub const LATEST: &str = "1.277.0.20230914-094321";
pub const OLDER: &str = "1.276.0.20230901-120000";

/// A client trusting `ca_pem` (or nothing, for plain HTTP), speaking HTTP/1.1.
pub fn client(ca_pem: Option<&str>) -> reqwest::Client {
    builder(ca_pem, false).build().unwrap()
}

/// A client trusting `ca_pem` that speaks HTTP/2 only (ALPN `h2` over TLS, prior knowledge without).
pub fn client_h2(ca_pem: Option<&str>) -> reqwest::Client {
    builder(ca_pem, true).http2_prior_knowledge().build().unwrap()
}

fn builder(ca_pem: Option<&str>, h2: bool) -> reqwest::ClientBuilder {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    if h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
}

/// The default configuration plus a token with only `DataExport`.
pub fn config() -> TenantConfig {
    let mut config = TenantConfig::default();
    config.tokens.push(TokenConfig {
        value: EXPORT_ONLY.into(),
        scopes: vec!["DataExport".into()],
    });
    config
}

pub async fn start() -> FakeTenant {
    FakeTenant::start(config(), Listen::Http).await.unwrap()
}

pub async fn start_with(config: TenantConfig) -> FakeTenant {
    FakeTenant::start(config, Listen::Http).await.unwrap()
}

/// `{api_url}/v1/deployment/installer/agent/{rest}`
pub fn installer(tenant: &FakeTenant, rest: &str) -> String {
    format!("{}/v1/deployment/installer/agent/{rest}", tenant.api_url())
}

pub async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client(None).get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Api-Token {token}"));
    }
    request.send().await.unwrap()
}

pub async fn json(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    response.json().await.unwrap()
}

/// Asserts the error answer: status, JSON content type, `{"error":{"code":..,"message":..}}`; returns the
/// message.
pub async fn expect_error(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], status, "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    message
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
