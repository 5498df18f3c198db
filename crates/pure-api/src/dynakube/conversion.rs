//! Conversion between the served DynaKube versions, hub and spokes.
//!
//! The hub is the storage version ([`super::v1beta1`], re-exported as [`super::DynaKube`]); the rest of the
//! operator only ever sees the hub. Every other version is a spoke with a conversion to and from the hub,
//! registered in [`SPOKES`]. Adding a version means adding a module and one entry there.
//!
//! The hub holds the union of every version's fields, so that whatever version an object is written in,
//! storing it (as v1beta1) loses nothing. v1beta2 to v1beta6 are projections of the hub: the same JSON
//! names, except that the hub's top-level `namespaceSelector` is the app-injection mode's own selector
//! there. Storing at the reference's current version (v1beta6) instead would have needed the operator to
//! read a version without v1beta1's `routing`, `kubernetesMonitoring`, `useCSIDriver` and mode-less
//! `namespaceSelector`, and every older object to carry an annotation.
//!
//! The reference operator loses configuration on the way through v1alpha1 (cloudNativeFullStack,
//! applicationMonitoring, hostMonitoring, namespaceSelector, ...). Here nothing is lost: the side that
//! cannot express something keeps the other version's original in an annotation, and the way back starts
//! from it. Fields both versions have always come from the object being converted, so edits made through
//! either version take effect.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{v1alpha1, v1beta1, v1beta2, v1beta3, v1beta4, v1beta5, v1beta6};

/// The API group of DynaKube.
pub const GROUP: &str = "dynatrace.com";
/// The hub's (storage) API version.
pub const HUB_API_VERSION: &str = "dynatrace.com/v1beta1";
/// Annotation on an object of another version that keeps the v1beta1 (hub) original: its spec, and its status
/// where the version shows the status differently (v1alpha1).
pub const V1BETA1_STASH_ANNOTATION: &str = "internal.operator.dynatrace.com/conversion-v1beta1";
/// Annotation on a v1beta1 object that keeps what only v1alpha1 can express.
pub const V1ALPHA1_STASH_ANNOTATION: &str = "internal.operator.dynatrace.com/conversion-v1alpha1";

/// Why an object could not be converted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConversionError {
    /// The object names an API version that is not served.
    #[error(
        "DynaKube API version {found:?} is not supported; use one of {supported} (the conversion webhook \
         and the CRD must come from the same operator release)"
    )]
    UnsupportedVersion {
        /// The version found.
        found: String,
        /// The served versions, comma separated.
        supported: String,
    },
    /// The object does not match the schema of its version.
    #[error("the DynaKube {name:?} is not a valid {api_version} object: {reason}")]
    Malformed {
        /// `namespace/name` of the object, when known.
        name: String,
        /// Its API version.
        api_version: String,
        /// What did not parse.
        reason: String,
    },
}

/// A served version other than the hub.
struct Spoke {
    api_version: &'static str,
    to_hub: fn(Value) -> Result<v1beta1::DynaKube, ConversionError>,
    from_hub: fn(v1beta1::DynaKube) -> Result<Value, ConversionError>,
}

/// Every served version other than the hub.
const SPOKES: &[Spoke] = &[
    Spoke {
        api_version: "dynatrace.com/v1alpha1",
        to_hub: |value| {
            Ok(v1alpha1_to_hub(parse::<v1alpha1::DynaKube>(
                value,
                "dynatrace.com/v1alpha1",
            )?))
        },
        from_hub: |hub| to_value(hub_to_v1alpha1(hub)),
    },
    Spoke {
        api_version: "dynatrace.com/v1beta2",
        to_hub: |value| later_to_hub::<v1beta2::DynaKube>(value, "dynatrace.com/v1beta2"),
        from_hub: |hub| later_from_hub::<v1beta2::DynaKube>(hub, "dynatrace.com/v1beta2"),
    },
    Spoke {
        api_version: "dynatrace.com/v1beta3",
        to_hub: |value| later_to_hub::<v1beta3::DynaKube>(value, "dynatrace.com/v1beta3"),
        from_hub: |hub| later_from_hub::<v1beta3::DynaKube>(hub, "dynatrace.com/v1beta3"),
    },
    Spoke {
        api_version: "dynatrace.com/v1beta4",
        to_hub: |value| later_to_hub::<v1beta4::DynaKube>(value, "dynatrace.com/v1beta4"),
        from_hub: |hub| later_from_hub::<v1beta4::DynaKube>(hub, "dynatrace.com/v1beta4"),
    },
    Spoke {
        api_version: "dynatrace.com/v1beta5",
        to_hub: |value| later_to_hub::<v1beta5::DynaKube>(value, "dynatrace.com/v1beta5"),
        from_hub: |hub| later_from_hub::<v1beta5::DynaKube>(hub, "dynatrace.com/v1beta5"),
    },
    Spoke {
        api_version: "dynatrace.com/v1beta6",
        to_hub: |value| later_to_hub::<v1beta6::DynaKube>(value, "dynatrace.com/v1beta6"),
        from_hub: |hub| later_from_hub::<v1beta6::DynaKube>(hub, "dynatrace.com/v1beta6"),
    },
];

/// The served API versions, hub first.
pub fn served_versions() -> Vec<&'static str> {
    std::iter::once(HUB_API_VERSION)
        .chain(SPOKES.iter().map(|s| s.api_version))
        .collect()
}

/// Converts a DynaKube (as JSON, with `apiVersion`) to `desired_api_version`.
pub fn convert(object: Value, desired_api_version: &str) -> Result<Value, ConversionError> {
    let found = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if found == desired_api_version {
        return Ok(object);
    }
    let hub = to_hub(object, &found)?;
    from_hub(hub, desired_api_version)
}

