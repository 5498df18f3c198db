//! Helpers shared by the integration tests: an HTTP(S) client and request shorthands.

#![allow(dead_code, missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
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

#[allow(unused_imports)] // not every test uses every helper
pub use test_fake_tenant::oci_layout::{digest, image_config, sha256_hex};

/// A layer: an uncompressed tar holding one executable file.
pub fn layer_tar(path: &str, content: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_cksum();
    builder.append_data(&mut header, path, content).unwrap();
    builder.into_inner().unwrap()
}

/// What [`oci_layout`] wrote for one image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub tag: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer: Vec<u8>,
    pub layer_digest: String,
}

/// Writes `blobs/sha256/<hex>` and returns the digest.
pub fn write_blob(dir: &std::path::Path, bytes: &[u8]) -> String {
    test_fake_tenant::oci_layout::write_blob(dir, bytes).unwrap()
}

/// An image manifest for a config and plain tar layers already in `dir`.
pub fn write_manifest(
    dir: &std::path::Path,
    config_digest: &str,
    config_len: usize,
    layers: &[(String, u64)],
) -> (Vec<u8>, String) {
    let layers: Vec<_> = layers
        .iter()
        .map(|(digest, size)| (test_fake_tenant::oci_layout::TAR, digest.clone(), *size))
        .collect();
    test_fake_tenant::oci_layout::write_manifest(dir, config_digest, config_len, &layers).unwrap()
}

/// Writes `index.json` and `oci-layout` naming each manifest with its tag.
pub fn write_index(dir: &std::path::Path, manifests: &[(&str, &[u8], &str)]) {
    test_fake_tenant::oci_layout::write_index(dir, manifests).unwrap();
}

/// An OCI image layout in `dir` with one image per `(tag, content)`: one layer whose `opt/oneagent`
/// holds `content`.
pub fn oci_layout(dir: &std::path::Path, images: &[(&str, &[u8])]) -> Vec<BuiltImage> {
    let built: Vec<BuiltImage> = images
        .iter()
        .map(|(tag, content)| {
            let layer = layer_tar("opt/oneagent", content);
            let layer_digest = write_blob(dir, &layer);
            let config = image_config(tag, &[&layer_digest]);
            let config_digest = write_blob(dir, &config);
            let (manifest, manifest_digest) = write_manifest(
                dir,
                &config_digest,
                config.len(),
                &[(layer_digest.clone(), layer.len() as u64)],
            );
            BuiltImage {
                tag: (*tag).to_owned(),
                manifest,
                manifest_digest,
                config_digest,
                layer,
                layer_digest,
            }
        })
        .collect();
    let entries: Vec<(&str, &[u8], &str)> = built
        .iter()
        .map(|b| (b.tag.as_str(), b.manifest.as_slice(), b.manifest_digest.as_str()))
        .collect();
    write_index(dir, &entries);
    built
}

/// The only regular file's content in a layer tar.
pub fn file_in_layer(layer: &[u8], path: &str) -> Vec<u8> {
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(path) {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
            return content;
        }
    }
    panic!("{path} is not in the layer");
}
