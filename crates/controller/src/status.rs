//! Status writes shared by the controllers: server-side apply on the status subresource, one field manager
//! per controller, and nothing written when nothing changed.
//!
//! Each controller applies the whole part of the status it reports. The API server then removes every field
//! that controller applied before and no longer sends (a stale `rollout.blockedNode`, a node that is gone
//! from `instances`), while fields of other managers stay. Conditions are a list map keyed by `type` in the
//! CRDs, so each controller owns its own condition types and never removes another's.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
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