/// Reads a DynaKube of any served version as the hub.
pub fn to_hub(object: Value, api_version: &str) -> Result<v1beta1::DynaKube, ConversionError> {
    if api_version == HUB_API_VERSION {
        return parse(object, HUB_API_VERSION);
    }
    let spoke = find_spoke(api_version)?;
    (spoke.to_hub)(object)
}

fn from_hub(hub: v1beta1::DynaKube, api_version: &str) -> Result<Value, ConversionError> {
    if api_version == HUB_API_VERSION {
        return to_value(hub);
    }
    (find_spoke(api_version)?.from_hub)(hub)
}

fn find_spoke(api_version: &str) -> Result<&'static Spoke, ConversionError> {
    SPOKES
        .iter()
        .find(|s| s.api_version == api_version)
        .ok_or_else(|| ConversionError::UnsupportedVersion {
            found: api_version.to_owned(),
            supported: served_versions().join(", "),
        })
}

fn parse<T: DeserializeOwned>(value: Value, api_version: &str) -> Result<T, ConversionError> {
    let name = object_name(&value);
    serde_json::from_value(value).map_err(|err| ConversionError::Malformed {
        name,
        api_version: api_version.to_owned(),
        reason: err.to_string(),
    })
}

fn object_name(value: &Value) -> String {
    let meta = &value["metadata"];
    match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => String::new(),
    }
}

fn to_value<T: Serialize>(object: T) -> Result<Value, ConversionError> {
    serde_json::to_value(object).map_err(|err| ConversionError::Malformed {
        name: String::new(),
        api_version: String::new(),
        reason: err.to_string(),
    })
}

/// Takes the stash annotation out of the metadata. A stash that does not parse is dropped rather than
/// failing the conversion: an object the API server cannot convert cannot be read or fixed at all.
fn take_stash<T: DeserializeOwned>(metadata: &mut ObjectMeta, key: &str) -> Option<T> {
    let annotations = metadata.annotations.as_mut()?;
    let raw = annotations.remove(key);
    if annotations.is_empty() {
        metadata.annotations = None;
    }
    serde_json::from_str(&raw?).ok()
}

fn put_stash<T: Serialize>(metadata: &mut ObjectMeta, key: &str, stash: &T) {
    if let Ok(json) = serde_json::to_string(stash) {
        metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), json);
    }
}

/// What a v1alpha1 object keeps of its v1beta1 original.
#[derive(Serialize, Deserialize, Default)]
struct V1beta1Stash {
    spec: v1beta1::DynaKubeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<v1beta1::DynaKubeStatus>,
}

/// What a v1beta1 object keeps of a v1alpha1 original: the parts v1beta1 cannot express.
#[derive(Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct V1alpha1Stash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    one_agent: Option<v1alpha1::OneAgentSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classic_full_stack: Option<v1alpha1::FullStackSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    active_gate: Option<v1alpha1::ActiveGateSpec>,
}

/// The OneAgent modes that inject code modules: from v1beta2 on each has its own `namespaceSelector`,
/// which is the hub's top-level one (at most one mode is set, so there is only ever one).
const APP_MODES: [&str; 2] = ["cloudNativeFullStack", "applicationMonitoring"];

/// Hub spec (JSON) to the shape of v1beta2 and later: the top-level `namespaceSelector` moves into the
/// app-injection mode, if there is one. The version's type then drops what the version lacks.
fn hub_spec_to_later(mut spec: Value) -> Value {
    let Some(fields) = spec.as_object_mut() else {
        return spec;
    };
    let mode = APP_MODES.into_iter().find(|mode| {
        fields
            .get("oneAgent")
            .and_then(|o| o.get(mode))
            .is_some_and(Value::is_object)
    });
    if let Some(mode) = mode
        && let Some(selector) = fields.remove("namespaceSelector")
        && let Some(body) = fields
            .get_mut("oneAgent")
            .and_then(|o| o.get_mut(mode))
            .and_then(Value::as_object_mut)
    {
        body.insert("namespaceSelector".to_owned(), selector);
    }
    spec
}

/// The way back of [`hub_spec_to_later`]: the app-injection mode's `namespaceSelector` becomes the
/// top-level one.
fn later_spec_to_hub(mut spec: Value) -> Value {
    let Some(fields) = spec.as_object_mut() else {
        return spec;
    };
    let mut selector = None;
    if let Some(one_agent) = fields.get_mut("oneAgent").and_then(Value::as_object_mut) {
        for mode in APP_MODES {
            if let Some(found) = one_agent
                .get_mut(mode)
                .and_then(Value::as_object_mut)
                .and_then(|body| body.remove("namespaceSelector"))
            {
                selector = selector.or(Some(found));
            }
        }
    }
    if let Some(selector) = selector {
        fields.insert("namespaceSelector".to_owned(), selector);
    }
    spec
}

/// What version `T` shows of a hub spec, in hub shape: the fields it lacks are gone.
fn later_view<T: Serialize + DeserializeOwned>(
    hub_spec: &Value,
    api_version: &str,
) -> Result<Value, ConversionError> {
    let object = serde_json::json!({ "metadata": {}, "spec": hub_spec_to_later(hub_spec.clone()) });
    let mut typed = to_value(parse::<T>(object, api_version)?)?;
    Ok(later_spec_to_hub(typed["spec"].take()))
}

/// Adds to `target` what `original` has and `projected` (the original as a version shows it) lacks,
/// without creating objects `target` does not have: a mode removed through a version stays removed.
fn merge_residue(target: &mut Value, original: &Value, projected: &Value) {
    let (Some(target), Some(original)) = (target.as_object_mut(), original.as_object()) else {
        return;
    };
    for (key, value) in original {
        match projected.get(key) {
            None => {
                target.entry(key.clone()).or_insert_with(|| value.clone());
            }
            Some(shown) => {
                if let Some(inner) = target.get_mut(key) {
                    merge_residue(inner, value, shown);
                }
            }
        }
    }
}

