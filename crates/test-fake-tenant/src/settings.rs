//! Settings 2.0 objects and the monitored entities they create, as the environment API v2 serves them:
//! `/api/v2/settings/objects`, `/api/v2/settings/effectiveValues` and `/api/v2/entities`.
//!
//! Like a real environment, a `builtin:cloud.kubernetes` object created in the `environment` scope
//! creates a `KUBERNETES_CLUSTER` entity for its cluster (found by `kubernetesClusterId(<kube-system
//! uid>)`) and is moved to that entity's scope; a second object for the same cluster id is refused.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The schema of a monitored Kubernetes cluster's settings.
pub const KUBERNETES_SCHEMA: &str = "builtin:cloud.kubernetes";
/// The schema version this fake reports for every object.
pub const SCHEMA_VERSION: &str = "3.0.0";
/// The environment-wide scope.
pub const ENVIRONMENT_SCOPE: &str = "environment";
/// The entity type of a monitored Kubernetes cluster.
pub const KUBERNETES_CLUSTER: &str = "KUBERNETES_CLUSTER";

/// A stored settings object, as `GET /api/v2/settings/objects` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsObject {
    /// The object's id.
    pub object_id: String,
    /// Its schema, for example [`KUBERNETES_SCHEMA`].
    pub schema_id: String,
    /// The schema version.
    pub schema_version: String,
    /// Its scope: `environment` or an entity id.
    pub scope: String,
    /// Its value, as posted.
    pub value: Value,
}

/// A monitored entity, as `GET /api/v2/entities` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitoredEntity {
    /// For example `KUBERNETES_CLUSTER-0A1B2C3D4E5F6071`.
    pub entity_id: String,
    /// The entity type, for example [`KUBERNETES_CLUSTER`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The name shown in the UI (the settings object's `label`).
    pub display_name: String,
    /// The cluster's kube-system namespace UID.
    pub kubernetes_cluster_id: String,
    /// When the entity was created, in ms since the epoch.
    pub first_seen_tms: u64,
}

/// One object of a `POST /api/v2/settings/objects` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewObject {
    pub schema_id: String,
    #[serde(default)]
    pub scope: String,
    pub value: Value,
}

/// Settings objects and the entities they created.
#[derive(Debug, Default)]
pub(crate) struct SettingsStore {
    objects: Vec<SettingsObject>,
    entities: Vec<MonitoredEntity>,
    next_id: u64,
}

impl SettingsStore {
    /// Checks `new` and, unless `validate_only`, stores it; returns its object id or why it is refused
    /// (the message a real environment gives in the item's `error.message`).
    pub fn create(&mut self, new: NewObject, validate_only: bool, now_ms: u64) -> Result<String, String> {
        if new.schema_id.trim().is_empty() {
            return Err("schemaId is missing; name the schema, for example builtin:cloud.kubernetes".into());
        }
        if !new.value.is_object() {
            return Err(format!(
                "the value of a {} object must be a JSON object",
                new.schema_id
            ));
        }
        let scope = if new.scope.is_empty() {
            ENVIRONMENT_SCOPE.to_owned()
        } else {
            new.scope
        };
        let cluster = if new.schema_id == KUBERNETES_SCHEMA {
            Some(self.check_kubernetes(&new.value, &scope)?)
        } else {
            None
        };
        if validate_only {
            return Ok(String::new());
        }
        self.next_id += 1;
        let object_id = format!("vu9U3hXa3q0AAAABABh{:016x}", self.next_id);
        let scope = match cluster {
            Some((cluster_id, label)) if scope == ENVIRONMENT_SCOPE => {
                let entity_id = format!("{KUBERNETES_CLUSTER}-{:016X}", fingerprint(&cluster_id));
                self.entities.push(MonitoredEntity {
                    entity_id: entity_id.clone(),
                    kind: KUBERNETES_CLUSTER.to_owned(),
                    display_name: label,
                    kubernetes_cluster_id: cluster_id,
                    first_seen_tms: now_ms,
                });
                entity_id
            }
            _ => scope,
        };
        self.objects.push(SettingsObject {
            object_id: object_id.clone(),
            schema_id: new.schema_id,
            schema_version: SCHEMA_VERSION.to_owned(),
            scope,
            value: new.value,
        });
        Ok(object_id)
    }

