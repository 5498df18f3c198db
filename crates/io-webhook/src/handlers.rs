//! The webhook endpoints: `/validate` (DynaKube and OneAgent), `/convert` (DynaKube versions), `/inject`
//! and `/label-ns` (in [`crate::inject`]), `/livez` and `/readyz`.
//!
//! Anything that is not a well-formed review gets a 400 that says what was wrong; nothing a client sends
//! can panic or stall the server (bodies are capped in size and time, and the memory requests in flight
//! hold together is capped by a budget).

use std::time::{Duration, Instant};

use futures::StreamExt as _;

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
use pure_api::dynakube::conversion;
use pure_api::validation::{self, ClusterView, ProxySecret, Verdict};

use crate::budget::{self, JsonShape, MemoryBudget};
use crate::cluster::ClusterCache;
use crate::metrics::Metrics;

/// Largest request body accepted. The API server accepts objects of up to 3 MiB and etcd stores up to
/// 1.5 MiB, so an AdmissionReview of an update (object plus old object) stays under 5 MiB; a
/// ConversionReview of a list carries every listed object, which the remaining room leaves space for.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;
/// How long a client may take to send a body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Memory that the requests in flight may hold together: their bodies as they arrive, then the estimate
/// of their parsed form ([`budget::JsonShape::memory_estimate`]). Room for thousands of the few-KiB reviews
/// the API server sends at once, and for one review of about 5.5 MiB of ordinary Kubernetes JSON (a
/// value per 15 bytes): an update of the largest object the API server stores. Bodies whose estimate is
/// over the whole budget get a 400 that names their size and value count.
pub const MEMORY_BUDGET_BYTES: usize = 48 * 1024 * 1024;
/// How much of a body over the limit is read and thrown away so that the client, which is still sending,
/// receives the 400 instead of a connection reset. Larger bodies are cut off.
pub const DRAIN_LIMIT_BYTES: usize = 128 * 1024 * 1024;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Cluster caches for the rules that need cluster state; `None` runs those rules without it.
    pub cluster: Option<ClusterCache>,
    /// Request metrics.
    pub metrics: Metrics,
    /// What `/inject` and `/label-ns` need besides the caches; without it they admit everything unchanged.
    pub injection: Option<crate::inject::Injection>,
}

/// State of the admission and conversion endpoints.
#[derive(Clone)]
pub(crate) struct Endpoints {
    pub(crate) state: AppState,
    pub(crate) budget: MemoryBudget,
}

/// The webhook router: the admission and conversion endpoints plus the probes. The endpoints share a
/// memory budget of [`MEMORY_BUDGET_BYTES`].
pub fn router(state: AppState) -> Router {
    router_with_budget(state, MemoryBudget::new(MEMORY_BUDGET_BYTES))
}

/// [`router`] with the given memory budget.
pub fn router_with_budget(state: AppState, budget: MemoryBudget) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/convert", post(convert))
        .route(pure_install::INJECT_PATH, post(crate::inject::inject))
        .route(
            pure_install::LABEL_NAMESPACE_PATH,
            post(crate::inject::label_namespace),
        )
        .with_state(Endpoints {
            state: state.clone(),
            budget,
        })
        .merge(probes(state))
}

/// The probes only: `/livez` and `/readyz`.
pub fn probes(state: AppState) -> Router {
    io_serving::probes::probes(move || state.readiness())
}

impl AppState {
    /// Ready once the cluster caches (if any) have synced.
    pub fn readiness(&self) -> io_serving::probes::Readiness {
        match &self.cluster {
            Some(cluster) if !cluster.is_ready() => Err("waiting for the cluster caches to sync".into()),
            _ => Ok(()),
        }
    }
}

/// A 400 answer with a message for the client.
pub(crate) fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

/// A 503 answer: the memory budget is taken by other requests.
fn busy(budget: &MemoryBudget) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        format!(
            "the webhook is busy: requests in flight hold its memory budget of {} MiB; retry",
            budget.total() / (1024 * 1024)
        ),
    )
        .into_response()
}

/// Reads a body of at most [`MAX_BODY_BYTES`] within [`BODY_TIMEOUT`], charging its bytes to the budget as
/// they arrive, then charges the estimate of its parsed form. The returned charge is held until the
/// answer is ready.
pub(crate) async fn read_body(
    body: Body,
    budget: &MemoryBudget,
) -> Result<(Bytes, budget::Charge), Response> {
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    let too_slow = || bad_request(format!("the request body did not arrive within {BODY_TIMEOUT:?}"));
    let mut charge = budget.charge();
    let mut text = Vec::new();
    let mut stream = body.into_data_stream();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(too_slow()),
            Ok(None) => break,
            Ok(Some(Err(err))) => return Err(bad_request(format!("cannot read the request body: {err}"))),
            Ok(Some(Ok(chunk))) => chunk,
        };
        let length = text.len() + chunk.len();
        if length > MAX_BODY_BYTES {
            drop(text);
            drop(charge);
            drain(stream, deadline, length).await;
            return Err(bad_request(format!(
                "the request body is too large: at most {MAX_BODY_BYTES} bytes are accepted (an \
                 AdmissionReview or ConversionReview of objects the API server accepts is smaller)"
            )));
        }
        if !charge.grow(chunk.len()) {
            drop(text);
            drop(charge);
            drain(stream, deadline, length).await;
            return Err(busy(budget));
        }
        text.extend_from_slice(&chunk);
    }
    let shape = JsonShape::of(&text);
    if shape.depth > budget::MAX_DEPTH {
        return Err(bad_request(format!(
            "the request body nests arrays and objects {} levels deep; at most {} are accepted",
            shape.depth,
            budget::MAX_DEPTH
        )));
    }
    let estimate = shape.memory_estimate(text.len());
    if estimate > budget.total() {
        return Err(bad_request(format!(
            "the request body holds {} JSON values in {} bytes, which would take about {} MiB to parse; at \
             most {} MiB are available",
            shape.values,
            text.len(),
            estimate / (1024 * 1024),
            budget.total() / (1024 * 1024)
        )));
    }
    if !charge.grow_to(estimate) {
        return Err(busy(budget));
    }
    Ok((Bytes::from(text), charge))
}

