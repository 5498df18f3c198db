//! Who owns the objects the operator creates for a DynaKube or a legacy `OneAgent`: one rule for all of
//! them, so that deleting the resource deletes everything made for it.
//!
//! Each object in the resource's namespace names the resource as its controller with
//! `blockOwnerDeletion`, and kube-controller-manager's garbage collector deletes it with its owner (with
//! foreground deletion, the owner goes only after it). Objects in other namespaces cannot have an owner
//! reference (references cannot cross namespaces); the namespace controller deletes those itself.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::DesiredError;

/// The owner reference that every object made for `owner` carries: `owner` is its controller, and
/// `blockOwnerDeletion` keeps a foreground deletion of `owner` waiting until the object is gone.
///
/// Errors when `owner` has no name or UID, which the API server always sets: an object without the
/// reference would outlive its resource (Secrets with tokens among them).
pub fn owner_reference<K>(owner: &K) -> Result<OwnerReference, DesiredError>
where
    K: Resource<DynamicType = ()>,
{
    let mut reference = owner
        .controller_owner_ref(&())
        .ok_or_else(|| DesiredError::NoOwnerUid {
            kind: K::kind(&()).into_owned(),
            name: owner.meta().name.clone().unwrap_or_default(),
        })?;
    reference.block_owner_deletion = Some(true);
    Ok(reference)
}

/// A reference that only ties an object's lifetime to `owner`, for what a component creates beside its own
/// workload (the operator's Lease and node cache, the CSI driver's node status): neither `controller` (the
/// owner's controller does not manage the object) nor `blockOwnerDeletion` (that needs `update` on the
/// owner's finalizers). `None` for an owner without UID (not read from the API server).
pub fn garbage_collection_owner<K>(owner: &K) -> Option<OwnerReference>
where
    K: Resource<DynamicType = ()>,
{
    owner.controller_owner_ref(&()).map(|mut reference| {
        reference.controller = None;
        reference.block_owner_deletion = None;
        reference
    })
}

/// The metadata of the object `name` made for `owner`: in the owner's namespace, with `labels` and
/// [`owner_reference`]. The caller has checked that the owner has a namespace.
pub fn owned_metadata<K>(
    owner: &K,
    name: String,
    labels: BTreeMap<String, String>,
) -> Result<ObjectMeta, DesiredError>
where
    K: Resource<DynamicType = ()>,
{
    Ok(ObjectMeta {
        name: Some(name),
        namespace: owner.meta().namespace.clone(),
        labels: Some(labels),
        owner_references: Some(vec![owner_reference(owner)?]),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use pure_api::dynakube::DynaKube;
    use pure_api::oneagent::OneAgent;
    use serde_json::json;

    use super::*;

    fn dynakube(uid: Option<&str>) -> DynaKube {
        serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1",
            "kind": "DynaKube",
            "metadata": { "name": "dk", "namespace": "dynatrace", "uid": uid },
            "spec": { "apiUrl": "https://abc12345.live.dynatrace.com/api" }
        }))
        .unwrap()
    }

    #[test]
    fn the_owner_is_the_controller_and_blocks_deletion() {
        assert_eq!(
            owner_reference(&dynakube(Some("uid-1"))),
            Ok(OwnerReference {
                api_version: "dynatrace.com/v1beta1".into(),
                kind: "DynaKube".into(),
                name: "dk".into(),
                uid: "uid-1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            })
        );
        let oneagent: OneAgent = serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1alpha1",
            "kind": "OneAgent",
            "metadata": { "name": "oa", "namespace": "dynatrace", "uid": "uid-2" },
            "spec": { "apiUrl": "https://abc12345.live.dynatrace.com/api" }
        }))
        .unwrap();
        let reference = owner_reference(&oneagent).unwrap();
        assert_eq!(
            (reference.api_version.as_str(), reference.kind.as_str()),
            ("dynatrace.com/v1alpha1", "OneAgent")
        );
    }

    #[test]
    fn an_owner_without_uid_is_an_error_that_says_what_to_pass() {
        let err = owner_reference(&dynakube(None)).unwrap_err();
        assert_eq!(
            err,
            DesiredError::NoOwnerUid {
                kind: "DynaKube".into(),
                name: "dk".into()
            }
        );
        assert!(err.to_string().contains("as read from the API server"), "{err}");
    }

    #[test]
    fn owned_metadata_is_in_the_owners_namespace() {
        let labels = BTreeMap::from([("a".to_owned(), "b".to_owned())]);
        let meta = owned_metadata(&dynakube(Some("uid-1")), "obj".into(), labels.clone()).unwrap();
        assert_eq!(meta.name.as_deref(), Some("obj"));
        assert_eq!(meta.namespace.as_deref(), Some("dynatrace"));
        assert_eq!(meta.labels, Some(labels));
        assert_eq!(meta.owner_references.unwrap()[0].uid, "uid-1");
    }

    #[test]
    fn a_garbage_collection_owner_neither_controls_nor_blocks() {
        let mut deployment = k8s_openapi::api::apps::v1::Deployment::default();
        assert_eq!(garbage_collection_owner(&deployment), None);
        deployment.metadata.name = Some("dynatrace-operator".into());
        deployment.metadata.uid = Some("u".into());
        let reference = garbage_collection_owner(&deployment).unwrap();
        assert_eq!(
            (reference.kind.as_str(), reference.uid.as_str()),
            ("Deployment", "u")
        );
        assert_eq!(
            (reference.controller, reference.block_owner_deletion),
            (None, None)
        );
    }
}
