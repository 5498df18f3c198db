//! TLS for the webhook server: the certificate and key come from files (`tls.crt`, `tls.key`) and are
//! read again when they change, so a rotated certificate is served within seconds, without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
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
    /// A file holds no usable PEM.
    #[error("{path} holds no usable {what} in PEM form: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// The key does not fit the certificate, or uses an unsupported algorithm.
    #[error("the key in {key} cannot be used with the certificate in {cert}: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// The serving certificate, swapped in place when the files change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    dir: PathBuf,
    current: ArcSwap<CertifiedKey>,
    fingerprint: std::sync::Mutex<Vec<u8>>,
}

impl ReloadingCertificate {
    /// Loads `tls.crt` and `tls.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Arc<Self>, TlsError> {
        let (key, fingerprint) = read_certified_key(dir)?;
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            current: ArcSwap::from_pointee(key),
            fingerprint: std::sync::Mutex::new(fingerprint),
        }))
    }

    /// Reads the files again and swaps the certificate in when they changed. A broken new pair is reported
    /// and the old certificate stays in use. Returns whether it swapped.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (key, fingerprint) = read_certified_key(&self.dir)?;
        let mut last = self
            .fingerprint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == fingerprint {
            return Ok(false);
        }
        self.current.store(Arc::new(key));
        *last = fingerprint;
        Ok(true)
    }

    /// Checks the files every [`RELOAD_INTERVAL`] until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(RELOAD_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => match self.reload() {
                    Ok(true) => tracing::info!(dir = %self.dir.display(), "serving a new certificate"),
                    Ok(false) => {}
                    // During a rotation the two files are written one after the other; the next tick sees both.
                    Err(err) => tracing::warn!("keeping the current certificate: {err}"),
                },
            }
        }
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
        Some(self.current.load_full())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certified_key(dir: &Path) -> Result<(CertifiedKey, Vec<u8>), TlsError> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
    let pem_error = |path: &Path, what, reason: String| TlsError::Pem {
        path: path.to_owned(),
        what,
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&cert_path, "certificate", e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(
            &cert_path,
            "certificate",
            "no CERTIFICATE block".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(&key_path, "private key", e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Mismatch {
        cert: cert_path.clone(),
        key: key_path.clone(),
        reason: e.to_string(),
    })?;
    let mut fingerprint = cert_pem;
    fingerprint.extend_from_slice(&key_pem);
    Ok((certified, fingerprint))
}
