//! The desired state for the legacy `OneAgent` resource (`dynatrace.com/v1alpha1`) of the old OneAgent
//! Operator (spec §7.4): its DaemonSet, its pull Secret, the token rules and the phase.
//!
//! The old operator runs classic full-stack OneAgents in one of two ways:
//! - **installer mode** (`useImmutableImage` false, the default): a public image that downloads the
//!   installer from the environment at start-up with the PaaS token. New versions reach the nodes by the
//!   controller deleting the pods one node at a time.
//! - **immutable mode**: the OneAgent image from the environment's registry, pulled with a generated pull
//!   Secret. New versions reach the nodes through the `image-version` template annotation: a new version
//!   changes the pod template, and the DaemonSet's rolling update replaces the pods.
//!
//! Whether the OneAgent runs in immutable mode is read from `spec.useImmutableImage`. The reference reads
//! `status.useImmutableImage`, which its controller copies from the spec (and then requeues) before it
//! builds anything, so both agree whenever a DaemonSet is built.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, LocalObjectReference, PodSpec, Probe, Secret, SecurityContext,
};
use pure_api::dynakube::ProxySource;
use pure_api::oneagent::OneAgent;
use url::Url;

use crate::hash::with_template_hash_under;
use crate::objects::{DOCKER_CONFIG_KEY, DOCKER_CONFIG_TYPE};
use crate::oneagent::{
    APPARMOR_ANNOTATION, CAPABILITIES, CERTS_PATH, CONTAINER_NAME, DEFAULT_CPU_REQUEST, HOST_ROOT_PATH,
    host_root_volume,
};
use crate::owner::owned_metadata;
use crate::pod::{self, PROXY_ENV, Volumes, field_env, literal_env, secret_env};
use crate::tokens::{SCOPE_DATA_EXPORT, SCOPE_INSTALLER_DOWNLOAD, TokenKind, secret_ref};
use crate::{DesiredError, MISSING_CLUSTER_ID};

/// Annotation on the DaemonSet that holds its template hash (the old operator's key, so that a DaemonSet
/// it created is recognised and replaced).
pub const TEMPLATE_HASH_ANNOTATION: &str = "internal.oneagent.dynatrace.com/template-hash";
/// Pod-template annotation with `status.imageVersion`: a new version changes the template, which is how
/// immutable-mode updates roll out.
pub const IMAGE_VERSION_ANNOTATION: &str = "internal.oneagent.dynatrace.com/image-version";
/// Selector label key whose value is always `oneagent`.
pub const LABEL_DYNATRACE: &str = "dynatrace";
/// Selector label key whose value is the `OneAgent`'s name.
pub const LABEL_ONEAGENT: &str = "oneagent";
/// Service account of privileged OneAgent pods.
pub const SERVICE_ACCOUNT: &str = "dynatrace-oneagent";
/// Service account of OneAgent pods in unprivileged mode.
pub const UNPRIVILEGED_SERVICE_ACCOUNT: &str = "dynatrace-oneagent-unprivileged";
/// Installer-mode image.
pub const INSTALLER_IMAGE: &str = "docker.io/dynatrace/oneagent:latest";
/// Installer-mode image on OpenShift (the certified image).
pub const OPENSHIFT_INSTALLER_IMAGE: &str = "registry.connect.redhat.com/dynatrace/oneagent:latest";
/// `maxUnavailable` of the rolling update. The legacy resource has no feature flags; 1 is the Kubernetes
/// default the old operator relied on, and the DynaKube DaemonSet's default.
pub const MAX_UNAVAILABLE: i32 = 1;
/// Phase when every wanted OneAgent pod is ready.
pub const PHASE_RUNNING: &str = crate::rollout::PHASE_RUNNING;
/// Phase while OneAgent pods are being created or replaced.
pub const PHASE_DEPLOYING: &str = crate::rollout::PHASE_DEPLOYING;
/// Minutes between two lookups of the same token (`/v2/apiTokens/lookup`, or `/v1/tokens/lookup` where it is missing).
pub const TOKEN_PROBE_MINUTES: u32 = 5;

const CERTS_VOLUME: &str = "certs";
const INSTALLER_TOKEN_ENV: &str = "ONEAGENT_INSTALLER_TOKEN";
const HINT_FROM_API_SERVER: &str = "pass the OneAgent as read from the API server, which always sets it";

/// What the legacy DaemonSet needs beyond the `OneAgent`'s spec: values the caller has already resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Immutable mode only: an image the caller resolved from [`immutable_image`] (for example
    /// pinned by digest), used instead of it. `None` (or empty) gives the image of the spec rules. Ignored
    /// in installer mode, whose image is only the installer's shell and is pulled without the pull Secret.
    pub image: Option<String>,
    /// The cluster's id: the UID of the `kube-system` namespace (`DT_K8S_CLUSTER_ID`).
    pub cluster_id: String,
    /// This operator's version (`--set-host-property=OperatorVersion=<v>`).
    pub operator_version: String,
    /// `status.imageVersion`: the version of the immutable image in use. When set (and not empty) it
    /// becomes the pod-template annotation [`IMAGE_VERSION_ANNOTATION`].
    pub image_version: Option<String>,
    /// Whether the cluster is OpenShift, which selects [`OPENSHIFT_INSTALLER_IMAGE`].
    pub openshift: bool,
}

/// Whether the `OneAgent` runs the immutable image (`spec.useImmutableImage`).
pub fn uses_immutable_image(oneagent: &OneAgent) -> bool {
    oneagent.spec.use_immutable_image == Some(true)
}

/// The name of the token Secret: `spec.tokens`, else the `OneAgent`'s name.
pub fn tokens_secret_name(oneagent: &OneAgent) -> String {
    non_empty(oneagent.spec.tokens.as_deref())
        .or(oneagent.metadata.name.as_deref())
        .unwrap_or_default()
        .to_owned()
}

/// The labels the DaemonSet selects its pods by: `dynatrace: oneagent` and `oneagent: <name>`. The
/// controller lists the OneAgent pods with them too.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_DYNATRACE.to_owned(), "oneagent".to_owned()),
        (LABEL_ONEAGENT.to_owned(), name.to_owned()),
    ])
}

/// The environment's registry as the old operator derives it: `apiUrl` without the scheme and without
/// the `/api` suffix, so `https://abc.live.dynatrace.com/api` gives `abc.live.dynatrace.com` and
/// `https://host:9999/e/abc/api` gives `host:9999/e/abc` (Managed images live under the environment's
/// path). `None` when nothing is left. Unlike the reference, `http://` and trailing slashes are stripped
/// too: neither can be part of an image name.
pub fn registry(api_url: &str) -> Option<String> {
    let url = api_url.trim();
    let url = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    let registry = url.strip_suffix("/api").unwrap_or(url).trim_end_matches('/');
    (!registry.is_empty()).then(|| registry.to_owned())
}

/// The installer-mode image: `spec.image`, else [`OPENSHIFT_INSTALLER_IMAGE`] on OpenShift, else
/// [`INSTALLER_IMAGE`].
pub fn installer_image(oneagent: &OneAgent, openshift: bool) -> String {
    match non_empty(oneagent.spec.image.as_deref()) {
        Some(image) => image.to_owned(),
        None if openshift => OPENSHIFT_INSTALLER_IMAGE.to_owned(),
        None => INSTALLER_IMAGE.to_owned(),
    }
}

/// The immutable-mode image: `spec.image`, else `<registry>/linux/oneagent`, tagged with
/// `spec.agentVersion` when set (see [`registry`]). This is also the image whose
/// `com.dynatrace.build-version` label the controller reads.
pub fn immutable_image(oneagent: &OneAgent) -> Result<String, DesiredError> {
    if let Some(image) = non_empty(oneagent.spec.image.as_deref()) {
        return Ok(image.to_owned());
    }
    let registry = registry(&oneagent.spec.api_url).ok_or_else(|| invalid_api_url(oneagent))?;
    Ok(match non_empty(oneagent.spec.agent_version.as_deref()) {
        Some(version) => format!("{registry}/linux/oneagent:{version}"),
        None => format!("{registry}/linux/oneagent"),
    })
}

