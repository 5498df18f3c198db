//! Prometheus metrics of the operator's controllers, and the plain-HTTP probes and metrics endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse as _;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the reconcile counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `dynakube`.
    pub controller: &'static str,
    /// `success`, `user_error` (fix the DynaKube or its Secrets), `tenant_unavailable` or `error`.
    pub outcome: &'static str,
}

/// Labels of the duration histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `dynakube`.
    pub controller: &'static str,
}

/// The operator's metrics and readiness.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<ReconcileLabels, Counter>,
    durations: Family<ControllerLabels, Histogram>,
    ready: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the metrics under the `dynatrace_operator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dynatrace_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles, by controller and outcome",
            reconciles.clone(),
        );
        // 1 ms to about 65 s: a reconcile may wait for the tenant's retries.
        let durations = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 17))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile took, by controller",
            durations.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciles,
            durations,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Records one reconcile.
    pub fn observe(&self, controller: &'static str, outcome: &'static str, elapsed: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, outcome })
            .inc();
        self.durations
            .get_or_create(&ControllerLabels { controller })
            .observe(elapsed.as_secs_f64());
    }

    /// Marks the operator ready (its controllers run).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// `/metrics`, `/livez` and `/readyz` (503 until [`Self::set_ready`]).
    pub fn router(&self) -> Router {
        let (metrics, ready) = (self.clone(), self.ready.clone());
        Router::new()
            .route(
                "/metrics",
                get(move || async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()) }),
            )
            .route("/livez", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || async move {
                    if ready.load(Ordering::Acquire) {
                        "ok".into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "the controllers are starting").into_response()
                    }
                }),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reconciles_by_outcome() {
        let metrics = Metrics::new();
        metrics.observe("dynakube", "success", Duration::from_millis(5));
        metrics.observe("dynakube", "user_error", Duration::from_millis(7));
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"dynatrace_operator_reconciles_total{controller="dynakube",outcome="success"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"dynatrace_operator_reconcile_duration_seconds_count{controller="dynakube"} 2"#),
            "{text}"
        );
    }
}
