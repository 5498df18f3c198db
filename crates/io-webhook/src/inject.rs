//! `/inject` (pods) and `/label-ns` (namespaces): the mutating webhooks.
//!
//! Everything a decision needs comes from the watch caches ([`ClusterCache`]); the pure rules are in
//! `pure-mutation`. Neither endpoint ever refuses an object: every failure of ours (a review we cannot
//! read, caches not synced, a missing DynaKube or Secret, even a panic in the rules) admits the object
//! unchanged, counts it in `dynatrace_webhook_pod_injections_total` and, for pods, queues a warning event
//! on the pod's namespace that says what is missing and what to do.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use pure_mutation::{
    EventTarget, EventType, Lookup, NamespaceFacts, OwnerRef, PodOutcome, PodRequest, PodResult, Settings,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::events::{EventQueue, QueuedEvent, Regarding};
use crate::handlers::{Endpoints, failure_outcome, json_response, read_body};

/// What the mutating webhooks need besides the caches.
#[derive(Clone)]
pub struct Injection {
    /// Image of the init container added to pods: the webhook's own image.
    pub init_image: String,
    /// The namespace the operator and the DynaKubes live in.
    pub webhook_namespace: String,
    /// Where events go.
    pub events: EventQueue,
}

/// The parts of an AdmissionReview the mutating webhooks read; the object stays raw until it is needed,
/// so that an object we cannot parse still gets an answer for its `uid`.
#[derive(Deserialize)]
struct Review<'a> {
    #[serde(borrow)]
    request: Option<ReviewRequest<'a>>,
}

#[derive(Deserialize)]
struct ReviewRequest<'a> {
    uid: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
}

/// The AdmissionReview answer of the mutating webhooks. Written here rather than with kube's
/// `AdmissionResponse`, which serializes the patch as an array of numbers (the API server accepts that, but
/// it is four times the size of the base64 string the API defines).
#[derive(Serialize)]
struct ReviewAnswer<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    response: AnswerBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AnswerBody<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<Vec<String>>,
}

/// An answer that admits the object, with a patch when there is one.
fn admit(uid: &str, patch: Option<json_patch::Patch>, warning: Option<String>) -> Response {
    use base64::Engine as _;
    let patch = patch
        .filter(|p| !p.0.is_empty())
        .and_then(|patch| match serde_json::to_vec(&patch) {
            Ok(json) => Some(base64::engine::general_purpose::STANDARD.encode(json)),
            Err(err) => {
                tracing::error!(%err, "cannot encode the patch; admitting unchanged");
                None
            }
        });
    json_response(&ReviewAnswer {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: AnswerBody {
            uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: warning.map(|w| vec![w]),
        },
    })
}

/// Reads a review within the memory budget and answers it with what `decide` says; a body that is not a
/// review gets a 400 (the API server then admits the object: `failurePolicy: Ignore`).
async fn answer(
    endpoints: &Endpoints,
    body: Body,
    endpoint: &'static str,
    decide: impl FnOnce(&ReviewRequest<'_>) -> (Option<json_patch::Patch>, Option<String>),
) -> Response {
    let started = Instant::now();
    let metrics = &endpoints.state.metrics;
    let (bytes, charge) = match read_body(body, &endpoints.budget).await {
        Ok(read) => read,
        Err(response) => {
            metrics.observe(endpoint, failure_outcome(&response), started.elapsed());
            return response;
        }
    };
    let request = match serde_json::from_slice::<Review<'_>>(&bytes) {
        Ok(Review {
            request: Some(request),
        }) => request,
        Ok(Review { request: None }) => {
            metrics.observe(endpoint, "bad_request", started.elapsed());
            return crate::handlers::bad_request("the AdmissionReview has no request".to_owned());
        }
        Err(err) => {
            metrics.observe(endpoint, "bad_request", started.elapsed());
            return crate::handlers::bad_request(format!(
                "the body is not an admission.k8s.io/v1 AdmissionReview: {err}"
            ));
        }
    };
    let (patch, warning) = decide(&request);
    drop(charge);
    metrics.observe(endpoint, "allowed", started.elapsed());
    admit(&request.uid, patch, warning)
}