/// The pull Secret the DaemonSet's pods reference: `spec.customPullSecret` in immutable mode; else
/// `<name>-pull-secret` in immutable mode without `spec.image` (the only case where
/// [`pull_secret`] writes it); else none.
///
/// The reference also references `<name>-pull-secret` in immutable mode with a custom image, where the
/// Secret is never created and the kubelet warns on every pull; that reference is left out.
pub fn pull_secret_name(oneagent: &OneAgent) -> Option<String> {
    if !uses_immutable_image(oneagent) {
        return None;
    }
    if let Some(custom) = non_empty(oneagent.spec.custom_pull_secret.as_deref()) {
        return Some(custom.to_owned());
    }
    if non_empty(oneagent.spec.image.as_deref()).is_some() {
        return None;
    }
    Some(generated_pull_secret_name(
        oneagent.metadata.name.as_deref().unwrap_or_default(),
    ))
}

fn generated_pull_secret_name(name: &str) -> String {
    format!("{name}-pull-secret")
}

/// The pull Secret `<name>-pull-secret` (owned by the `OneAgent`) for the environment's registry, or
/// `None` when the `OneAgent` needs none: installer mode, a custom `spec.image`, or a
/// `spec.customPullSecret` of the user's own.
///
/// `.dockerconfigjson` has one entry under `auths`, keyed by [`registry`] (the same string the
/// image starts with, so the kubelet always matches it): username = the environment id, password =
/// `paas_token`, auth = base64 of `username:password`. `environment_id` is `status.environmentID` (from
/// the connection info, as in the reference); when it is not known yet the id is read from `apiUrl`.
/// The DynaKube's [`pull_secret`](crate::objects::pull_secret) cannot be reused: it takes a DynaKube, keys the
/// entry by host only and labels the Secret as the DynaKube's.
pub fn pull_secret(
    oneagent: &OneAgent,
    environment_id: Option<&str>,
    paas_token: &str,
) -> Result<Option<Secret>, DesiredError> {
    if !uses_immutable_image(oneagent)
        || non_empty(oneagent.spec.image.as_deref()).is_some()
        || non_empty(oneagent.spec.custom_pull_secret.as_deref()).is_some()
    {
        return Ok(None);
    }
    let name = checked_name(oneagent)?;
    let registry = registry(&oneagent.spec.api_url).ok_or_else(|| invalid_api_url(oneagent))?;
    let username = match non_empty(environment_id) {
        Some(id) => id.to_owned(),
        None => pure_api::dynakube::tenant_uuid_from_api_url(&oneagent.spec.api_url)
            .ok_or_else(|| invalid_api_url(oneagent))?,
    };
    if paas_token.is_empty() {
        return Err(DesiredError::LegacyMissing {
            oneagent: name,
            field: "the paasToken for the pull Secret",
            hint: "read paasToken from the token Secret before writing the pull Secret",
        });
    }
    let auth = BASE64.encode(format!("{username}:{paas_token}"));
    let config = serde_json::json!({
        "auths": { registry: { "username": username, "password": paas_token, "auth": auth } }
    });
    Ok(Some(Secret {
        metadata: owned_metadata(
            oneagent,
            generated_pull_secret_name(&name),
            selector_labels(&name),
        )?,
        data: Some(BTreeMap::from([(
            DOCKER_CONFIG_KEY.to_owned(),
            ByteString(config.to_string().into_bytes()),
        )])),
        type_: Some(DOCKER_CONFIG_TYPE.to_owned()),
        ..Default::default()
    }))
}

/// The DaemonSet of a `OneAgent` (spec §7.4 "Old DaemonSet"), with its template hash under
/// [`TEMPLATE_HASH_ANNOTATION`].
///
/// - Name and namespace are the `OneAgent`'s, and it owns the DaemonSet.
/// - The selector is only [`selector_labels`]; the user's `labels` go on the DaemonSet and the pod
///   template, under the fixed ones. A selector is immutable, so a user label in it would make every
///   label change a delete-and-recreate of the DaemonSet; and the fixed labels win so that a user label
///   cannot take the pods out of the selector.
/// - Template annotations: [`IMAGE_VERSION_ANNOTATION`] (when `image_version` is set) and, in
///   unprivileged mode, the AppArmor `unconfined` annotation. The reference replaces the annotations in
///   unprivileged mode and so loses the image version, which stops immutable-mode updates from rolling
///   out; here both are kept.
/// - `dnsPolicy` defaults to `ClusterFirstWithHostNet`, as for the DynaKube DaemonSet: with the host's
///   network the API default `ClusterFirst` (the reference's) silently falls back to the node's resolver.
/// - The rolling update's `maxUnavailable` is [`MAX_UNAVAILABLE`].
///
/// Errors: a missing name, namespace, cluster id or operator version, or an `apiUrl` that is empty or not
/// a URL with a host.
pub fn daemonset(oneagent: &OneAgent, facts: &Facts) -> Result<DaemonSet, DesiredError> {
    let name = checked_name(oneagent)?;
    let missing = |field, hint| DesiredError::LegacyMissing {
        oneagent: name.clone(),
        field,
        hint,
    };
    let spec = &oneagent.spec;
    if spec.api_url.trim().is_empty() {
        return Err(missing(
            "spec.apiUrl",
            "set it to https://<environment-id>.live.dynatrace.com/api (SaaS) or \
             https://<host>/e/<environment-id>/api (Managed)",
        ));
    }
    // The installer URL and the registry are both built from it.
    let has_host =
        Url::parse(spec.api_url.trim()).is_ok_and(|url| url.host_str().is_some_and(|host| !host.is_empty()));
    if !has_host {
        return Err(invalid_api_url(oneagent));
    }
    if facts.cluster_id.is_empty() {
        return Err(missing(MISSING_CLUSTER_ID.0, MISSING_CLUSTER_ID.1));
    }
    if facts.operator_version.is_empty() {
        return Err(missing(
            "the operator version",
            "pass this operator's version (it becomes the OperatorVersion host property)",
        ));
    }

    let immutable = uses_immutable_image(oneagent);
    let unprivileged = spec.use_unprivileged_mode == Some(true);
    let proxy = oneagent.proxy();

    let image = if immutable {
        match non_empty(facts.image.as_deref()) {
            Some(image) => image.to_owned(),
            None => immutable_image(oneagent)?,
        }
    } else {
        installer_image(oneagent, facts.openshift)
    };

    let selector = selector_labels(&name);
    let labels = pod::labels_over(spec.labels.as_ref(), &selector);

    let mut annotations = BTreeMap::new();
    if let Some(version) = non_empty(facts.image_version.as_deref()) {
        annotations.insert(IMAGE_VERSION_ANNOTATION.to_owned(), version.to_owned());
    }
    if unprivileged {
        annotations.insert(APPARMOR_ANNOTATION.to_owned(), "unconfined".to_owned());
    }

    let volumes = volumes(oneagent);
    let container = Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(image),
        image_pull_policy: Some("Always".to_owned()),
        args: Some(args(oneagent, facts, proxy.is_some())),
        env: Some(env(oneagent, &name, facts, immutable, proxy)),
        resources: Some(pod::with_default_cpu_request(
            spec.resources.clone().unwrap_or_default(),
            DEFAULT_CPU_REQUEST,
        )),
        security_context: Some(security_context(unprivileged)),
        readiness_probe: Some(readiness_probe()),
        volume_mounts: Some(volumes.mounts),
        ..Default::default()
    };

    let service_account = match non_empty(spec.service_account_name.as_deref()) {
        Some(custom) => custom,
        None if unprivileged => UNPRIVILEGED_SERVICE_ACCOUNT,
        None => SERVICE_ACCOUNT,
    };
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(volumes.volumes),
        host_network: Some(true),
        host_pid: Some(true),
        host_ipc: Some(true),
        service_account_name: Some(service_account.to_owned()),
        image_pull_secrets: pull_secret_name(oneagent).map(|name| vec![LocalObjectReference { name }]),
        dns_policy: Some(pod::host_network_dns_policy(spec.dns_policy.as_deref())),
        affinity: Some(node_affinity()),
        node_selector: spec.node_selector.clone().filter(|s| !s.is_empty()),
        tolerations: pod::tolerations(spec.tolerations.as_deref(), &[]),
        priority_class_name: non_empty(spec.priority_class_name.as_deref()).map(str::to_owned),
        ..Default::default()
    };

    let ds = pod::rolling_daemonset(
        owned_metadata(oneagent, name, labels.clone())?,
        selector,
        labels,
        (!annotations.is_empty()).then_some(annotations),
        pod,
        MAX_UNAVAILABLE,
    );
    Ok(with_template_hash_under(ds, TEMPLATE_HASH_ANNOTATION))
}

