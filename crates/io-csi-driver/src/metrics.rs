//! The `csi-server`'s Prometheus metrics (`dynatrace_csi_driver_*`), served on `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// `app`, `host` or `unknown` (invalid requests, unpublish of a volume the driver never saw).
    mode: &'static str,
    /// `mounted`, `already_mounted`, `retry`, `empty`, `unmounted`, `invalid`, `error`.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// The metrics, cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    publishes: Family<CallLabels, Counter>,
    unpublishes: Family<CallLabels, Counter>,
    empty_volumes: Counter,
    events_dropped: Counter,
    versions: Family<VersionLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dynatrace_csi_driver");
        let publishes = Family::<CallLabels, Counter>::default();
        registry.register(
            "publishes",
            "NodePublishVolume calls by mode and outcome",
            publishes.clone(),
        );
        let unpublishes = Family::<CallLabels, Counter>::default();
        registry.register(
            "unpublishes",
            "NodeUnpublishVolume calls by mode and outcome",
            unpublishes.clone(),
        );
        let empty_volumes = Counter::default();
        registry.register(
            "empty_volumes",
            "App volumes published empty because their code module was not ready in time (the pods run unmonitored)",
            empty_volumes.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Pod events not written (no Kubernetes client, or the queue was full)",
            events_dropped.clone(),
        );
        let versions = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "agent_versions",
            "App volumes mounted now, by code-module version",
            versions.clone(),
        );
        Self {
            registry: Arc::new(registry),
            publishes,
            unpublishes,
            empty_volumes,
            events_dropped,
            versions,
        }
    }

    /// The registry, for `/metrics`.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Counts one publish.
    pub fn publish(&self, mode: &'static str, outcome: &'static str) {
        self.publishes.get_or_create(&CallLabels { mode, outcome }).inc();
    }

    /// Counts one unpublish.
    pub fn unpublish(&self, mode: &'static str, outcome: &'static str) {
        self.unpublishes
            .get_or_create(&CallLabels { mode, outcome })
            .inc();
    }

    /// Counts a volume published empty.
    pub fn empty_volume(&self) {
        self.empty_volumes.inc();
    }

    /// Counts an event not written.
    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    /// One more volume mounts `version`.
    pub fn version_mounted(&self, version: &str) {
        self.versions
            .get_or_create(&VersionLabels {
                version: version.to_owned(),
            })
            .inc();
    }

    /// One volume less mounts `version`; the series goes away at zero.
    pub fn version_unmounted(&self, version: &str) {
        let labels = VersionLabels {
            version: version.to_owned(),
        };
        let left = self.versions.get_or_create(&labels).dec() - 1;
        if left <= 0 {
            self.versions.remove(&labels);
        }
    }

    /// The text of `/metrics` (for tests).
    pub fn encode(&self) -> String {
        io_serving::probes::encode(&self.registry)
    }
}
