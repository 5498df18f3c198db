//! Builders and accessors for the tests: a failed step is a failed test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Namespace, Pod};
use pure_api::dynakube::DynaKube;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{NamespaceFacts, PodOutcome, PodRequest, Settings, Workload};

/// A map from pairs.
pub(crate) fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A DynaKube `name` in `dynatrace` with `spec.oneAgent = one_agent`, connection info and a code-module
/// version in its status.
pub(crate) fn dynakube(name: &str, one_agent: serde_json::Value) -> DynaKube {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "dynatrace.com/v1beta1",
        "kind": "DynaKube",
        "metadata": { "name": name, "namespace": "dynatrace" },
        "spec": { "apiUrl": "https://abc12345.live.dynatrace.com/api", "oneAgent": one_agent },
        "status": {
            "oneAgent": { "connectionInfoStatus": {
                "tenantUUID": "abc12345",
                "communicationHosts": [{ "protocol": "https", "host": "abc12345.live.dynatrace.com", "port": 443 }]
            } },
            "codeModules": { "version": "1.277.0.20230914-094321" }
        }
    }))
    .unwrap()
}

/// A namespace.
pub(crate) fn namespace(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Namespace {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    ns.metadata.labels = (!labels.is_empty()).then(|| map(labels));
    ns.metadata.annotations = (!annotations.is_empty()).then(|| map(annotations));
    ns
}

/// A pod from JSON.
pub(crate) fn pod(json: serde_json::Value) -> Pod {
    serde_json::from_value(json).unwrap()
}

/// A typical Deployment pod: `generateName`, one container `app`, no annotations.
pub(crate) fn app_pod() -> Pod {
    pod(serde_json::json!({
        "metadata": { "generateName": "web-7d9f5c-", "namespace": "shop" },
        "spec": { "containers": [{ "name": "app", "image": "registry.example.com/shop/web:1.2" }] }
    }))
}

/// The settings of the tests.
pub(crate) fn settings(csi: bool) -> Settings {
    Settings {
        init_image: "registry.example.com/dynatrace-operator:1.0.0".to_owned(),
        cluster_id: "cluster-uid".to_owned(),
        webhook_namespace: "dynatrace".to_owned(),
        csi_driver_installed: csi,
    }
}

/// A request's facts besides the pod, owned, so that tests can change them.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub dynakube: Option<DynaKube>,
    pub init_secret: bool,
    pub enrichment_secret: bool,
    pub workload: Workload,
    pub settings: Settings,
}

impl Facts {
    /// Namespace `shop` mapped to `dk`, both Secrets present, workload Deployment `web`.
    pub(crate) fn new(dk: DynaKube, csi: bool) -> Self {
        Self {
            labels: map(&[(pure_desired::mapping::INSTANCE_LABEL, "dk")]),
            annotations: BTreeMap::new(),
            dynakube: Some(dk),
            init_secret: true,
            enrichment_secret: true,
            workload: Workload {
                kind: "Deployment".to_owned(),
                name: "web".to_owned(),
            },
            settings: settings(csi),
        }
    }

    /// The request for `pod`.
    pub(crate) fn request<'a>(&'a self, pod: &'a Pod) -> PodRequest<'a> {
        PodRequest {
            pod,
            namespace: NamespaceFacts {
                name: "shop",
                labels: &self.labels,
                annotations: &self.annotations,
            },
            dynakube: self.dynakube.as_ref(),
            init_secret_present: self.init_secret,
            enrichment_secret_present: self.enrichment_secret,
            workload: self.workload.clone(),
            settings: &self.settings,
        }
    }

    /// Mutates `pod` and applies the patch.
    pub(crate) fn mutate(&self, pod: &Pod) -> (PodOutcome, Pod) {
        let outcome = crate::mutate_pod(&self.request(pod));
        let after = apply(pod, &outcome.patch);
        (outcome, after)
    }
}

/// `value` with `patch` applied.
pub(crate) fn apply<T: Serialize + DeserializeOwned>(value: &T, patch: &json_patch::Patch) -> T {
    let mut json = serde_json::to_value(value).unwrap();
    json_patch::patch(&mut json, patch).unwrap();
    serde_json::from_value(json).unwrap()
}

/// The init containers.
pub(crate) fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_deref()
        .unwrap_or_default()
}

/// Our init container.
pub(crate) fn init(pod: &Pod) -> &Container {
    init_containers(pod)
        .iter()
        .find(|c| c.name == crate::names::INIT_CONTAINER_NAME)
        .expect("the init container")
}

/// The container `name`.
pub(crate) fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap()
}

/// A container's literal variables, as (name, value) with `valueFrom` shown as `<from>`.
pub(crate) fn env_pairs(container: &Container) -> Vec<(String, String)> {
    container
        .env
        .iter()
        .flatten()
        .map(|v| {
            (
                v.name.clone(),
                v.value.clone().unwrap_or_else(|| "<from>".to_owned()),
            )
        })
        .collect()
}

/// A container's variable.
pub(crate) fn env<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    pure_desired::pod::env_value(container.env.as_deref(), name)
}

/// A container's mounts as (volume, path, subPath).
pub(crate) fn mounts(container: &Container) -> Vec<(String, String, Option<String>)> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone(), m.sub_path.clone()))
        .collect()
}

/// The pod's volume names.
pub(crate) fn volume_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect()
}