/// The two tokens of the legacy token Secret. Each has its own condition and one required scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Token {
    /// `paasToken`: downloads the installer and the image (condition `PaaSToken`).
    Paas,
    /// `apiToken`: reads the hosts API for the per-node versions (condition `APIToken`).
    Api,
}

impl Token {
    /// Both tokens, in the order the reference checks them.
    pub const ALL: [Token; 2] = [Self::Paas, Self::Api];

    /// The token's kind, for [`missing_scopes`](crate::tokens::missing_scopes) and the Secret key.
    pub fn kind(self) -> TokenKind {
        match self {
            Self::Paas => TokenKind::Paas,
            Self::Api => TokenKind::Api,
        }
    }

    /// The key in the token Secret.
    pub fn key(self) -> &'static str {
        self.kind().key()
    }

    /// The type of the token's condition in `status.conditions`.
    pub fn condition_type(self) -> &'static str {
        match self {
            Self::Paas => "PaaSToken",
            Self::Api => "APIToken",
        }
    }

    /// The scope the token needs.
    pub fn scope(self) -> &'static str {
        match self {
            Self::Paas => SCOPE_INSTALLER_DOWNLOAD,
            Self::Api => SCOPE_DATA_EXPORT,
        }
    }
}

/// The scopes the legacy tokens need, in the shape [`missing_scopes`](crate::tokens::missing_scopes) takes:
/// paasToken `InstallerDownload`, apiToken `DataExport`. Unlike the DynaKube's, the list depends on
/// nothing in the resource: both tokens are always required and the API token never stands in for the
/// PaaS token.
pub fn required_scopes() -> Vec<(TokenKind, Vec<&'static str>)> {
    Token::ALL
        .iter()
        .map(|token| (token.kind(), vec![token.scope()]))
        .collect()
}

/// The outcome of checking one legacy token, which [`token_condition`] turns into its condition.
/// No variant holds a token value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// The token Secret does not exist.
    SecretNotFound,
    /// The key is missing or empty.
    Missing,
    /// The token has leading or trailing whitespace.
    Whitespace,
    /// The token is not UTF-8 text.
    NotUtf8,
    /// The token lookup answered 401.
    Unauthorized,
    /// The token lacks its scope ([`Token::scope`]).
    ScopeMissing,
    /// Another error of the lookup (or, for the PaaS token, of the connection-info request). The text is
    /// the caller's and must not contain the token.
    Error(String),
    /// The token is usable.
    Ready,
}

/// A token condition without its transition time, which the caller stamps when the condition changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCondition {
    /// `PaaSToken` or `APIToken`.
    pub type_: &'static str,
    /// `True` only for [`TokenCheck::Ready`].
    pub status: &'static str,
    /// The reference's reason: `TokenReady`, `TokenSecretNotFound`, `TokenMissing`, `TokenUnauthorized`,
    /// `TokenScopeMissing` or `TokenError`.
    pub reason: &'static str,
    /// What failed and what to do.
    pub message: String,
}

/// The token read from the token Secret's data, or why it cannot be used (`Missing`, `Whitespace` or
/// `NotUtf8`). Whitespace counts as `TokenUnauthorized`, as in the reference, which never trimmed it.
pub fn token_from_secret(data: &BTreeMap<String, Vec<u8>>, token: Token) -> Result<String, TokenCheck> {
    let bytes = data
        .get(token.key())
        .filter(|b| !b.is_empty())
        .ok_or(TokenCheck::Missing)?;
    let value = std::str::from_utf8(bytes).map_err(|_| TokenCheck::NotUtf8)?;
    if value.trim() != value {
        return Err(TokenCheck::Whitespace);
    }
    Ok(value.to_owned())
}

/// The condition of a token after a check. `secret` is `<namespace>:<name>` (see
/// [`secret_ref`]).
pub fn token_condition(token: Token, check: &TokenCheck, secret: &str) -> TokenCondition {
    let key = token.key();
    let (reason, message) = match check {
        TokenCheck::Ready => ("TokenReady", "Ready".to_owned()),
        TokenCheck::SecretNotFound => (
            "TokenSecretNotFound",
            format!(
                "the token Secret {secret} does not exist; create it with the keys apiToken and paasToken, \
                 or point spec.tokens at the Secret that has them"
            ),
        ),
        TokenCheck::Missing => (
            "TokenMissing",
            format!("token {key} in Secret {secret} is missing or empty; add it with a Dynatrace token"),
        ),
        TokenCheck::Whitespace => (
            "TokenUnauthorized",
            format!(
                "token {key} in Secret {secret} has leading or trailing whitespace (often a newline from \
                 `echo`); store it without"
            ),
        ),
        TokenCheck::NotUtf8 => (
            "TokenUnauthorized",
            format!(
                "token {key} in Secret {secret} is not UTF-8 text; store the token exactly as Dynatrace shows it"
            ),
        ),
        TokenCheck::Unauthorized => (
            "TokenUnauthorized",
            format!(
                "Dynatrace rejected token {key} in Secret {secret} as unauthorized; check that it belongs to \
                 the environment of spec.apiUrl and has not expired"
            ),
        ),
        TokenCheck::ScopeMissing => (
            "TokenScopeMissing",
            format!(
                "token {key} in Secret {secret} lacks scope {}; add it to the token in Dynatrace",
                token.scope()
            ),
        ),
        TokenCheck::Error(error) => (
            "TokenError",
            format!("checking token {key} in Secret {secret} failed: {error}"),
        ),
    };
    TokenCondition {
        type_: token.condition_type(),
        status: if *check == TokenCheck::Ready {
            "True"
        } else {
            "False"
        },
        reason,
        message,
    }
}

/// The conditions of both tokens when the token Secret does not exist.
pub fn secret_not_found_conditions(oneagent: &OneAgent) -> Vec<TokenCondition> {
    let secret = secret_ref(
        oneagent.metadata.namespace.as_deref().unwrap_or_default(),
        &tokens_secret_name(oneagent),
    );
    Token::ALL
        .iter()
        .map(|token| token_condition(*token, &TokenCheck::SecretNotFound, &secret))
        .collect()
}

