//! What a node's provisioner shows the operator: the ConfigMap `dynatrace-csi-<node>` in the DynaKubes'
//! namespace, labelled [`NODE_LABEL`] and owned by the CSI DaemonSet (so `helm uninstall` removes it); the
//! operator's node controller deletes the ones of nodes that are gone ([`stale_config_maps`]). Its data:
//!
//! - `versions`: the complete code-module versions on the node, a JSON array, sorted;
//! - `dynakubes`: per DynaKube with a record on the node, a JSON object
//!   `{"<dk>": {"tenantUUID", "version", "config", "ready"}}`; `ready` means an app-mode publish for it
//!   mounts the agent now (the version is complete and the record names a configuration layer).
//!
//! The provisioner writes it only when this content changed.

use std::collections::{BTreeMap, BTreeSet};

use crate::layout::DynakubeRecord;

/// Key of the versions.
pub const VERSIONS_KEY: &str = "versions";
/// Key of the per-DynaKube state.
pub const DYNAKUBES_KEY: &str = "dynakubes";

/// Prefix of the ConfigMap's name; the node name follows.
const NAME_PREFIX: &str = "dynatrace-csi-";

/// Label on every status ConfigMap: the node's name (cut to the 63 characters a label value holds).
pub const NODE_LABEL: &str = "csi.oneagent.dynatrace.com/node";

/// The ConfigMap's name for `node`.
pub fn config_map_name(node: &str) -> String {
    format!("{NAME_PREFIX}{node}")
}

/// The status ConfigMaps among `names` (ConfigMaps labelled [`NODE_LABEL`]) whose node is not in `nodes`:
/// left by nodes that were deleted, which the garbage collector does not remove (their owner is the
/// DaemonSet, which outlives a node). Names without the status prefix are never stale.
pub fn stale_config_maps<'a>(
    names: impl IntoIterator<Item = &'a str>,
    nodes: &BTreeSet<String>,
) -> Vec<&'a str> {
    names
        .into_iter()
        .filter(|name| {
            name.strip_prefix(NAME_PREFIX)
                .is_some_and(|node| !node.is_empty() && !nodes.contains(node))
        })
        .collect()
}

/// The node a status ConfigMap `name` belongs to.
pub fn node_of(name: &str) -> Option<&str> {
    name.strip_prefix(NAME_PREFIX).filter(|n| !n.is_empty())
}

/// The ConfigMap's data for the complete `versions` and the `records` by DynaKube name.
pub fn data(
    versions: &BTreeSet<String>,
    records: &BTreeMap<String, DynakubeRecord>,
) -> BTreeMap<String, String> {
    let dynakubes: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .map(|(name, record)| {
            let ready =
                record.config.is_some() && record.version.as_ref().is_some_and(|v| versions.contains(v));
            (
                name.clone(),
                serde_json::json!({
                    "tenantUUID": record.tenant_uuid,
                    "version": record.version,
                    "config": record.config,
                    "ready": ready,
                }),
            )
        })
        .collect();
    BTreeMap::from([
        (
            VERSIONS_KEY.to_owned(),
            serde_json::Value::from(versions.iter().cloned().collect::<Vec<_>>()).to_string(),
        ),
        (
            DYNAKUBES_KEY.to_owned(),
            serde_json::Value::Object(dynakubes).to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_readiness() {
        let versions = BTreeSet::from(["1.2.3.4-5".to_owned()]);
        let record = |version: Option<&str>, config: Option<&str>| DynakubeRecord {
            tenant_uuid: "abc".into(),
            version: version.map(str::to_owned),
            config: config.map(str::to_owned),
            max_failed_mount_attempts: 10,
        };
        let records = BTreeMap::from([
            ("ready".to_owned(), record(Some("1.2.3.4-5"), Some("c1"))),
            ("waiting".to_owned(), record(None, None)),
            ("missing".to_owned(), record(Some("9.9.9.9-9"), Some("c1"))),
        ]);
        let data = data(&versions, &records);
        assert_eq!(data[VERSIONS_KEY], r#"["1.2.3.4-5"]"#);
        let dynakubes: serde_json::Value = serde_json::from_str(&data[DYNAKUBES_KEY]).unwrap();
        assert_eq!(dynakubes["ready"]["ready"], true);
        assert_eq!(dynakubes["ready"]["config"], "c1");
        assert_eq!(dynakubes["waiting"]["ready"], false);
        assert_eq!(dynakubes["waiting"]["version"], serde_json::Value::Null);
        assert_eq!(dynakubes["missing"]["ready"], false);
        assert_eq!(config_map_name("node-1"), "dynatrace-csi-node-1");
    }

    #[test]
    fn maps_of_missing_nodes_are_stale() {
        let nodes = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        let names = [
            "dynatrace-csi-a",
            "dynatrace-csi-gone",
            "dynatrace-csi-",
            "other",
            "dynatrace-csi-b",
        ];
        assert_eq!(stale_config_maps(names, &nodes), ["dynatrace-csi-gone"]);
        assert_eq!(node_of("dynatrace-csi-gone"), Some("gone"));
        assert_eq!(node_of("dynatrace-csi-"), None);
        assert_eq!(node_of("other"), None);
    }
}
