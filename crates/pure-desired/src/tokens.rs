//! The token Secret and the scopes its tokens need (spec §1.5).
//!
//! The Secret `spec.tokens` (default: the DynaKube's name) holds `apiToken` (required), `paasToken` and
//! `dataIngestToken` (optional). Token values never appear in errors, messages or `Debug` output.

use std::collections::BTreeMap;
use std::fmt;

use pure_api::dynakube::DynaKube;

/// Scope to download installers and images.
pub const SCOPE_INSTALLER_DOWNLOAD: &str = "InstallerDownload";
/// Scope to read the hosts API.
pub const SCOPE_DATA_EXPORT: &str = "DataExport";
/// Scope to ingest metrics.
pub const SCOPE_METRICS_INGEST: &str = "metrics.ingest";

/// Type of the DynaKube condition that reports the token check.
pub const TOKENS_CONDITION: &str = "Tokens";
/// Reason of the `Tokens` condition when every token is usable.
pub const TOKEN_READY_REASON: &str = "TokenReady";
/// Reason of the `Tokens` condition when a token is missing, malformed or lacks a scope.
pub const TOKEN_ERROR_REASON: &str = "TokenError";

/// The tokens of the token Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenKind {
    /// `apiToken`
    Api,
    /// `paasToken`
    Paas,
    /// `dataIngestToken`
    DataIngest,
}

impl TokenKind {
    /// Every kind, in the order of the Secret's documentation.
    pub const ALL: [TokenKind; 3] = [Self::Api, Self::Paas, Self::DataIngest];

    /// The key in the token Secret.
    pub fn key(self) -> &'static str {
        match self {
            Self::Api => "apiToken",
            Self::Paas => "paasToken",
            Self::DataIngest => "dataIngestToken",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The tokens read from the token Secret. `Debug` shows which tokens are present, never their values.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    /// `apiToken`: always present and non-empty.
    pub api_token: String,
    /// `paasToken`, when present and non-empty.
    pub paas_token: Option<String>,
    /// `dataIngestToken`, when present and non-empty.
    pub data_ingest_token: Option<String>,
}

impl Tokens {
    /// The token of a kind, when present.
    pub fn get(&self, kind: TokenKind) -> Option<&str> {
        match kind {
            TokenKind::Api => Some(&self.api_token),
            TokenKind::Paas => self.paas_token.as_deref(),
            TokenKind::DataIngest => self.data_ingest_token.as_deref(),
        }
    }

    /// The token for calls that need a PaaS token: `paasToken`, else `apiToken` (spec §1.5).
    pub fn paas_or_api(&self) -> &str {
        self.paas_token.as_deref().unwrap_or(&self.api_token)
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |token: Option<&String>| token.map(|_| "<redacted>");
        f.debug_struct("Tokens")
            .field("api_token", &"<redacted>")
            .field("paas_token", &shown(self.paas_token.as_ref()))
            .field("data_ingest_token", &shown(self.data_ingest_token.as_ref()))
            .finish()
    }
}

/// Why the token Secret cannot be used. `secret` is `<namespace>:<name>`; no variant holds a token value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token Secret does not exist.
    #[error(
        "the token Secret {secret} does not exist; create it with the key apiToken (and optionally \
         paasToken, dataIngestToken), or point spec.tokens at the Secret that has them"
    )]
    SecretNotFound {
        /// `<namespace>:<name>` of the Secret.
        secret: String,
    },
    /// A required token is missing or empty.
    #[error(
        "the token Secret {secret} has no {key} or it is empty; add the key {key} with a Dynatrace API token"
    )]
    Missing {
        /// `<namespace>:<name>` of the Secret.
        secret: String,
        /// The key.
        key: &'static str,
    },
    /// A token has leading or trailing whitespace, which Dynatrace rejects.
    #[error(
        "token {key} in Secret {secret} has leading or trailing whitespace (often a newline from `echo`); \
         store it without (for example with `echo -n` or `kubectl create secret --from-literal`)"
    )]
    Whitespace {
        /// `<namespace>:<name>` of the Secret.
        secret: String,
        /// The key.
        key: &'static str,
    },
    /// A token is not UTF-8 text.
    #[error(
        "token {key} in Secret {secret} is not UTF-8 text; store the token exactly as Dynatrace shows it"
    )]
    NotUtf8 {
        /// `<namespace>:<name>` of the Secret.
        secret: String,
        /// The key.
        key: &'static str,
    },
}