/// Whether the tenant may be asked again (tokens, environment, latest version): never asked, at least
/// `interval_seconds` ago ([`TOKEN_PROBE_MINUTES`] in the reference), or the clock went back.
/// Times are unix seconds.
pub fn probe_due(last_probe: Option<i64>, now: i64, interval_seconds: i64) -> bool {
    last_probe.is_none_or(|last| {
        let elapsed = now - last;
        elapsed < 0 || elapsed >= interval_seconds
    })
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

fn invalid_api_url(oneagent: &OneAgent) -> DesiredError {
    DesiredError::LegacyInvalidApiUrl {
        oneagent: oneagent.metadata.name.clone().unwrap_or_default(),
        api_url: oneagent.spec.api_url.clone(),
    }
}

/// The `OneAgent`'s name, after checking that it has a name and a namespace.
fn checked_name(oneagent: &OneAgent) -> Result<String, DesiredError> {
    let name = non_empty(oneagent.metadata.name.as_deref())
        .ok_or(DesiredError::LegacyMissing {
            oneagent: String::new(),
            field: "metadata.name",
            hint: HINT_FROM_API_SERVER,
        })?
        .to_owned();
    if non_empty(oneagent.metadata.namespace.as_deref()).is_none() {
        return Err(DesiredError::LegacyMissing {
            oneagent: name,
            field: "metadata.namespace",
            hint: HINT_FROM_API_SERVER,
        });
    }
    Ok(name)
}

/// User arguments, then the operator's, in the reference's order.
fn args(oneagent: &OneAgent, facts: &Facts, has_proxy: bool) -> Vec<String> {
    let spec = &oneagent.spec;
    let mut args: Vec<String> = spec.args.iter().flatten().cloned().collect();
    if has_proxy {
        args.push(format!("--set-proxy=$({PROXY_ENV})"));
    }
    if let Some(zone) = non_empty(spec.network_zone.as_deref()) {
        args.push(format!("--set-network-zone={zone}"));
    }
    if spec.webhook_injection == Some(true) {
        args.push("--set-host-id-source=k8s-node-name".to_owned());
    }
    args.push(format!(
        "--set-host-property=OperatorVersion={}",
        facts.operator_version
    ));
    args
}

/// The reserved variables in the spec's order, each replaced by the user's variable of the same name
/// (the last one, when the user repeats it), then the rest of the user's variables in their order.
fn env(
    oneagent: &OneAgent,
    name: &str,
    facts: &Facts,
    immutable: bool,
    proxy: Option<ProxySource<'_>>,
) -> Vec<EnvVar> {
    let spec = &oneagent.spec;
    let mut reserved = vec![
        field_env("DT_K8S_NODE_NAME", "spec.nodeName"),
        literal_env("DT_K8S_CLUSTER_ID", &facts.cluster_id),
    ];
    if spec.webhook_injection == Some(true) {
        reserved.push(literal_env("ONEAGENT_DISABLE_CONTAINER_INJECTION", "true"));
    }
    if !immutable {
        let tokens = non_empty(spec.tokens.as_deref()).unwrap_or(name);
        reserved.push(secret_env(INSTALLER_TOKEN_ENV, tokens, TokenKind::Paas.key()));
        reserved.push(literal_env(
            "ONEAGENT_INSTALLER_SCRIPT_URL",
            &format!(
                "{}/v1/deployment/installer/agent/unix/default/latest?Api-Token=$({INSTALLER_TOKEN_ENV})\
                 &arch=x86&flavor=default",
                spec.api_url.trim().trim_end_matches('/')
            ),
        ));
        reserved.push(literal_env(
            "ONEAGENT_INSTALLER_SKIP_CERT_CHECK",
            if spec.skip_cert_check == Some(true) {
                "true"
            } else {
                "false"
            },
        ));
    }
    reserved.extend(proxy.map(pod::proxy_env));

    let mut remaining = Vec::new();
    for user in spec.env.iter().flatten() {
        match reserved.iter_mut().find(|r| r.name == user.name) {
            Some(slot) => *slot = user.clone(),
            None => remaining.push(user.clone()),
        }
    }
    reserved.extend(remaining);
    reserved
}

/// Privileged, or in unprivileged mode only the capabilities the OneAgent needs (the DynaKube's list).
fn security_context(unprivileged: bool) -> SecurityContext {
    if unprivileged {
        pod::only_capabilities(CAPABILITIES)
    } else {
        pod::privileged()
    }
}

/// Ready once the OneAgent watchdog process runs.
fn readiness_probe() -> Probe {
    Probe {
        initial_delay_seconds: Some(30),
        period_seconds: Some(30),
        timeout_seconds: Some(1),
        ..pod::exec_probe(pod::shell_command("grep -q oneagentwatchdo /proc/[0-9]*/stat"))
    }
}

/// The host's root and the trusted CAs, each with its mount.
fn volumes(oneagent: &OneAgent) -> Volumes {
    let mut volumes = Volumes::default();
    volumes.add(host_root_volume(), HOST_ROOT_PATH, false);
    if let Some(config_map) = non_empty(oneagent.spec.trusted_cas.as_deref()) {
        volumes.add(
            pod::trusted_cas_volume(CERTS_VOLUME, config_map),
            CERTS_PATH,
            false,
        );
    }
    volumes
}

/// Two terms (ORed), because clusters before Kubernetes 1.14 only have the `beta.kubernetes.io` labels
/// and later ones may lack them.
fn node_affinity() -> k8s_openapi::api::core::v1::Affinity {
    pod::linux_node_affinity(&["beta.kubernetes.io", "kubernetes.io"], &["amd64", "arm64"])
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DaemonSetStatus;
    use serde_json::json;

    use super::*;
    use crate::hash::template_hash_under;
    use crate::test_support::{assert_user_scheduling, container, pod, template};
    use crate::tokens::missing_scopes;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    const API_URL: &str = "https://abc12345.live.dynatrace.com/api";

    fn oneagent(spec: serde_json::Value) -> OneAgent {
        let mut spec = spec;
        if spec.get("apiUrl").is_none() {
            spec["apiUrl"] = json!(API_URL);
        }
        serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1alpha1",
            "kind": "OneAgent",
            "metadata": { "name": "oneagent", "namespace": "dynatrace", "uid": "oneagent-uid" },
            "spec": spec,
        }))
        .unwrap()
    }

    fn facts() -> Facts {
        Facts {
            image: None,
            cluster_id: "9b3e0e5c-kube-system-uid".into(),
            operator_version: "0.1.0".into(),
            image_version: None,
            openshift: false,
        }
    }

    fn build(oa: &OneAgent) -> DaemonSet {
        daemonset(oa, &facts()).unwrap()
    }

    fn image(ds: &DaemonSet) -> &str {
        container(ds).image.as_deref().unwrap()
    }

    fn args_of(ds: &DaemonSet) -> Vec<&str> {
        container(ds).args.iter().flatten().map(String::as_str).collect()
    }

    fn env_names(ds: &DaemonSet) -> Vec<&str> {
        container(ds)
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect()
    }

    fn env_var<'a>(ds: &'a DaemonSet, name: &str) -> &'a EnvVar {
        container(ds)
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    }

    fn env_value<'a>(ds: &'a DaemonSet, name: &str) -> Option<&'a str> {
        env_var(ds, name).value.as_deref()
    }

    fn annotations(ds: &DaemonSet) -> BTreeMap<String, String> {
        template(ds)
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
            .unwrap_or_default()
    }

    fn hash(ds: &DaemonSet) -> &str {
        &ds.metadata.annotations.as_ref().unwrap()[TEMPLATE_HASH_ANNOTATION]
    }

    fn secret_ref_of(var: &EnvVar) -> (&str, &str) {
        let selector = var.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        (selector.name.as_str(), selector.key.as_str())
    }

    fn pull_secrets(ds: &DaemonSet) -> Option<Vec<&str>> {
        pod(ds)
            .image_pull_secrets
            .as_ref()
            .map(|s| s.iter().map(|r| r.name.as_str()).collect())
    }

    #[test]
    fn installer_mode_defaults() {
        let ds = build(&oneagent(json!({})));
        assert_eq!(ds.metadata.name.as_deref(), Some("oneagent"));
        assert_eq!(ds.metadata.namespace.as_deref(), Some("dynatrace"));
        assert!(hash(&ds).parse::<u32>().is_ok());
        assert_eq!(image(&ds), INSTALLER_IMAGE);
        assert_eq!(
            env_names(&ds),
            [
                "DT_K8S_NODE_NAME",
                "DT_K8S_CLUSTER_ID",
                "ONEAGENT_INSTALLER_TOKEN",
                "ONEAGENT_INSTALLER_SCRIPT_URL",
                "ONEAGENT_INSTALLER_SKIP_CERT_CHECK",
            ]
        );
        assert_eq!(
            env_var(&ds, "DT_K8S_NODE_NAME")
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "spec.nodeName"
        );
        assert_eq!(
            env_value(&ds, "DT_K8S_CLUSTER_ID"),
            Some("9b3e0e5c-kube-system-uid")
        );
        assert_eq!(
            secret_ref_of(env_var(&ds, "ONEAGENT_INSTALLER_TOKEN")),
            ("oneagent", "paasToken")
        );
        assert_eq!(
            env_value(&ds, "ONEAGENT_INSTALLER_SCRIPT_URL"),
            Some(
                "https://abc12345.live.dynatrace.com/api/v1/deployment/installer/agent/unix/default/latest\
                 ?Api-Token=$(ONEAGENT_INSTALLER_TOKEN)&arch=x86&flavor=default"
            )
        );
        assert_eq!(
            env_value(&ds, "ONEAGENT_INSTALLER_SKIP_CERT_CHECK"),
            Some("false")
        );
        assert_eq!(args_of(&ds), ["--set-host-property=OperatorVersion=0.1.0"]);

        let p = pod(&ds);
        assert_eq!(
            (p.host_network, p.host_pid, p.host_ipc),
            (Some(true), Some(true), Some(true))
        );
        assert_eq!(p.service_account_name.as_deref(), Some(SERVICE_ACCOUNT));
        assert_eq!(p.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        assert_eq!(p.image_pull_secrets, None, "installer mode pulls a public image");
        assert_eq!(
            (&p.node_selector, &p.tolerations, &p.priority_class_name),
            (&None, &None, &None)
        );
        assert_eq!(annotations(&ds), BTreeMap::new(), "no image version, privileged");

        let c = container(&ds);
        assert_eq!(c.name, "dynatrace-oneagent");
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(
            c.security_context,
            Some(SecurityContext {
                privileged: Some(true),
                ..Default::default()
            })
        );
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
            "100m"
        );
        let probe = c.readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.exec.as_ref().unwrap().command.as_deref().unwrap(),
            ["/bin/sh", "-c", "grep -q oneagentwatchdo /proc/[0-9]*/stat"]
        );
        assert_eq!(
            (
                probe.initial_delay_seconds,
                probe.period_seconds,
                probe.timeout_seconds
            ),
            (Some(30), Some(30), Some(1))
        );
        assert_eq!(c.liveness_probe, None);

        let strategy = ds.spec.as_ref().unwrap().update_strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        assert_eq!(
            strategy.rolling_update.as_ref().unwrap().max_unavailable,
            Some(IntOrString::Int(1))
        );
    }

    #[test]
    fn node_affinity_has_a_term_per_label_generation() {
        let ds = build(&oneagent(json!({})));
        let terms = &pod(&ds)
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        let flat: Vec<Vec<(String, String, Vec<String>)>> = terms
            .iter()
            .map(|t| {
                t.match_expressions
                    .iter()
                    .flatten()
                    .map(|r| (r.key.clone(), r.operator.clone(), r.values.clone().unwrap()))
                    .collect()
            })
            .collect();
        let arch = vec!["amd64".to_owned(), "arm64".to_owned()];
        let linux = vec!["linux".to_owned()];
        assert_eq!(
            flat,
            [
                vec![
                    (
                        "beta.kubernetes.io/arch".to_owned(),
                        "In".to_owned(),
                        arch.clone()
                    ),
                    ("beta.kubernetes.io/os".to_owned(), "In".to_owned(), linux.clone()),
                ],
                vec![
                    ("kubernetes.io/arch".to_owned(), "In".to_owned(), arch),
                    ("kubernetes.io/os".to_owned(), "In".to_owned(), linux),
                ],
            ]
        );
    }

    #[test]
    fn installer_image_selection() {
        let plain = oneagent(json!({}));
        assert_eq!(installer_image(&plain, false), INSTALLER_IMAGE);
        assert_eq!(installer_image(&plain, true), OPENSHIFT_INSTALLER_IMAGE);
        let openshift = daemonset(
            &plain,
            &Facts {
                openshift: true,
                ..facts()
            },
        )
        .unwrap();
        assert_eq!(
            image(&openshift),
            "registry.connect.redhat.com/dynatrace/oneagent:latest"
        );

        let custom = oneagent(json!({ "image": "my.registry/oneagent:1.2" }));
        assert_eq!(installer_image(&custom, true), "my.registry/oneagent:1.2");
        let ds = daemonset(
            &custom,
            &Facts {
                image: Some("ignored@sha256:abc".into()),
                openshift: true,
                ..facts()
            },
        )
        .unwrap();
        assert_eq!(
            image(&ds),
            "my.registry/oneagent:1.2",
            "facts.image is for immutable mode"
        );
        assert_eq!(pull_secrets(&ds), None);
    }

    #[test]
    fn immutable_image_selection() {
        let immutable = |extra: serde_json::Value| {
            let mut spec = json!({ "useImmutableImage": true });
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            oneagent(spec)
        };
        let ds = build(&immutable(json!({})));
        assert_eq!(image(&ds), "abc12345.live.dynatrace.com/linux/oneagent");
        assert_eq!(pull_secrets(&ds), Some(vec!["oneagent-pull-secret"]));

        let pinned = build(&immutable(json!({ "agentVersion": "1.203.0.20200908-220956" })));
        assert_eq!(
            image(&pinned),
            "abc12345.live.dynatrace.com/linux/oneagent:1.203.0.20200908-220956"
        );

        let managed = immutable(json!({ "apiUrl": "https://managed.example.com:9999/e/env-id/api/" }));
        assert_eq!(
            immutable_image(&managed).unwrap(),
            "managed.example.com:9999/e/env-id/linux/oneagent"
        );

        let custom = build(&immutable(json!({ "image": "my.registry/oneagent:1.2" })));
        assert_eq!(image(&custom), "my.registry/oneagent:1.2");
        assert_eq!(
            pull_secrets(&custom),
            None,
            "no generated Secret for a custom image"
        );

        let custom_secret = build(&immutable(json!({
            "image": "my.registry/oneagent:1.2", "customPullSecret": "mine"
        })));
        assert_eq!(pull_secrets(&custom_secret), Some(vec!["mine"]));
        let custom_secret = build(&immutable(json!({ "customPullSecret": "mine" })));
        assert_eq!(pull_secrets(&custom_secret), Some(vec!["mine"]));

        let resolved = daemonset(
            &immutable(json!({})),
            &Facts {
                image: Some("abc12345.live.dynatrace.com/linux/oneagent@sha256:0123".into()),
                ..facts()
            },
        )
        .unwrap();
        assert_eq!(
            image(&resolved),
            "abc12345.live.dynatrace.com/linux/oneagent@sha256:0123"
        );
        assert_eq!(pull_secrets(&resolved), Some(vec!["oneagent-pull-secret"]));

        let empty_fact = daemonset(
            &immutable(json!({})),
            &Facts {
                image: Some(String::new()),
                ..facts()
            },
        )
        .unwrap();
        assert_eq!(image(&empty_fact), "abc12345.live.dynatrace.com/linux/oneagent");

        // No installer variables: the image contains the OneAgent.
        assert_eq!(env_names(&ds), ["DT_K8S_NODE_NAME", "DT_K8S_CLUSTER_ID"]);
    }

    #[test]
    fn registry_from_api_url() {
        for (url, expected) in [
            (
                "https://abc.live.dynatrace.com/api",
                Some("abc.live.dynatrace.com"),
            ),
            (
                "https://abc.live.dynatrace.com/api/",
                Some("abc.live.dynatrace.com"),
            ),
            ("http://host:8080/e/xyz/api", Some("host:8080/e/xyz")),
            ("abc.live.dynatrace.com/api", Some("abc.live.dynatrace.com")),
            ("https://", None),
            ("https:///api", None),
            ("", None),
        ] {
            assert_eq!(registry(url).as_deref(), expected, "{url}");
        }
    }

    #[test]
    fn service_account_and_security_context() {
        let unprivileged = build(&oneagent(json!({ "useUnprivilegedMode": true })));
        assert_eq!(
            pod(&unprivileged).service_account_name.as_deref(),
            Some(UNPRIVILEGED_SERVICE_ACCOUNT)
        );
        let context = container(&unprivileged).security_context.clone().unwrap();
        assert_eq!(context.privileged, None);
        let capabilities = context.capabilities.unwrap();
        assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]));
        let add = capabilities.add.unwrap();
        assert_eq!(add.len(), 15);
        assert!(add.iter().any(|c| c == "SYS_ADMIN") && add.iter().any(|c| c == "SYS_PTRACE"));

        for spec in [
            json!({ "serviceAccountName": "custom" }),
            json!({ "serviceAccountName": "custom", "useUnprivilegedMode": true }),
        ] {
            let ds = build(&oneagent(spec.clone()));
            assert_eq!(pod(&ds).service_account_name.as_deref(), Some("custom"), "{spec}");
        }
        let explicit_false = build(&oneagent(
            json!({ "useUnprivilegedMode": false, "serviceAccountName": "" }),
        ));
        assert_eq!(
            pod(&explicit_false).service_account_name.as_deref(),
            Some(SERVICE_ACCOUNT)
        );
    }

    #[test]
    fn image_version_annotation_is_kept_in_unprivileged_mode() {
        let with_version = Facts {
            image_version: Some("1.203.0.20200908-220956".into()),
            ..facts()
        };
        let privileged = daemonset(&oneagent(json!({ "useImmutableImage": true })), &with_version).unwrap();
        assert_eq!(
            annotations(&privileged),
            BTreeMap::from([(
                IMAGE_VERSION_ANNOTATION.to_owned(),
                "1.203.0.20200908-220956".to_owned()
            )])
        );
        let unprivileged = daemonset(
            &oneagent(json!({ "useImmutableImage": true, "useUnprivilegedMode": true })),
            &with_version,
        )
        .unwrap();
        assert_eq!(
            annotations(&unprivileged),
            BTreeMap::from([
                (
                    "container.apparmor.security.beta.kubernetes.io/dynatrace-oneagent".to_owned(),
                    "unconfined".to_owned()
                ),
                (
                    IMAGE_VERSION_ANNOTATION.to_owned(),
                    "1.203.0.20200908-220956".to_owned()
                ),
            ])
        );
        let empty_version = daemonset(
            &oneagent(json!({})),
            &Facts {
                image_version: Some(String::new()),
                ..facts()
            },
        )
        .unwrap();
        assert_eq!(annotations(&empty_version), BTreeMap::new());
        assert_eq!(
            template(&empty_version).metadata.as_ref().unwrap().annotations,
            None
        );
    }

    #[test]
    fn args_in_the_reference_order() {
        let ds = build(&oneagent(json!({
            "args": ["--set-host-group=prod", "--set-infra-only=false"],
            "proxy": { "value": "http://proxy:3128" },
            "networkZone": "zone-a",
            "webhookInjection": true,
        })));
        assert_eq!(
            args_of(&ds),
            [
                "--set-host-group=prod",
                "--set-infra-only=false",
                "--set-proxy=$(https_proxy)",
                "--set-network-zone=zone-a",
                "--set-host-id-source=k8s-node-name",
                "--set-host-property=OperatorVersion=0.1.0",
            ]
        );
        let empty = build(&oneagent(json!({
            "proxy": { "value": "", "valueFrom": "" }, "networkZone": "", "webhookInjection": false
        })));
        assert_eq!(args_of(&empty), ["--set-host-property=OperatorVersion=0.1.0"]);
    }

    #[test]
    fn env_order_with_every_reserved_variable() {
        let ds = build(&oneagent(json!({
            "webhookInjection": true,
            "skipCertCheck": true,
            "tokens": "my-tokens",
            "proxy": { "value": "http://proxy:3128" },
            "env": [{ "name": "A", "value": "1" }],
        })));
        assert_eq!(
            env_names(&ds),
            [
                "DT_K8S_NODE_NAME",
                "DT_K8S_CLUSTER_ID",
                "ONEAGENT_DISABLE_CONTAINER_INJECTION",
                "ONEAGENT_INSTALLER_TOKEN",
                "ONEAGENT_INSTALLER_SCRIPT_URL",
                "ONEAGENT_INSTALLER_SKIP_CERT_CHECK",
                "https_proxy",
                "A",
            ]
        );
        assert_eq!(
            env_value(&ds, "ONEAGENT_DISABLE_CONTAINER_INJECTION"),
            Some("true")
        );
        assert_eq!(env_value(&ds, "ONEAGENT_INSTALLER_SKIP_CERT_CHECK"), Some("true"));
        assert_eq!(
            secret_ref_of(env_var(&ds, "ONEAGENT_INSTALLER_TOKEN")),
            ("my-tokens", "paasToken")
        );
        assert_eq!(env_value(&ds, "https_proxy"), Some("http://proxy:3128"));
    }

    #[test]
    fn user_env_replaces_defaults_in_place_and_the_rest_follows() {
        let ds = build(&oneagent(json!({
            "env": [
                { "name": "Z_FIRST", "value": "z" },
                { "name": "DT_K8S_CLUSTER_ID", "value": "user-cluster" },
                { "name": "A_SECOND", "value": "a" },
                { "name": "ONEAGENT_INSTALLER_SKIP_CERT_CHECK", "value": "first" },
                { "name": "ONEAGENT_INSTALLER_SKIP_CERT_CHECK", "value": "last" },
                { "name": "ONEAGENT_DISABLE_CONTAINER_INJECTION", "value": "false" },
            ],
        })));
        assert_eq!(
            env_names(&ds),
            [
                "DT_K8S_NODE_NAME",
                "DT_K8S_CLUSTER_ID",
                "ONEAGENT_INSTALLER_TOKEN",
                "ONEAGENT_INSTALLER_SCRIPT_URL",
                "ONEAGENT_INSTALLER_SKIP_CERT_CHECK",
                "Z_FIRST",
                "A_SECOND",
                "ONEAGENT_DISABLE_CONTAINER_INJECTION",
            ],
            "a variable that is not reserved in this configuration is the user's own"
        );
        assert_eq!(env_value(&ds, "DT_K8S_CLUSTER_ID"), Some("user-cluster"));
        assert_eq!(
            env_value(&ds, "ONEAGENT_INSTALLER_SKIP_CERT_CHECK"),
            Some("last"),
            "the last repetition wins"
        );
        assert_eq!(
            env_value(&ds, "ONEAGENT_DISABLE_CONTAINER_INJECTION"),
            Some("false")
        );
    }

    #[test]
    fn proxy_sources() {
        let from_secret = build(&oneagent(json!({ "proxy": { "valueFrom": "proxy-secret" } })));
        assert_eq!(
            secret_ref_of(env_var(&from_secret, "https_proxy")),
            ("proxy-secret", "proxy")
        );
        assert!(args_of(&from_secret).contains(&"--set-proxy=$(https_proxy)"));

        let both = oneagent(json!({ "proxy": { "value": "http://literal", "valueFrom": "proxy-secret" } }));
        assert_eq!(both.proxy(), Some(ProxySource::Secret("proxy-secret")));
        assert_eq!(
            secret_ref_of(env_var(&build(&both), "https_proxy")),
            ("proxy-secret", "proxy"),
            "valueFrom wins, as in the old operator"
        );
        let literal = oneagent(json!({ "proxy": { "value": "http://literal", "valueFrom": "" } }));
        assert_eq!(literal.proxy(), Some(ProxySource::Value("http://literal")));
        assert_eq!(oneagent(json!({})).proxy(), None);
        assert!(!env_names(&build(&oneagent(json!({})))).contains(&"https_proxy"));
    }

    #[test]
    fn labels_selector_and_scheduling() {
        let ds = build(&oneagent(json!({
            "labels": { "team": "platform", "oneagent": "hijack", "dynatrace": "other" },
            "nodeSelector": { "node-pool": "apps" },
            "tolerations": [{ "key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule" }],
            "priorityClassName": "high",
            "dnsPolicy": "Default",
            "resources": { "requests": { "memory": "512Mi" }, "limits": { "cpu": "50m" } },
        })));
        let selector = ds.spec.as_ref().unwrap().selector.match_labels.clone().unwrap();
        assert_eq!(selector, selector_labels("oneagent"));
        assert_eq!(
            selector,
            BTreeMap::from([
                ("dynatrace".to_owned(), "oneagent".to_owned()),
                ("oneagent".to_owned(), "oneagent".to_owned()),
            ])
        );
        let expected = BTreeMap::from([
            ("dynatrace".to_owned(), "oneagent".to_owned()),
            ("oneagent".to_owned(), "oneagent".to_owned()),
            ("team".to_owned(), "platform".to_owned()),
        ]);
        assert_eq!(
            template(&ds).metadata.as_ref().unwrap().labels,
            Some(expected.clone())
        );
        assert_eq!(ds.metadata.labels, Some(expected));

        let p = pod(&ds);
        assert_user_scheduling(p);
        let resources = container(&ds).resources.clone().unwrap();
        let requests = resources.requests.unwrap();
        assert_eq!(requests["memory"].0, "512Mi");
        assert_eq!(
            requests["cpu"].0, "50m",
            "a CPU limit below 100m becomes the request"
        );
    }

    #[test]
    fn trusted_cas_are_mounted() {
        // Set directly: the serde name of `trusted_cas` in the api crate is not the CRD's `trustedCAs`.
        let mut oa = oneagent(json!({}));
        oa.spec.trusted_cas = Some("my-cas".into());
        let ds = build(&oa);
        let volumes = pod(&ds).volumes.clone().unwrap();
        assert_eq!(volumes.len(), 2);
        assert_eq!(volumes[0].name, "host-root");
        assert_eq!(volumes[0].host_path.as_ref().unwrap().path, "/");
        let certs = volumes[1].config_map.as_ref().unwrap();
        assert_eq!(certs.name, "my-cas");
        assert_eq!(certs.items.as_ref().unwrap()[0].key, "certs");
        let mounts: Vec<(&str, &str, Option<bool>)> = container(&ds)
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
            .collect();
        assert_eq!(
            mounts,
            [
                ("host-root", "/mnt/root", None),
                ("certs", "/mnt/dynatrace/certs", None)
            ]
        );
        oa.spec.trusted_cas = Some(String::new());
        let without = build(&oa);
        assert_eq!(pod(&without).volumes.as_ref().unwrap().len(), 1);
        assert_eq!(container(&without).volume_mounts.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn hash_follows_the_spec_and_nothing_else() {
        let spec = json!({ "env": [{ "name": "A", "value": "1" }], "labels": { "x": "1", "y": "2" } });
        let a = build(&oneagent(spec.clone()));
        assert_eq!(a, build(&oneagent(spec)), "same input, same object");
        assert_eq!(hash(&a), template_hash_under(&a, TEMPLATE_HASH_ANNOTATION));
        assert_eq!(
            ds_annotation_keys(&a),
            [TEMPLATE_HASH_ANNOTATION],
            "only the legacy key"
        );
        let reordered = build(&oneagent(
            json!({ "labels": { "y": "2", "x": "1" }, "env": [{ "name": "A", "value": "1" }] }),
        ));
        assert_eq!(hash(&a), hash(&reordered), "label order does not matter");

        // Fields the DaemonSet does not use leave it alone.
        let unrelated = build(&oneagent(json!({
            "env": [{ "name": "A", "value": "1" }], "labels": { "x": "1", "y": "2" },
            "waitReadySeconds": 600, "disableAgentUpdate": true, "enableIstio": true,
        })));
        assert_eq!(hash(&a), hash(&unrelated));

        let base = hash(&build(&oneagent(json!({})))).to_owned();
        for changed in [
            json!({ "env": [{ "name": "A", "value": "2" }] }),
            json!({ "labels": { "x": "1" } }),
            json!({ "args": ["--x"] }),
            json!({ "useUnprivilegedMode": true }),
            json!({ "useImmutableImage": true }),
            json!({ "networkZone": "z" }),
            json!({ "skipCertCheck": true }),
        ] {
            assert_ne!(hash(&build(&oneagent(changed.clone()))), base, "{changed}");
        }
        let new_version = daemonset(
            &oneagent(json!({})),
            &Facts {
                image_version: Some("1.205.0".into()),
                ..facts()
            },
        )
        .unwrap();
        assert_ne!(hash(&new_version), base, "a new image version rolls the pods");
    }

    fn ds_annotation_keys(ds: &DaemonSet) -> Vec<&str> {
        ds.metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect()
    }

    #[test]
    fn missing_values_are_errors_that_say_what_to_do() {
        let message = |oa: &OneAgent, facts: &Facts| daemonset(oa, facts).unwrap_err().to_string();
        let oa = oneagent(json!({}));
        let no_cluster = message(
            &oa,
            &Facts {
                cluster_id: String::new(),
                ..facts()
            },
        );
        assert!(
            no_cluster.starts_with("OneAgent \"oneagent\": ") && no_cluster.contains("kube-system"),
            "{no_cluster}"
        );
        let no_version = message(
            &oa,
            &Facts {
                operator_version: String::new(),
                ..facts()
            },
        );
        assert!(no_version.contains("operator version"), "{no_version}");

        let mut no_namespace = oa.clone();
        no_namespace.metadata.namespace = None;
        assert!(message(&no_namespace, &facts()).contains("metadata.namespace"));
        // Without its UID the OneAgent could not own the DaemonSet or the pull Secret.
        let mut no_uid = oa.clone();
        no_uid.metadata.uid = None;
        assert!(message(&no_uid, &facts()).contains("metadata.uid"));
        let mut immutable = oneagent(json!({ "useImmutableImage": true }));
        immutable.metadata.uid = None;
        assert!(matches!(
            pull_secret(&immutable, None, "tok"),
            Err(DesiredError::NoOwnerUid { .. })
        ));
        let mut no_name = oa.clone();
        no_name.metadata.name = Some(String::new());
        assert!(message(&no_name, &facts()).contains("metadata.name"));

        let empty_url = message(&oneagent(json!({ "apiUrl": " " })), &facts());
        assert!(
            empty_url.contains("spec.apiUrl is missing") && empty_url.contains("/api"),
            "{empty_url}"
        );
        for bad in [
            "not a url",
            "mailto:ops@example.com",
            "abc.live.dynatrace.com/api",
        ] {
            let err = daemonset(&oneagent(json!({ "apiUrl": bad })), &facts()).unwrap_err();
            assert!(
                matches!(err, DesiredError::LegacyInvalidApiUrl { .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains("is not a URL with a host name"), "{err}");
        }
    }

    #[test]
    fn installer_url_without_a_doubled_slash() {
        let ds = build(&oneagent(json!({ "apiUrl": "https://host/e/env/api/" })));
        assert_eq!(
            env_value(&ds, "ONEAGENT_INSTALLER_SCRIPT_URL"),
            Some(
                "https://host/e/env/api/v1/deployment/installer/agent/unix/default/latest\
                 ?Api-Token=$(ONEAGENT_INSTALLER_TOKEN)&arch=x86&flavor=default"
            )
        );
    }

    fn docker_config(secret: &Secret) -> serde_json::Value {
        serde_json::from_slice(&secret.data.as_ref().unwrap()[DOCKER_CONFIG_KEY].0).unwrap()
    }

    #[test]
    fn pull_secret_for_the_immutable_image() {
        let oa = oneagent(json!({ "useImmutableImage": true }));
        let secret = pull_secret(&oa, Some("tenant-from-status"), "paas-token")
            .unwrap()
            .unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("oneagent-pull-secret"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("dynatrace"));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        assert_eq!(secret.metadata.labels, Some(selector_labels("oneagent")));
        assert_eq!(
            docker_config(&secret),
            json!({ "auths": { "abc12345.live.dynatrace.com": {
                "username": "tenant-from-status",
                "password": "paas-token",
                "auth": BASE64.encode("tenant-from-status:paas-token"),
            } } })
        );
        assert_eq!(pull_secret_name(&oa).as_deref(), Some("oneagent-pull-secret"));

        // Without a known environment id it comes from the URL; Managed keys by the environment's path.
        let managed =
            oneagent(json!({ "useImmutableImage": true, "apiUrl": "https://host:9999/e/env-id/api" }));
        for id in [None, Some("")] {
            let secret = pull_secret(&managed, id, "t").unwrap().unwrap();
            assert_eq!(
                docker_config(&secret)["auths"]["host:9999/e/env-id"]["username"],
                "env-id"
            );
        }

        let err = pull_secret(&oa, None, "").unwrap_err().to_string();
        assert!(
            err.contains("paasToken") && err.contains("OneAgent \"oneagent\""),
            "{err}"
        );
        let bad_url = oneagent(json!({ "useImmutableImage": true, "apiUrl": "https://" }));
        assert!(matches!(
            pull_secret(&bad_url, Some("id"), "t"),
            Err(DesiredError::LegacyInvalidApiUrl { .. })
        ));
    }

    #[test]
    fn no_pull_secret_when_none_is_needed() {
        for spec in [
            json!({}),
            json!({ "useImmutableImage": false }),
            json!({ "useImmutableImage": true, "image": "my.registry/oneagent" }),
            json!({ "useImmutableImage": true, "customPullSecret": "mine" }),
        ] {
            let oa = oneagent(spec.clone());
            assert_eq!(pull_secret(&oa, Some("id"), "t"), Ok(None), "{spec}");
        }
        assert_eq!(
            pull_secret_name(&oneagent(json!({ "customPullSecret": "mine" }))),
            None
        );
    }

    #[test]
    fn token_secret_name_and_scopes() {
        assert_eq!(tokens_secret_name(&oneagent(json!({}))), "oneagent");
        assert_eq!(tokens_secret_name(&oneagent(json!({ "tokens": "" }))), "oneagent");
        assert_eq!(tokens_secret_name(&oneagent(json!({ "tokens": "mine" }))), "mine");

        let required = required_scopes();
        assert_eq!(
            required,
            vec![
                (TokenKind::Paas, vec!["InstallerDownload"]),
                (TokenKind::Api, vec!["DataExport"]),
            ]
        );
        let granted = BTreeMap::from([
            (TokenKind::Paas, vec!["InstallerDownload".to_owned()]),
            (TokenKind::Api, vec!["ReadConfig".to_owned()]),
        ]);
        assert_eq!(
            missing_scopes(&required, &granted, "dynatrace:oneagent"),
            [
                "token apiToken in Secret dynatrace:oneagent lacks scope DataExport; add it to the token in \
              Dynatrace"
            ]
        );
        assert_eq!(
            Token::ALL.map(|t| (t.key(), t.condition_type(), t.scope())),
            [
                ("paasToken", "PaaSToken", "InstallerDownload"),
                ("apiToken", "APIToken", "DataExport"),
            ]
        );
    }

    #[test]
    fn tokens_from_the_secret() {
        let data = |pairs: &[(&str, &[u8])]| -> BTreeMap<String, Vec<u8>> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), v.to_vec())).collect()
        };
        let secret = data(&[("apiToken", b"api-value"), ("paasToken", b"paas-value\n")]);
        assert_eq!(token_from_secret(&secret, Token::Api), Ok("api-value".to_owned()));
        assert_eq!(
            token_from_secret(&secret, Token::Paas),
            Err(TokenCheck::Whitespace)
        );
        assert_eq!(
            token_from_secret(&data(&[("paasToken", b"")]), Token::Paas),
            Err(TokenCheck::Missing)
        );
        assert_eq!(
            token_from_secret(&data(&[]), Token::Api),
            Err(TokenCheck::Missing)
        );
        assert_eq!(
            token_from_secret(&data(&[("apiToken", b"\xff")]), Token::Api),
            Err(TokenCheck::NotUtf8)
        );
    }

    #[test]
    fn token_conditions() {
        let secret = "dynatrace:oneagent";
        let reason = |token, check: TokenCheck| {
            let c = token_condition(token, &check, secret);
            (c.type_, c.status, c.reason)
        };
        assert_eq!(
            reason(Token::Paas, TokenCheck::Ready),
            ("PaaSToken", "True", "TokenReady")
        );
        for (check, expected) in [
            (TokenCheck::SecretNotFound, "TokenSecretNotFound"),
            (TokenCheck::Missing, "TokenMissing"),
            (TokenCheck::Whitespace, "TokenUnauthorized"),
            (TokenCheck::NotUtf8, "TokenUnauthorized"),
            (TokenCheck::Unauthorized, "TokenUnauthorized"),
            (TokenCheck::ScopeMissing, "TokenScopeMissing"),
            (TokenCheck::Error("HTTP 500".into()), "TokenError"),
        ] {
            let condition = token_condition(Token::Api, &check, secret);
            assert_eq!(
                (condition.type_, condition.status, condition.reason),
                ("APIToken", "False", expected),
                "{check:?}"
            );
            assert!(condition.message.contains(secret), "{}", condition.message);
        }
        let scope = token_condition(Token::Paas, &TokenCheck::ScopeMissing, secret);
        assert!(
            scope.message.contains("paasToken") && scope.message.contains("InstallerDownload"),
            "{}",
            scope.message
        );
        let error = token_condition(Token::Api, &TokenCheck::Error("HTTP 500".into()), secret);
        assert!(error.message.ends_with("failed: HTTP 500"), "{}", error.message);

        let not_found = secret_not_found_conditions(&oneagent(json!({ "tokens": "mine" })));
        assert_eq!(not_found.len(), 2);
        assert_eq!(
            not_found.iter().map(|c| c.type_).collect::<Vec<_>>(),
            ["PaaSToken", "APIToken"]
        );
        assert!(
            not_found
                .iter()
                .all(|c| c.reason == "TokenSecretNotFound" && c.message.contains("dynatrace:mine"))
        );
    }

    #[test]
    fn probe_at_the_interval_or_after_the_clock_went_back() {
        assert!(probe_due(None, 1_000, 300));
        assert!(!probe_due(Some(1_000 - 299), 1_000, 300));
        assert!(probe_due(Some(1_000 - 300), 1_000, 300));
        assert!(probe_due(Some(1_010), 1_000, 300));
    }

    fn with_status(generation: Option<i64>, status: Option<DaemonSetStatus>) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                generation,
                ..Default::default()
            },
            status,
            ..Default::default()
        }
    }

    fn status(observed: Option<i64>, desired: i32, ready: i32) -> Option<DaemonSetStatus> {
        Some(DaemonSetStatus {
            observed_generation: observed,
            desired_number_scheduled: desired,
            number_ready: ready,
            ..Default::default()
        })
    }

    #[test]
    fn phase_from_the_daemonset() {
        for (ds, phase) in [
            (with_status(Some(2), None), "Deploying"),
            (with_status(Some(2), status(Some(2), 3, 3)), "Running"),
            (with_status(Some(2), status(Some(2), 3, 4)), "Running"),
            (with_status(Some(2), status(Some(2), 3, 2)), "Deploying"),
            (with_status(Some(2), status(Some(1), 3, 3)), "Deploying"),
            (with_status(Some(2), status(None, 0, 0)), "Deploying"),
            (with_status(None, status(None, 0, 0)), "Running"),
            (with_status(Some(2), status(Some(3), 0, 0)), "Running"),
        ] {
            assert_eq!(
                crate::rollout::daemonset_phase(&ds),
                phase,
                "{:?} {:?}",
                ds.metadata.generation,
                ds.status
            );
        }
    }

    #[test]
    fn snapshot_installer_mode() {
        let mut oa = oneagent(json!({
            "tokens": "my-tokens",
            "skipCertCheck": true,
            "proxy": { "value": "http://proxy.example:3128" },
            "networkZone": "zone-a",
            "webhookInjection": true,
            "args": ["--set-host-group=prod"],
            "env": [
                { "name": "ONEAGENT_INSTALLER_SKIP_CERT_CHECK", "value": "false" },
                { "name": "EXTRA", "value": "1" },
            ],
            "labels": { "team": "platform" },
            "nodeSelector": { "node-pool": "apps" },
            "tolerations": [{ "key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule" }],
            "priorityClassName": "high",
            "resources": { "limits": { "memory": "1Gi" } },
        }));
        oa.spec.trusted_cas = Some("my-cas".into());
        insta::assert_yaml_snapshot!(daemonset(&oa, &facts()).unwrap());
    }

    #[test]
    fn snapshot_immutable_mode() {
        let oa = oneagent(json!({
            "useImmutableImage": true,
            "agentVersion": "1.203.0.20200908-220956",
            "proxy": { "valueFrom": "proxy-secret" },
            "env": [{ "name": "DT_K8S_CLUSTER_ID", "value": "user-cluster" }],
        }));
        let facts = Facts {
            image_version: Some("1.203.0.20200908-220956".into()),
            ..facts()
        };
        insta::assert_yaml_snapshot!(daemonset(&oa, &facts).unwrap());
    }

    #[test]
    fn snapshot_unprivileged_mode() {
        let oa = oneagent(json!({
            "useImmutableImage": true,
            "useUnprivilegedMode": true,
            "customPullSecret": "my-pull-secret",
            "webhookInjection": true,
            "dnsPolicy": "ClusterFirst",
        }));
        let facts = Facts {
            image_version: Some("1.203.0.20200908-220956".into()),
            ..facts()
        };
        insta::assert_yaml_snapshot!(daemonset(&oa, &facts).unwrap());
    }
}
