//! Status writes shared by the controllers: server-side apply on the status subresource, one field manager
//! per controller, and nothing written when nothing changed.
//!
//! Each controller applies the whole part of the status it reports. The API server then removes every field
//! that controller applied before and no longer sends (a stale `rollout.blockedNode`, a node that is gone
//! from `instances`), while fields of other managers stay. Conditions are a list map keyed by `type` in the
//! CRDs, so each controller owns its own condition types and never removes another's.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, PoisonError};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, FieldsV1, ManagedFieldsEntry, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Field manager of the DynaKube controller's status.
pub const DYNAKUBE_MANAGER: &str = "dynatrace-operator-dynakube";
/// Field manager of the legacy OneAgent controller's status.
pub const ONEAGENT_MANAGER: &str = "dynatrace-operator-oneagent";
/// Field manager of the namespace controller's `NamespaceConflict` condition.
pub const NAMESPACES_MANAGER: &str = "dynatrace-operator-namespaces";

/// Field manager of the missed-injection check's `status.injection`.
pub const INJECTION_MANAGER: &str = "dynatrace-operator-injection";

/// Server-side applies `status` as the whole status that `manager` reports for `object`.
///
/// Forced: a controller is the only writer of the fields it reports, so a conflict can only come from an
/// earlier writer of the same fields (an older operator, or `kubectl edit`), which this write supersedes.
pub(crate) async fn apply_status<K>(
    client: &Client,
    object: &K,
    manager: &str,
    status: &impl Serialize,
) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = object.name_any();
    let namespace = object.namespace().unwrap_or_default();
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name, "namespace": namespace },
        "status": status,
    });
    Api::<K>::namespaced(client.clone(), &namespace)
        .patch_status(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&patch))
        .await
}

/// The field managers of this operator's status writes.
const OWN_MANAGERS: [&str; 4] = [
    DYNAKUBE_MANAGER,
    ONEAGENT_MANAGER,
    NAMESPACES_MANAGER,
    INJECTION_MANAGER,
];

/// Objects (uid, manager) whose status fields were already taken over in this process.
static TAKEN_OVER: LazyLock<Mutex<HashSet<(String, &'static str)>>> = LazyLock::new(Mutex::default);

/// Takes over the status fields that an older operator (the reference, or an earlier build of this one)
/// wrote with updates instead of applies, once per object and process. Fields owned by an update manager
/// are never removed by an apply that leaves them out, so without this a status written before the switch
/// would keep what is no longer reported forever. The transfer is the one `kubectl` and client-go do for
/// client-side to server-side apply upgrades: the update entries' fields join `manager`'s apply entry.
/// Returns whether it took anything over (the status must then be applied, even if unchanged).
pub(crate) async fn take_over_status<K>(
    client: &Client,
    object: &K,
    manager: &'static str,
) -> Result<bool, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let Some(uid) = object.uid() else {
        return Ok(false);
    };
    let key = (uid, manager);
    if TAKEN_OVER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&key)
    {
        return Ok(false);
    }
    let name = object.name_any();
    let api = Api::<K>::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    // The caches hold objects without managedFields: read them once.
    let fresh = api.get(&name).await?;
    let entries = fresh.meta().managed_fields.clone().unwrap_or_default();
    let taken = taken_over(&entries, manager, &K::api_version(&()), now());
    if let Some(entries) = &taken {
        let patch = json!({ "metadata": {
            "managedFields": entries,
            "resourceVersion": fresh.resource_version(),
        } });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(object = %name, manager, "took over the status fields an earlier operator wrote");
    }
    TAKEN_OVER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key);
    Ok(taken.is_some())
}

