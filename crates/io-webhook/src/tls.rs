//! TLS for the webhook server. The certificate and key come either from files (`tls.crt`, `tls.key`),
//! read again when they change, or straight from the operator's certificate Secret, watched through the
//! API server. Either way a rotated certificate is served within seconds, without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// File name of the serving certificate (PEM chain) in the certificate directory.
pub const CERT_FILE: &str = "tls.crt";
/// File name of the private key (PEM) in the certificate directory.
pub const KEY_FILE: &str = "tls.key";
/// How often the files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Why the certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error(
        "cannot read {path}: {source}; the webhook needs {CERT_FILE} and {KEY_FILE} in its certificate directory"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The Secret lacks a key.
    #[error(
        "{secret} has no {key} yet; the operator's certificate controller writes it once the webhook \
         Deployment or configuration exists: check that the operator runs"
    )]
    MissingKey {
        /// `Secret <namespace>/<name>`.
        secret: String,
        /// The missing key.
        key: &'static str,
    },
    /// A file or Secret key holds no usable PEM.
    #[error("{origin} holds no usable {what} in PEM form: {reason}")]
    Pem {
        /// The file, or the Secret and key.
        origin: String,
        /// `certificate` or `private key`.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// The key does not fit the certificate, or uses an unsupported algorithm.
    #[error("the key in {key} cannot be used with the certificate in {cert}: {reason}")]
    Mismatch {
        /// The certificate's file or Secret key.
        cert: String,
        /// The key's file or Secret key.
        key: String,
        /// What rustls said.
        reason: String,
    },
}

/// The serving certificate, swapped in place when its files or its Secret change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    /// The certificate directory (file source only).
    dir: Option<PathBuf>,
    /// Where the certificate comes from, for messages.
    origin: String,
    /// `None` until a Secret first delivered a usable pair: TLS handshakes fail until then.
    current: ArcSwapOption<CertifiedKey>,
    fingerprint: std::sync::Mutex<Vec<u8>>,
}

impl ReloadingCertificate {
    /// Loads `tls.crt` and `tls.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Arc<Self>, TlsError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
        let key = certified_key(
            &cert_pem,
            &key_pem,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )?;
        Ok(Arc::new(Self {
            dir: Some(dir.to_owned()),
            origin: dir.display().to_string(),
            current: ArcSwapOption::from_pointee(key),
            fingerprint: std::sync::Mutex::new(fingerprint(&cert_pem, &key_pem)),
        }))
    }

    /// No certificate yet; [`Self::set_pem`] (or [`Self::watch_secret`]) provides one. Until then TLS
    /// handshakes fail. `origin` names the source in messages, e.g. `Secret dynatrace/dynatrace-webhook-certs`.
    pub fn pending(origin: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            dir: None,
            origin: origin.into(),
            current: ArcSwapOption::empty(),
            fingerprint: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Whether a certificate is being served.
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Swaps in the certificate chain and key from PEM, unless they are the ones served already. A broken
    /// pair is reported and the current certificate stays. Returns whether it swapped.
    pub fn set_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<bool, TlsError> {
        self.swap(
            cert_pem,
            key_pem,
            &format!("{} key {CERT_FILE}", self.origin),
            &format!("{} key {KEY_FILE}", self.origin),
        )
    }

    /// Reads the files again and swaps the certificate in when they changed. A broken new pair is reported
    /// and the old certificate stays in use. Returns whether it swapped (always `false` without files).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
        self.swap(
            &cert_pem,
            &key_pem,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )
    }

    fn swap(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_origin: &str,
        key_origin: &str,
    ) -> Result<bool, TlsError> {
        let new_fingerprint = fingerprint(cert_pem, key_pem);
        let mut last = self
            .fingerprint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == new_fingerprint && self.is_loaded() {
            return Ok(false);
        }
        let key = certified_key(cert_pem, key_pem, cert_origin, key_origin)?;
        self.current.store(Some(Arc::new(key)));
        *last = new_fingerprint;
        Ok(true)
    }

    /// Checks the files every [`RELOAD_INTERVAL`] until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(RELOAD_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => match self.reload() {
                    Ok(true) => tracing::info!(dir = %self.origin, "serving a new certificate"),
                    Ok(false) => {}
                    // During a rotation the two files are written one after the other; the next tick sees both.
                    Err(err) => tracing::warn!("keeping the current certificate: {err}"),
                },
            }
        }
    }

    /// Watches the Secret `namespace/name` and serves its `tls.crt` and `tls.key`, swapping them in on
    /// every change, until `shutdown`. The Secret is written in one update, so certificate and key always
    /// arrive together. A deleted Secret or a broken pair leaves the current certificate in place.
    pub async fn watch_secret(
        self: Arc<Self>,
        client: Client,
        namespace: String,
        name: String,
        shutdown: CancellationToken,
    ) {
        let secrets: Api<Secret> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = std::pin::pin!(watcher(secrets, config).default_backoff());
        let secret_name = format!("Secret {namespace}/{name}");
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            match event {
                None => return,
                Some(Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret))) => {
                    match self.set_secret(&secret_name, &secret) {
                        Ok(true) => tracing::info!(secret = %secret_name, "serving a new certificate"),
                        Ok(false) => {}
                        Err(err) if self.is_loaded() => {
                            tracing::warn!("keeping the current certificate: {err}")
                        }
                        Err(err) => tracing::warn!("no certificate to serve yet: {err}"),
                    }
                }
                Some(Ok(watcher::Event::Delete(_))) => tracing::warn!(
                    secret = %secret_name,
                    "the certificate Secret was deleted; serving the current certificate until the operator \
                     recreates it"
                ),
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                Some(Err(err)) => tracing::warn!(
                    secret = %secret_name,
                    %err,
                    "watching the certificate Secret failed: {}; retrying with backoff",
                    crate::cluster::rbac_advice(&err)
                ),
            }
        }
    }

    fn set_secret(&self, secret_name: &str, secret: &Secret) -> Result<bool, TlsError> {
        let data = secret.data.as_ref();
        let value = |key: &'static str| {
            data.and_then(|d| d.get(key))
                .map(|v| v.0.as_slice())
                .ok_or_else(|| TlsError::MissingKey {
                    secret: secret_name.to_owned(),
                    key,
                })
        };
        self.set_pem(value(CERT_FILE)?, value(KEY_FILE)?)
    }

    /// A rustls server configuration that serves the current certificate: TLS 1.3 preferred, TLS 1.2 the
    /// minimum, HTTP/2 and HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn fingerprint(cert_pem: &[u8], key_pem: &[u8]) -> Vec<u8> {
    let mut fingerprint = cert_pem.to_vec();
    fingerprint.extend_from_slice(key_pem);
    fingerprint
}

