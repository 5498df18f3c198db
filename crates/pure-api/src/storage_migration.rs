//! Whether the stored DynaKubes must be rewritten at our storage version, decided from the CRD alone.
//!
//! A cluster that ran the reference operator stores DynaKubes at its storage versions (for example
//! v1beta5, then v1beta6), and the CRD lists them in `status.storedVersions`. Our CRD serves them and
//! converts on read, but until every object is rewritten at [`DYNAKUBE_STORAGE_VERSION`] and the list is
//! trimmed, no later CRD may drop one of those versions. The operator does the rewrite (`io-controller`
//! `storage_migration.rs`); this module says when and what the list becomes.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::crd::DYNAKUBE_STORAGE_VERSION;

/// What the storage migration of a CRD needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageMigration {
    /// `status.storedVersions` holds only our storage version: nothing to do.
    Done,
    /// The CRD does not store our version (yet): another operator's CRD is installed, or ours is being
    /// applied. Rewriting now would store the objects at that other version, so wait for a CRD change.
    NotOurCrd {
        /// The version the CRD stores, if any.
        storage: Option<String>,
    },
    /// The API server has not accepted the CRD yet (condition `Established` not true): objects written
    /// now might still be encoded with the previous definition.
    NotEstablished,
    /// Rewrite every object (a no-op update encodes it at the storage version), then set
    /// `status.storedVersions` to `stored_versions`.
    Needed {
        /// The versions besides ours that objects may be stored at.
        stale: Vec<String>,
        /// What `status.storedVersions` becomes once every object is rewritten.
        stored_versions: Vec<String>,
    },
}

/// Decides the storage migration of the DynaKube CRD `crd`.
pub fn decide(crd: &CustomResourceDefinition) -> StorageMigration {
    let storage = crd
        .spec
        .versions
        .iter()
        .find(|v| v.storage)
        .map(|v| v.name.clone());
    if storage.as_deref() != Some(DYNAKUBE_STORAGE_VERSION) {
        return StorageMigration::NotOurCrd { storage };
    }
    let status = crd.status.as_ref();
    let established = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Established" && c.status == "True");
    if !established {
        return StorageMigration::NotEstablished;
    }
    let stale: Vec<String> = status
        .and_then(|s| s.stored_versions.as_ref())
        .into_iter()
        .flatten()
        .filter(|v| *v != DYNAKUBE_STORAGE_VERSION)
        .cloned()
        .collect();
    if stale.is_empty() {
        return StorageMigration::Done;
    }
    StorageMigration::Needed {
        stale,
        stored_versions: vec![DYNAKUBE_STORAGE_VERSION.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
    };

    use super::*;
    use crate::crd::{ConversionEndpoint, dynakube};

    fn ours(stored: &[&str], established: bool) -> CustomResourceDefinition {
        let mut crd = dynakube(&ConversionEndpoint::Service {
            namespace: "dynatrace".to_owned(),
        });
        crd.status = Some(CustomResourceDefinitionStatus {
            stored_versions: Some(stored.iter().map(|v| (*v).to_owned()).collect()),
            conditions: Some(vec![CustomResourceDefinitionCondition {
                type_: "Established".to_owned(),
                status: if established { "True" } else { "False" }.to_owned(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        crd
    }

    #[test]
    fn versions_stored_by_the_reference_are_migrated_to_ours() {
        assert_eq!(
            decide(&ours(&["v1beta5", "v1beta6", "v1beta1"], true)),
            StorageMigration::Needed {
                stale: vec!["v1beta5".to_owned(), "v1beta6".to_owned()],
                stored_versions: vec!["v1beta1".to_owned()],
            }
        );
        // The API server adds the storage version only when it writes; the list may lack it.
        assert_eq!(
            decide(&ours(&["v1beta6"], true)),
            StorageMigration::Needed {
                stale: vec!["v1beta6".to_owned()],
                stored_versions: vec!["v1beta1".to_owned()],
            }
        );
    }

    #[test]
    fn only_our_storage_version_needs_nothing() {
        assert_eq!(decide(&ours(&["v1beta1"], true)), StorageMigration::Done);
        assert_eq!(decide(&ours(&[], true)), StorageMigration::Done);
    }

    #[test]
    fn a_crd_not_yet_established_waits() {
        assert_eq!(
            decide(&ours(&["v1beta5", "v1beta1"], false)),
            StorageMigration::NotEstablished
        );
    }

    #[test]
    fn another_operators_crd_is_left_alone() {
        let mut crd = ours(&["v1beta5", "v1beta6"], true);
        for version in &mut crd.spec.versions {
            version.storage = version.name == "v1beta6";
        }
        assert_eq!(
            decide(&crd),
            StorageMigration::NotOurCrd {
                storage: Some("v1beta6".to_owned())
            }
        );
    }
}