    /// The `label` and `clusterId` of a Kubernetes settings value, refusing what a real environment
    /// refuses: no label, a missing cluster id, an unknown entity scope or a cluster that already has one.
    fn check_kubernetes(&self, value: &Value, scope: &str) -> Result<(String, String), String> {
        let label = value["label"].as_str().unwrap_or_default().trim();
        if label.is_empty() {
            return Err("value.label is missing: name the cluster as it should appear in Dynatrace".into());
        }
        let enabled = value["clusterIdEnabled"].as_bool().unwrap_or(false);
        let cluster_id = value["clusterId"].as_str().unwrap_or_default().trim();
        if !enabled || cluster_id.is_empty() {
            return Err(
                "value.clusterIdEnabled must be true and value.clusterId the UID of the kube-system namespace"
                    .into(),
            );
        }
        if scope != ENVIRONMENT_SCOPE && !self.entities.iter().any(|e| e.entity_id == scope) {
            return Err(format!("scope {scope} is no entity of this environment"));
        }
        if scope == ENVIRONMENT_SCOPE
            && self
                .entities
                .iter()
                .any(|e| e.kubernetes_cluster_id == cluster_id)
        {
            return Err(format!(
                "a Kubernetes cluster with clusterId {cluster_id} is already monitored; update its object \
                 instead of creating another"
            ));
        }
        Ok((cluster_id.to_owned(), label.to_owned()))
    }

    /// The objects of any of `schemas` in any of `scopes` (every scope when `scopes` is empty).
    pub fn objects(&self, schemas: &[String], scopes: &[String]) -> Vec<SettingsObject> {
        self.objects
            .iter()
            .filter(|o| schemas.is_empty() || schemas.contains(&o.schema_id))
            .filter(|o| scopes.is_empty() || scopes.contains(&o.scope))
            .cloned()
            .collect()
    }

    /// The value in effect for `schema` at `scope`: the object at that scope, else the environment's,
    /// else the schema's default (an empty object here); with where it comes from.
    pub fn effective(&self, schema: &str, scope: &str) -> Value {
        let at = |scope: &str| {
            self.objects
                .iter()
                .find(|o| o.schema_id == schema && o.scope == scope)
        };
        match at(scope).or_else(|| at(ENVIRONMENT_SCOPE)) {
            Some(object) => json!({
                "schemaId": schema, "schemaVersion": SCHEMA_VERSION,
                "value": object.value, "origin": object.scope,
            }),
            None => json!({
                "schemaId": schema, "schemaVersion": SCHEMA_VERSION, "value": {}, "origin": "default",
            }),
        }
    }

    /// The entities `selector` picks (see [`EntitySelector`]).
    pub fn entities(&self, selector: &EntitySelector) -> Vec<MonitoredEntity> {
        self.entities
            .iter()
            .filter(|e| selector.kind == e.kind)
            .filter(|e| {
                selector
                    .kubernetes_cluster_id
                    .as_ref()
                    .is_none_or(|id| *id == e.kubernetes_cluster_id)
            })
            .cloned()
            .collect()
    }
}

/// A stable 64-bit fingerprint (FNV-1a), so a cluster keeps its entity id across restarts of the fake.
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The part of the entity selector language this fake understands: `type(<T>)`, optionally with
/// `,kubernetesClusterId(<uid>)`; values may be quoted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EntitySelector {
    kind: String,
    kubernetes_cluster_id: Option<String>,
}

