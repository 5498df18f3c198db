//! The desired state of the objects the operator manages for a DynaKube, computed from the DynaKube and a
//! few facts the caller has already resolved (image, version, cluster id, ...).
//!
//! Pure: nothing here talks to Kubernetes, the network or the file system, so every field of every object
//! is tested with plain values. The reconcilers compare what this crate returns with the cluster and apply
//! the difference.
//!
//! Every name has one path, its module's:
//! - [`oneagent`]: the OneAgent DaemonSet of classicFullStack, hostMonitoring and cloudNativeFullStack
//!   ([`oneagent::daemonset`]), with its template hash already set ([`hash`]: the hash that tells whether
//!   a DaemonSet in the cluster is out of date).
//! - [`pod`]: the pieces those pods are built from (env from Secrets, volumes with their mounts, node
//!   affinity, security contexts, probes from a health check, labels, tolerations, the rolling DaemonSet),
//!   for the OneAgent and legacy DaemonSets today and pod mutation and the CSI DaemonSet next.
//! - [`objects`]: the tenant Secret, the connection-info and deployment-metadata ConfigMaps and the pull
//!   Secret the OneAgents read.
//! - [`owner`]: every object made for a DynaKube or `OneAgent` in its namespace is owned by it, so
//!   deleting the resource deletes them.
//! - [`tokens`]: the token Secret and the scopes its tokens need.
//! - [`versions`], [`version`]: which version source applies, whether to look the version up now, whether
//!   an automatic update is a downgrade; the OneAgent version rules.
//! - [`throttle`]: the API request threshold. Times are unix seconds that the caller passes in; nothing
//!   here reads the clock.
//! - [`rollout`]: how far a OneAgent rollout got and which node stops it; [`recycle`]: the legacy
//!   resource's per-node update, one pod at a time.
//! - [`nodes`] (spec §9): the node cache ConfigMap, which DynaKube owns a node, when a node is marked for
//!   termination and the event.
//! - [`mapping`] (spec §4): which DynaKube injects into which namespace and the Secrets of mapped
//!   namespaces.
//! - [`missed`]: running pods of mapped namespaces that the webhook did not inject, the status, event and
//!   workload restarts about them.
//! - [`legacy`] (spec §7.4): the legacy `OneAgent` resource's DaemonSet ([`legacy::daemonset`]), pull
//!   Secret and token rules.

pub mod hash;
pub mod legacy;
pub mod mapping;
pub mod missed;
pub mod nodes;
pub mod objects;
pub mod oneagent;
pub mod owner;
pub mod pod;
pub mod recycle;
pub mod rollout;
#[cfg(test)]
mod test_support;
pub mod throttle;
pub mod tokens;
pub mod version;
pub mod versions;

/// Field and hint of [`DesiredError::Missing`] (or `LegacyMissing`) when a DaemonSet is built without
/// the cluster id.
pub(crate) const MISSING_CLUSTER_ID: (&str, &str) = (
    "the cluster id (UID of the kube-system namespace)",
    "read the kube-system namespace before building the DaemonSet",
);

/// Why a desired object cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    /// The DynaKube's mode runs no OneAgent on the nodes, so there is no DaemonSet to build.
    #[error("DynaKube {dynakube:?} needs no OneAgent DaemonSet: {reason}")]
    NoOneAgent {
        /// The DynaKube's name.
        dynakube: String,
        /// Why, and what to change to get one.
        reason: String,
    },
    /// A value the object needs is missing or empty.
    #[error("DynaKube {dynakube:?}: {field} is missing or empty; {hint}")]
    Missing {
        /// The DynaKube's name (empty when the name itself is missing).
        dynakube: String,
        /// The field or fact that is missing.
        field: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// `spec.apiUrl` is not a URL with a host, so the environment's registry is unknown.
    #[error(
        "DynaKube {dynakube:?}: spec.apiUrl {api_url:?} is not a URL with a host name; set it to \
         https://<environment-id>.live.dynatrace.com/api (SaaS) or https://<host>/e/<environment-id>/api \
         (Managed)"
    )]
    InvalidApiUrl {
        /// The DynaKube's name.
        dynakube: String,
        /// The URL as given.
        api_url: String,
    },
    /// A value the legacy `OneAgent`'s objects need is missing or empty.
    #[error("OneAgent {oneagent:?}: {field} is missing or empty; {hint}")]
    LegacyMissing {
        /// The `OneAgent`'s name (empty when the name itself is missing).
        oneagent: String,
        /// The field or fact that is missing.
        field: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// The legacy `OneAgent`'s `spec.apiUrl` is not a URL with a host, so neither the installer URL nor
    /// the registry is known.
    #[error(
        "OneAgent {oneagent:?}: spec.apiUrl {api_url:?} is not a URL with a host name; set it to \
         https://<environment-id>.live.dynatrace.com/api (SaaS) or https://<host>/e/<environment-id>/api \
         (Managed)"
    )]
    LegacyInvalidApiUrl {
        /// The `OneAgent`'s name.
        oneagent: String,
        /// The URL as given.
        api_url: String,
    },
    /// The resource that would own an object has no UID (or name), so the object could not name it as
    /// owner and would outlive it.
    #[error(
        "{kind} {name:?} has no metadata.uid, so the objects made for it cannot name it as their owner (and \
         would not be deleted with it); pass the {kind} as read from the API server, which always sets it"
    )]
    NoOwnerUid {
        /// The owner's kind (`DynaKube`, `OneAgent`).
        kind: String,
        /// The owner's name (empty when that is missing too).
        name: String,
    },
    /// A value could not be serialized (a bug: the types are plain data).
    #[error("cannot serialize {what}: {reason}; this is a bug, please report it")]
    Serialize {
        /// What was serialized.
        what: &'static str,
        /// The serializer's message.
        reason: String,
    },
    /// A OneAgent version does not have the form `major.minor.revision.YYYYMMDD-HHMMSS`.
    #[error(
        "invalid OneAgent version {version:?}: {reason}; use the form major.minor.revision.YYYYMMDD-HHMMSS, \
         for example 1.277.0.20230914-094321"
    )]
    InvalidVersion {
        /// The version as given.
        version: String,
        /// What is wrong with it.
        reason: String,
    },
}
