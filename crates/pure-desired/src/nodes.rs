//! Node lifecycle (spec §9): a node that is cordoned, tainted for deletion by the cluster autoscaler or
//! deleted is reported to the environment with a `MARKED_FOR_TERMINATION` event on its host, so that its
//! planned shutdown does not raise "host unavailable" alerts.
//!
//! The operator remembers the nodes it has seen in the ConfigMap [`NODE_CACHE_NAME`] in its namespace, in the
//! reference's format so that the cache survives a switch between operators: `data[<node>]` is the JSON
//! `{"instance":"<dynakube>","ip":"<host IP>","seen":"<RFC 3339>","marked":"<RFC 3339>"}` (`marked` is Go's
//! zero time `0001-01-01T00:00:00Z` until the node is first marked), and the annotation
//! [`LAST_UPDATED_ANNOTATION`] holds the time of the last cleanup.
//!
//! Everything here is pure. Times are unix seconds that the caller reads once and passes in.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use pure_api::dynakube::DynaKube;

use crate::throttle::request_due;

/// Name of the node cache ConfigMap in the operator's namespace.
pub const NODE_CACHE_NAME: &str = "dynatrace-node-cache";
/// Annotation of the node cache: when it was last cleaned up (RFC 3339).
pub const LAST_UPDATED_ANNOTATION: &str = "DTOperatorLastUpdated";
/// Taint the cluster autoscaler puts on a node it is about to delete.
pub const AUTOSCALER_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// Event type that tells the environment a host is going away on purpose.
pub const MARKED_FOR_TERMINATION: &str = "MARKED_FOR_TERMINATION";
/// Source of the events the operator sends.
pub const EVENT_SOURCE: &str = "Dynatrace Operator";
/// A node is marked at most once per this many minutes.
pub const MARK_INTERVAL_MINUTES: u32 = 60;
/// Cache entries of nodes not seen for longer than this are dropped (seconds).
pub const STALE_AFTER_SECONDS: i64 = 60 * 60;
/// The cleanup runs when the cache was last cleaned up longer ago than this (minutes; the reference's cache
/// lifetime).
pub const CLEANUP_INTERVAL_MINUTES: u32 = 10;
/// An entry's `seen` is rewritten only when it is older than this (seconds), so that busy nodes do not
/// rewrite the ConfigMap on every update. Far below [`STALE_AFTER_SECONDS`].
pub const SEEN_REFRESH_SECONDS: i64 = 5 * 60;
/// The event starts (and ends) this long before the node was last seen (seconds), as in the reference.
pub const EVENT_LEAD_SECONDS: i64 = 10 * 60;

/// What Go writes for a zero `time.Time`: the reference's "never marked".
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Unix seconds as RFC 3339 in UTC, the way Go writes a `time.Time`.
pub fn format_time(seconds: i64) -> String {
    Timestamp::from_second(seconds)
        .unwrap_or(if seconds < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        })
        .to_string()
}

/// An RFC 3339 time (any offset, optional fraction) as unix seconds; `None` when it does not parse.
pub fn parse_time(text: &str) -> Option<i64> {
    text.trim().parse::<Timestamp>().ok().map(Timestamp::as_second)
}

/// What the cache remembers about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCacheEntry {
    /// The DynaKube whose OneAgent ran on the node (`instance`).
    pub instance: String,
    /// The host IP of that OneAgent (`ip`); empty when the DynaKube did not report one.
    pub ip: String,
    /// When the operator last saw the node owned by the DynaKube (`seen`), unix seconds.
    pub seen: i64,
    /// When the node was last marked for termination (`marked`), unix seconds; `None` for never.
    pub marked: Option<i64>,
}

impl NodeCacheEntry {
    /// The entry as the reference writes it: `{"instance","ip","seen","marked"}` in that order.
    pub fn to_json(&self) -> String {
        let string = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let marked = self.marked.map_or_else(|| GO_ZERO_TIME.to_owned(), format_time);
        format!(
            "{{\"instance\":{},\"ip\":{},\"seen\":{},\"marked\":{}}}",
            string(&self.instance),
            string(&self.ip),
            string(&format_time(self.seen)),
            string(&marked),
        )
    }

    /// Reads an entry the reference or this operator wrote. Missing fields are empty (Go's zero values);
    /// a wrong type or an unparsable time is an error naming the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let object = value.as_object().ok_or_else(|| "not a JSON object".to_owned())?;
        let field = |key: &str| -> Result<&str, String> {
            match object.get(key) {
                None | Some(serde_json::Value::Null) => Ok(""),
                Some(serde_json::Value::String(s)) => Ok(s),
                Some(other) => Err(format!("{key} is {other}, not a string")),
            }
        };
        let time = |key: &str| -> Result<Option<i64>, String> {
            let text = field(key)?;
            if text.is_empty() || text == GO_ZERO_TIME {
                return Ok(None);
            }
            parse_time(text)
                .map(Some)
                .ok_or_else(|| format!("{key} {text:?} is not an RFC 3339 time"))
        };
        Ok(Self {
            instance: field("instance")?.to_owned(),
            ip: field("ip")?.to_owned(),
            // A node never seen is as old as it gets: the cleanup drops it.
            seen: time("seen")?.unwrap_or(i64::MIN),
            marked: time("marked")?,
        })
    }
}

