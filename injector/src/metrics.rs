//! The injector's Prometheus metrics. Labels are enums, never free text, so their cardinality is
//! fixed; the free-text reason of a pod that could not be injected goes to the log.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use crate::mutate::NotInjected;

/// What the webhook answered for one pod.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    /// Not asked for.
    Skipped,
    Injected,
    /// The sidecar was already there (reinvocation).
    AlreadyInjected,
    /// Bad annotations.
    Denied,
    /// Asked for, admitted without the sidecar.
    NotInjected,
    /// The request could not be read (answered with an HTTP error).
    BadRequest,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub outcome: Outcome,
    pub dry_run: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotInjectedLabels {
    pub reason: NotInjected,
}

/// A Kubernetes API lookup the webhook makes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Lookup {
    CronJob,
    Namespace,
    NativeSidecarProbe,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub lookup: Lookup,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ReloadResult {
    Loaded,
    Rejected,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

pub struct Metrics {
    pub admissions: Family<AdmissionLabels, Counter>,
    /// Real injections only: dry runs are not counted.
    pub injections: Counter,
    /// Pods that asked for the sidecar and were admitted without it (dry runs not counted).
    pub not_injected: Family<NotInjectedLabels, Counter>,
    pub admission_seconds: Histogram,
    pub lookup_errors: Family<LookupLabels, Counter>,
    pub cert_reloads: Family<ReloadLabels, Counter>,
    /// 1 when sidecars are injected as native sidecars.
    pub native_sidecar: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            admissions: Family::default(),
            injections: Counter::default(),
            not_injected: Family::default(),
            // 100 µs to about 3 s: a lookup that waits on the apiserver shows up at the top.
            admission_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            lookup_errors: Family::default(),
            cert_reloads: Family::default(),
            native_sidecar: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("herald_injector");
        r.register(
            "admissions",
            "Pod admission requests answered, by outcome and dry run",
            m.admissions.clone(),
        );
        r.register(
            "injections",
            "Pods the sidecar was added to (dry runs not counted)",
            m.injections.clone(),
        );
        r.register(
            "not_injected",
            "Pods that asked for the sidecar but were admitted without it, by reason (dry runs not counted)",
            m.not_injected.clone(),
        );
        r.register(
            "admission_duration_seconds",
            "Time to answer one AdmissionReview, lookups included",
            m.admission_seconds.clone(),
        );
        r.register(
            "lookup_errors",
            "Kubernetes API lookups that failed or timed out",
            m.lookup_errors.clone(),
        );
        r.register(
            "certificate_reloads",
            "Webhook certificate reloads, by result (a rejected pair leaves the previous one serving)",
            m.cert_reloads.clone(),
        );
        r.register(
            "native_sidecar",
            "1 when the sidecar is injected as a native sidecar, 0 for a plain container",
            m.native_sidecar.clone(),
        );
        m
    }

    pub fn lookup_failed(&self, lookup: Lookup) {
        self.lookup_errors
            .get_or_create(&LookupLabels { lookup })
            .inc();
    }
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum PassResult {
    Ok,
    /// The pass ran but some step failed (it is logged; the next pass tries again).
    Error,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    pub result: PassResult,
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
    /// Storage use of the events stream in percent of its max bytes (-1 when unlimited).
    pub storage_used_percent: Gauge,
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
            storage_used_percent: Gauge::default(),
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
            "storage_used_percent",
            "Storage use of the events stream in percent of its max bytes (-1: no limit)",
            m.storage_used_percent.clone(),
        );
        m
    }
}
