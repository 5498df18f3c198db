//! The webhook endpoints: `/validate` (DynaKube and OneAgent), `/convert` (DynaKube versions), `/livez`
//! and `/readyz`.
//!
//! Anything that is not a well-formed review gets a 400 that says what was wrong; nothing a client sends
//! can panic or stall the server (bodies are capped in size and time).

use std::time::{Duration, Instant};

use api::dynakube::conversion;
use api::validation::{self, ClusterView, ProxySecret, Verdict};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::ResourceExt as _;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::conversion::{ConversionRequest, ConversionResponse, ConversionReview};
use kube::core::response::Status;

use crate::cluster::ClusterCache;
use crate::metrics::Metrics;

/// Largest request body accepted: the API server's own limit for an object is 3 MiB; a review wraps it.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;
/// How long a client may take to send a body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Cluster caches for the rules that need cluster state; `None` runs those rules without it.
    pub cluster: Option<ClusterCache>,
    /// Request metrics.
    pub metrics: Metrics,
}

/// The webhook router: the admission and conversion endpoints plus the probes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/convert", post(convert))
        .with_state(state.clone())
        .merge(probes(state))
}

/// The probes only: `/livez` and `/readyz`.
pub fn probes(state: AppState) -> Router {
    serving::probes::probes(move || state.readiness())
}

impl AppState {
    /// Ready once the cluster caches (if any) have synced.
    pub fn readiness(&self) -> serving::probes::Readiness {
        match &self.cluster {
            Some(cluster) if !cluster.is_ready() => Err("waiting for the cluster caches to sync".into()),
            _ => Ok(()),
        }
    }
}

/// A 400 answer with a message for the client.
fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

async fn read_body(body: Body) -> Result<Bytes, Response> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) => Err(bad_request(format!(
            "cannot read the request body (at most {MAX_BODY_BYTES} bytes are accepted): {err}"
        ))),
        Err(_) => Err(bad_request(format!(
            "the request body did not arrive within {BODY_TIMEOUT:?}"
        ))),
    }
}

fn json_response<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(json) => ([(axum::http::header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {err}"),
        )
            .into_response(),
    }
}

async fn validate(State(state): State<AppState>, body: Body) -> Response {
    let started = Instant::now();
    let (response, outcome) = match parse_admission(body).await {
        Ok(request) if !matches!(request.kind.kind.as_str(), "DynaKube" | "OneAgent") => (
            bad_request(format!(
                "this endpoint validates DynaKube and OneAgent objects, not {}; check the rules of the \
                 ValidatingWebhookConfiguration",
                request.kind.kind
            )),
            "bad_request",
        ),
        Ok(request) => {
            let response = admit(&state, &request).await;
            let outcome = if response.allowed { "allowed" } else { "denied" };
            (json_response(&response.into_review()), outcome)
        }
        Err(response) => (response, "bad_request"),
    };
    state.metrics.observe("validate", outcome, started.elapsed());
    response
}

async fn parse_admission(body: Body) -> Result<AdmissionRequest<DynamicObject>, Response> {
    let bytes = read_body(body).await?;
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(&bytes).map_err(|err| {
        bad_request(format!(
            "the body is not an admission.k8s.io/v1 AdmissionReview: {err}"
        ))
    })?;
    review
        .try_into()
        .map_err(|err| bad_request(format!("the AdmissionReview has no usable request: {err}")))
}

async fn admit(state: &AppState, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let Some(object) = request
        .object
        .as_ref()
        .filter(|_| request.operation != Operation::Delete)
    else {
        return response;
    };
    let kind = request.kind.kind.as_str();
    let value = match serde_json::to_value(object) {
        Ok(value) => value,
        Err(err) => return response.deny(format!("cannot read the {kind}: {err}")),
    };
    let verdict = match kind {
        "DynaKube" => {
            let api_version = format!("{}/{}", request.kind.group, request.kind.version);
            match conversion::to_hub(value, &api_version) {
                Ok(dynakube) => validate_dynakube(state, &dynakube).await,
                Err(err) => return response.deny(err.to_string()),
            }
        }
        "OneAgent" => match serde_json::from_value::<api::oneagent::OneAgent>(value) {
            Ok(oneagent) => validation::validate_oneagent(&oneagent),
            Err(err) => return response.deny(format!("the OneAgent does not match its schema: {err}")),
        },
        // `validate` only passes the two kinds above.
        _ => return response,
    };
    let denial = verdict.denial_for(if kind == "DynaKube" { "Dynakube" } else { kind });
    let mut response = match denial {
        Some(message) => response.deny(message),
        None => response,
    };
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings);
    }
    response
}

async fn validate_dynakube(state: &AppState, dynakube: &api::dynakube::DynaKube) -> Verdict {
    let namespace = dynakube.namespace().unwrap_or_default();
    let Some(cluster) = &state.cluster else {
        return validation::validate(dynakube, &ClusterView::default(), &ProxySecret::NotLookedUp);
    };
    let snapshot = cluster.snapshot();
    let csi_driver_installed = if dynakube.needs_csi_driver() {
        cluster.csi_driver_installed(&namespace).await
    } else {
        None
    };
    let istio_installed = if dynakube.spec.enable_istio == Some(true) {
        cluster.istio_installed().await
    } else {
        None
    };
    let proxy_secret = match dynakube.spec.proxy.as_ref().and_then(|p| p.value_from.as_deref()) {
        Some(name) if !name.is_empty() => cluster.proxy_secret(&namespace, name).await,
        _ => ProxySecret::NotLookedUp,
    };
    let view = ClusterView {
        dynakubes: &snapshot.dynakubes,
        nodes: &snapshot.nodes,
        namespaces: &snapshot.namespaces,
        csi_driver_installed,
        istio_installed,
    };
    validation::validate(dynakube, &view, &proxy_secret)
}

async fn convert(State(state): State<AppState>, body: Body) -> Response {
    let started = Instant::now();
    let (response, outcome) = match read_body(body).await {
        Err(response) => (response, "bad_request"),
        Ok(bytes) => match serde_json::from_slice::<ConversionReview>(&bytes) {
            Err(err) => (
                bad_request(format!(
                    "the body is not an apiextensions.k8s.io/v1 ConversionReview: {err}"
                )),
                "bad_request",
            ),
            Ok(review) => match ConversionRequest::from_review(review) {
                Err(err) => (
                    bad_request(format!("the ConversionReview has no usable request: {err}")),
                    "bad_request",
                ),
                Ok(request) => {
                    let response = convert_objects(request);
                    let outcome = if response.result.is_success() {
                        "converted"
                    } else {
                        "failed"
                    };
                    (json_response(&response.into_review()), outcome)
                }
            },
        },
    };
    state.metrics.observe("convert", outcome, started.elapsed());
    response
}

fn convert_objects(request: ConversionRequest) -> ConversionResponse {
    let desired = request.desired_api_version.clone();
    let converted: Result<Vec<_>, _> = request
        .objects
        .iter()
        .map(|object| conversion::convert(object.clone(), &desired))
        .collect();
    match converted {
        Ok(objects) => ConversionResponse::for_request(request).success(objects),
        Err(err) => ConversionResponse::for_request(request)
            .failure(Status::failure(&err.to_string(), "ConversionFailed")),
    }
}
