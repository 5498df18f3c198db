//! The controllers' one error model: what failed (naming the object), whether the user must fix it or a
//! retry helps, and the metric label of each kind. Errors are `thiserror` types in every library crate of
//! the workspace; `anyhow` is used only by binaries and tests.

use io_tenant_client::TenantError;

use crate::dynakube::{API_CONDITION, TOKENS_CONDITION};

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A Kubernetes call failed; retried with a backoff.
    #[error("{what}: {source}; {} (retrying)", advice(source))]
    Kube {
        /// What was being done.
        what: String,
        /// The API error.
        source: kube::Error,
    },
    /// Something the user must fix (tokens, configuration); the message says what.
    #[error("{0}")]
    UserFixable(Fix),
    /// The Dynatrace API failed.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// The desired objects could not be built.
    #[error(transparent)]
    Desired(#[from] pure_desired::DesiredError),
    /// No webhook certificates could be issued.
    #[error(transparent)]
    Certificates(#[from] pure_webhook_certificates::CertError),
}

/// A problem the user must fix: the condition that reports it, the condition's (and event's) reason, and
/// what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix {
    /// The condition type that reports it.
    pub condition: &'static str,
    /// The reason of the condition and of the warning event.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Fix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<io_dynakube_inputs::Error> for ReconcileError {
    fn from(error: io_dynakube_inputs::Error) -> Self {
        match error {
            io_dynakube_inputs::Error::Problem(problem) => Self::UserFixable(Fix {
                condition: if problem.is_token_problem() {
                    TOKENS_CONDITION
                } else {
                    API_CONDITION
                },
                reason: problem.reason(),
                message: problem.to_string(),
            }),
            io_dynakube_inputs::Error::Kube { what, source } => Self::Kube { what, source },
        }
    }
}

impl ReconcileError {
    /// A problem with the token Secret or the tokens, reported in the `Tokens` condition.
    pub(crate) fn token(message: impl Into<String>) -> Self {
        Self::UserFixable(Fix {
            condition: TOKENS_CONDITION,
            reason: "TokenError",
            message: message.into(),
        })
    }

    /// A setting that keeps the operator from using the Dynatrace API (proxy, trusted CAs, network zone),
    /// reported in the `DynatraceAPI` condition.
    pub(crate) fn settings(reason: &'static str, message: impl Into<String>) -> Self {
        Self::UserFixable(Fix {
            condition: API_CONDITION,
            reason,
            message: message.into(),
        })
    }
}

impl ReconcileError {
    /// Whether the user must change something (a resource, a Secret, a token) before a retry can succeed.
    pub fn needs_user(&self) -> bool {
        matches!(
            self,
            Self::UserFixable(_) | Self::Tenant(TenantError::Unauthorized { .. })
        )
    }

    /// Whether the Dynatrace API throttled or was unavailable: a retry after a backoff helps.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Tenant(e) if e.is_transient())
    }

    /// The `outcome` label of the reconcile metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            _ if self.needs_user() => "user_error",
            _ if self.is_transient() => "tenant_unavailable",
            Self::Kube { .. } => "kube_error",
            _ => "error",
        }
    }
}

/// Attaches what was being done, naming the object, to a Kubernetes API error: the one way the controllers
/// report a failed call.
/// What to do about a failed Kubernetes call: for a denied request the missing rule and the role it
/// belongs in, else the usual suspects.
pub(crate) fn advice(error: &dyn std::fmt::Display) -> String {
    pure_install::rbac::advice(error, "the operator")
}

pub(crate) fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Kube { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_says_whether_the_user_must_act_and_how_it_is_counted() {
        let token = ReconcileError::token("the token Secret dynatrace:dk does not exist");
        assert!(token.needs_user() && !token.is_transient());
        assert_eq!(token.metric_label(), "user_error");
        let unauthorized = ReconcileError::Tenant(TenantError::Unauthorized {
            endpoint: "token lookup",
            status: 401,
            code: None,
            message: "bad token".into(),
        });
        assert_eq!(unauthorized.metric_label(), "user_error");
        let down = ReconcileError::Tenant(TenantError::Unavailable { endpoint: "versions" });
        assert!(down.is_transient() && !down.needs_user());
        assert_eq!(down.metric_label(), "tenant_unavailable");
        let kube = kube_error("reading DaemonSet dynatrace:dk-oneagent")(
            kube::Error::LinesCodecMaxLineLengthExceeded,
        );
        assert_eq!(kube.metric_label(), "kube_error");
        assert!(
            kube.to_string()
                .starts_with("reading DaemonSet dynatrace:dk-oneagent: "),
            "{kube}"
        );
    }
}
