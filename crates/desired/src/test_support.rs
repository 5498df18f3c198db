//! Accessors shared by the DaemonSet tests: a failed step is a failed test.

#![allow(clippy::unwrap_used)]

use k8s_openapi::api::apps::v1::DaemonSet;
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
