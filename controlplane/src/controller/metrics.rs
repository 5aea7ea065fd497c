//! The controller's Prometheus metrics (`herald_controller_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum PassResult {
    Ok,
    /// The pass ran but some step failed (it is logged; the next pass tries again).
    Error,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    pub result: PassResult,
}

herald_runtime::snake_case_labels!(PassResult);

/// The labels of a metric that is a family only so that its one sample can be absent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NoLabels {}

impl ControllerMetrics {
    /// Sets the storage use, or removes the sample when it is unknown or unlimited.
    pub fn set_storage_used(&self, ratio: Option<f64>) {
        match ratio {
            Some(r) => {
                self.storage_used_ratio.get_or_create(&NoLabels {}).set(r);
            }
            None => self.storage_used_ratio.clear(),
        }
    }
}

/// What the stream controller measures (`herald_controller_*`).
pub struct ControllerMetrics {
    /// 1 on the replica holding the lease.
    pub leader: Gauge,
    pub passes: Family<PassLabels, Counter>,
    pub pass_seconds: Histogram,
    /// Pods that asked for the sidecar and run without it, at the last pass.
    pub missed_injections: Gauge,
    /// Consumers no workload subscribes to, waiting out the grace period.
    pub orphan_consumers: Gauge,
    pub orphans_deleted: Counter,
    /// Storage use of the events stream as a share of its max bytes; no sample when the stream
    /// has no limit (or its use is not known).
    pub storage_used_ratio: Family<NoLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The internal sources' (`herald_controller_source_*`).
    pub sources: std::sync::Arc<crate::sources::metrics::SourceMetrics>,
}

impl ControllerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = ControllerMetrics {
            leader: Gauge::default(),
            passes: Family::default(),
            // 1 ms to about 30 s: a pass is a handful of list calls and NATS requests.
            pass_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            missed_injections: Gauge::default(),
            orphan_consumers: Gauge::default(),
            orphans_deleted: Counter::default(),
            storage_used_ratio: Family::default(),
            sources: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("herald_controller");
        r.register(
            "leader",
            "1 on the replica that holds the controller lease",
            m.leader.clone(),
        );
        r.register(
            "passes",
            "Controller passes (streams, status, orphans, missed injections), by result",
            m.passes.clone(),
        );
        r.register(
            "pass_duration_seconds",
            "Time of one controller pass",
            m.pass_seconds.clone(),
        );
        r.register(
            "missed_injections",
            "Pods annotated herald.dev/inject that run without the sidecar (restart their workload)",
            m.missed_injections.clone(),
        );
        r.register(
            "orphan_consumers",
            "Consumers no workload subscribes to, waiting out the grace period before deletion",
            m.orphan_consumers.clone(),
        );
        r.register(
            "orphan_consumers_deleted",
            "Consumers deleted because no workload subscribed to them for the grace period",
            m.orphans_deleted.clone(),
        );
        r.register(
            "storage_used_ratio",
            "Storage use of the events stream as a share of its max bytes (absent when it has no limit)",
            m.storage_used_ratio.clone(),
        );
        m.sources.register(r);
        m
    }
}
