//! Prometheus metrics of the webhook server: requests by endpoint and outcome, and their latency.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Content type of [`Metrics::encode`]'s output.
pub use io_serving::probes::OPENMETRICS_CONTENT_TYPE as CONTENT_TYPE;

/// Labels of a request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `validate`, `convert`, ...
    pub endpoint: &'static str,
    /// `allowed`, `denied`, `converted`, `failed`, `bad_request`, `busy` (the memory budget was taken).
    pub outcome: &'static str,
}

/// Labels of the latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// `validate`, `convert`, ...
    pub endpoint: &'static str,
}

/// Labels of the pod-injection counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InjectionLabels {
    /// `injected`, `updated` (reinvocation added containers), `skipped` (the user's choice) or `failed`
    /// (something of ours was missing; the pod was admitted unchanged).
    pub result: &'static str,
    /// CamelCase reason, e.g. `InitSecretMissing`; empty for injected and updated pods.
    pub reason: String,
}

/// Labels of the event counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `written`, `failed`, `dropped` (the queue was full) or `throttled` (a Normal event over the rate).
    pub outcome: &'static str,
}

/// The webhook server's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram>,
    injections: Family<InjectionLabels, Counter>,
    events: Family<EventLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the metrics under the `dynatrace_webhook` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dynatrace_webhook");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests handled, by endpoint and outcome",
            requests.clone(),
        );
        // 0.25 ms to about 4 s.
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
        });
        registry.register(
            "request_duration_seconds",
            "Time to answer a request, by endpoint",
            latency.clone(),
        );
        let injections = Family::<InjectionLabels, Counter>::default();
        registry.register(
            "pod_injections",
            "Pods seen by /inject, by result and reason: every pod that was admitted without injection is \
             counted with the reason",
            injections.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Kubernetes events the webhook wrote, failed to write or dropped",
            events.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            latency,
            injections,
            events,
        }
    }

    /// Counts one pod seen by `/inject`.
    pub fn injection(&self, result: &'static str, reason: &str) {
        self.injections
            .get_or_create(&InjectionLabels {
                result,
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one event by outcome.
    pub fn event(&self, outcome: &'static str) {
        self.events.get_or_create(&EventLabels { outcome }).inc();
    }

    /// Records one answered request.
    pub fn observe(&self, endpoint: &'static str, outcome: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, outcome })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        io_serving::probes::encode(&self.registry)
    }

    /// The registry behind [`Self::encode`], for the `/metrics` endpoint.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_times_requests() {
        let metrics = Metrics::new();
        metrics.observe("validate", "denied", Duration::from_millis(2));
        metrics.observe("validate", "denied", Duration::from_millis(3));
        let text = metrics.encode();
        assert!(
            text.contains(r#"dynatrace_webhook_requests_total{endpoint="validate",outcome="denied"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("dynatrace_webhook_request_duration_seconds_count{endpoint=\"validate\"} 2"),
            "{text}"
        );
    }
}
