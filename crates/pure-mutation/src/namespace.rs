//! The namespace webhook (`/label-ns`, spec §3.3): the injection label of a namespace that is created or
//! changed, decided by the mapping rules of [`pure_desired::mapping`]. It never denies (fixes §(b)2).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use pure_api::dynakube::DynaKube;
use pure_desired::mapping::{
    INSTANCE_LABEL, Injector, NamespaceView, UPDATED_VIA_OPERATOR_ANNOTATION, map_namespace,
};

/// What `/label-ns` answers: always allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceOutcome {
    /// RFC 6902 patch of the namespace; empty when nothing changes.
    pub patch: json_patch::Patch,
    /// An admission warning for the user (the namespace is selected by several DynaKubes).
    pub warning: Option<String>,
}

/// The label patch of a namespace:
/// - the webhook's (operator's) own namespace is never touched;
/// - a change the operator made (annotation [`UPDATED_VIA_OPERATOR_ANNOTATION`]) loses the annotation
///   and is not mapped again;
/// - otherwise [`INSTANCE_LABEL`] is set to the one DynaKube that selects the namespace, or removed when
///   none does. A namespace selected by several DynaKubes keeps its labels and gets a warning instead of
///   the reference's denial.
pub fn label_namespace(ns: &Namespace, dynakubes: &[DynaKube], webhook_namespace: &str) -> NamespaceOutcome {
    let unchanged = |warning| NamespaceOutcome {
        patch: json_patch::Patch(Vec::new()),
        warning,
    };
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() || name == webhook_namespace {
        return unchanged(None);
    }
    let mut labels = ns.metadata.labels.clone();
    let mut annotations = ns.metadata.annotations.clone();
    if annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(UPDATED_VIA_OPERATOR_ANNOTATION))
    {
        if let Some(a) = annotations.as_mut() {
            a.remove(UPDATED_VIA_OPERATOR_ANNOTATION);
        }
        return changed(ns, labels, annotations, None);
    }
    let injectors: Vec<Injector> = dynakubes.iter().filter_map(Injector::new).collect();
    let view = NamespaceView {
        name,
        labels: labels.as_ref(),
    };
    let current = view.current().map(str::to_owned);
    let (assigned, conflict) = map_namespace(&injectors, webhook_namespace, &view);
    if let Some(conflict) = conflict {
        let names: Vec<String> = conflict.dynakubes.iter().map(ToString::to_string).collect();
        return unchanged(Some(format!(
            "namespace {name} is selected by more than one DynaKube ({}) and can be injected by one only, so \
             its injection label was left as it is ({}); make the DynaKubes' spec.namespaceSelector select it \
             once",
            names.join(", "),
            current
                .as_deref()
                .map_or_else(|| "none".to_owned(), |c| format!("{INSTANCE_LABEL}={c}")),
        )));
    }
    let desired = assigned.map(|dk| dk.name);
    if desired == current {
        return unchanged(None);
    }
    let list = labels.get_or_insert_with(BTreeMap::new);
    match desired {
        Some(dk) => {
            list.insert(INSTANCE_LABEL.to_owned(), dk);
        }
        None => {
            list.remove(INSTANCE_LABEL);
        }
    }
    changed(ns, labels, annotations, None)
}

/// The outcome with the namespace's labels and annotations replaced.
fn changed(
    ns: &Namespace,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    warning: Option<String>,
) -> NamespaceOutcome {
    let mut after = ns.clone();
    after.metadata.labels = labels;
    after.metadata.annotations = annotations;
    NamespaceOutcome {
        patch: crate::diff(ns, &after),
        warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{apply, dynakube, namespace};

    fn labels_after(ns: &Namespace, outcome: &NamespaceOutcome) -> BTreeMap<String, String> {
        apply::<Namespace>(ns, &outcome.patch)
            .metadata
            .labels
            .unwrap_or_default()
    }

    #[test]
    fn labels_a_selected_namespace_and_unlabels_one_that_is_not() {
        let dk = dynakube("dk", serde_json::json!({ "applicationMonitoring": {} }));
        let ns = namespace("app", &[], &[]);
        let outcome = label_namespace(&ns, std::slice::from_ref(&dk), "dynatrace");
        assert_eq!(outcome.warning, None);
        assert_eq!(
            labels_after(&ns, &outcome)
                .get(INSTANCE_LABEL)
                .map(String::as_str),
            Some("dk")
        );
        let labelled = namespace("app", &[(INSTANCE_LABEL, "dk")], &[]);
        assert!(
            label_namespace(&labelled, std::slice::from_ref(&dk), "dynatrace")
                .patch
                .0
                .is_empty()
        );
        let classic = dynakube("dk", serde_json::json!({ "classicFullStack": {} }));
        let outcome = label_namespace(&labelled, &[classic], "dynatrace");
        assert_eq!(labels_after(&labelled, &outcome).get(INSTANCE_LABEL), None);
        let stale = namespace("app", &[(INSTANCE_LABEL, "gone"), ("team", "a")], &[]);
        let outcome = label_namespace(&stale, &[], "dynatrace");
        assert_eq!(
            labels_after(&stale, &outcome),
            BTreeMap::from([("team".to_owned(), "a".to_owned())])
        );
    }

    #[test]
    fn own_and_ignored_namespaces_are_left_alone() {
        let dk = dynakube("dk", serde_json::json!({ "cloudNativeFullStack": {} }));
        for name in ["dynatrace", "kube-system", "openshift-monitoring"] {
            let ns = namespace(name, &[], &[]);
            assert!(
                label_namespace(&ns, std::slice::from_ref(&dk), "dynatrace")
                    .patch
                    .0
                    .is_empty(),
                "{name}"
            );
        }
    }

    #[test]
    fn the_operators_change_only_loses_its_marker() {
        let dk = dynakube("dk", serde_json::json!({ "applicationMonitoring": {} }));
        let ns = namespace(
            "app",
            &[],
            &[(UPDATED_VIA_OPERATOR_ANNOTATION, "true"), ("a", "b")],
        );
        let outcome = label_namespace(&ns, &[dk], "dynatrace");
        let after = apply::<Namespace>(&ns, &outcome.patch);
        assert_eq!(
            after.metadata.labels, None,
            "no mapping when the operator made the change"
        );
        assert_eq!(
            after.metadata.annotations,
            Some(BTreeMap::from([("a".to_owned(), "b".to_owned())]))
        );
    }

    #[test]
    fn a_conflict_warns_and_changes_nothing() {
        let a = dynakube("a", serde_json::json!({ "applicationMonitoring": {} }));
        let b = dynakube("b", serde_json::json!({ "cloudNativeFullStack": {} }));
        for labels in [
            vec![],
            vec![(INSTANCE_LABEL, "a")],
            vec![(INSTANCE_LABEL, "other")],
        ] {
            let ns = namespace("app", &labels, &[]);
            let outcome = label_namespace(&ns, &[a.clone(), b.clone()], "dynatrace");
            assert!(outcome.patch.0.is_empty(), "{labels:?}");
            let warning = outcome.warning.unwrap_or_default();
            assert!(
                warning.contains("dynatrace/a, dynatrace/b") && warning.contains("namespaceSelector"),
                "{warning}"
            );
        }
    }
}