/// The node cache as read from its ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCache {
    /// Entries by node name.
    pub entries: BTreeMap<String, NodeCacheEntry>,
    /// Keys whose value did not parse, with the reason; they are dropped when the cache is written.
    pub unreadable: BTreeMap<String, String>,
    /// When the cache was last cleaned up ([`LAST_UPDATED_ANNOTATION`]), unix seconds.
    pub last_cleanup: Option<i64>,
}

impl NodeCache {
    /// Reads the cache from its ConfigMap; no ConfigMap is an empty cache.
    pub fn from_config_map(config_map: Option<&ConfigMap>) -> Self {
        let Some(config_map) = config_map else {
            return Self::default();
        };
        let mut cache = Self {
            last_cleanup: config_map
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LAST_UPDATED_ANNOTATION))
                .and_then(|t| parse_time(t)),
            ..Self::default()
        };
        for (node, text) in config_map.data.iter().flatten() {
            match NodeCacheEntry::parse(text) {
                Ok(entry) => {
                    cache.entries.insert(node.clone(), entry);
                }
                Err(reason) => {
                    cache.unreadable.insert(node.clone(), reason);
                }
            }
        }
        cache
    }

    /// The ConfigMap holding this cache in `namespace`. The metadata of `existing` (resourceVersion, owner,
    /// labels, other annotations) is kept, so the result can replace it.
    pub fn to_config_map(&self, namespace: &str, existing: Option<&ConfigMap>) -> ConfigMap {
        let mut metadata = existing
            .map(|c| c.metadata.clone())
            .unwrap_or_else(|| ObjectMeta {
                name: Some(NODE_CACHE_NAME.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            });
        if let Some(time) = self.last_cleanup {
            metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(LAST_UPDATED_ANNOTATION.to_owned(), format_time(time));
        }
        let data = self
            .entries
            .iter()
            .map(|(node, entry)| (node.clone(), entry.to_json()))
            .collect();
        ConfigMap {
            metadata,
            data: Some(data),
            ..ConfigMap::default()
        }
    }

    /// Takes over marks the caller remembers but the cache may lack (its last write failed), so that a node
    /// is not marked twice within the hour. The later time wins.
    pub fn merge_marks(&mut self, marks: &BTreeMap<String, i64>) {
        for (node, &time) in marks {
            if let Some(entry) = self.entries.get_mut(node) {
                entry.marked = Some(entry.marked.map_or(time, |m| m.max(time)));
            }
        }
    }

    /// Records that `node` was marked (or that marking it was settled) at `now`.
    pub fn record_mark(&mut self, node: &str, now: i64) {
        if let Some(entry) = self.entries.get_mut(node) {
            entry.marked = Some(now);
        }
    }
}

/// Whether the cache ConfigMap must be written: it does not exist yet, or its data or cleanup time differ.
pub fn cache_changed(existing: Option<&ConfigMap>, desired: &ConfigMap) -> bool {
    let Some(existing) = existing else {
        return true;
    };
    let stamp = |c: &ConfigMap| {
        c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LAST_UPDATED_ANNOTATION))
            .cloned()
    };
    existing.data.clone().unwrap_or_default() != desired.data.clone().unwrap_or_default()
        || stamp(existing) != stamp(desired)
}

/// The DynaKube that runs a OneAgent on a node, and the host IP it reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOwner {
    /// The DynaKube's name.
    pub dynakube: String,
    /// The host IP from `status.oneAgent.instances`; empty when not reported.
    pub ip: String,
}

/// The owner of one node, as [`node_owners`] would say, without building the map for every node (a node
/// reconcile needs only its own; hundreds run at once on a large cluster).
pub fn node_owner<'a>(dynakubes: impl IntoIterator<Item = &'a DynaKube>, node: &str) -> Option<NodeOwner> {
    let mut sorted: Vec<&DynaKube> = dynakubes.into_iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    sorted.into_iter().find_map(|dynakube| {
        let name = dynakube.metadata.name.as_deref()?;
        let instance = dynakube
            .status
            .as_ref()?
            .one_agent
            .as_ref()?
            .instances
            .as_ref()?
            .get(node)?;
        Some(NodeOwner {
            dynakube: name.to_owned(),
            ip: instance.ip_address.clone().unwrap_or_default(),
        })
    })
}

/// Which DynaKube owns which node, from the DynaKubes' `status.oneAgent.instances`. When several list the
/// same node (conflicting node selectors), the first by name wins, so the answer does not depend on the
/// order of the list.
pub fn node_owners<'a>(dynakubes: impl IntoIterator<Item = &'a DynaKube>) -> BTreeMap<String, NodeOwner> {
    let mut sorted: Vec<&DynaKube> = dynakubes.into_iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut owners = BTreeMap::new();
    for dynakube in sorted {
        let Some(name) = dynakube.metadata.name.as_deref() else {
            continue;
        };
        let instances = dynakube
            .status
            .as_ref()
            .and_then(|s| s.one_agent.as_ref())
            .and_then(|o| o.instances.as_ref());
        for (node, instance) in instances.into_iter().flatten() {
            owners.entry(node.clone()).or_insert_with(|| NodeOwner {
                dynakube: name.to_owned(),
                ip: instance.ip_address.clone().unwrap_or_default(),
            });
        }
    }
    owners
}

/// Why a node is about to go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminationReason {
    /// `spec.unschedulable` (`kubectl cordon`, `kubectl drain`).
    Cordoned,
    /// The taint [`AUTOSCALER_TAINT`].
    AutoscalerTaint,
    /// The Node object was deleted.
    Deleted,
}

