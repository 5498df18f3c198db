//! Leader election on a Lease, so that of several operator replicas exactly one runs the controllers.
//!
//! The standby replicas wait on the Lease; when the leader stops renewing it (crash, node loss) one of them
//! takes it over after the lease duration. A leader that shuts down releases the Lease at once, so a rolling
//! update hands over without waiting. A leader that loses the Lease (it could not renew in time) stops its
//! controllers and reports an error, so the process exits and restarts as a standby, as controller-runtime
//! does: two replicas must never reconcile at once.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;

use crate::Metrics;

/// Name of the operator's Lease, as in the reference.
pub const LEASE_NAME: &str = "dynatrace-operator-lock";

/// How the Lease is held.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderConfig {
    /// Namespace of the Lease (the operator's namespace).
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name, made unique).
    pub identity: String,
    /// How long a Lease that is not renewed stays with its holder (`LEADER_ELECTION_LEASE_DURATION`).
    pub lease_duration: Duration,
    /// How long the holder may take to renew before it gives up (`LEADER_ELECTION_RENEW_DEADLINE`); the
    /// Lease is renewed `lease_duration - renew_deadline` before it expires.
    pub renew_deadline: Duration,
    /// Owner of the Lease (the operator Deployment, see [`crate::owner`]), set when the Lease is created
    /// and added to one that lacks it, so that the Lease goes with the Deployment; `None` leaves it as it is.
    pub owner: Option<OwnerReference>,
}

impl LeaderConfig {
    /// The reference's defaults: a 30 s lease renewed within 20 s.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: LEASE_NAME.to_owned(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(30),
            renew_deadline: Duration::from_secs(20),
            owner: None,
        }
    }

    /// Seconds before expiry at which the holder renews: at least 1 s, below the lease duration.
    fn grace_seconds(&self) -> u64 {
        let duration = self.lease_duration.as_secs().max(2);
        duration
            .saturating_sub(self.renew_deadline.as_secs())
            .clamp(1, duration - 1)
    }
}

/// Why leading ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be read or created.
    #[error(
        "cannot use the Lease {namespace}:{name} for leader election: {source}; check that the namespace exists \
         and the operator may get, create and update coordination.k8s.io leases there"
    )]
    Lease {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// What failed.
        source: kube_lease_manager::LeaseManagerError,
    },
    /// Another replica took the Lease over while this one led.
    #[error(
        "lost the Lease {namespace}:{name} (it was not renewed in time); stopping the controllers so that only \
         one replica reconciles; the process restarts as a standby"
    )]
    Lost {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
    },
}

