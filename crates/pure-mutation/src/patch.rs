//! The RFC 6902 patch of an injected pod, built from the parts injection writes instead of diffing two
//! serialized pods (which was a third of the webhook's CPU per request).
//!
//! Injection writes the pod's annotations, the application containers' `env` and `volumeMounts`, the
//! init containers and the volumes, and only appends to or replaces elements of those lists. Those parts
//! get precise operations; any other difference (a change this module does not know about) falls back to
//! the full diff, so the patch is always right. Every test of the crate applies the patch it gets and
//! compares the result with the mutated pod (`test_support::apply`, the proptests).

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

/// The patch from `before` to `after`.
pub(crate) fn pod(before: &Pod, after: &Pod) -> Patch {
    let mut ops = Ops::default();
    if precise(&mut ops, before, after).is_some() {
        Patch(ops.0)
    } else {
        crate::diff(before, after)
    }
}

/// The precise operations, or `None` when something changed that they do not cover.
fn precise(ops: &mut Ops, before: &Pod, after: &Pod) -> Option<()> {
    if before.metadata != after.metadata {
        if !metadata_equal_but_annotations(&before.metadata, &after.metadata) {
            return None;
        }
        map(
            ops,
            &["metadata", "annotations"],
            before.metadata.annotations.as_ref(),
            after.metadata.annotations.as_ref(),
        );
    }
    if before.spec == after.spec {
        return Some(());
    }
    let (b, a) = (before.spec.as_ref()?, after.spec.as_ref()?);
    if !spec_equal_but_injected_parts(b, a) {
        return None;
    }
    if b.containers.len() != a.containers.len() {
        return None;
    }
    for (i, (bc, ac)) in b.containers.iter().zip(&a.containers).enumerate() {
        if bc == ac {
            continue;
        }
        if !container_equal_but_injected_parts(bc, ac) {
            return None;
        }
        let index = i.to_string();
        list(
            ops,
            &["spec", "containers", &index, "env"],
            bc.env.as_deref(),
            ac.env.as_deref(),
        )?;
        list(
            ops,
            &["spec", "containers", &index, "volumeMounts"],
            bc.volume_mounts.as_deref(),
            ac.volume_mounts.as_deref(),
        )?;
    }
    list(
        ops,
        &["spec", "initContainers"],
        b.init_containers.as_deref(),
        a.init_containers.as_deref(),
    )?;
    list(
        ops,
        &["spec", "volumes"],
        b.volumes.as_deref(),
        a.volumes.as_deref(),
    )
}

/// The operations collected so far.
#[derive(Default)]
struct Ops(Vec<PatchOperation>);

impl Ops {
    fn add<T: Serialize + ?Sized>(&mut self, path: PointerBuf, value: &T) {
        self.0.push(PatchOperation::Add(AddOperation {
            path,
            value: to_value(value),
        }));
    }

    fn replace<T: Serialize + ?Sized>(&mut self, path: PointerBuf, value: &T) {
        self.0.push(PatchOperation::Replace(ReplaceOperation {
            path,
            value: to_value(value),
        }));
    }

    fn remove(&mut self, path: PointerBuf) {
        self.0.push(PatchOperation::Remove(RemoveOperation { path }));
    }
}