impl EntitySelector {
    /// Parses a selector, or says what is not understood.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut kind = None;
        let mut cluster_id = None;
        for criterion in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            let (key, rest) = criterion
                .split_once('(')
                .ok_or_else(|| format!("criterion {criterion:?} is not of the form key(value)"))?;
            let value = rest
                .strip_suffix(')')
                .ok_or_else(|| format!("criterion {criterion:?} lacks its closing parenthesis"))?
                .trim()
                .trim_matches('"')
                .to_owned();
            match key.trim() {
                "type" => kind = Some(value),
                "kubernetesClusterId" => cluster_id = Some(value),
                other => {
                    return Err(format!(
                        "the fake tenant does not support the criterion {other:?}; use type(...) and \
                         kubernetesClusterId(...)"
                    ));
                }
            }
        }
        let kind = kind.ok_or("the entitySelector needs a type(...) criterion")?;
        Ok(Self {
            kind,
            kubernetes_cluster_id: cluster_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubernetes(label: &str, cluster_id: &str) -> NewObject {
        NewObject {
            schema_id: KUBERNETES_SCHEMA.into(),
            scope: ENVIRONMENT_SCOPE.into(),
            value: json!({ "enabled": true, "label": label, "clusterIdEnabled": true, "clusterId": cluster_id }),
        }
    }

    #[test]
    fn a_kubernetes_object_creates_its_cluster_entity_and_moves_to_its_scope() {
        let mut store = SettingsStore::default();
        let id = store.create(kubernetes("prod", "uid-1"), false, 7).unwrap();
        let selector =
            EntitySelector::parse(r#"type("KUBERNETES_CLUSTER"),kubernetesClusterId("uid-1")"#).unwrap();
        let entities = store.entities(&selector);
        assert_eq!(entities.len(), 1);
        assert_eq!(entities[0].display_name, "prod");
        let objects = store.objects(&[KUBERNETES_SCHEMA.into()], &[entities[0].entity_id.clone()]);
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].object_id, id);
        assert_eq!(
            store.effective(KUBERNETES_SCHEMA, &entities[0].entity_id)["value"]["label"],
            "prod"
        );
        assert_eq!(store.effective(KUBERNETES_SCHEMA, "HOST-1")["origin"], "default");
        assert!(
            store
                .entities(&EntitySelector::parse("type(KUBERNETES_CLUSTER),kubernetesClusterId(x)").unwrap())
                .is_empty()
        );
    }

    #[test]
    fn refused_objects_say_why_and_change_nothing() {
        let mut store = SettingsStore::default();
        store.create(kubernetes("prod", "uid-1"), false, 7).unwrap();
        for (new, expected) in [
            (kubernetes("again", "uid-1"), "already monitored"),
            (kubernetes("", "uid-2"), "value.label"),
            (kubernetes("x", ""), "clusterId"),
            (
                NewObject {
                    scope: "KUBERNETES_CLUSTER-NOPE".into(),
                    ..kubernetes("x", "uid-3")
                },
                "no entity",
            ),
            (
                NewObject {
                    schema_id: " ".into(),
                    ..kubernetes("x", "uid-4")
                },
                "schemaId",
            ),
        ] {
            let err = store.create(new, false, 8).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        assert_eq!(store.objects(&[], &[]).len(), 1);
        assert!(store.create(kubernetes("dry", "uid-5"), true, 9).is_ok());
        assert_eq!(store.objects(&[], &[]).len(), 1, "validateOnly stores nothing");
    }

    #[test]
    fn selectors_outside_the_supported_subset_are_named() {
        assert!(
            EntitySelector::parse("entityName(x)")
                .unwrap_err()
                .contains("entityName")
        );
        assert!(
            EntitySelector::parse("kubernetesClusterId(x)")
                .unwrap_err()
                .contains("type(")
        );
        assert!(
            EntitySelector::parse("type(HOST")
                .unwrap_err()
                .contains("parenthesis")
        );
    }
}
