//! What a node's provisioner shows the operator: the ConfigMap `dynatrace-csi-<node>` in the DynaKubes'
//! namespace, owned by the Node (so it goes when the node goes). Its data:
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

/// The ConfigMap's name for `node`.
pub fn config_map_name(node: &str) -> String {
    format!("dynatrace-csi-{node}")
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
}