/// Whether a node in the cluster is about to go away, from its spec: cordoned or tainted by the cluster
/// autoscaler.
pub fn termination_reason(spec: Option<&NodeSpec>) -> Option<TerminationReason> {
    let spec = spec?;
    if spec.unschedulable == Some(true) {
        return Some(TerminationReason::Cordoned);
    }
    spec.taints
        .iter()
        .flatten()
        .any(|t| t.key == AUTOSCALER_TAINT)
        .then_some(TerminationReason::AutoscalerTaint)
}

/// Whether a node last marked at `marked` may be marked again at `now`: never marked, or an hour ago or
/// more. A mark in the future (a clock jumped) allows it, as for every throttled call.
pub fn marking_due(marked: Option<i64>, now: i64) -> bool {
    request_due(marked, now, MARK_INTERVAL_MINUTES)
}

/// A node to mark for termination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkRequest {
    /// The node.
    pub node: String,
    /// The DynaKube whose tenant gets the event.
    pub dynakube: String,
    /// The host IP to look the host entity up by.
    pub ip: String,
    /// When the node was last seen (unix seconds): the event's time is derived from it.
    pub seen: i64,
    /// Why.
    pub reason: TerminationReason,
}

/// One node seen in the cluster (spec §9 steps 3 and 4): a node owned by a DynaKube that reported its host
/// IP gets its cache entry (keeping `marked`), and a node about to go away is to be marked when marking is
/// due. A node no DynaKube owns, or whose IP is not known yet, is left alone: without an IP there is no
/// host to mark, and the cleanup would drop the entry anyway. `remembered` is a mark the caller sent but may
/// not have written yet (it counts like `marked`). Returns the mark to send; the caller records it with
/// [`NodeCache::record_mark`] once it is settled.
pub fn observe_node(
    cache: &mut NodeCache,
    node: &str,
    owner: Option<&NodeOwner>,
    reason: Option<TerminationReason>,
    remembered: Option<i64>,
    now: i64,
) -> Option<MarkRequest> {
    let owner = owner.filter(|o| !o.ip.is_empty())?;
    let previous = cache.entries.get(node);
    let marked = previous.and_then(|e| e.marked).max(remembered);
    let mark_due = reason.is_some() && marking_due(marked, now);
    let fresh = previous.is_some_and(|e| {
        let age = now.saturating_sub(e.seen);
        e.instance == owner.dynakube && e.ip == owner.ip && (0..SEEN_REFRESH_SECONDS).contains(&age)
    });
    // A mark refreshes `seen`: the event's time is derived from it.
    let seen = match previous {
        Some(e) if fresh && !mark_due => e.seen,
        _ => now,
    };
    cache.entries.insert(
        node.to_owned(),
        NodeCacheEntry {
            instance: owner.dynakube.clone(),
            ip: owner.ip.clone(),
            seen,
            marked,
        },
    );
    let reason = reason.filter(|_| mark_due)?;
    Some(MarkRequest {
        node: node.to_owned(),
        dynakube: owner.dynakube.clone(),
        ip: owner.ip.clone(),
        seen,
        reason,
    })
}

/// What a cleanup of the cache does (spec §9 step 5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupPlan {
    /// Entries to drop now, with the reason (for the log).
    pub remove: BTreeMap<String, &'static str>,
    /// Deleted nodes to mark; each entry is dropped once its mark is settled, and kept for another try when
    /// sending fails.
    pub marks: Vec<MarkRequest>,
}

/// Plans a cleanup of the cache against the nodes in the cluster:
/// - unreadable entries are dropped;
/// - entries of nodes in the cluster are dropped when not seen for over an hour or without an IP;
/// - nodes gone from the cluster are deleted: marked when their DynaKube (the one listing them now, else
///   the cached one) still exists, the IP is known, the last mark is an hour old or more and the node was
///   seen within the hour (later, a retry gives up); dropped otherwise.
pub fn plan_cleanup(
    cache: &NodeCache,
    in_cluster: &BTreeSet<String>,
    owners: &BTreeMap<String, NodeOwner>,
    dynakubes: &BTreeSet<String>,
    now: i64,
) -> CleanupPlan {
    let mut plan = CleanupPlan::default();
    for node in cache.unreadable.keys() {
        plan.remove.insert(node.clone(), "its entry is unreadable");
    }
    for (node, entry) in &cache.entries {
        let stale = now.saturating_sub(entry.seen) > STALE_AFTER_SECONDS;
        if in_cluster.contains(node) {
            if entry.ip.is_empty() {
                plan.remove.insert(node.clone(), "no IP is known for it");
            } else if stale {
                plan.remove
                    .insert(node.clone(), "no DynaKube listed it for over an hour");
            }
            continue;
        }
        let dynakube = owners
            .get(node)
            .map_or(entry.instance.as_str(), |o| o.dynakube.as_str());
        let why = if !dynakubes.contains(dynakube) {
            "it was deleted and its DynaKube is gone"
        } else if entry.ip.is_empty() {
            "it was deleted and no IP is known for it"
        } else if !marking_due(entry.marked, now) {
            "it was deleted and was marked for termination within the hour"
        } else if stale {
            "it was deleted and last seen over an hour ago"
        } else {
            plan.marks.push(MarkRequest {
                node: node.clone(),
                dynakube: dynakube.to_owned(),
                ip: entry.ip.clone(),
                seen: entry.seen,
                reason: TerminationReason::Deleted,
            });
            continue;
        };
        plan.remove.insert(node.clone(), why);
    }
    plan
}