/// `/inject`.
pub(crate) async fn inject(State(endpoints): State<Endpoints>, body: Body) -> Response {
    answer(&endpoints, body, "inject", |request| {
        let (patch, result, reason) = decide_pod(&endpoints, request);
        endpoints.state.metrics.injection(result, &reason);
        (patch, None)
    })
    .await
}

/// Runs the pod rules; any failure of ours becomes "admit unchanged" with a reason.
fn decide_pod(
    endpoints: &Endpoints,
    request: &ReviewRequest<'_>,
) -> (Option<json_patch::Patch>, &'static str, String) {
    let state = &endpoints.state;
    let namespace = request.namespace.clone().unwrap_or_default();
    let fail = |reason: &str, message: String| {
        if let Some(injection) = &state.injection {
            injection.events.send(QueuedEvent {
                regarding: Regarding::Namespace(namespace.clone()),
                warning: true,
                reason: reason.to_owned(),
                message,
                action: "Admit".to_owned(),
            });
        }
        (None, "failed", reason.to_owned())
    };
    let (Some(cluster), Some(injection)) = (&state.cluster, &state.injection) else {
        return fail(
            "InjectionNotConfigured",
            "the webhook server runs without cluster access or an init image; pods are admitted without \
             the OneAgent code module"
                .to_owned(),
        );
    };
    if !cluster.is_ready() {
        return fail(
            "CachesNotSynced",
            format!(
                "a pod in namespace {namespace} was admitted without the OneAgent code module: the webhook had \
                 not finished reading the cluster yet; restart the pod's workload to inject it"
            ),
        );
    }
    let pod: Pod = match request.object.map(|raw| serde_json::from_str(raw.get())) {
        Some(Ok(pod)) => pod,
        Some(Err(err)) => {
            return fail(
                "PodUnreadable",
                format!(
                    "a pod in namespace {namespace} could not be read ({err}); it was admitted unchanged"
                ),
            );
        }
        None => return fail("PodUnreadable", "the review carries no pod".to_owned()),
    };
    let Some(ns) = cluster.namespace(&namespace) else {
        return fail(
            "NamespaceNotCached",
            format!(
                "namespace {namespace} is not in the webhook's cache yet; restart the pod's workload to inject it"
            ),
        );
    };
    let Some(cluster_id) = cluster.cluster_id() else {
        return fail(
            "ClusterIdUnknown",
            "the UID of namespace kube-system (the cluster id) is not known; check that the webhook may list \
             namespaces"
                .to_owned(),
        );
    };
    let empty = Default::default();
    let labels = ns.metadata.labels.as_ref().unwrap_or(&empty);
    let annotations = ns.metadata.annotations.as_ref().unwrap_or(&empty);
    let dynakube = labels
        .get(pure_desired::mapping::INSTANCE_LABEL)
        .and_then(|name| cluster.dynakube(&injection.webhook_namespace, name));
    let csi_driver_installed = cluster
        .csi_driver_installed(&injection.webhook_namespace)
        .unwrap_or(false);
    let settings = Settings {
        init_image: injection.init_image.clone(),
        cluster_id,
        webhook_namespace: injection.webhook_namespace.clone(),
        csi_driver_installed,
    };
    let workload = pure_mutation::workload(&pod, |owner| owner_lookup(cluster, &namespace, owner));
    let pod_request = PodRequest {
        pod: &pod,
        namespace: NamespaceFacts {
            name: &namespace,
            labels,
            annotations,
        },
        dynakube: dynakube.as_deref(),
        init_secret_present: cluster.has_init_secret(&namespace),
        enrichment_secret_present: cluster.has_enrichment_secret(&namespace),
        workload,
        settings: &settings,
    };
    // The rules are pure and tested, but a panic in them must still admit the pod.
    let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pure_mutation::mutate_pod(&pod_request)
    })) {
        Ok(outcome) => outcome,
        Err(_) => {
            return fail(
                "InternalError",
                format!(
                    "the webhook failed on a pod in namespace {namespace} and admitted it unchanged; please \
                     report this with the webhook's log"
                ),
            );
        }
    };
    let PodOutcome {
        patch,
        result,
        events,
    } = outcome;
    for event in events {
        injection.events.send(QueuedEvent {
            regarding: match event.regarding {
                EventTarget::Namespace(namespace) => Regarding::Namespace(namespace),
                EventTarget::DynaKube { namespace, name } => Regarding::DynaKube { namespace, name },
            },
            warning: event.type_ == EventType::Warning,
            reason: event.reason.to_owned(),
            message: event.message,
            action: "Inject".to_owned(),
        });
    }
    match result {
        PodResult::Injected => (Some(patch), "injected", String::new()),
        PodResult::Updated => (Some(patch), "updated", String::new()),
        PodResult::Unchanged(skip) => {
            let label = if skip.is_failure() { "failed" } else { "skipped" };
            (None, label, skip.reason().to_owned())
        }
    }
}

