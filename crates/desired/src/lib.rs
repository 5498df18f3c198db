//! The desired state of the objects the operator manages for a DynaKube, computed from the DynaKube and a
//! few facts the caller has already resolved (image, version, cluster id, ...).
//!
//! Pure: nothing here talks to Kubernetes, the network or the file system, so every field of every object
//! is tested with plain values. The reconcilers compare what this crate returns with the cluster and apply
//! the difference.
//!
//! Objects:
//! - [`oneagent_daemonset`]: the OneAgent DaemonSet of classicFullStack, hostMonitoring and
//!   cloudNativeFullStack, with its template hash already set.
//! - [`with_template_hash`]: the hash that tells whether a DaemonSet in the cluster is out of date.
//! - [`tenant_secret`], [`connection_info_config_map`], [`deployment_metadata_config_map`],
//!   [`pull_secret`]: the Secrets and ConfigMaps the OneAgents read.
//! - [`owner_reference`], [`owned_metadata`]: every object made for a DynaKube or `OneAgent` in its
//!   namespace is owned by it, so deleting the resource deletes them (module [`owner`]).
//!
//! Decisions:
//! - [`tokens_from_secret`], [`required_scopes`], [`missing_scopes`]: the token
//!   Secret and the scopes its tokens need.
//! - [`oneagent_version_plan`], [`codemodules_version_plan`], [`accept_version`]: which version source
//!   applies, whether to look the version up now, and whether an automatic update is a downgrade.
//! - [`request_due`], [`connection_info_due`]: the API request threshold. Times are unix seconds that the
//!   caller passes in; nothing here reads the clock.
//! - [`parse_version`], [`is_downgrade`], [`image_tag`]: OneAgent version rules.
//! - [`rollout_progress`]: how far a OneAgent rollout got and which node stops it; [`recycle_plan`]: the
//!   legacy resource's per-node update, one pod at a time.
//! - Node lifecycle (module [`nodes`], spec §9): the node cache ConfigMap ([`NodeCache`]), which DynaKube
//!   owns a node ([`node_owners`]), when a node is marked for termination ([`termination_reason`],
//!   [`observe_node`], [`plan_cleanup`]) and the event ([`termination_event`]).
//! - Namespace mapping (module [`mapping`], spec §4): which DynaKube injects into which namespace
//!   ([`map_namespaces`], [`label_patch`]) and the Secrets of mapped namespaces ([`init_secret`],
//!   [`data_ingest_secret`], [`monitoring_nodes`]).
//!
//! Legacy `OneAgent` resource (module [`legacy`], spec §7.4): [`legacy_oneagent_daemonset`],
//! [`legacy_pull_secret`], the token rules ([`legacy_tokens_secret_name`], [`legacy_required_scopes`],
//! [`legacy_token_condition`]).

pub mod hash;
pub mod legacy;
pub mod mapping;
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

pub use hash::{
    TEMPLATE_HASH_ANNOTATION, template_hash, template_hash_under, with_template_hash,
    with_template_hash_under,
};
pub use legacy::{
    LEGACY_TEMPLATE_HASH_ANNOTATION, LegacyFacts, LegacyProxy, LegacyToken, LegacyTokenCheck,
    LegacyTokenCondition, legacy_immutable_image, legacy_installer_image, legacy_oneagent_daemonset,
    legacy_probe_due, legacy_proxy, legacy_pull_secret, legacy_pull_secret_name, legacy_registry,
    legacy_required_scopes, legacy_secret_not_found_conditions, legacy_selector_labels,
    legacy_token_condition, legacy_token_from_secret, legacy_tokens_secret_name, legacy_uses_immutable_image,
};
pub use mapping::{
    DynaKubeRef, InitSecretFacts, Injector, Mapping, NamespaceView, SecretTemplate, data_ingest_secret,
    init_secret, label_patch, map_namespaces, monitoring_nodes,
};
pub use nodes::{
    CleanupPlan, MarkRequest, NodeCache, NodeCacheEntry, NodeOwner, TerminationEvent, TerminationReason,
    node_owners, observe_node, plan_cleanup, termination_event, termination_reason,
};
pub use objects::{
    connection_info_config_map, deployment_metadata, deployment_metadata_config_map, pull_secret,
    tenant_secret,
};
pub use oneagent::{OneAgentFacts, oneagent_daemonset};
pub use owner::{owned_metadata, owner_reference};
pub use pod::HealthCheck;
pub use recycle::{NodeAgentPod, RecyclePlan, recycle_plan};
pub use rollout::{RolloutDaemonSet, RolloutPod, RolloutProgress, daemonset_phase, rollout_progress};
pub use throttle::{connection_info_due, request_due, unix_seconds};
pub use tokens::{
    TokenError, TokenKind, Tokens, missing_scopes, required_scopes, secret_ref, tokens_from_secret,
};
pub use version::{AgentVersion, image_tag, is_downgrade, parse_version};
pub use versions::{
    Decision, Lookup, ProbeReason, SkipReason, VersionPlan, VersionRejected, VersionSource, accept_version,
    codemodules_version_plan, oneagent_version_plan, tenant_oneagent_image, tenant_registry,
};

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