/// Parses a PEM chain and key into what rustls serves; `cert_origin` and `key_origin` name them in errors.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_origin: &str,
    key_origin: &str,
) -> Result<CertifiedKey, TlsError> {
    let pem_error = |origin: &str, what, reason: String| TlsError::Pem {
        origin: origin.to_owned(),
        what,
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_origin, "certificate", e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(
            cert_origin,
            "certificate",
            "no CERTIFICATE block".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| pem_error(key_origin, "private key", e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Mismatch {
        cert: cert_origin.to_owned(),
        key: key_origin.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn pair() -> (String, String) {
        let ca = test_kit::pki::CertificateAuthority::new("tls-test-ca").unwrap();
        let leaf = ca
            .issue_server_cert("webhook", &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .unwrap();
        (leaf.cert_pem, leaf.key_pem)
    }

    fn served(certificate: &ReloadingCertificate) -> Option<Vec<u8>> {
        certificate
            .current
            .load_full()
            .map(|key| key.cert[0].as_ref().to_vec())
    }

    #[test]
    fn a_pending_certificate_is_set_from_pem_and_keeps_the_working_pair_on_garbage() {
        let certificate = ReloadingCertificate::pending("Secret ns/certs");
        assert!(!certificate.is_loaded());
        assert!(served(&certificate).is_none(), "no certificate: handshakes fail");

        let (cert, key) = pair();
        assert!(certificate.set_pem(cert.as_bytes(), key.as_bytes()).unwrap());
        assert!(certificate.is_loaded());
        let first = served(&certificate).unwrap();
        assert!(
            !certificate.set_pem(cert.as_bytes(), key.as_bytes()).unwrap(),
            "the same pair is not swapped again"
        );

        let err = certificate.set_pem(b"garbage", key.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("Secret ns/certs key tls.crt"), "{err}");
        let (_, other_key) = pair();
        let err = certificate
            .set_pem(cert.as_bytes(), other_key.as_bytes())
            .unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        assert_eq!(served(&certificate).unwrap(), first, "the working pair stays");

        let (new_cert, new_key) = pair();
        assert!(
            certificate
                .set_pem(new_cert.as_bytes(), new_key.as_bytes())
                .unwrap()
        );
        assert_ne!(served(&certificate).unwrap(), first);
        assert!(!certificate.reload().unwrap(), "no files to reload");
    }

    #[test]
    fn a_secret_without_the_keys_is_named_in_the_error() {
        let certificate = ReloadingCertificate::pending("Secret ns/certs");
        let err = certificate
            .set_secret("Secret ns/certs", &Secret::default())
            .unwrap_err();
        assert!(
            err.to_string().contains("Secret ns/certs has no tls.crt yet"),
            "{err}"
        );
    }
}