/// How messages name a Secret: `<namespace>:<name>`.
pub fn secret_ref(namespace: &str, name: &str) -> String {
    format!("{namespace}:{name}")
}

/// Reads the tokens from the token Secret's data. `apiToken` must be present and non-empty; an empty
/// optional token counts as absent. Every token is checked for leading and trailing whitespace. Keys other
/// than the three tokens are ignored: they are not tokens (the reference checks every key).
pub fn tokens_from_secret(
    secret_name: &str,
    namespace: &str,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<Tokens, TokenError> {
    let secret = || secret_ref(namespace, secret_name);
    let read = |kind: TokenKind| -> Result<Option<String>, TokenError> {
        let key = kind.key();
        let Some(bytes) = data.get(key).filter(|b| !b.is_empty()) else {
            return Ok(None);
        };
        let value = std::str::from_utf8(bytes).map_err(|_| TokenError::NotUtf8 {
            secret: secret(),
            key,
        })?;
        if value.trim() != value {
            return Err(TokenError::Whitespace {
                secret: secret(),
                key,
            });
        }
        Ok(Some(value.to_owned()))
    };
    let api_token = read(TokenKind::Api)?.ok_or_else(|| TokenError::Missing {
        secret: secret(),
        key: TokenKind::Api.key(),
    })?;
    Ok(Tokens {
        api_token,
        paas_token: read(TokenKind::Paas)?,
        data_ingest_token: read(TokenKind::DataIngest)?,
    })
}

/// The scopes each present token needs (spec §1.5), in the order apiToken, paasToken, dataIngestToken. A
/// token with an empty list needs no scope, so it need not be looked up.
///
/// - apiToken: `InstallerDownload` when there is no paasToken (it downloads instead), `DataExport` unless
///   the `hosts-requests` feature flag is off.
/// - paasToken: `InstallerDownload`.
/// - dataIngestToken: `metrics.ingest`.
///
/// The reference's ActiveGate rows (`entities.read`, `settings.read`, `settings.write` for
/// kubernetes-monitoring, `activeGateTokenManagement.create` for the ActiveGate auth token) are left out:
/// this operator deploys no ActiveGate.
pub fn required_scopes(dynakube: &DynaKube, tokens: &Tokens) -> Vec<(TokenKind, Vec<&'static str>)> {
    let mut api = Vec::new();
    if tokens.paas_token.is_none() {
        api.push(SCOPE_INSTALLER_DOWNLOAD);
    }
    if dynakube.feature_flags().hosts_requests() {
        api.push(SCOPE_DATA_EXPORT);
    }
    let mut required = vec![(TokenKind::Api, api)];
    if tokens.paas_token.is_some() {
        required.push((TokenKind::Paas, vec![SCOPE_INSTALLER_DOWNLOAD]));
    }
    if tokens.data_ingest_token.is_some() {
        required.push((TokenKind::DataIngest, vec![SCOPE_METRICS_INGEST]));
    }
    required
}

/// One message per required scope a token lacks, in the order of `required`, naming the token, the Secret
/// (`secret`, as from [`secret_ref`]) and the scope. A token without an entry in `granted` has no scopes.
pub fn missing_scopes(
    required: &[(TokenKind, Vec<&str>)],
    granted: &BTreeMap<TokenKind, Vec<String>>,
    secret: &str,
) -> Vec<String> {
    required
        .iter()
        .flat_map(|(kind, scopes)| {
            let has = granted.get(kind);
            scopes
                .iter()
                .filter(move |scope| !has.is_some_and(|g| g.iter().any(|s| s == *scope)))
                .map(move |scope| {
                    format!(
                        "token {kind} in Secret {secret} lacks scope {scope}; add it to the token in \
                         Dynatrace"
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const API: &str = "dt0c01.API-SECRET-VALUE";
    const PAAS: &str = "dt0c01.PAAS-SECRET-VALUE";
    const INGEST: &str = "dt0c01.INGEST-SECRET-VALUE";

    fn data(pairs: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.to_vec())).collect()
    }

    fn read(pairs: &[(&str, &[u8])]) -> Result<Tokens, TokenError> {
        tokens_from_secret("dynakube", "dynatrace", &data(pairs))
    }

    fn dynakube(annotations: serde_json::Value) -> DynaKube {
        serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1",
            "kind": "DynaKube",
            "metadata": { "name": "dynakube", "namespace": "dynatrace", "annotations": annotations },
            "spec": {
                "apiUrl": "https://abc12345.live.dynatrace.com/api",
                "oneAgent": { "classicFullStack": {} }
            }
        }))
        .unwrap()
    }

    fn tokens(paas: bool, ingest: bool) -> Tokens {
        Tokens {
            api_token: API.into(),
            paas_token: paas.then(|| PAAS.into()),
            data_ingest_token: ingest.then(|| INGEST.into()),
        }
    }

    #[test]
    fn reads_all_three_tokens() {
        let tokens = read(&[
            ("apiToken", API.as_bytes()),
            ("paasToken", PAAS.as_bytes()),
            ("dataIngestToken", INGEST.as_bytes()),
            ("unrelated", b" not a token "),
        ])
        .unwrap();
        assert_eq!(tokens, self::tokens(true, true));
        assert_eq!(tokens.get(TokenKind::Api), Some(API));
        assert_eq!(tokens.get(TokenKind::Paas), Some(PAAS));
        assert_eq!(tokens.get(TokenKind::DataIngest), Some(INGEST));
        assert_eq!(tokens.paas_or_api(), PAAS);
    }

    #[test]
    fn optional_tokens_may_be_absent_or_empty() {
        let tokens = read(&[("apiToken", API.as_bytes()), ("paasToken", b"")]).unwrap();
        assert_eq!(tokens, self::tokens(false, false));
        assert_eq!(tokens.get(TokenKind::Paas), None);
        assert_eq!(
            tokens.paas_or_api(),
            API,
            "the API token stands in for the PaaS token"
        );
    }

    #[test]
    fn missing_or_empty_api_token_names_the_secret_and_key() {
        for pairs in [
            &[][..],
            &[("apiToken", &b""[..])][..],
            &[("paasToken", PAAS.as_bytes())][..],
        ] {
            let err = read(pairs).unwrap_err();
            assert_eq!(
                err,
                TokenError::Missing {
                    secret: "dynatrace:dynakube".into(),
                    key: "apiToken"
                }
            );
            let message = err.to_string();
            assert!(
                message.contains("dynatrace:dynakube") && message.contains("apiToken"),
                "{message}"
            );
            assert!(!message.contains(PAAS), "{message}");
        }
    }

    #[test]
    fn whitespace_around_any_token_is_an_error_without_the_value() {
        for key in ["apiToken", "paasToken", "dataIngestToken"] {
            for padded in [
                format!("{API}\n"),
                format!(" {API}"),
                format!("\t{API}"),
                format!("{API}\u{a0}"),
                "\n".to_owned(),
            ] {
                let mut pairs = vec![("apiToken", API.as_bytes())];
                pairs.retain(|(k, _)| *k != key);
                pairs.push((key, padded.as_bytes()));
                let err = read(&pairs).unwrap_err();
                assert_eq!(
                    err,
                    TokenError::Whitespace {
                        secret: "dynatrace:dynakube".into(),
                        key,
                    }
                );
                let message = err.to_string();
                assert!(
                    message.contains(key) && message.contains("dynatrace:dynakube"),
                    "{message}"
                );
                assert!(
                    !message.contains(API) && !format!("{err:?}").contains(API),
                    "{message}"
                );
            }
        }
        // Whitespace inside a token is not checked: Dynatrace tokens have none, and the lookup rejects it.
        assert!(read(&[("apiToken", b"a b")]).is_ok());
    }

    #[test]
    fn non_utf8_tokens_are_errors_without_the_value() {
        let bytes: &[u8] = b"dt0c01.\xffSECRET";
        let err = read(&[("apiToken", API.as_bytes()), ("dataIngestToken", bytes)]).unwrap_err();
        assert_eq!(
            err,
            TokenError::NotUtf8 {
                secret: "dynatrace:dynakube".into(),
                key: "dataIngestToken"
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("dataIngestToken") && !message.contains("SECRET"),
            "{message}"
        );
    }

    #[test]
    fn secret_not_found_message() {
        let message = TokenError::SecretNotFound {
            secret: secret_ref("dynatrace", "dynakube"),
        }
        .to_string();
        assert!(
            message.contains("dynatrace:dynakube") && message.contains("spec.tokens"),
            "{message}"
        );
    }

    #[test]
    fn debug_never_shows_token_values() {
        let debug = format!("{:?}", tokens(true, true));
        for secret in [API, PAAS, INGEST] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert_eq!(
            format!("{:?}", tokens(false, false)),
            "Tokens { api_token: \"<redacted>\", paas_token: None, data_ingest_token: None }"
        );
    }

    #[test]
    fn scopes_follow_the_table() {
        let dk = dynakube(json!({}));
        assert_eq!(
            required_scopes(&dk, &tokens(false, false)),
            vec![(TokenKind::Api, vec!["InstallerDownload", "DataExport"])],
            "without a PaaS token the API token downloads"
        );
        assert_eq!(
            required_scopes(&dk, &tokens(true, true)),
            vec![
                (TokenKind::Api, vec!["DataExport"]),
                (TokenKind::Paas, vec!["InstallerDownload"]),
                (TokenKind::DataIngest, vec!["metrics.ingest"]),
            ]
        );
        assert_eq!(
            required_scopes(&dk, &tokens(false, true)),
            vec![
                (TokenKind::Api, vec!["InstallerDownload", "DataExport"]),
                (TokenKind::DataIngest, vec!["metrics.ingest"]),
            ]
        );
    }

    #[test]
    fn hosts_requests_flag_off_drops_data_export() {
        for annotations in [
            json!({ "feature.dynatrace.com/hosts-requests": "false" }),
            json!({ "feature.dynatrace.com/disable-hosts-requests": "true" }),
            json!({ "alpha.operator.dynatrace.com/feature-hosts-requests": "false" }),
        ] {
            let dk = dynakube(annotations.clone());
            assert_eq!(
                required_scopes(&dk, &tokens(true, false)),
                vec![
                    (TokenKind::Api, vec![]),
                    (TokenKind::Paas, vec!["InstallerDownload"])
                ],
                "{annotations}"
            );
        }
        let on = dynakube(json!({ "feature.dynatrace.com/hosts-requests": "true" }));
        assert_eq!(
            required_scopes(&on, &tokens(true, false))[0].1,
            vec!["DataExport"]
        );
    }

    fn granted(pairs: &[(TokenKind, &[&str])]) -> BTreeMap<TokenKind, Vec<String>> {
        pairs
            .iter()
            .map(|(k, scopes)| (*k, scopes.iter().map(|s| (*s).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn no_messages_when_every_scope_is_granted() {
        let required = required_scopes(&dynakube(json!({})), &tokens(true, true));
        let all = granted(&[
            (TokenKind::Api, &["DataExport", "ReadConfig"]),
            (TokenKind::Paas, &["InstallerDownload"]),
            (TokenKind::DataIngest, &["metrics.ingest"]),
        ]);
        assert!(missing_scopes(&required, &all, "dynatrace:dynakube").is_empty());
    }

    #[test]
    fn one_message_per_missing_scope_in_order() {
        let required = required_scopes(&dynakube(json!({})), &tokens(false, true));
        let partial = granted(&[(TokenKind::Api, &["DataExport", "installerdownload"])]);
        assert_eq!(
            missing_scopes(&required, &partial, "dynatrace:dynakube"),
            vec![
                "token apiToken in Secret dynatrace:dynakube lacks scope InstallerDownload; add it to the \
                 token in Dynatrace",
                "token dataIngestToken in Secret dynatrace:dynakube lacks scope metrics.ingest; add it to \
                 the token in Dynatrace",
            ],
            "scopes are case-sensitive; a token without an entry has no scopes"
        );
    }

    #[test]
    fn token_kind_keys() {
        let keys: Vec<String> = TokenKind::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(keys, ["apiToken", "paasToken", "dataIngestToken"]);
    }
}
