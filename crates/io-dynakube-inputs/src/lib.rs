//! What a DynaKube or a legacy OneAgent refers to outside itself, read in one place: the token Secret,
//! the proxy (from the spec or a Secret), the trusted CAs ConfigMap, the ActiveGate TLS Secret, the
//! cluster's id, and the tenant client built from them.
//!
//! The rules (which proxy wins, which key holds what, what makes a token valid) are pure functions in
//! `api` and `desired`; this crate does the reading and says precisely what is missing, so that every
//! controller (and the webhook, init container and CSI provisioner after them) reports the same problem in
//! the same words.

use std::collections::BTreeMap;
use std::sync::Arc;

use io_tenant_client::{CallObserver, ClientConfig, TenantClient};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{Api, Client, ResourceExt as _};
use pure_api::dynakube::{DynaKube, PROXY_SECRET_KEY, ProxySource, TRUSTED_CAS_KEY};
use pure_api::oneagent::OneAgent;

/// Key of the certificate in the ActiveGate TLS Secret.
pub const TLS_CERT_KEY: &str = "server.crt";

/// Something the user must fix: which object, which key, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The token Secret or a token in it is unusable (the message names the Secret and key).
    #[error(transparent)]
    Token(#[from] pure_desired::tokens::TokenError),
    /// A Secret the spec names does not exist.
    #[error(
        "{what} {secret} does not exist; create it with the key {key:?}, or change the spec to name one that does"
    )]
    SecretMissing {
        /// What the Secret is for, e.g. "the proxy Secret".
        what: &'static str,
        /// `<namespace>:<name>`.
        secret: String,
        /// The key it must have.
        key: &'static str,
    },
    /// A Secret the spec names lacks a key.
    #[error("{what} {secret} has no key {key:?} (or it is empty); add it")]
    SecretKeyMissing {
        /// What the Secret is for.
        what: &'static str,
        /// `<namespace>:<name>`.
        secret: String,
        /// The missing key.
        key: &'static str,
    },
    /// The trusted CAs ConfigMap does not exist or lacks its key.
    #[error(
        "the trusted CAs ConfigMap {config_map} is missing or has no key {key:?}; create it with the PEM \
         certificates under {key:?}, or remove spec.trustedCAs"
    )]
    TrustedCasMissing {
        /// `<namespace>:<name>`.
        config_map: String,
        /// The key.
        key: &'static str,
    },
    /// The tenant client cannot be built from the spec (API URL, proxy URL, CAs); the message says which
    /// setting and what to do.
    #[error("{0}")]
    Client(String),
}

impl Problem {
    /// Whether the problem is about the tokens (reported in the `Tokens` condition) rather than the other
    /// settings (reported in `DynatraceAPI`).
    pub fn is_token_problem(&self) -> bool {
        matches!(self, Self::Token(_))
    }

    /// A short, stable reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Token(_) => "TokenError",
            Self::SecretMissing { .. } | Self::SecretKeyMissing { .. } => "SecretError",
            Self::TrustedCasMissing { .. } => "TrustedCAsError",
            Self::Client(_) => "ClientConfigError",
        }
    }
}

/// Why the inputs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something the user must fix.
    #[error(transparent)]
    Problem(#[from] Problem),
    /// A Kubernetes API call failed; retrying may help.
    #[error("{what}: {source}")]
    Kube {
        /// What was being read, naming the object.
        what: String,
        /// The API error.
        source: kube::Error,
    },
}

/// Attaches what was being done to a Kubernetes API error: the one way this crate (and its users) name a
/// failed call.
pub fn kube_context(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// `<namespace>:<name>`, as messages name objects.
fn object_ref(namespace: &str, name: &str) -> String {
    pure_desired::tokens::secret_ref(namespace, name)
}

/// The settings of a tenant client, as a DynaKube's or a OneAgent's spec gives them.
#[derive(Debug, Clone)]
pub struct TenantSettings<'a> {
    /// Namespace of the proxy Secret and the trusted-CAs ConfigMap.
    pub namespace: &'a str,
    /// `spec.apiUrl`.
    pub api_url: &'a str,
    /// `spec.skipCertCheck`.
    pub skip_cert_check: bool,
    /// `spec.networkZone`.
    pub network_zone: Option<&'a str>,
    /// Hosts that bypass the proxy.
    pub no_proxy: Option<String>,
    /// The proxy.
    pub proxy: Option<ProxySource<'a>>,
    /// The ConfigMap whose key `certs` holds CAs to trust.
    pub trusted_cas: Option<&'a str>,
}

impl<'a> TenantSettings<'a> {
    /// A DynaKube's settings.
    pub fn of_dynakube(dynakube: &'a DynaKube, namespace: &'a str) -> Self {
        let spec = &dynakube.spec;
        Self {
            namespace,
            api_url: &spec.api_url,
            skip_cert_check: spec.skip_cert_check.unwrap_or(false),
            network_zone: spec.network_zone.as_deref().filter(|z| !z.is_empty()),
            no_proxy: Some(dynakube.feature_flags().no_proxy().to_owned()).filter(|p| !p.is_empty()),
            proxy: dynakube.proxy(),
            trusted_cas: dynakube.trusted_cas_config_map(),
        }
    }

    /// A legacy OneAgent's settings.
    pub fn of_oneagent(oneagent: &'a OneAgent, namespace: &'a str) -> Self {
        let spec = &oneagent.spec;
        Self {
            namespace,
            api_url: &spec.api_url,
            skip_cert_check: spec.skip_cert_check.unwrap_or(false),
            network_zone: spec.network_zone.as_deref().filter(|z| !z.is_empty()),
            no_proxy: None,
            proxy: oneagent.proxy(),
            trusted_cas: oneagent.trusted_cas_config_map(),
        }
    }
}