/// Hub to a version from v1beta2 on. When the version cannot express the whole hub, the hub's spec goes
/// into [`V1BETA1_STASH_ANNOTATION`], as for v1alpha1.
fn later_from_hub<T: Serialize + DeserializeOwned>(
    hub: v1beta1::DynaKube,
    api_version: &'static str,
) -> Result<Value, ConversionError> {
    let v1beta1::DynaKube {
        mut metadata,
        spec,
        status,
    } = hub;
    let hub_spec = to_value(&spec)?;
    let shown = later_view::<T>(&hub_spec, api_version)?;
    let back: v1beta1::DynaKubeSpec = parse(serde_json::json!(shown), HUB_API_VERSION)?;
    if back != spec {
        let original = V1beta1Stash { spec, status: None };
        put_stash(&mut metadata, V1BETA1_STASH_ANNOTATION, &original);
    }
    let object = serde_json::json!({
        "apiVersion": api_version,
        "kind": "DynaKube",
        "metadata": metadata,
        "spec": hub_spec_to_later(shown),
        "status": status,
    });
    to_value(parse::<T>(object, api_version)?)
}

/// A version from v1beta2 on to the hub: the object's fields, plus what only the stashed hub original
/// had.
fn later_to_hub<T: Serialize + DeserializeOwned>(
    value: Value,
    api_version: &'static str,
) -> Result<v1beta1::DynaKube, ConversionError> {
    let mut object = to_value(parse::<T>(value, api_version)?)?;
    let mut metadata: ObjectMeta = parse(object["metadata"].take(), api_version)?;
    let mut spec = later_spec_to_hub(object["spec"].take());
    if let Some(stash) = take_stash::<V1beta1Stash>(&mut metadata, V1BETA1_STASH_ANNOTATION) {
        let original = to_value(&stash.spec)?;
        let projected = later_view::<T>(&original, api_version)?;
        merge_residue(&mut spec, &original, &projected);
    }
    let status = match object["status"].take() {
        Value::Null => None,
        status => Some(parse(status, api_version)?),
    };
    Ok(v1beta1::DynaKube {
        metadata,
        spec: parse(spec, api_version)?,
        status,
    })
}

/// v1beta1 (hub) to v1alpha1.
pub fn hub_to_v1alpha1(hub: v1beta1::DynaKube) -> v1alpha1::DynaKube {
    let v1beta1::DynaKube {
        mut metadata,
        spec,
        status,
    } = hub;
    let alpha_only: V1alpha1Stash = take_stash(&mut metadata, V1ALPHA1_STASH_ANNOTATION).unwrap_or_default();
    let original = V1beta1Stash {
        spec: spec.clone(),
        status: status.clone(),
    };

    let classic = spec
        .one_agent
        .as_ref()
        .and_then(|o| o.classic_full_stack.as_ref());
    let (one_agent, classic_full_stack) = match classic {
        Some(host) => {
            let kept = alpha_only.classic_full_stack.unwrap_or_default();
            let one_agent = v1alpha1::OneAgentSpec {
                version: host.version.clone(),
                image: host.image.clone(),
                auto_update: host.auto_update,
            };
            let empty = v1alpha1::OneAgentSpec::default();
            (
                (one_agent != empty).then_some(one_agent),
                Some(v1alpha1::FullStackSpec {
                    enabled: Some(true),
                    node_selector: host.node_selector.clone(),
                    tolerations: host.tolerations.clone(),
                    resources: host.one_agent_resources.clone(),
                    args: host.args.clone(),
                    env: host.env.clone(),
                    priority_class_name: host.priority_class_name.clone(),
                    dns_policy: host.dns_policy.clone(),
                    labels: host.labels.clone(),
                    // Only v1alpha1 has these; they come back from the stash.
                    wait_ready_seconds: kept.wait_ready_seconds,
                    service_account_name: kept.service_account_name,
                    use_unprivileged_mode: kept.use_unprivileged_mode,
                    use_immutable_image: kept.use_immutable_image,
                }),
            )
        }
        // Not classic in v1beta1: v1alpha1 shows what it had, if it had anything (for example a disabled
        // classicFullStack block).
        None => (alpha_only.one_agent, alpha_only.classic_full_stack),
    };

    let active_gate = alpha_only
        .active_gate
        .or_else(|| alpha_active_gate(spec.active_gate.as_ref()));

    let mut alpha = v1alpha1::DynaKube {
        metadata,
        spec: v1alpha1::DynaKubeSpec {
            api_url: spec.api_url,
            tokens: spec.tokens,
            skip_cert_check: spec.skip_cert_check,
            proxy: spec.proxy,
            trusted_cas: spec.trusted_cas,
            network_zone: spec.network_zone,
            custom_pull_secret: spec.custom_pull_secret,
            enable_istio: spec.enable_istio,
            one_agent,
            classic_full_stack,
            routing: spec.routing,
            kubernetes_monitoring: spec.kubernetes_monitoring,
            active_gate,
        },
        status: status.map(status_to_v1alpha1),
    };
    // Keep the original only when the way back would lose something, so that objects v1alpha1 expresses
    // fully carry no annotation.
    let back = v1alpha1_to_hub(alpha.clone());
    if back.spec != original.spec || back.status != original.status {
        put_stash(&mut alpha.metadata, V1BETA1_STASH_ANNOTATION, &original);
    }
    alpha
}

/// The v1alpha1 view of a v1beta1 ActiveGate section: its image and autoUpdate, if it has them.
fn alpha_active_gate(active_gate: Option<&v1beta1::ActiveGateSpec>) -> Option<v1alpha1::ActiveGateSpec> {
    let other = &active_gate?.other;
    let image = other.get("image").and_then(Value::as_str).map(str::to_owned);
    let auto_update = other.get("autoUpdate").and_then(Value::as_bool);
    (image.is_some() || auto_update.is_some()).then_some(v1alpha1::ActiveGateSpec { image, auto_update })
}

