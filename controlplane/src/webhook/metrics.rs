//! The webhook's Prometheus metrics (`herald_injector_*`). Labels are enums, never free text, so
//! their cardinality is fixed; the free-text reason of a pod that could not be injected goes to
//! the log.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use super::mutate::NotInjected;

/// What the webhook answered for one pod.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Lookup {
    CronJob,
    Namespace,
    NativeSidecarProbe,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub lookup: Lookup,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
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

herald_runtime::snake_case_labels!(Outcome, Lookup, ReloadResult, NotInjected);
