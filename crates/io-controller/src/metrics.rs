//! Prometheus metrics of the operator's controllers, and the plain-HTTP probes and metrics endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

/// Labels of the tenant call metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantCallLabels {
    /// The Dynatrace API endpoint, for example `connection-info`.
    pub endpoint: &'static str,
    /// `success`, `unauthorized`, `throttled`, `client_error`, `server_error` or `transport_error`.
    pub outcome: &'static str,
}

/// Labels of the leader gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    /// The Lease's name.
    pub lease: String,
}

/// Labels of the per-DynaKube metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DynaKubeLabels {
    /// The DynaKube's namespace.
    pub namespace: String,
    /// The DynaKube's name.
    pub dynakube: String,
}

/// The operator's metrics and readiness.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<ReconcileLabels, Counter>,
    durations: Family<ControllerLabels, Histogram>,
    tenant_calls: Family<TenantCallLabels, Counter>,
    tenant_call_durations: Family<TenantCallLabels, Histogram>,
    leader: Family<LeaseLabels, Gauge>,
    status_writes: Family<ControllerLabels, Counter>,
    pods_not_injected: Family<DynaKubeLabels, Gauge>,
    missed_injection_restarts: Family<DynaKubeLabels, Counter>,
    storage_migration_rewrites: Counter,
    storage_migrations: Counter,
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
        let tenant_calls = Family::<TenantCallLabels, Counter>::default();
        registry.register(
            "tenant_api_calls",
            "HTTP attempts at the Dynatrace API (each retry counts), by endpoint and outcome",
            tenant_calls.clone(),
        );
        // 5 ms to about 40 s: the client's request timeout is 30 s.
        let tenant_call_durations = Family::<TenantCallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "tenant_api_call_duration_seconds",
            "Time one HTTP attempt at the Dynatrace API took, by endpoint and outcome",
            tenant_call_durations.clone(),
        );
        let leader = Family::<LeaseLabels, Gauge>::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controllers, else 0",
            leader.clone(),
        );
        let status_writes = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "status_writes",
            "Status writes to the API server, by controller (none when nothing changed)",
            status_writes.clone(),
        );
        let pods_not_injected = Family::<DynaKubeLabels, Gauge>::default();
        registry.register(
            "pods_not_injected",
            "Running pods in the namespaces a DynaKube injects into that the webhook did not inject, at the \
             last check",
            pods_not_injected.clone(),
        );
        let missed_injection_restarts = Family::<DynaKubeLabels, Counter>::default();
        registry.register(
            "missed_injection_restarts",
            "Workloads restarted because their pods were not injected (feature flag \
             restart-missed-injections)",
            missed_injection_restarts.clone(),
        );
        let storage_migration_rewrites = Counter::default();
        registry.register(
            "storage_migration_rewrites",
            "DynaKubes rewritten so that the API server stores them at the CRD's storage version",
            storage_migration_rewrites.clone(),
        );
        let storage_migrations = Counter::default();
        registry.register(
            "storage_migrations",
            "Storage migrations finished: every DynaKube rewritten and the CRD's status.storedVersions \
             trimmed to the storage version",
            storage_migrations.clone(),
        );
        Self {
            storage_migration_rewrites,
            storage_migrations,
            status_writes,
            pods_not_injected,
            missed_injection_restarts,
            registry: Arc::new(registry),
            reconciles,
            durations,
            tenant_calls,
            tenant_call_durations,
            leader,
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

    /// Records one status write of `controller`.
    pub fn status_written(&self, controller: &'static str) {
        self.status_writes
            .get_or_create(&ControllerLabels { controller })
            .inc();
    }

    /// How many status writes `controller` made.
    pub fn status_writes(&self, controller: &'static str) -> u64 {
        self.status_writes
            .get_or_create(&ControllerLabels { controller })
            .get()
    }

    /// Records one DynaKube rewritten by the storage migration.
    pub fn storage_migration_rewrote(&self) {
        self.storage_migration_rewrites.inc();
    }

    /// Records a finished storage migration.
    pub fn storage_migration_done(&self) {
        self.storage_migrations.inc();
    }

    /// Records the running pods of a DynaKube's namespaces that were not injected.
    pub fn set_pods_not_injected(&self, namespace: &str, dynakube: &str, count: usize) {
        self.pods_not_injected
            .get_or_create(&dynakube_labels(namespace, dynakube))
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Drops a DynaKube's injection metrics (it is gone, or injects nothing any more).
    pub fn forget_dynakube(&self, namespace: &str, dynakube: &str) {
        let labels = dynakube_labels(namespace, dynakube);
        self.pods_not_injected.remove(&labels);
        self.missed_injection_restarts.remove(&labels);
    }

    /// Records a workload restarted for a DynaKube's missed injections.
    pub fn missed_injection_restarted(&self, namespace: &str, dynakube: &str) {
        self.missed_injection_restarts
            .get_or_create(&dynakube_labels(namespace, dynakube))
            .inc();
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, lease: &str, leading: bool) {
        self.leader
            .get_or_create(&LeaseLabels {
                lease: lease.to_owned(),
            })
            .set(i64::from(leading));
    }

    /// Marks the operator ready (its controllers run).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        io_serving::probes::encode(&self.registry)
    }

    /// `/metrics`, `/livez` and `/readyz` (503 until [`Self::set_ready`]).
    pub fn router(&self) -> Router {
        let ready = self.ready.clone();
        io_serving::probes::probes_and_metrics(self.registry.clone(), move || {
            if ready.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("the controllers are starting".into())
            }
        })
    }
}

fn dynakube_labels(namespace: &str, dynakube: &str) -> DynaKubeLabels {
    DynaKubeLabels {
        namespace: namespace.to_owned(),
        dynakube: dynakube.to_owned(),
    }
}

impl io_tenant_client::CallObserver for Metrics {
    fn observe(&self, endpoint: &'static str, outcome: io_tenant_client::CallOutcome, elapsed: Duration) {
        let labels = TenantCallLabels {
            endpoint,
            outcome: outcome.as_str(),
        };
        self.tenant_calls.get_or_create(&labels).inc();
        self.tenant_call_durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
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

    #[test]
    fn counts_tenant_calls_by_endpoint_and_outcome() {
        use io_tenant_client::CallOutcome;
        let metrics = Metrics::new();
        metrics.observe_call("connection-info", CallOutcome::Throttled);
        metrics.observe_call("connection-info", CallOutcome::Success);
        metrics.observe_call("connection-info", CallOutcome::Success);
        metrics.set_leader("dynatrace-operator-lock", true);
        let text = metrics.encode();
        for line in [
            r#"dynatrace_operator_tenant_api_calls_total{endpoint="connection-info",outcome="success"} 2"#,
            r#"dynatrace_operator_tenant_api_calls_total{endpoint="connection-info",outcome="throttled"} 1"#,
            r#"dynatrace_operator_leader{lease="dynatrace-operator-lock"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    impl Metrics {
        fn observe_call(&self, endpoint: &'static str, outcome: io_tenant_client::CallOutcome) {
            io_tenant_client::CallObserver::observe(self, endpoint, outcome, Duration::from_millis(3));
        }
    }
}