fn status_to_v1alpha1(status: v1beta1::DynaKubeStatus) -> v1alpha1::DynaKubeStatus {
    v1alpha1::DynaKubeStatus {
        phase: status.phase,
        updated_timestamp: status.updated_timestamp,
        tokens: None,
        kube_system_uuid: status.kube_system_uuid,
        conditions: status.conditions,
        one_agent: status.one_agent.map(|one_agent| v1alpha1::OneAgentStatus {
            version: one_agent.version.version,
            image: one_agent.version.image_id,
            instances: one_agent.instances.map(|instances| {
                instances
                    .into_iter()
                    .map(|(node, i)| {
                        let instance = v1alpha1::OneAgentInstance {
                            pod_name: i.pod_name,
                            version: None,
                            ip_address: i.ip_address,
                        };
                        (node, instance)
                    })
                    .collect()
            }),
            last_update_probe_timestamp: one_agent.version.last_probe_timestamp,
            use_immutable_image: Some(true),
        }),
        injection: status.injection,
    }
}

fn status_from_v1alpha1(status: v1alpha1::DynaKubeStatus) -> v1beta1::DynaKubeStatus {
    v1beta1::DynaKubeStatus {
        phase: status.phase,
        updated_timestamp: status.updated_timestamp,
        kube_system_uuid: status.kube_system_uuid,
        conditions: status.conditions,
        one_agent: status.one_agent.map(|one_agent| v1beta1::OneAgentStatus {
            version: v1beta1::VersionStatus {
                version: one_agent.version,
                image_id: one_agent.image,
                last_probe_timestamp: one_agent.last_update_probe_timestamp,
                source: None,
            },
            instances: one_agent.instances.map(|instances| {
                instances
                    .into_iter()
                    .map(|(node, i)| {
                        (
                            node,
                            v1beta1::OneAgentInstance {
                                pod_name: i.pod_name,
                                ip_address: i.ip_address,
                            },
                        )
                    })
                    .collect()
            }),
            ..Default::default()
        }),
        injection: status.injection,
        ..Default::default()
    }
}

