//! Accessors shared by the DaemonSet tests: a failed step is a failed test.

#![allow(clippy::unwrap_used)]

use k8s_openapi::api::apps::v1::DaemonSet;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

/// The pod template.
pub(crate) fn template(ds: &DaemonSet) -> &PodTemplateSpec {
    &ds.spec.as_ref().unwrap().template
}

/// The pod spec.
pub(crate) fn pod(ds: &DaemonSet) -> &PodSpec {
    template(ds).spec.as_ref().unwrap()
}

/// The only container.
pub(crate) fn container(ds: &DaemonSet) -> &Container {
    let containers = &pod(ds).containers;
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// The scheduling settings both DaemonSet tests give: `dnsPolicy: Default`, node selector
/// `node-pool: apps`, a toleration of the master taint first and priority class `high`.
pub(crate) fn assert_user_scheduling(p: &PodSpec) {
    assert_eq!(p.dns_policy.as_deref(), Some("Default"));
    assert_eq!(
        p.node_selector,
        Some(BTreeMap::from([("node-pool".into(), "apps".into())]))
    );
    assert_eq!(
        p.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("node-role.kubernetes.io/master")
    );
    assert_eq!(p.priority_class_name.as_deref(), Some("high"));
}