/// Whether the cleanup time stamp is to be renewed: missing, or older than [`CLEANUP_INTERVAL_MINUTES`].
pub fn cleanup_stamp_due(last_cleanup: Option<i64>, now: i64) -> bool {
    request_due(last_cleanup, now, CLEANUP_INTERVAL_MINUTES)
}

/// The entity id of the host with `ip` among `hosts` (entity id, IP addresses); the first match wins.
pub fn entity_for_ip<'a>(
    hosts: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ip: &str,
) -> Option<&'a str> {
    let ip = ip.trim();
    if ip.is_empty() {
        return None;
    }
    hosts
        .into_iter()
        .find(|(_, ips)| ips.iter().any(|candidate| candidate.trim() == ip))
        .map(|(entity, _)| entity)
}

/// The event body of a mark: what the caller sends to `POST /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminationEvent {
    /// [`MARKED_FOR_TERMINATION`].
    pub event_type: &'static str,
    /// Start, ms since the epoch: [`EVENT_LEAD_SECONDS`] before the node was last seen.
    pub start_ms: i64,
    /// End, the same as the start (a point in time), as in the reference.
    pub end_ms: i64,
    /// What happened to which node.
    pub description: String,
    /// [`EVENT_SOURCE`].
    pub source: &'static str,
    /// The host entity the event is attached to.
    pub entity_id: String,
}