/// One step of the owner chain from the caches: ReplicaSets, Jobs and ReplicationControllers are cached
/// (they are owned by the workload); any other kind is the top of its chain for us (`Missing` makes the
/// walk stop at it and name it).
fn owner_lookup(cluster: &crate::ClusterCache, namespace: &str, owner: &OwnerRef) -> Lookup {
    match cluster.owner_metadata(&owner.kind, namespace, &owner.name) {
        Some(metadata) => Lookup::Found(OwnerRef::controller_of(&metadata)),
        None => Lookup::Missing,
    }
}

/// `/label-ns`: labels a namespace for the DynaKube that selects it. Never denies: a conflict or a failure
/// of ours admits the namespace as it is, with an admission warning.
pub(crate) async fn label_namespace(State(endpoints): State<Endpoints>, body: Body) -> Response {
    answer(&endpoints, body, "label-ns", |request| {
        decide_namespace(&endpoints, request)
    })
    .await
}

fn decide_namespace(
    endpoints: &Endpoints,
    request: &ReviewRequest<'_>,
) -> (Option<json_patch::Patch>, Option<String>) {
    let state = &endpoints.state;
    let (Some(cluster), Some(injection)) = (&state.cluster, &state.injection) else {
        return (None, None);
    };
    let namespace: Namespace = match request.object.map(|raw| serde_json::from_str(raw.get())) {
        Some(Ok(namespace)) => namespace,
        _ => return (None, None),
    };
    if !cluster.is_ready() {
        return (
            None,
            Some(
                "the Dynatrace webhook had not read the cluster yet; the operator labels this namespace on its \
                 next pass"
                    .to_owned(),
            ),
        );
    }
    let dynakubes = cluster.dynakubes_in(&injection.webhook_namespace);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pure_mutation::label_namespace(&namespace, &dynakubes, &injection.webhook_namespace)
    })) {
        Ok(outcome) => (Some(outcome.patch), outcome.warning),
        Err(_) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_patch_is_a_base64_string_as_the_admission_api_defines() {
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            { "op": "add", "path": "/metadata/annotations", "value": { "a": "b" } }
        ]))
        .unwrap();
        let response = admit("uid-1", Some(patch.clone()), Some("careful".to_owned()));
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["response"]["uid"], "uid-1");
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        assert_eq!(answer["response"]["warnings"][0], "careful");
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<json_patch::Patch>(&decoded).unwrap(),
            patch
        );

        // No patch: no patchType either.
        let response = admit("uid-2", Some(json_patch::Patch(Vec::new())), None);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(answer["response"].get("patch").is_none() && answer["response"].get("patchType").is_none());
    }
}