fn to_value<T: Serialize + ?Sized>(value: &T) -> serde_json::Value {
    // Kubernetes types always serialize.
    serde_json::to_value(value).unwrap_or_default()
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

/// A string map (annotations): one operation per key that differs.
fn map(
    ops: &mut Ops,
    at: &[&str],
    before: Option<&BTreeMap<String, String>>,
    after: Option<&BTreeMap<String, String>>,
) {
    match (before, after) {
        (None, None) => {}
        (Some(_), None) => ops.remove(pointer(at)),
        (None, Some(after)) => ops.add(pointer(at), after),
        (Some(before), Some(after)) => {
            let key = |key: &str| {
                let mut path = pointer(at);
                path.push_back(key);
                path
            };
            for (k, v) in after {
                match before.get(k) {
                    None => ops.add(key(k), v),
                    Some(old) if old != v => ops.replace(key(k), v),
                    Some(_) => {}
                }
            }
            for k in before.keys().filter(|k| !after.contains_key(*k)) {
                ops.remove(key(k));
            }
        }
    }
}

/// A list that injection appends to or whose elements it replaces: a replace per changed element and an
/// append per new one. `None` for a shorter list (not something injection does).
fn list<T: Serialize + PartialEq>(
    ops: &mut Ops,
    at: &[&str],
    before: Option<&[T]>,
    after: Option<&[T]>,
) -> Option<()> {
    match (before, after) {
        (None, None) => {}
        (Some(_), None) => ops.remove(pointer(at)),
        (None, Some(after)) => ops.add(pointer(at), after),
        (Some(before), Some(after)) => {
            if after.len() < before.len() {
                return None;
            }
            for (i, (b, a)) in before.iter().zip(after).enumerate() {
                if b != a {
                    let mut path = pointer(at);
                    path.push_back(i.to_string());
                    ops.replace(path, a);
                }
            }
            for a in &after[before.len()..] {
                let mut path = pointer(at);
                path.push_back("-");
                ops.add(path, a);
            }
        }
    }
    Some(())
}

/// `a == b` for every field of `$ty` but the skipped ones. The pattern names every field, so a field
/// added to the type fails to compile here instead of being ignored.
macro_rules! equal_except {
    ($ty:ident, $a:expr, $b:expr, skip [$($skip:ident),* $(,)?], compare [$($field:ident),* $(,)?]) => {{
        let $ty { $($skip: _,)* $($field,)* } = $a;
        let b = $b;
        true $(&& *$field == b.$field)*
    }};
}

/// Equal apart from the annotations.
fn metadata_equal_but_annotations(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    equal_except!(ObjectMeta, a, b, skip [annotations], compare [
        creation_timestamp, deletion_grace_period_seconds, deletion_timestamp, finalizers, generate_name,
        generation, labels, managed_fields, name, namespace, owner_references, resource_version, self_link,
        uid,
    ])
}

/// Equal apart from the containers, init containers and volumes.
fn spec_equal_but_injected_parts(a: &PodSpec, b: &PodSpec) -> bool {
    equal_except!(PodSpec, a, b, skip [containers, init_containers, volumes], compare [
        active_deadline_seconds, affinity, automount_service_account_token, dns_config, dns_policy,
        enable_service_links, ephemeral_containers, host_aliases, host_ipc, host_network, host_pid,
        host_users, hostname, image_pull_secrets, node_name, node_selector, os, overhead,
        preemption_policy, priority, priority_class_name, readiness_gates, resource_claims, resources,
        restart_policy, runtime_class_name, scheduler_name, scheduling_gates, security_context,
        service_account, service_account_name, set_hostname_as_fqdn, share_process_namespace, subdomain,
        termination_grace_period_seconds, tolerations, topology_spread_constraints,
    ])
}

/// Equal apart from `env` and `volumeMounts`.
fn container_equal_but_injected_parts(a: &Container, b: &Container) -> bool {
    equal_except!(Container, a, b, skip [env, volume_mounts], compare [
        args, command, env_from, image, image_pull_policy, lifecycle, liveness_probe, name, ports,
        readiness_probe, resize_policy, resources, restart_policy, security_context, startup_probe, stdin,
        stdin_once, termination_message_path, termination_message_policy, tty, volume_devices,
        working_dir,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{Facts, app_pod, apply, dynakube, pod as pod_from};

    fn paths(patch: &Patch) -> Vec<String> {
        patch.0.iter().map(|op| op.path().to_string()).collect()
    }

    #[test]
    fn an_injection_gets_precise_operations_with_escaped_annotation_keys() {
        let facts = Facts::new(
            dynakube("dk", serde_json::json!({ "applicationMonitoring": {} })),
            false,
        );
        let mut before = app_pod();
        before.metadata.annotations = Some(crate::test_support::map(&[("team", "a")]));
        let (_, after) = crate::mutate(&facts.request(&before));
        let mut ops = Ops::default();
        assert!(precise(&mut ops, &before, &after).is_some());
        let patch = Patch(ops.0);
        assert_eq!(apply(&before, &patch), after);
        let paths = paths(&patch);
        assert!(paths.contains(&"/metadata/annotations/oneagent.dynatrace.com~1injected".to_owned()));
        assert!(paths.contains(&"/spec/initContainers".to_owned()), "{paths:?}");
        assert!(paths.contains(&"/spec/containers/0/env".to_owned()), "{paths:?}");
        assert!(
            !paths.iter().any(|p| p == "/metadata" || p == "/spec"),
            "{paths:?}"
        );
    }

    #[test]
    fn lists_get_appends_and_element_replacements() {
        let before = pod_from(serde_json::json!({
            "metadata": { "annotations": { "a/b": "1", "gone": "x" } },
            "spec": {
                "containers": [{ "name": "app", "env": [{ "name": "LD_PRELOAD", "value": "lib.so" }] }],
                "initContainers": [{ "name": "first" }],
                "volumes": [{ "name": "v", "emptyDir": {} }]
            }
        }));
        let after = pod_from(serde_json::json!({
            "metadata": { "annotations": { "a/b": "2", "c~d": "3" } },
            "spec": {
                "containers": [{ "name": "app", "env": [
                    { "name": "LD_PRELOAD", "value": "lib.so agent.so" }, { "name": "X", "value": "1" }
                ], "volumeMounts": [{ "name": "v", "mountPath": "/v" }] }],
                "initContainers": [{ "name": "first" }, { "name": "second" }],
                "volumes": [{ "name": "v", "emptyDir": {} }, { "name": "w", "emptyDir": {} }]
            }
        }));
        let patch = pod(&before, &after);
        assert_eq!(apply(&before, &patch), after);
        assert_eq!(
            paths(&patch),
            [
                "/metadata/annotations/a~1b",
                "/metadata/annotations/c~0d",
                "/metadata/annotations/gone",
                "/spec/containers/0/env/0",
                "/spec/containers/0/env/-",
                "/spec/containers/0/volumeMounts",
                "/spec/initContainers/-",
                "/spec/volumes/-",
            ]
        );
    }

    #[test]
    fn any_other_change_falls_back_to_the_full_diff() {
        let before = app_pod();
        for change in [
            serde_json::json!({ "metadata": { "labels": { "x": "1" } } }),
            serde_json::json!({ "spec": { "nodeName": "n" } }),
            serde_json::json!({ "spec": { "containers": [{ "name": "app", "image": "other" }] } }),
            serde_json::json!({ "spec": { "containers": [] } }),
        ] {
            let mut json = serde_json::to_value(&before).unwrap();
            json_patch::merge(&mut json, &change);
            let after: Pod = serde_json::from_value(json).unwrap();
            let mut ops = Ops::default();
            assert!(precise(&mut ops, &before, &after).is_none(), "{change}");
            assert_eq!(apply(&before, &pod(&before, &after)), after, "{change}");
        }
    }
}