/// Waits for the Lease, then runs `lead` until `shutdown` completes or the Lease is lost. `lead` gets a
/// future that completes when it must stop. Returns once `lead` has returned and the Lease is released.
pub async fn run_as_leader<L, F>(
    client: Client,
    config: LeaderConfig,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
    lead: L,
) -> Result<(), LeaderError>
where
    L: FnOnce(tokio::sync::oneshot::Receiver<()>) -> F,
    F: Future<Output = ()>,
{
    let lease_error = |source| LeaderError::Lease {
        namespace: config.namespace.clone(),
        name: config.lease_name.clone(),
        source,
    };
    if let Some(owner) = &config.owner
        && let Err(error) = ensure_owner(&client, &config, owner).await
    {
        // Only the clean-up after an uninstall depends on it; leading does not.
        tracing::warn!(lease = %config.lease_name, namespace = %config.namespace, %error,
            advice = %crate::error::advice(&error),
            "cannot give the Lease its owner; it stays after the operator is removed");
    }
    let manager = LeaseManagerBuilder::new(client, &config.lease_name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_duration.as_secs().max(2))
        .with_grace(config.grace_seconds())
        .with_field_manager(format!("dynatrace-operator-{}", config.identity))
        .build()
        .await
        .map_err(lease_error)?;
    let (mut leading, task) = manager.watch().await;
    metrics.set_leader(&config.lease_name, false);
    // A standby is ready: a rolling update waits for the new replica to be ready before it stops the old
    // leader, which would never happen if readiness meant leading.
    metrics.set_ready();
    tracing::info!(lease = %config.lease_name, namespace = %config.namespace, identity = %config.identity,
        "waiting to lead");
    let mut shutdown = std::pin::pin!(shutdown);

    // Standby until the Lease is ours or we are asked to stop.
    let stopped_before_leading = loop {
        if *leading.borrow_and_update() {
            break false;
        }
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    // The lease task ended; its result says why.
                    break true;
                }
            }
            () = &mut shutdown => break true,
        }
    };
    let mut result = Ok(());
    if !stopped_before_leading {
        tracing::info!(lease = %config.lease_name, identity = %config.identity, "leading: starting the controllers");
        metrics.set_leader(&config.lease_name, true);
        let (stop, stop_requested) = tokio::sync::oneshot::channel();
        let mut work = std::pin::pin!(lead(stop_requested));
        let mut stop = Some(stop);
        loop {
            tokio::select! {
                () = &mut work => break,
                () = &mut shutdown, if stop.is_some() => {
                    if let Some(stop) = stop.take() {
                        let _ = stop.send(());
                    }
                }
                changed = leading.changed(), if stop.is_some() => {
                    if changed.is_err() || !*leading.borrow_and_update() {
                        tracing::error!(lease = %config.lease_name, "lost the Lease; stopping the controllers");
                        result = Err(LeaderError::Lost {
                            namespace: config.namespace.clone(),
                            name: config.lease_name.clone(),
                        });
                        if let Some(stop) = stop.take() {
                            let _ = stop.send(());
                        }
                    }
                }
            }
        }
        metrics.set_leader(&config.lease_name, false);
    }
    // Dropping the receiver makes the lease task release the Lease, so a standby takes over at once.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => tracing::info!(lease = %config.lease_name, "released the Lease"),
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "releasing the Lease failed; a standby takes over when it expires")
        }
        Ok(Err(error)) => tracing::warn!(%error, "the Lease task failed"),
        Err(_) => tracing::warn!("releasing the Lease took over 5 s; a standby takes over when it expires"),
    }
    result
}

/// Creates the Lease with `owner`, or adds `owner` to the existing Lease that lacks it (one written by an
/// earlier version). The lease manager then uses the Lease as it finds it; its writes touch only the spec.
async fn ensure_owner(
    client: &Client,
    config: &LeaderConfig,
    owner: &OwnerReference,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let mut lease = match api.get_opt(&config.lease_name).await? {
        Some(lease) => lease,
        None => {
            let new = Lease {
                metadata: ObjectMeta {
                    name: Some(config.lease_name.clone()),
                    namespace: Some(config.namespace.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..ObjectMeta::default()
                },
                spec: None,
            };
            match api.create(&PostParams::default(), &new).await {
                Ok(_) => return Ok(()),
                // Another replica created it first: add the owner to theirs.
                Err(kube::Error::Api(status)) if status.code == 409 => api.get(&config.lease_name).await?,
                Err(error) => return Err(error),
            }
        }
    };
    if !crate::owner::add_owner(&mut lease.metadata.owner_references, owner) {
        return Ok(());
    }
    // The resourceVersion makes a concurrent change of the owners a conflict rather than lost.
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": lease.metadata.resource_version,
            "ownerReferences": lease.metadata.owner_references,
        }
    });
    api.patch(&config.lease_name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    tracing::info!(lease = %config.lease_name, owner = %owner.name, "gave the Lease its owner");
    Ok(())
}

/// This replica's identity: the pod name (or host name) with a random suffix, so that a restarted process
/// never mistakes the previous holder's Lease for its own.
pub fn identity(pod_name: Option<&str>) -> String {
    let base = pod_name
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "dynatrace-operator".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{base}_{:08x}", nanos ^ std::process::id().rotate_left(16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_follows_the_renew_deadline_and_stays_inside_the_lease() {
        let mut config = LeaderConfig::new("dynatrace", "a");
        assert_eq!(config.grace_seconds(), 10);
        config.renew_deadline = Duration::from_secs(40);
        assert_eq!(config.grace_seconds(), 1);
        config.lease_duration = Duration::from_secs(3);
        config.renew_deadline = Duration::from_secs(0);
        assert_eq!(config.grace_seconds(), 2);
    }

    #[test]
    fn identities_are_unique_per_start() {
        let a = identity(Some("operator-0"));
        assert!(a.starts_with("operator-0_"), "{a}");
        assert!(!identity(None).is_empty());
    }
}