/// v1alpha1 to v1beta1 (hub).
pub fn v1alpha1_to_hub(alpha: v1alpha1::DynaKube) -> v1beta1::DynaKube {
    let v1alpha1::DynaKube {
        mut metadata,
        spec,
        status,
    } = alpha;
    let original: Option<V1beta1Stash> = take_stash(&mut metadata, V1BETA1_STASH_ANNOTATION);
    let (mut hub_spec, hub_status) = match original {
        Some(stash) => (
            stash.spec,
            stash.status.or_else(|| status.map(status_from_v1alpha1)),
        ),
        None => (v1beta1::DynaKubeSpec::default(), status.map(status_from_v1alpha1)),
    };

    // Fields both versions have: the object being converted wins.
    hub_spec.api_url = spec.api_url;
    hub_spec.tokens = spec.tokens;
    hub_spec.skip_cert_check = spec.skip_cert_check;
    hub_spec.proxy = spec.proxy;
    hub_spec.trusted_cas = spec.trusted_cas;
    hub_spec.network_zone = spec.network_zone;
    hub_spec.custom_pull_secret = spec.custom_pull_secret;
    hub_spec.enable_istio = spec.enable_istio;
    hub_spec.routing = spec.routing;
    hub_spec.kubernetes_monitoring = spec.kubernetes_monitoring;

    let classic_enabled = spec.classic_full_stack.as_ref().and_then(|c| c.enabled) == Some(true);
    let mut alpha_only = V1alpha1Stash::default();
    let had_one_agent = hub_spec.one_agent.is_some();
    let one_agent = hub_spec.one_agent.get_or_insert_with(Default::default);
    if classic_enabled {
        let classic = spec.classic_full_stack.unwrap_or_default();
        let one = spec.one_agent.unwrap_or_default();
        let host = one_agent.classic_full_stack.get_or_insert_with(Default::default);
        host.version = one.version;
        host.image = one.image;
        host.auto_update = one.auto_update;
        host.node_selector = classic.node_selector;
        host.tolerations = classic.tolerations;
        host.one_agent_resources = classic.resources;
        host.args = classic.args;
        host.env = classic.env;
        host.priority_class_name = classic.priority_class_name;
        host.dns_policy = classic.dns_policy;
        host.labels = classic.labels;
        let kept = v1alpha1::FullStackSpec {
            wait_ready_seconds: classic.wait_ready_seconds,
            service_account_name: classic.service_account_name,
            use_unprivileged_mode: classic.use_unprivileged_mode,
            use_immutable_image: classic.use_immutable_image,
            ..Default::default()
        };
        alpha_only.classic_full_stack = (kept != v1alpha1::FullStackSpec::default()).then_some(kept);
    } else {
        one_agent.classic_full_stack = None;
        alpha_only.one_agent = spec.one_agent;
        alpha_only.classic_full_stack = spec.classic_full_stack;
    }
    if !had_one_agent && hub_spec.one_agent.as_ref() == Some(&v1beta1::OneAgentSpec::default()) {
        hub_spec.one_agent = None;
    }
    if hub_spec.active_gate.is_none() {
        hub_spec.active_gate = spec.active_gate.as_ref().map(|ag| v1beta1::ActiveGateSpec {
            capabilities: None,
            other: [
                ("image", ag.image.clone().map(Value::String)),
                ("autoUpdate", ag.auto_update.map(Value::Bool)),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect(),
        });
    }
    // Kept only when the v1beta1 section does not already say the same.
    if spec.active_gate != alpha_active_gate(hub_spec.active_gate.as_ref()) {
        alpha_only.active_gate = spec.active_gate;
    }
    if alpha_only != V1alpha1Stash::default() {
        put_stash(&mut metadata, V1ALPHA1_STASH_ANNOTATION, &alpha_only);
    }

    v1beta1::DynaKube {
        metadata,
        spec: hub_spec,
        status: hub_status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn v1beta1(spec: Value, status: Value) -> Value {
        json!({
            "apiVersion": "dynatrace.com/v1beta1",
            "kind": "DynaKube",
            "metadata": { "name": "dk", "namespace": "dynatrace", "uid": "1234", "resourceVersion": "7" },
            "spec": spec,
            "status": status,
        })
    }

    fn round_trip(original: &Value) -> (Value, Value) {
        let alpha = convert(original.clone(), "dynatrace.com/v1alpha1").unwrap();
        let back = convert(alpha.clone(), HUB_API_VERSION).unwrap();
        (alpha, back)
    }

    #[test]
    fn cloud_native_survives_a_trip_through_v1alpha1() {
        let original = v1beta1(
            json!({
                "apiUrl": "https://abc.live.dynatrace.com/api",
                "namespaceSelector": { "matchLabels": { "inject": "yes" } },
                "oneAgent": { "cloudNativeFullStack": {
                    "args": ["--set-host-group=prod"],
                    "tolerations": [{ "key": "a", "operator": "Exists" }],
                    "codeModulesImage": "registry/codemodules:1",
                } },
                "activeGate": { "capabilities": ["routing"], "image": "ag:1", "replicas": 2 },
            }),
            json!({ "phase": "Running", "oneAgent": { "version": "1.2.3", "source": "tenant-registry" } }),
        );
        let (alpha, back) = round_trip(&original);
        assert_eq!(alpha["apiVersion"], "dynatrace.com/v1alpha1");
        assert!(
            alpha["spec"].get("classicFullStack").is_none(),
            "v1alpha1 cannot show cloudNativeFullStack"
        );
        assert_eq!(alpha["spec"]["activeGate"]["image"], "ag:1");
        assert!(alpha["metadata"]["annotations"][V1BETA1_STASH_ANNOTATION].is_string());
        assert_eq!(back, original);
    }

    #[test]
    fn the_missed_injection_status_shows_in_v1alpha1_and_comes_back() {
        let injection = json!({
            "podsNotInjected": 3,
            "examples": ["app/a", "app/b", "app/c"],
            "lastCheckTime": "2026-01-01T00:00:00Z",
        });
        let original = v1beta1(
            json!({
                "apiUrl": "https://abc.live.dynatrace.com/api",
                "oneAgent": { "classicFullStack": {} },
            }),
            json!({ "phase": "Running", "injection": injection }),
        );
        let (alpha, back) = round_trip(&original);
        assert_eq!(alpha["status"]["injection"], injection);
        assert_eq!(back, original);
        // Written through v1alpha1 (no stash), it arrives in v1beta1 as it was.
        let mut alpha = alpha;
        if let Some(annotations) = alpha["metadata"]["annotations"].as_object_mut() {
            annotations.remove(V1BETA1_STASH_ANNOTATION);
        }
        let back = convert(alpha, HUB_API_VERSION).unwrap();
        assert_eq!(back["status"]["injection"], injection);
    }

    #[test]
    fn classic_maps_field_by_field_and_back() {
        let original = v1beta1(
            json!({
                "apiUrl": "https://abc.live.dynatrace.com/api",
                "tokens": "tokens",
                "skipCertCheck": false,
                "oneAgent": { "classicFullStack": {
                    "version": "1.2.3.20240101-120000",
                    "autoUpdate": false,
                    "nodeSelector": { "pool": "a" },
                    "oneAgentResources": { "requests": { "cpu": "100m" } },
                    "annotations": { "only": "v1beta1" },
                } },
            }),
            json!({}),
        );
        let (alpha, back) = round_trip(&original);
        assert_eq!(alpha["spec"]["classicFullStack"]["enabled"], true);
        assert_eq!(alpha["spec"]["classicFullStack"]["nodeSelector"]["pool"], "a");
        assert_eq!(
            alpha["spec"]["classicFullStack"]["resources"]["requests"]["cpu"],
            "100m"
        );
        assert_eq!(alpha["spec"]["oneAgent"]["version"], "1.2.3.20240101-120000");
        assert_eq!(alpha["spec"]["oneAgent"]["autoUpdate"], false);
        assert_eq!(alpha["spec"]["skipCertCheck"], false);
        assert_eq!(back, original);
    }

    #[test]
    fn edits_through_v1alpha1_take_effect_and_keep_the_rest() {
        let original = v1beta1(
            json!({
                "apiUrl": "https://abc.live.dynatrace.com/api",
                "oneAgent": { "classicFullStack": { "annotations": { "keep": "me" } } },
            }),
            json!({}),
        );
        let mut alpha = convert(original, "dynatrace.com/v1alpha1").unwrap();
        alpha["spec"]["networkZone"] = json!("zone-a");
        alpha["spec"]["classicFullStack"]["nodeSelector"] = json!({ "pool": "b" });
        alpha["spec"]["classicFullStack"]["waitReadySeconds"] = json!(120);
        let hub = convert(alpha, HUB_API_VERSION).unwrap();
        assert_eq!(hub["spec"]["networkZone"], "zone-a");
        let classic = &hub["spec"]["oneAgent"]["classicFullStack"];
        assert_eq!(classic["nodeSelector"]["pool"], "b");
        assert_eq!(classic["annotations"]["keep"], "me");
        // waitReadySeconds exists only in v1alpha1: kept for the way back.
        let again = convert(hub, "dynatrace.com/v1alpha1").unwrap();
        assert_eq!(again["spec"]["classicFullStack"]["waitReadySeconds"], 120);
    }

    #[test]
    fn a_v1alpha1_object_survives_a_trip_through_v1beta1() {
        let original = json!({
            "apiVersion": "dynatrace.com/v1alpha1",
            "kind": "DynaKube",
            "metadata": { "name": "dk", "namespace": "dynatrace" },
            "spec": {
                "apiUrl": "https://abc.live.dynatrace.com/api",
                "oneAgent": { "version": "1.2.3", "image": "custom:1" },
                "classicFullStack": { "enabled": true, "useUnprivilegedMode": true, "args": ["--a"] },
                "activeGate": { "image": "ag:2" },
            },
        });
        let hub = convert(original.clone(), HUB_API_VERSION).unwrap();
        assert_eq!(hub["spec"]["oneAgent"]["classicFullStack"]["image"], "custom:1");
        assert_eq!(convert(hub, "dynatrace.com/v1alpha1").unwrap(), original);
    }

    #[test]
    fn a_disabled_classic_block_is_not_a_mode_and_is_kept() {
        let original = json!({
            "apiVersion": "dynatrace.com/v1alpha1",
            "kind": "DynaKube",
            "metadata": { "name": "dk" },
            "spec": { "apiUrl": "https://abc.live.dynatrace.com/api", "classicFullStack": { "enabled": false, "args": ["--x"] } },
        });
        let hub = convert(original.clone(), HUB_API_VERSION).unwrap();
        assert!(hub["spec"].get("oneAgent").is_none(), "{hub}");
        assert_eq!(convert(hub, "dynatrace.com/v1alpha1").unwrap(), original);
    }

    #[test]
    fn unsupported_versions_and_malformed_objects_are_errors() {
        let object = v1beta1(json!({ "apiUrl": "x" }), json!({}));
        let err = convert(object, "dynatrace.com/v9").unwrap_err();
        assert!(
            err.to_string()
                .contains("dynatrace.com/v1beta1, dynatrace.com/v1alpha1"),
            "{err}"
        );
        let malformed = v1beta1(json!({ "apiUrl": 42 }), json!({}));
        let err = convert(malformed, "dynatrace.com/v1alpha1").unwrap_err();
        assert!(
            matches!(err, ConversionError::Malformed { ref name, .. } if name == "dynatrace/dk"),
            "{err}"
        );
    }

    #[test]
    fn a_broken_stash_is_ignored_not_fatal() {
        let mut alpha = convert(
            v1beta1(json!({ "apiUrl": "https://a.b/api" }), json!({})),
            "dynatrace.com/v1alpha1",
        )
        .unwrap();
        alpha["metadata"]["annotations"][V1BETA1_STASH_ANNOTATION] = json!("{not json");
        let hub = convert(alpha, HUB_API_VERSION).unwrap();
        assert_eq!(hub["spec"]["apiUrl"], "https://a.b/api");
        assert!(hub["metadata"].get("annotations").is_none());
    }

    fn optional<T: std::fmt::Debug + Clone + 'static>(
        s: impl Strategy<Value = T> + 'static,
    ) -> BoxedStrategy<Option<T>> {
        prop::option::of(s).boxed()
    }

    fn host_spec() -> impl Strategy<Value = Value> {
        (
            optional("[0-9]\\.[0-9]{1,3}\\.[0-9]"),
            optional(any::<bool>()),
            optional(prop::collection::btree_map("[a-z]{1,5}", "[a-z0-9]{0,5}", 0..3)),
            optional(prop::collection::vec("--[a-z-]{1,10}(=[a-z]{1,4})?", 0..3)),
            optional("[a-z]{1,8}"),
        )
            .prop_map(|(version, auto_update, node_selector, args, priority)| {
                let mut spec = serde_json::Map::new();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        spec.insert(k.to_owned(), v);
                    }
                };
                put("version", version.map(Value::from));
                put("autoUpdate", auto_update.map(Value::from));
                put("nodeSelector", node_selector.map(|m| json!(m)));
                put("args", args.map(|a| json!(a)));
                put("priorityClassName", priority.map(Value::from));
                Value::Object(spec)
            })
    }

    fn any_dynakube() -> impl Strategy<Value = Value> {
        (
            prop::sample::select(vec![
                "classicFullStack",
                "cloudNativeFullStack",
                "applicationMonitoring",
                "hostMonitoring",
                "none",
            ]),
            host_spec(),
            optional("[a-z]{1,8}"),
            optional(any::<bool>()),
            optional(prop::collection::btree_map("[a-z]{1,5}", "[a-z]{1,5}", 0..3)),
            optional("[A-Z][a-z]{3,8}"),
        )
            .prop_map(|(mode, host, zone, istio, ns_labels, phase)| {
                let mut spec = json!({ "apiUrl": "https://abc.live.dynatrace.com/api" });
                if mode != "none" {
                    let body = if mode == "applicationMonitoring" {
                        json!({ "useCSIDriver": true })
                    } else {
                        host
                    };
                    spec["oneAgent"] = json!({ mode: body });
                }
                if let Some(zone) = zone {
                    spec["networkZone"] = json!(zone);
                }
                if let Some(istio) = istio {
                    spec["enableIstio"] = json!(istio);
                }
                if let Some(labels) = ns_labels {
                    spec["namespaceSelector"] = json!({ "matchLabels": labels });
                }
                let status = phase.map_or(json!({}), |p| json!({ "phase": p }));
                v1beta1(spec, status)
            })
    }

    fn object(api_version: &str, spec: Value) -> Value {
        json!({
            "apiVersion": api_version,
            "kind": "DynaKube",
            "metadata": { "name": "dk", "namespace": "dynatrace" },
            "spec": spec,
        })
    }

    #[test]
    fn a_v1beta6_selector_per_mode_is_the_stored_top_level_selector() {
        let original = object(
            "dynatrace.com/v1beta6",
            json!({
                "apiUrl": "https://abc.live.dynatrace.com/api",
                "oneAgent": {
                    "hostGroup": "prod",
                    "cloudNativeFullStack": {
                        "namespaceSelector": { "matchLabels": { "inject": "yes" } },
                        "storageHostPath": "/data/oneagent",
                        "secCompProfile": "agent.json",
                    },
                },
                "metadataEnrichment": { "enabled": false },
                "telemetryIngest": { "protocols": ["otlp"] },
            }),
        );
        let stored = convert(original.clone(), HUB_API_VERSION).unwrap();
        assert_eq!(
            stored["spec"]["namespaceSelector"]["matchLabels"]["inject"],
            "yes"
        );
        assert_eq!(stored["spec"]["oneAgent"]["hostGroup"], "prod");
        assert!(
            stored["spec"]["oneAgent"]["cloudNativeFullStack"]
                .get("namespaceSelector")
                .is_none()
        );
        assert!(
            stored["metadata"].get("annotations").is_none(),
            "v1beta1 stores it all: {stored}"
        );
        let hub: crate::dynakube::DynaKube = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(
            hub.spec.telemetry_ingest.unwrap().fields["protocols"],
            json!(["otlp"])
        );

        // v1beta3 has no telemetryIngest and no storageHostPath: kept in the annotation, back in v1beta6.
        let v1beta3 = convert(stored, "dynatrace.com/v1beta3").unwrap();
        assert!(v1beta3["spec"].get("telemetryIngest").is_none());
        assert_eq!(
            v1beta3["spec"]["oneAgent"]["cloudNativeFullStack"]["namespaceSelector"]["matchLabels"]["inject"],
            "yes"
        );
        assert!(v1beta3["metadata"]["annotations"][V1BETA1_STASH_ANNOTATION].is_string());
        assert_eq!(convert(v1beta3, "dynatrace.com/v1beta6").unwrap(), original);
    }

    #[test]
    fn edits_through_an_older_later_version_take_effect_and_keep_the_rest() {
        let original = object(
            "dynatrace.com/v1beta6",
            json!({
                "apiUrl": "https://abc.live.dynatrace.com/api",
                "oneAgent": { "applicationMonitoring": { "version": "1.2.3" } },
                "kspm": { "enabled": true },
                "telemetryIngest": { "serviceName": "x" },
            }),
        );
        let mut v1beta2 = convert(original, "dynatrace.com/v1beta2").unwrap();
        v1beta2["spec"]["oneAgent"]["applicationMonitoring"]["useCSIDriver"] = json!(true);
        v1beta2["spec"]["oneAgent"]["applicationMonitoring"]
            .as_object_mut()
            .unwrap()
            .remove("version");
        let back = convert(v1beta2, "dynatrace.com/v1beta6").unwrap();
        let app = &back["spec"]["oneAgent"]["applicationMonitoring"];
        assert!(
            app.get("version").is_none(),
            "the removal through v1beta2 counts: {back}"
        );
        assert_eq!(back["spec"]["kspm"]["enabled"], true);
        assert_eq!(back["spec"]["telemetryIngest"]["serviceName"], "x");
        // useCSIDriver exists only up to v1beta2: kept for the way back there.
        let hub = convert(back, HUB_API_VERSION).unwrap();
        assert_eq!(
            hub["spec"]["oneAgent"]["applicationMonitoring"]["useCSIDriver"],
            true
        );
    }

    #[test]
    fn a_mode_removed_through_a_later_version_stays_removed() {
        let stored = v1beta1(
            json!({
                "apiUrl": "https://abc.live.dynatrace.com/api",
                "routing": { "enabled": true },
                "oneAgent": { "applicationMonitoring": { "useCSIDriver": true } },
            }),
            json!({}),
        );
        let mut v1beta6 = convert(stored, "dynatrace.com/v1beta6").unwrap();
        v1beta6["spec"]["oneAgent"] = json!({ "hostMonitoring": {} });
        let hub = convert(v1beta6, HUB_API_VERSION).unwrap();
        assert_eq!(hub["spec"]["oneAgent"], json!({ "hostMonitoring": {} }));
        assert_eq!(
            hub["spec"]["routing"]["enabled"], true,
            "v1beta6 has no routing to change"
        );
    }

    /// A spec with fields of every version, in hub shape.
    fn any_union_spec() -> impl Strategy<Value = Value> {
        (any_union_spec_core(), any_common_fields()).prop_map(|(mut spec, common)| {
            let (proxy, tokens, skip, cas, env, init_cpu) = common;
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    spec[k] = v;
                }
            };
            put(
                "proxy",
                proxy.map(|(value, from)| json!({ "value": value, "valueFrom": from })),
            );
            put("tokens", tokens.map(Value::from));
            put("skipCertCheck", skip.map(Value::from));
            put("trustedCAs", cas.map(Value::from));
            for mode in ["classicFullStack", "cloudNativeFullStack", "hostMonitoring"] {
                if let (Some(body), Some(env)) =
                    (spec.get_mut("oneAgent").and_then(|o| o.get_mut(mode)), &env)
                {
                    body["env"] = json!([{ "name": env, "value": "1" }]);
                }
            }
            for mode in ["cloudNativeFullStack", "applicationMonitoring"] {
                if let (Some(body), Some(cpu)) =
                    (spec.get_mut("oneAgent").and_then(|o| o.get_mut(mode)), &init_cpu)
                {
                    body["initResources"] = json!({ "requests": { "cpu": cpu } });
                }
            }
            spec
        })
    }

    type CommonFields = (
        Option<(String, String)>,
        Option<String>,
        Option<bool>,
        Option<String>,
        Option<String>,
        Option<String>,
    );

    /// Fields every version has, some in the modes.
    fn any_common_fields() -> impl Strategy<Value = CommonFields> {
        (
            optional(("http://[a-z]{1,5}:3128", "[a-z]{1,5}")),
            optional("[a-z]{1,6}"),
            optional(any::<bool>()),
            optional("[a-z]{1,6}"),
            optional("[A-Z_]{1,8}"),
            optional("[1-9]00m"),
        )
    }

    fn any_union_spec_core() -> impl Strategy<Value = Value> {
        (
            (
                prop::sample::select(vec![
                    "classicFullStack",
                    "cloudNativeFullStack",
                    "applicationMonitoring",
                    "hostMonitoring",
                    "none",
                ]),
                host_spec(),
                optional("[a-z]{1,8}"),
                optional(any::<bool>()),
                optional(prop::collection::btree_map("[a-z]{1,5}", "[a-z]{1,5}", 0..3)),
            ),
            (
                optional("[a-z]{1,6}"),
                optional("[a-z/]{1,8}"),
                optional("[a-z]{1,8}"),
                optional(any::<bool>()),
                optional("[a-z]{1,6}"),
                optional(0u16..100),
                optional(any::<bool>()),
                optional(prop::sample::select(vec!["logMonitoring", "kspm", "templates", "telemetryIngest"])),
                optional(any::<bool>()),
                optional(any::<bool>()),
            ),
        )
            .prop_map(
                |(
                    (mode, mut host, zone, istio, ns_labels),
                    (host_group, storage, seccomp, csi, image, threshold, enrichment, section, routing, ag),
                )| {
                    let mut spec = json!({ "apiUrl": "https://abc.live.dynatrace.com/api" });
                    if let Some(storage) = storage {
                        host["storageHostPath"] = json!(storage);
                    }
                    if let Some(seccomp) = seccomp {
                        host["secCompProfile"] = json!(seccomp);
                    }
                    if mode != "none" {
                        let body = match mode {
                            "applicationMonitoring" => {
                                let mut app = json!({});
                                if let Some(csi) = csi {
                                    app["useCSIDriver"] = json!(csi);
                                }
                                if let Some(image) = &image {
                                    app["codeModulesImage"] = json!(image);
                                }
                                app
                            }
                            "cloudNativeFullStack" => {
                                if let Some(image) = &image {
                                    host["codeModulesImage"] = json!(image);
                                }
                                host
                            }
                            _ => host,
                        };
                        spec["oneAgent"] = json!({ mode: body });
                    }
                    if let Some(group) = host_group {
                        spec["oneAgent"]["hostGroup"] = json!(group);
                    }
                    if let Some(zone) = zone {
                        spec["networkZone"] = json!(zone);
                    }
                    if let Some(istio) = istio {
                        spec["enableIstio"] = json!(istio);
                    }
                    if let Some(labels) = ns_labels {
                        spec["namespaceSelector"] = json!({ "matchLabels": labels });
                    }
                    if let Some(threshold) = threshold {
                        spec["dynatraceApiRequestThreshold"] = json!(threshold);
                    }
                    if let Some(enabled) = enrichment {
                        spec["metadataEnrichment"] =
                            json!({ "enabled": enabled, "namespaceSelector": { "matchLabels": { "e": "1" } } });
                    }
                    if let Some(section) = section {
                        spec[section] = json!({ "enabled": true, "nested": { "x": [1, 2] } });
                    }
                    if let Some(enabled) = routing {
                        spec["routing"] = json!({ "enabled": enabled, "replicas": 2 });
                    }
                    if let Some(with_image) = ag {
                        spec["activeGate"] = if with_image {
                            json!({ "capabilities": ["routing"], "image": "ag:1" })
                        } else {
                            json!({ "capabilities": ["kubernetes-monitoring"], "replicas": 3 })
                        };
                    }
                    spec
                },
            )
    }

    const ALL_VERSIONS: [&str; 7] = [
        "dynatrace.com/v1alpha1",
        "dynatrace.com/v1beta1",
        "dynatrace.com/v1beta2",
        "dynatrace.com/v1beta3",
        "dynatrace.com/v1beta4",
        "dynatrace.com/v1beta5",
        "dynatrace.com/v1beta6",
    ];

    /// An object as a user writes it in `api_version`: what that version shows of `spec`, without any
    /// conversion annotation.
    fn written_in(spec: Value, status: Value, api_version: &str) -> Value {
        let mut object = convert(v1beta1(spec, status), api_version).unwrap();
        let metadata = object["metadata"].as_object_mut().unwrap();
        if let Some(annotations) = metadata.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove(V1BETA1_STASH_ANNOTATION);
            if annotations.is_empty() {
                metadata.remove("annotations");
            }
        }
        object
    }

    proptest! {
        #[test]
        fn every_object_in_every_version_round_trips_through_every_other(
            spec in any_union_spec(),
            phase in optional("[A-Z][a-z]{3,8}"),
            from in prop::sample::select(ALL_VERSIONS.to_vec()),
        ) {
            let status = phase.map_or(json!({}), |p| json!({ "phase": p }));
            let original = written_in(spec, status, from);
            for through in ALL_VERSIONS {
                let there = convert(original.clone(), through).unwrap();
                prop_assert_eq!(there["apiVersion"].as_str(), Some(through));
                let back = convert(there.clone(), from).unwrap();
                prop_assert_eq!(&back, &original, "{} -> {} -> {}: via {}", from, through, from, there);
                // The same through storage: written in `from`, stored as the hub, read in `through`.
                let stored = convert(original.clone(), HUB_API_VERSION).unwrap();
                let read = convert(stored, through).unwrap();
                prop_assert_eq!(convert(read, from).unwrap(), original.clone());
            }
        }

        #[test]
        fn every_stored_object_survives_a_write_through_every_version(
            spec in any_union_spec(),
            through in prop::sample::select(ALL_VERSIONS.to_vec()),
        ) {
            let stored = v1beta1(spec, json!({ "phase": "Running" }));
            let there = convert(stored.clone(), through).unwrap();
            prop_assert_eq!(convert(there, HUB_API_VERSION).unwrap(), stored);
        }
    }

    proptest! {
        #[test]
        fn every_v1beta1_object_round_trips_through_v1alpha1(original in any_dynakube()) {
            let (_, back) = round_trip(&original);
            prop_assert_eq!(back, original);
        }
    }
}