/// Reads inputs with one client; the cluster id is read once and kept.
#[derive(Clone)]
pub struct Reader {
    client: Client,
    cluster_id: Arc<tokio::sync::OnceCell<String>>,
}

impl Reader {
    /// A reader using `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cluster_id: Arc::default(),
        }
    }

    /// The token Secret's resourceVersion and tokens.
    pub async fn tokens(
        &self,
        namespace: &str,
        secret_name: &str,
    ) -> Result<(Option<String>, pure_desired::tokens::Tokens), Error> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(secret_name)
            .await
            .map_err(kube_context(format!(
                "reading the token Secret {}",
                object_ref(namespace, secret_name)
            )))?
            .ok_or_else(|| {
                Problem::Token(pure_desired::tokens::TokenError::SecretNotFound {
                    secret: object_ref(namespace, secret_name),
                })
            })?;
        let (version, data) = secret_data(secret);
        let tokens = pure_desired::tokens::tokens_from_secret(secret_name, namespace, &data)
            .map_err(Problem::Token)?;
        Ok((version, tokens))
    }

    /// A DynaKube's tokens (`spec.tokens`, else its name).
    pub async fn dynakube_tokens(
        &self,
        dynakube: &DynaKube,
    ) -> Result<(Option<String>, pure_desired::tokens::Tokens), Error> {
        self.tokens(
            &dynakube.namespace().unwrap_or_default(),
            &dynakube.tokens_secret_name(),
        )
        .await
    }

    /// A key of a Secret the spec names, as text.
    pub async fn secret_key(
        &self,
        namespace: &str,
        name: &str,
        key: &'static str,
        what: &'static str,
    ) -> Result<String, Error> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(kube_context(format!(
                "reading {what} {}",
                object_ref(namespace, name)
            )))?
            .ok_or_else(|| Problem::SecretMissing {
                what,
                secret: object_ref(namespace, name),
                key,
            })?;
        secret
            .data
            .and_then(|d| d.get(key).cloned())
            .filter(|v| !v.0.is_empty())
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .ok_or_else(|| {
                Problem::SecretKeyMissing {
                    what,
                    secret: object_ref(namespace, name),
                    key,
                }
                .into()
            })
    }

    /// The proxy URL, read from its Secret when the spec names one.
    pub async fn proxy(
        &self,
        namespace: &str,
        proxy: Option<ProxySource<'_>>,
    ) -> Result<Option<String>, Error> {
        match proxy {
            None => Ok(None),
            Some(ProxySource::Value(value)) => Ok(Some(value.to_owned())),
            Some(ProxySource::Secret(name)) => self
                .secret_key(namespace, name, PROXY_SECRET_KEY, "the proxy Secret")
                .await
                .map(Some),
        }
    }

    /// The PEM certificates of the trusted CAs ConfigMap, when the spec names one.
    pub async fn trusted_cas(&self, namespace: &str, name: Option<&str>) -> Result<Option<String>, Error> {
        let Some(name) = name else {
            return Ok(None);
        };
        let map = Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(kube_context(format!(
                "reading the trusted CAs ConfigMap {}",
                object_ref(namespace, name)
            )))?;
        map.and_then(|m| m.data)
            .and_then(|d| d.get(TRUSTED_CAS_KEY).cloned())
            .filter(|c| !c.is_empty())
            .map(Some)
            .ok_or_else(|| {
                Problem::TrustedCasMissing {
                    config_map: object_ref(namespace, name),
                    key: TRUSTED_CAS_KEY,
                }
                .into()
            })
    }

    /// The ActiveGate TLS certificate, when the DynaKube names a TLS Secret.
    pub async fn activegate_tls_cert(&self, dynakube: &DynaKube) -> Result<Option<String>, Error> {
        let Some(name) = dynakube.activegate_tls_secret() else {
            return Ok(None);
        };
        let namespace = dynakube.namespace().unwrap_or_default();
        self.secret_key(&namespace, name, TLS_CERT_KEY, "the ActiveGate TLS Secret")
            .await
            .map(Some)
    }

    /// The cluster's id: the UID of the `kube-system` namespace. Read once: it never changes.
    pub async fn cluster_id(&self) -> Result<String, Error> {
        self.cluster_id
            .get_or_try_init(|| async {
                let namespace = Api::<Namespace>::all(self.client.clone())
                    .get_metadata("kube-system")
                    .await
                    .map_err(kube_context("reading namespace kube-system for the cluster id"))?;
                Ok(namespace.uid().unwrap_or_default())
            })
            .await
            .cloned()
    }

    /// A tenant client from the settings: reads the proxy Secret and the trusted CAs.
    pub async fn tenant_client(
        &self,
        settings: &TenantSettings<'_>,
        api_token: String,
        paas_token: Option<String>,
        observer: Option<Arc<dyn CallObserver>>,
    ) -> Result<TenantClient, Error> {
        let mut config = ClientConfig::new(settings.api_url.to_owned(), api_token);
        config.paas_token = paas_token;
        config.skip_cert_check = settings.skip_cert_check;
        config.network_zone = settings.network_zone.map(str::to_owned);
        config.observer = observer;
        config.no_proxy = settings.no_proxy.clone();
        config.proxy = self.proxy(settings.namespace, settings.proxy).await?;
        config.trusted_cas_pem = self.trusted_cas(settings.namespace, settings.trusted_cas).await?;
        TenantClient::new(config).map_err(|e| Problem::Client(e.to_string()).into())
    }
}

/// A Secret's resourceVersion and data.
pub fn secret_data(secret: Secret) -> (Option<String>, BTreeMap<String, Vec<u8>>) {
    let version = secret.resource_version();
    let data = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    (version, data)
}
