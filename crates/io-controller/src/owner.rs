//! The operator Deployment as the owner of what the operator creates in its namespace without a DynaKube to
//! own it (the leader Lease, the node cache), so that Kubernetes' garbage collector removes them with the
//! Deployment, that is with `helm uninstall`.
//!
//! The references are plain owner references: not `controller` (the Deployment controller adopts only
//! ReplicaSets) and without `blockOwnerDeletion` (that needs `update` on the Deployment's finalizers).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Api, Client};
use pure_desired::owner::garbage_collection_owner;

/// Name of the operator's Deployment, as the chart installs it.
pub const OPERATOR_DEPLOYMENT: &str = pure_install::OPERATOR;

/// How long the operator keeps trying to read its Deployment while the API server cannot be reached or
/// answers 429/5xx at start (a control plane restarting with the operator); after that it runs without
/// the owner. The health endpoints are already served meanwhile.
pub const OWNER_READ_PATIENCE: Duration = Duration::from_secs(120);

/// The first wait between two reads; doubled up to [`MAX_OWNER_READ_WAIT`].
const FIRST_OWNER_READ_WAIT: Duration = Duration::from_millis(500);
/// The longest wait between two reads.
const MAX_OWNER_READ_WAIT: Duration = Duration::from_secs(10);

/// An owner reference to `deployment` in `namespace` for garbage collection, or `None` when it cannot be
/// read: the operator then runs outside that Deployment (`cargo xtask run`, a test) and what it creates
/// outlives it. Failures a retry can cure (no connection, 429, 5xx) are retried for up to `patience`
/// first. Never an error: the operator works without the owner. Logged once, here.
pub async fn deployment_owner(
    client: &Client,
    namespace: &str,
    deployment: &str,
    patience: Duration,
) -> Option<OwnerReference> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let give_up = tokio::time::Instant::now() + patience;
    let mut wait = FIRST_OWNER_READ_WAIT;
    let read = loop {
        match api.get_opt(deployment).await {
            Err(error) if worth_retrying(&error) && tokio::time::Instant::now() + wait < give_up => {
                tracing::debug!(deployment = %format!("{namespace}/{deployment}"), %error,
                    "cannot read the operator Deployment yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_OWNER_READ_WAIT);
            }
            read => break read,
        }
    };
    match read {
        Ok(Some(found)) => {
            let owner = garbage_collection_owner(&found);
            if owner.is_none() {
                tracing::warn!(deployment = %format!("{namespace}/{deployment}"),
                    "the Deployment has no uid; the Lease and node cache get no owner");
            }
            owner
        }
        Ok(None) => {
            tracing::info!(
                deployment = %format!("{namespace}/{deployment}"),
                "not running from the operator Deployment; the leader Lease and the node cache get no owner \
                 and stay after the operator is removed"
            );
            None
        }
        Err(error) => {
            tracing::warn!(
                deployment = %format!("{namespace}/{deployment}"), %error,
                advice = %crate::error::advice(&error),
                "cannot read the operator Deployment; the leader Lease and the node cache get no owner and \
                 stay after helm uninstall (delete them by hand)"
            );
            None
        }
    }
}

/// Whether a failed read may succeed later without anyone acting: no connection, throttled, or a server
/// error. A denial (403) or an unusable answer stays as it is.
fn worth_retrying(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Adds `owner` to `references` unless an owner of the same uid is there. Returns whether it added it.
pub fn add_owner(references: &mut Option<Vec<OwnerReference>>, owner: &OwnerReference) -> bool {
    let list = references.get_or_insert_with(Vec::new);
    if list.iter().any(|r| r.uid == owner.uid) {
        return false;
    }
    list.push(owner.clone());
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn owner(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: OPERATOR_DEPLOYMENT.into(),
            uid: uid.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_owner_is_added_once() {
        let mut references = None;
        assert!(add_owner(&mut references, &owner("a")));
        assert!(!add_owner(&mut references, &owner("a")));
        assert!(add_owner(&mut references, &owner("b")));
        assert_eq!(references.map(|r| r.len()), Some(2));
    }
}
