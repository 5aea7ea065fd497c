//! What the internal sources measure (`herald_controller_source_*`, registered with the
//! controller's metrics, whose leader runs them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which kind of internal source published (docs/SOURCES.md).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum SourceKind {
    EventSchedule,
    KubernetesSource,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum SourceResult {
    /// Stored by the stream.
    Published,
    /// Not stored (retried).
    Failed,
    /// A schedule's tick found later than its starting deadline.
    Missed,
}

herald_runtime::snake_case_labels!(SourceKind, SourceResult);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub kind: SourceKind,
    pub result: SourceResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceKindLabels {
    pub kind: SourceKind,
}

pub struct SourceMetrics {
    /// Events of EventSchedules and KubernetesSources, by result.
    pub events: Family<SourceLabels, Counter>,
    /// From a tick's scheduled time, or from the moment a change was read from the apiserver,
    /// to the event stored.
    pub delay_seconds: Family<SourceKindLabels, Histogram, fn() -> Histogram>,
}

impl Default for SourceMetrics {
    fn default() -> Self {
        SourceMetrics {
            events: Family::default(),
            delay_seconds: Family::new_with_constructor(delay_histogram),
        }
    }
}

/// 1 ms to about 65 s.
fn delay_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl SourceMetrics {
    /// Registers under `r` (the controller's `herald_controller` prefix).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "source_events",
            "Events of EventSchedules and KubernetesSources, by kind and result",
            self.events.clone(),
        );
        r.register(
            "source_delay_seconds",
            "From a tick's scheduled time, or a change read from the apiserver, to its event stored",
            self.delay_seconds.clone(),
        );
    }

    pub fn delay(&self, kind: SourceKind, seconds: f64) {
        self.delay_seconds
            .get_or_create(&SourceKindLabels { kind })
            .observe(seconds);
    }

    pub fn event(&self, kind: SourceKind, result: SourceResult) {
        self.events
            .get_or_create(&SourceLabels { kind, result })
            .inc();
    }
}