/// Reads and discards the rest of a body (up to [`DRAIN_LIMIT_BYTES`] in all, until `deadline`): a client
/// that is still sending gets the answer instead of a connection reset.
async fn drain(mut stream: axum::body::BodyDataStream, deadline: tokio::time::Instant, mut length: usize) {
    while length <= DRAIN_LIMIT_BYTES {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => length += chunk.len(),
            _ => return,
        }
    }
}

pub(crate) fn json_response<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(json) => ([(axum::http::header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {err}"),
        )
            .into_response(),
    }
}

/// The metric outcome of a request that got no review back.
pub(crate) fn failure_outcome(response: &Response) -> &'static str {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        "busy"
    } else {
        "bad_request"
    }
}

async fn validate(State(endpoints): State<Endpoints>, body: Body) -> Response {
    let started = Instant::now();
    let state = &endpoints.state;
    let (response, outcome) = match parse_admission(body, &endpoints.budget).await {
        Ok((request, _)) if !matches!(request.kind.kind.as_str(), "DynaKube" | "OneAgent") => (
            bad_request(format!(
                "this endpoint validates DynaKube and OneAgent objects, not {}; check the rules of the \
                 ValidatingWebhookConfiguration",
                request.kind.kind
            )),
            "bad_request",
        ),
        Ok((request, charge)) => {
            let response = admit(state, request).await;
            drop(charge);
            let outcome = if response.allowed { "allowed" } else { "denied" };
            (json_response(&response.into_review()), outcome)
        }
        Err(response) => {
            let outcome = failure_outcome(&response);
            (response, outcome)
        }
    };
    state.metrics.observe("validate", outcome, started.elapsed());
    response
}

async fn parse_admission(
    body: Body,
    budget: &MemoryBudget,
) -> Result<(AdmissionRequest<DynamicObject>, budget::Charge), Response> {
    let (bytes, charge) = read_body(body, budget).await?;
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(&bytes).map_err(|err| {
        bad_request(format!(
            "the body is not an admission.k8s.io/v1 AdmissionReview: {err}"
        ))
    })?;
    drop(bytes);
    let request = review
        .try_into()
        .map_err(|err| bad_request(format!("the AdmissionReview has no usable request: {err}")))?;
    Ok((request, charge))
}

async fn admit(state: &AppState, mut request: AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let response = AdmissionResponse::from(&request);
    let Some(object) = request
        .object
        .take()
        .filter(|_| request.operation != Operation::Delete)
    else {
        return response;
    };
    let kind = request.kind.kind.as_str();
    let value = serde_json::to_value(&object);
    // One parsed copy at a time.
    drop(object);
    let value = match value {
        Ok(value) => value,
        Err(err) => return response.deny(format!("cannot read the {kind}: {err}")),
    };
    let verdict = match kind {
        "DynaKube" => {
            let api_version = format!("{}/{}", request.kind.group, request.kind.version);
            // The API server may have converted the object to a version the webhook's rules list; messages
            // name fields as the user wrote them, in the version of their request.
            let written_as = request
                .request_kind
                .as_ref()
                .map_or_else(|| api_version.clone(), |k| format!("{}/{}", k.group, k.version));
            match conversion::to_hub(value, &api_version) {
                Ok(dynakube) => validate_dynakube(state, &dynakube, &written_as).await,
                Err(err) => return response.deny(err.to_string()),
            }
        }
        "OneAgent" => match serde_json::from_value::<pure_api::oneagent::OneAgent>(value) {
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

async fn validate_dynakube(
    state: &AppState,
    dynakube: &pure_api::dynakube::DynaKube,
    written_as: &str,
) -> Verdict {
    let namespace = dynakube.namespace().unwrap_or_default();
    let Some(cluster) = &state.cluster else {
        return validation::validate_as(
            dynakube,
            written_as,
            &ClusterView::default(),
            &ProxySecret::NotLookedUp,
        );
    };
    let snapshot = cluster.snapshot();
    let csi_driver_installed = if dynakube.csi_driver_use().may_use() {
        cluster.csi_driver_installed(&namespace)
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
    validation::validate_as(dynakube, written_as, &view, &proxy_secret)
}

async fn convert(State(endpoints): State<Endpoints>, body: Body) -> Response {
    let started = Instant::now();
    let (response, outcome) = match read_body(body, &endpoints.budget).await {
        Err(response) => {
            let outcome = failure_outcome(&response);
            (response, outcome)
        }
        Ok((bytes, _charge)) => match serde_json::from_slice::<ConversionReview>(&bytes) {
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
                    drop(bytes);
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
    endpoints
        .state
        .metrics
        .observe("convert", outcome, started.elapsed());
    response
}

fn convert_objects(mut request: ConversionRequest) -> ConversionResponse {
    let desired = request.desired_api_version.clone();
    let converted: Result<Vec<_>, _> = std::mem::take(&mut request.objects)
        .into_iter()
        .map(|object| conversion::convert(object, &desired))
        .collect();
    match converted {
        Ok(objects) => ConversionResponse::for_request(request).success(objects),
        Err(err) => ConversionResponse::for_request(request)
            .failure(Status::failure(&err.to_string(), "ConversionFailed")),
    }
}
