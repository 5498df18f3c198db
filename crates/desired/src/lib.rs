//! The desired state of the objects the operator manages for a DynaKube, computed from the DynaKube and a
//! few facts the caller has already resolved (image, version, cluster id, ...).
//!
//! Pure: nothing here talks to Kubernetes, the network or the file system, so every field of every object
//! is tested with plain values. The reconcilers compare what this crate returns with the cluster and apply
//! the difference.
//!
//! - [`oneagent_daemonset`]: the OneAgent DaemonSet of classicFullStack, hostMonitoring and
//!   cloudNativeFullStack, with its template hash already set.
//! - [`with_template_hash`]: the hash that tells whether a DaemonSet in the cluster is out of date.
//! - [`parse_version`], [`is_downgrade`], [`image_tag`]: OneAgent version rules.

pub mod hash;
pub mod oneagent;
pub mod version;

pub use hash::{TEMPLATE_HASH_ANNOTATION, template_hash, with_template_hash};
pub use oneagent::{HealthCheck, OneAgentFacts, oneagent_daemonset};
pub use version::{AgentVersion, image_tag, is_downgrade, parse_version};

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