/// The `MARKED_FOR_TERMINATION` event for a mark, attached to `entity_id`.
pub fn termination_event(mark: &MarkRequest, entity_id: &str) -> TerminationEvent {
    let at = mark.seen.saturating_sub(EVENT_LEAD_SECONDS).saturating_mul(1000);
    let node = &mark.node;
    let description = match mark.reason {
        TerminationReason::Cordoned => {
            format!("Kubernetes node {node} cordoned. Node might be drained or terminated.")
        }
        TerminationReason::AutoscalerTaint => format!(
            "Kubernetes node {node} tainted {AUTOSCALER_TAINT} by the cluster autoscaler. Node might be \
             drained or terminated."
        ),
        TerminationReason::Deleted => {
            format!("Kubernetes node {node} deleted. Its host is being terminated.")
        }
    };
    TerminationEvent {
        event_type: MARKED_FOR_TERMINATION,
        start_ms: at,
        end_ms: at,
        description,
        source: EVENT_SOURCE,
        entity_id: entity_id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_openapi::api::core::v1::{Node, Taint};
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000;
    const HOUR: i64 = 3600;

    fn entry(instance: &str, ip: &str, seen: i64, marked: Option<i64>) -> NodeCacheEntry {
        NodeCacheEntry {
            instance: instance.into(),
            ip: ip.into(),
            seen,
            marked,
        }
    }

    fn owner(dynakube: &str, ip: &str) -> NodeOwner {
        NodeOwner {
            dynakube: dynakube.into(),
            ip: ip.into(),
        }
    }

    fn cache(entries: &[(&str, NodeCacheEntry)]) -> NodeCache {
        NodeCache {
            entries: entries
                .iter()
                .map(|(n, e)| ((*n).to_owned(), e.clone()))
                .collect(),
            ..NodeCache::default()
        }
    }

    fn node(unschedulable: Option<bool>, taints: &[&str]) -> Node {
        Node {
            spec: Some(NodeSpec {
                unschedulable,
                taints: (!taints.is_empty()).then(|| {
                    taints
                        .iter()
                        .map(|key| Taint {
                            key: (*key).into(),
                            effect: "NoSchedule".into(),
                            ..Taint::default()
                        })
                        .collect()
                }),
                ..NodeSpec::default()
            }),
            ..Node::default()
        }
    }

    fn dynakube(name: &str, instances: serde_json::Value) -> DynaKube {
        serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
            "metadata": { "name": name, "namespace": "dynatrace" },
            "spec": { "apiUrl": "https://abc12345.live.dynatrace.com/api" },
            "status": { "oneAgent": { "instances": instances } },
        }))
        .unwrap()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    // --- format ---

    #[test]
    fn entries_are_written_in_the_reference_format() {
        let text = entry("dk", "10.0.0.1", NOW, None).to_json();
        assert_eq!(
            text,
            r#"{"instance":"dk","ip":"10.0.0.1","seen":"2023-11-14T22:13:20Z","marked":"0001-01-01T00:00:00Z"}"#
        );
        let marked = entry("dk", "10.0.0.1", NOW, Some(NOW + 60)).to_json();
        assert!(
            marked.ends_with(r#""marked":"2023-11-14T22:14:20Z"}"#),
            "{marked}"
        );
    }

    #[test]
    fn entries_of_the_go_operator_are_read() {
        // Go writes RFC 3339 with nanoseconds and the zero time for "never".
        let text = r#"{"instance":"dynakube","ip":"192.168.0.7","seen":"2023-11-14T22:13:20.123456789Z","marked":"0001-01-01T00:00:00Z"}"#;
        assert_eq!(
            NodeCacheEntry::parse(text).unwrap(),
            entry("dynakube", "192.168.0.7", NOW, None)
        );
        let offset = r#"{"instance":"dk","ip":"1.2.3.4","seen":"2023-11-15T00:13:20+02:00","marked":"2023-11-14T22:13:20Z"}"#;
        assert_eq!(
            NodeCacheEntry::parse(offset).unwrap(),
            entry("dk", "1.2.3.4", NOW, Some(NOW))
        );
    }

    #[test]
    fn entries_round_trip() {
        for e in [
            entry("dk", "10.0.0.1", NOW, None),
            entry("d\"k", "", NOW - 5, Some(NOW - 3)),
            entry("", "::1", 0, Some(0)),
        ] {
            assert_eq!(NodeCacheEntry::parse(&e.to_json()).unwrap(), e);
        }
    }

    #[test]
    fn missing_fields_are_go_zero_values() {
        let e = NodeCacheEntry::parse(r#"{"instance":"dk"}"#).unwrap();
        assert_eq!(e, entry("dk", "", i64::MIN, None));
        let e = NodeCacheEntry::parse(r#"{"instance":"dk","ip":null,"seen":""}"#).unwrap();
        assert_eq!(e, entry("dk", "", i64::MIN, None));
    }

    #[test]
    fn broken_entries_name_the_problem() {
        assert!(NodeCacheEntry::parse("nope").unwrap_err().contains("not JSON"));
        assert!(
            NodeCacheEntry::parse("[]")
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(
            NodeCacheEntry::parse(r#"{"ip":5}"#)
                .unwrap_err()
                .contains("ip is 5")
        );
        assert!(
            NodeCacheEntry::parse(r#"{"seen":"yesterday"}"#)
                .unwrap_err()
                .contains("seen \"yesterday\"")
        );
    }

    #[test]
    fn times_format_and_parse() {
        assert_eq!(format_time(NOW), "2023-11-14T22:13:20Z");
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(NOW));
        assert_eq!(parse_time(" 2023-11-14T23:13:20+01:00 "), Some(NOW));
        assert_eq!(parse_time("2023-11-14"), None);
        assert!(!format_time(i64::MAX).is_empty(), "no panic out of range");
        assert!(!format_time(i64::MIN).is_empty(), "no panic out of range");
    }

    // --- the ConfigMap ---

    #[test]
    fn cache_is_read_from_and_written_to_its_config_map() {
        let config_map: ConfigMap = serde_json::from_value(json!({
            "metadata": {
                "name": NODE_CACHE_NAME, "namespace": "dynatrace", "resourceVersion": "42",
                "annotations": { LAST_UPDATED_ANNOTATION: "2023-11-14T22:13:20Z", "other": "kept" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": "op", "uid": "u" }],
            },
            "data": {
                "node-a": entry("dk", "10.0.0.1", NOW, None).to_json(),
                "node-b": "garbage",
            },
        }))
        .unwrap();
        let cache = NodeCache::from_config_map(Some(&config_map));
        assert_eq!(cache.last_cleanup, Some(NOW));
        assert_eq!(
            cache.entries,
            BTreeMap::from([("node-a".to_owned(), entry("dk", "10.0.0.1", NOW, None))])
        );
        assert_eq!(cache.unreadable.keys().collect::<Vec<_>>(), ["node-b"]);

        let written = cache.to_config_map("ignored", Some(&config_map));
        assert_eq!(written.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(
            written.metadata.owner_references,
            config_map.metadata.owner_references
        );
        assert_eq!(written.metadata.annotations.as_ref().unwrap()["other"], "kept");
        assert_eq!(
            written.data.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["node-a"],
            "unreadable entries are dropped on write"
        );
        assert!(cache_changed(Some(&config_map), &written));
        assert!(!cache_changed(Some(&written), &written.clone()));
    }

    #[test]
    fn a_new_cache_config_map_is_named_and_placed() {
        let mut cache = cache(&[("n", entry("dk", "10.0.0.1", NOW, None))]);
        cache.last_cleanup = Some(NOW);
        let config_map = cache.to_config_map("dynatrace", None);
        assert_eq!(config_map.metadata.name.as_deref(), Some(NODE_CACHE_NAME));
        assert_eq!(config_map.metadata.namespace.as_deref(), Some("dynatrace"));
        assert_eq!(
            config_map.metadata.annotations.unwrap()[LAST_UPDATED_ANNOTATION],
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            config_map.data.unwrap()["n"],
            entry("dk", "10.0.0.1", NOW, None).to_json()
        );
        assert_eq!(
            NodeCache::from_config_map(None),
            NodeCache::default(),
            "no ConfigMap is an empty cache"
        );
        let empty = NodeCache::default().to_config_map("dynatrace", None);
        assert!(cache_changed(None, &empty), "a missing ConfigMap is created");
        assert_eq!(empty.metadata.annotations, None, "no cleanup yet");
    }

    #[test]
    fn only_data_and_the_cleanup_stamp_count_as_changes() {
        let base = cache(&[("n", entry("dk", "10.0.0.1", NOW, None))]).to_config_map("ns", None);
        let mut relabeled = base.clone();
        relabeled.metadata.labels = Some(BTreeMap::from([("a".into(), "b".into())]));
        assert!(!cache_changed(Some(&base), &relabeled));
        let mut stamped = cache(&[("n", entry("dk", "10.0.0.1", NOW, None))]);
        stamped.last_cleanup = Some(NOW);
        assert!(cache_changed(
            Some(&base),
            &stamped.to_config_map("ns", Some(&base))
        ));
        let other = cache(&[("n", entry("dk", "10.0.0.2", NOW, None))]).to_config_map("ns", None);
        assert!(cache_changed(Some(&base), &other));
        let mut no_data = base.clone();
        no_data.data = None;
        let empty = NodeCache::default().to_config_map("ns", None);
        assert!(!cache_changed(Some(&no_data), &empty), "no data is empty data");
    }

    #[test]
    fn remembered_marks_are_merged_the_later_winning() {
        let mut c = cache(&[
            ("a", entry("dk", "1", NOW, None)),
            ("b", entry("dk", "2", NOW, Some(NOW))),
            ("c", entry("dk", "3", NOW, Some(NOW))),
        ]);
        c.merge_marks(&BTreeMap::from([
            ("a".to_owned(), NOW - 10),
            ("b".to_owned(), NOW - 10),
            ("c".to_owned(), NOW + 10),
            ("gone".to_owned(), NOW),
        ]));
        assert_eq!(c.entries["a"].marked, Some(NOW - 10));
        assert_eq!(c.entries["b"].marked, Some(NOW));
        assert_eq!(c.entries["c"].marked, Some(NOW + 10));
        assert!(!c.entries.contains_key("gone"));
        c.record_mark("a", NOW + 99);
        c.record_mark("gone", NOW);
        assert_eq!(c.entries["a"].marked, Some(NOW + 99));
        assert_eq!(c.entries.len(), 3);
    }

    // --- ownership and reasons ---

    #[test]
    fn owners_come_from_the_dynakube_instances() {
        let a = dynakube(
            "a",
            json!({ "n1": { "podName": "p1", "ipAddress": "10.0.0.1" }, "n2": { "podName": "p2" } }),
        );
        let b = dynakube(
            "b",
            json!({ "n1": { "ipAddress": "10.9.9.9" }, "n3": { "ipAddress": "10.0.0.3" } }),
        );
        let mut none = dynakube("c", json!({}));
        none.status = None;
        // Order of the list does not matter: the first by name wins a conflict.
        let owners = node_owners([&b, &none, &a]);
        assert_eq!(
            owners,
            BTreeMap::from([
                ("n1".to_owned(), owner("a", "10.0.0.1")),
                ("n2".to_owned(), owner("a", "")),
                ("n3".to_owned(), owner("b", "10.0.0.3")),
            ])
        );
        assert!(node_owners([]).is_empty());
        for node in ["n1", "n2", "n3", "n4"] {
            assert_eq!(
                node_owner([&b, &none, &a], node),
                owners.get(node).cloned(),
                "{node}"
            );
        }
    }

    #[test]
    fn cordon_and_the_autoscaler_taint_mean_termination() {
        assert_eq!(
            termination_reason(node(Some(true), &[]).spec.as_ref()),
            Some(TerminationReason::Cordoned)
        );
        assert_eq!(
            termination_reason(node(None, &["other", AUTOSCALER_TAINT]).spec.as_ref()),
            Some(TerminationReason::AutoscalerTaint)
        );
        assert_eq!(
            termination_reason(node(Some(true), &[AUTOSCALER_TAINT]).spec.as_ref()),
            Some(TerminationReason::Cordoned)
        );
        assert_eq!(
            termination_reason(node(Some(false), &["other"]).spec.as_ref()),
            None
        );
        assert_eq!(termination_reason(node(None, &[]).spec.as_ref()), None);
        assert_eq!(termination_reason(Node::default().spec.as_ref()), None);
        assert_eq!(
            termination_reason(node(None, &["toBeDeletedByClusterAutoscaler"]).spec.as_ref()),
            None,
            "taint keys are case-sensitive"
        );
    }

    #[test]
    fn marking_at_most_once_per_hour() {
        assert!(marking_due(None, NOW));
        assert!(!marking_due(Some(NOW), NOW));
        assert!(!marking_due(Some(NOW - HOUR + 1), NOW));
        assert!(marking_due(Some(NOW - HOUR), NOW));
        assert!(
            marking_due(Some(NOW + 5), NOW),
            "a mark from the future: the clock jumped"
        );
    }

    // --- observing a node ---

    #[test]
    fn an_owned_node_gets_an_entry_and_an_unowned_one_is_ignored() {
        let mut c = NodeCache::default();
        assert_eq!(
            observe_node(&mut c, "n", None, Some(TerminationReason::Cordoned), None, NOW),
            None
        );
        assert!(c.entries.is_empty());
        assert_eq!(
            observe_node(&mut c, "n", Some(&owner("dk", "10.0.0.1")), None, None, NOW),
            None
        );
        assert_eq!(c.entries["n"], entry("dk", "10.0.0.1", NOW, None));
    }

    #[test]
    fn seen_is_refreshed_only_when_old_or_when_the_owner_changed() {
        let o = owner("dk", "10.0.0.1");
        let mut c = cache(&[("n", entry("dk", "10.0.0.1", NOW, Some(NOW - 2 * HOUR)))]);
        observe_node(&mut c, "n", Some(&o), None, None, NOW + SEEN_REFRESH_SECONDS - 1);
        assert_eq!(c.entries["n"].seen, NOW, "fresh enough: no write");
        observe_node(&mut c, "n", Some(&o), None, None, NOW + SEEN_REFRESH_SECONDS);
        assert_eq!(c.entries["n"].seen, NOW + SEEN_REFRESH_SECONDS);
        assert_eq!(c.entries["n"].marked, Some(NOW - 2 * HOUR), "marked is kept");

        let mut c = cache(&[("n", entry("dk", "10.0.0.1", NOW, None))]);
        observe_node(&mut c, "n", Some(&owner("dk", "10.0.0.2")), None, None, NOW + 1);
        assert_eq!(c.entries["n"], entry("dk", "10.0.0.2", NOW + 1, None), "new IP");
        observe_node(
            &mut c,
            "n",
            Some(&owner("other", "10.0.0.2")),
            None,
            None,
            NOW + 2,
        );
        assert_eq!(
            c.entries["n"],
            entry("other", "10.0.0.2", NOW + 2, None),
            "new DynaKube"
        );
        let mut c = cache(&[("n", entry("dk", "10.0.0.1", NOW + 100, None))]);
        observe_node(&mut c, "n", Some(&o), None, None, NOW);
        assert_eq!(c.entries["n"].seen, NOW, "seen in the future is corrected");
    }

    #[test]
    fn a_cordoned_node_is_marked_once_per_hour() {
        let o = owner("dk", "10.0.0.1");
        let cordoned = Some(TerminationReason::Cordoned);
        let mut c = cache(&[("n", entry("dk", "10.0.0.1", NOW - 10, None))]);
        let mark = observe_node(&mut c, "n", Some(&o), cordoned, None, NOW).unwrap();
        assert_eq!(
            mark,
            MarkRequest {
                node: "n".into(),
                dynakube: "dk".into(),
                ip: "10.0.0.1".into(),
                seen: NOW,
                reason: TerminationReason::Cordoned,
            }
        );
        assert_eq!(c.entries["n"].seen, NOW, "a mark refreshes seen");
        assert_eq!(c.entries["n"].marked, None, "recorded by the caller once settled");
        c.record_mark("n", NOW);
        for later in [1, 60, HOUR - 1] {
            assert_eq!(
                observe_node(&mut c, "n", Some(&o), cordoned, None, NOW + later),
                None
            );
        }
        let again = observe_node(
            &mut c,
            "n",
            Some(&o),
            Some(TerminationReason::AutoscalerTaint),
            None,
            NOW + HOUR,
        )
        .unwrap();
        assert_eq!(again.reason, TerminationReason::AutoscalerTaint);
        assert_eq!(again.seen, NOW + HOUR);
    }

    #[test]
    fn a_node_is_marked_on_first_sight_and_never_without_an_ip() {
        let mut c = NodeCache::default();
        let taint = Some(TerminationReason::AutoscalerTaint);
        assert!(observe_node(&mut c, "n", Some(&owner("dk", "10.0.0.1")), taint, None, NOW).is_some());
        let mut c = NodeCache::default();
        assert_eq!(
            observe_node(&mut c, "n", Some(&owner("dk", "")), taint, None, NOW),
            None
        );
        assert!(c.entries.is_empty(), "no host to mark without an IP");
        let mut c = cache(&[("n", entry("dk", "10.0.0.1", NOW - 10, None))]);
        observe_node(&mut c, "n", Some(&owner("dk", "")), None, None, NOW);
        assert_eq!(
            c.entries["n"].seen,
            NOW - 10,
            "an entry with an IP is left as it was"
        );
    }

    #[test]
    fn a_remembered_mark_counts_like_a_written_one() {
        let o = owner("dk", "10.0.0.1");
        let cordoned = Some(TerminationReason::Cordoned);
        // The node was marked and dropped from the cache, and an older copy of it is seen again.
        let mut c = NodeCache::default();
        assert_eq!(
            observe_node(&mut c, "n", Some(&o), cordoned, Some(NOW - 5), NOW),
            None
        );
        assert_eq!(c.entries["n"].marked, Some(NOW - 5));
        let mut c = cache(&[("n", entry("dk", "10.0.0.1", NOW, Some(NOW - 2 * HOUR)))]);
        assert_eq!(
            observe_node(&mut c, "n", Some(&o), cordoned, Some(NOW - 5), NOW),
            None
        );
        assert_eq!(c.entries["n"].marked, Some(NOW - 5), "the later mark wins");
        let mut c = cache(&[("n", entry("dk", "10.0.0.1", NOW, Some(NOW - 5)))]);
        assert_eq!(
            observe_node(&mut c, "n", Some(&o), cordoned, Some(NOW - 2 * HOUR), NOW),
            None
        );
    }

    // --- cleanup ---

    #[test]
    fn entries_of_nodes_in_the_cluster_are_dropped_when_stale_or_without_ip() {
        let mut c = cache(&[
            ("fresh", entry("dk", "1", NOW - HOUR, None)),
            ("stale", entry("dk", "2", NOW - HOUR - 1, None)),
            ("no-ip", entry("dk", "", NOW, None)),
            ("never-seen", entry("dk", "3", i64::MIN, None)),
        ]);
        c.unreadable.insert("broken".into(), "not JSON".into());
        let in_cluster = names(&["fresh", "stale", "no-ip", "never-seen", "broken"]);
        let plan = plan_cleanup(&c, &in_cluster, &BTreeMap::new(), &names(&["dk"]), NOW);
        assert_eq!(
            plan.remove.keys().collect::<Vec<_>>(),
            ["broken", "never-seen", "no-ip", "stale"]
        );
        assert!(plan.marks.is_empty());
    }

    #[test]
    fn deleted_nodes_are_marked_when_due() {
        let c = cache(&[("gone", entry("dk", "10.0.0.1", NOW - 60, Some(NOW - 2 * HOUR)))]);
        let plan = plan_cleanup(&c, &names(&[]), &BTreeMap::new(), &names(&["dk"]), NOW);
        assert!(plan.remove.is_empty(), "dropped once the mark is settled");
        assert_eq!(
            plan.marks,
            [MarkRequest {
                node: "gone".into(),
                dynakube: "dk".into(),
                ip: "10.0.0.1".into(),
                seen: NOW - 60,
                reason: TerminationReason::Deleted,
            }]
        );
    }

    #[test]
    fn deleted_nodes_use_the_current_owner_then_the_cached_one() {
        let c = cache(&[("gone", entry("old", "10.0.0.1", NOW, None))]);
        let owners = BTreeMap::from([("gone".to_owned(), owner("new", "10.9.9.9"))]);
        let plan = plan_cleanup(&c, &names(&[]), &owners, &names(&["new", "old"]), NOW);
        assert_eq!(plan.marks[0].dynakube, "new");
        assert_eq!(
            plan.marks[0].ip, "10.0.0.1",
            "the cached IP: the host that went away"
        );
        let plan = plan_cleanup(&c, &names(&[]), &BTreeMap::new(), &names(&["old"]), NOW);
        assert_eq!(plan.marks[0].dynakube, "old");
    }

    #[test]
    fn deleted_nodes_are_dropped_without_a_mark_when_it_is_pointless() {
        let c = cache(&[
            ("dk-gone", entry("deleted-dk", "1", NOW, None)),
            ("no-ip", entry("dk", "", NOW, None)),
            ("marked", entry("dk", "2", NOW, Some(NOW - HOUR + 1))),
            ("stale", entry("dk", "3", NOW - HOUR - 1, None)),
        ]);
        let plan = plan_cleanup(&c, &names(&[]), &BTreeMap::new(), &names(&["dk"]), NOW);
        assert!(plan.marks.is_empty());
        assert_eq!(
            plan.remove,
            BTreeMap::from([
                ("dk-gone".to_owned(), "it was deleted and its DynaKube is gone"),
                ("no-ip".to_owned(), "it was deleted and no IP is known for it"),
                (
                    "marked".to_owned(),
                    "it was deleted and was marked for termination within the hour"
                ),
                (
                    "stale".to_owned(),
                    "it was deleted and last seen over an hour ago"
                ),
            ])
        );
    }

    #[test]
    fn an_empty_cache_plans_nothing() {
        let plan = plan_cleanup(
            &NodeCache::default(),
            &names(&["a"]),
            &BTreeMap::new(),
            &names(&["dk"]),
            NOW,
        );
        assert_eq!(plan, CleanupPlan::default());
    }

    #[test]
    fn cleanup_stamp_every_ten_minutes() {
        assert!(cleanup_stamp_due(None, NOW));
        assert!(!cleanup_stamp_due(Some(NOW - 599), NOW));
        assert!(cleanup_stamp_due(Some(NOW - 600), NOW));
    }

    // --- the event ---

    #[test]
    fn the_host_is_found_by_ip() {
        let a = vec!["10.0.0.1".to_owned(), "fe80::1".to_owned()];
        let b = vec!["10.0.0.2".to_owned()];
        let twin = vec!["10.0.0.2".to_owned()];
        let hosts = || {
            [
                ("HOST-A", a.as_slice()),
                ("HOST-B", b.as_slice()),
                ("HOST-TWIN", twin.as_slice()),
            ]
        };
        assert_eq!(entity_for_ip(hosts(), "fe80::1"), Some("HOST-A"));
        assert_eq!(
            entity_for_ip(hosts(), " 10.0.0.2"),
            Some("HOST-B"),
            "the first match"
        );
        assert_eq!(entity_for_ip(hosts(), "10.0.0.3"), None);
        assert_eq!(entity_for_ip(hosts(), ""), None);
        assert_eq!(entity_for_ip([], "10.0.0.1"), None);
    }

    #[test]
    fn the_event_is_attached_to_the_host_ten_minutes_before_last_seen() {
        let mark = |reason| MarkRequest {
            node: "n".into(),
            dynakube: "dk".into(),
            ip: "10.0.0.1".into(),
            seen: NOW,
            reason,
        };
        let event = termination_event(&mark(TerminationReason::Cordoned), "HOST-1");
        assert_eq!(
            event,
            TerminationEvent {
                event_type: "MARKED_FOR_TERMINATION",
                start_ms: (NOW - 600) * 1000,
                end_ms: (NOW - 600) * 1000,
                description: "Kubernetes node n cordoned. Node might be drained or terminated.".into(),
                source: "Dynatrace Operator",
                entity_id: "HOST-1".into(),
            }
        );
        let tainted = termination_event(&mark(TerminationReason::AutoscalerTaint), "HOST-1");
        assert!(
            tainted.description.contains(AUTOSCALER_TAINT),
            "{}",
            tainted.description
        );
        let deleted = termination_event(&mark(TerminationReason::Deleted), "HOST-1");
        assert!(
            deleted.description.contains("n deleted"),
            "{}",
            deleted.description
        );
        let mut ancient = mark(TerminationReason::Deleted);
        ancient.seen = i64::MIN;
        assert_eq!(termination_event(&ancient, "H").start_ms, i64::MIN, "no overflow");
    }
}