/// `entries` with every foreign update of the status merged into `manager`'s apply entry; `None` when
/// there is none (pure).
fn taken_over(
    entries: &[ManagedFieldsEntry],
    manager: &str,
    api_version: &str,
    time: Time,
) -> Option<Vec<ManagedFieldsEntry>> {
    let foreign = |e: &ManagedFieldsEntry| {
        e.operation.as_deref() == Some("Update")
            && e.subresource.as_deref() == Some("status")
            && !e.manager.as_deref().is_some_and(|m| OWN_MANAGERS.contains(&m))
    };
    let ours = |e: &ManagedFieldsEntry| {
        e.operation.as_deref() == Some("Apply")
            && e.subresource.as_deref() == Some("status")
            && e.manager.as_deref() == Some(manager)
    };
    if !entries.iter().any(foreign) {
        return None;
    }
    let mut fields = serde_json::Value::Object(serde_json::Map::new());
    for entry in entries.iter().filter(|e| foreign(e) || ours(e)) {
        if let Some(FieldsV1(owned)) = &entry.fields_v1 {
            union(&mut fields, owned);
        }
    }
    let mut kept: Vec<ManagedFieldsEntry> = entries
        .iter()
        .filter(|e| !foreign(e) && !ours(e))
        .cloned()
        .collect();
    kept.push(ManagedFieldsEntry {
        manager: Some(manager.to_owned()),
        operation: Some("Apply".to_owned()),
        api_version: Some(api_version.to_owned()),
        fields_type: Some("FieldsV1".to_owned()),
        fields_v1: Some(FieldsV1(fields)),
        subresource: Some("status".to_owned()),
        time: Some(time),
    });
    Some(kept)
}

/// Adds the fields of `other` to `into` (field sets are nested JSON objects).
fn union(into: &mut serde_json::Value, other: &serde_json::Value) {
    let (serde_json::Value::Object(into), serde_json::Value::Object(other)) = (into, other) else {
        return;
    };
    for (key, value) in other {
        union(
            into.entry(key.clone())
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new())),
            value,
        );
    }
}

/// The conditions among `conditions` whose type is one of `owned`, in their order.
pub(crate) fn owned_conditions(
    conditions: Option<&Vec<Condition>>,
    owned: &[&str],
) -> Option<Vec<Condition>> {
    let conditions = conditions?;
    let owned: Vec<Condition> = conditions
        .iter()
        .filter(|c| owned.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    (!owned.is_empty()).then_some(owned)
}

/// Sets a condition, keeping its transition time when its status did not change; returns whether anything
/// (status, reason or message) changed.
pub(crate) fn upsert_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> bool {
    let existing = conditions.iter().find(|c| c.type_ == type_);
    let changed = existing.is_none_or(|c| c.status != status || c.reason != reason || c.message != message);
    if !changed {
        return false;
    }
    let last_transition_time = existing
        .filter(|c| c.status == status)
        .map_or_else(now, |c| c.last_transition_time.clone());
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time,
        observed_generation: generation,
    });
    true
}

/// Removes a condition; returns whether there was one.
pub(crate) fn remove_condition(conditions: &mut Option<Vec<Condition>>, type_: &str) -> bool {
    let Some(list) = conditions.as_mut() else {
        return false;
    };
    let before = list.len();
    list.retain(|c| c.type_ != type_);
    let removed = list.len() != before;
    if list.is_empty() {
        *conditions = None;
    }
    removed
}

/// Now, as a Kubernetes timestamp.
pub(crate) fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn condition(type_: &str, status: &str, at: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: "Reason".to_owned(),
            message: "message".to_owned(),
            last_transition_time: Time(at.parse().unwrap()),
            observed_generation: Some(1),
        }
    }

    fn entry(
        manager: &str,
        operation: &str,
        subresource: Option<&str>,
        fields: serde_json::Value,
    ) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            operation: Some(operation.to_owned()),
            api_version: Some("dynatrace.com/v1beta1".to_owned()),
            fields_type: Some("FieldsV1".to_owned()),
            fields_v1: Some(FieldsV1(fields)),
            subresource: subresource.map(str::to_owned),
            time: None,
        }
    }

    #[test]
    fn an_earlier_operators_status_updates_join_the_apply_entry() {
        let time = Time("2026-01-01T00:00:00Z".parse().unwrap());
        let spec = entry("kubectl", "Update", None, json!({ "f:spec": { "f:apiUrl": {} } }));
        let old = entry(
            "dynatrace-operator",
            "Update",
            Some("status"),
            json!({ "f:status": { "f:phase": {}, "f:oneAgent": { "f:instances": { "f:node-a": {} } } } }),
        );
        let ours = entry(
            DYNAKUBE_MANAGER,
            "Apply",
            Some("status"),
            json!({ "f:status": { "f:phase": {}, "f:oneAgent": { "f:version": {} } } }),
        );
        let namespaces = entry(
            NAMESPACES_MANAGER,
            "Apply",
            Some("status"),
            json!({ "f:status": {} }),
        );
        assert_eq!(
            taken_over(
                &[spec.clone(), ours.clone(), namespaces.clone()],
                DYNAKUBE_MANAGER,
                "dynatrace.com/v1beta1",
                time.clone()
            ),
            None,
            "nothing foreign, nothing to do"
        );
        let entries = taken_over(
            &[spec.clone(), old, ours, namespaces.clone()],
            DYNAKUBE_MANAGER,
            "dynatrace.com/v1beta1",
            time,
        )
        .unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0], spec, "updates of other subresources stay");
        assert_eq!(entries[1], namespaces, "another controller's apply stays");
        let merged = &entries[2];
        assert_eq!(merged.manager.as_deref(), Some(DYNAKUBE_MANAGER));
        assert_eq!(merged.operation.as_deref(), Some("Apply"));
        assert_eq!(
            merged.fields_v1.as_ref().unwrap().0,
            json!({ "f:status": { "f:phase": {}, "f:oneAgent": { "f:instances": { "f:node-a": {} }, "f:version": {} } } })
        );
    }

    #[test]
    fn owned_conditions_leave_out_other_controllers_conditions() {
        let all = vec![
            condition("Tokens", "True", "2024-01-01T00:00:00Z"),
            condition("NamespaceConflict", "True", "2024-01-01T00:00:00Z"),
        ];
        let owned = owned_conditions(Some(&all), &["Tokens", "DynatraceAPI"]).unwrap();
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].type_, "Tokens");
        assert_eq!(owned_conditions(Some(&all), &["Other"]), None);
        assert_eq!(owned_conditions(None, &["Tokens"]), None);
    }

    #[test]
    fn upsert_keeps_the_transition_time_while_the_status_stays() {
        let at = "2024-01-01T00:00:00Z";
        let mut conditions = vec![condition("Tokens", "True", at)];
        assert!(!upsert_condition(
            &mut conditions,
            "Tokens",
            "True",
            "Reason",
            "message",
            Some(1)
        ));
        assert!(upsert_condition(
            &mut conditions,
            "Tokens",
            "True",
            "Reason",
            "other",
            Some(2)
        ));
        assert_eq!(conditions[0].last_transition_time, Time(at.parse().unwrap()));
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert!(upsert_condition(
            &mut conditions,
            "Tokens",
            "False",
            "Broken",
            "bad",
            Some(2)
        ));
        assert_ne!(conditions[0].last_transition_time, Time(at.parse().unwrap()));
        assert_eq!(conditions.len(), 1);
    }

    #[test]
    fn remove_condition_drops_an_empty_list() {
        let mut conditions = Some(vec![condition("OneAgentRollout", "True", "2024-01-01T00:00:00Z")]);
        assert!(!remove_condition(&mut conditions, "Tokens"));
        assert!(remove_condition(&mut conditions, "OneAgentRollout"));
        assert_eq!(conditions, None);
        assert!(!remove_condition(&mut conditions, "OneAgentRollout"));
    }
}
