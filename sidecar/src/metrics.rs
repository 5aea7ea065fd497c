//! The sidecar's Prometheus metrics. Labels are enums (or status codes), never free text, so their
//! cardinality is fixed; enum values are written in lower snake case (`dead_lettered`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which publish endpoint served a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Route {
    Publish,
    Events,
    Legacy,
    Other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Route,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Route,
}

/// How an event reached JetStream.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Durability {
    Sync,
    Async,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoredLabels {
    pub durability: Durability,
}

/// Why the async buffer gave an event up.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    Rejected,
    Shutdown,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: DropReason,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ConnectionEvent {
    Connected,
    Disconnected,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub event: ConnectionEvent,
}

/// What one delivery attempt came to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AttemptResult {
    /// The app answered 2xx.
    Delivered,
    /// A retryable failure (5xx, 404, 408, 409, 429, network, timeout).
    Retryable,
    /// A permanent failure (other 4xx).
    Permanent,
}

/// Where an event went in the end (per broker delivery).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Acked,
    /// Handed back for a later redelivery (delayed NAK).
    Redelivery,
    DeadLettered,
    /// Dropped because dead letters are off for the subscription.
    Dropped,
    /// Acknowledged without delivery: the event did not pass the subscription's filters.
    Filtered,
}

/// A subscription, by its filter. Filters come from the pod's configuration, not from events, so
/// the label's cardinality is the number of subscriptions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    pub subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub subscription: String,
    pub result: AttemptResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub subscription: String,
    pub outcome: DeliveryOutcome,
}

/// The kind of error that kept a filter from being evaluated on an event (CESQL's error kinds).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FilterErrorKind {
    Parse,
    Math,
    Cast,
    MissingAttribute,
    MissingFunction,
    FunctionEvaluation,
}

impl From<herald_cesql::ErrorKind> for FilterErrorKind {
    fn from(k: herald_cesql::ErrorKind) -> Self {
        use herald_cesql::ErrorKind as K;
        match k {
            K::Parse => Self::Parse,
            K::Math => Self::Math,
            K::Cast => Self::Cast,
            K::MissingAttribute => Self::MissingAttribute,
            K::MissingFunction => Self::MissingFunction,
            K::FunctionEvaluation => Self::FunctionEvaluation,
        }
    }
}

/// A filter that could not be evaluated on an event (so the event did not pass), by kind
/// (`missing_attribute`, `cast`, `math`, `function_evaluation`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterErrorLabels {
    pub subscription: String,
    pub kind: FilterErrorKind,
}

/// What a change of the annotations file came to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    /// The file changed but says the same.
    Unchanged,
    /// Invalid: the running configuration was kept.
    Rejected,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

herald_runtime::snake_case_labels!(
    Route,
    Durability,
    DropReason,
    ConnectionEvent,
    AttemptResult,
    DeliveryOutcome,
    FilterErrorKind,
    ReloadResult,
);

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub events_stored: Family<StoredLabels, Counter>,
    pub nats_connected: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub nats_connection_events: Family<ConnectionLabels, Counter>,
    pub async_buffered: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub async_dropped: Family<DropLabels, Counter<u64, AtomicU64>>,
    pub delivery_attempts: Family<AttemptLabels, Counter>,
    pub deliveries: Family<OutcomeLabels, Counter>,
    pub delivery_duration: Family<SubscriptionLabels, Histogram>,
    pub deliveries_in_flight: Family<SubscriptionLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    pub consumer_pending: Family<SubscriptionLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub filter_errors: Family<FilterErrorLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `herald` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            requests: Family::default(),
            // 50 µs .. ~6.5 s: a loopback publish takes well under a millisecond, an outage seconds.
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 2.0, 18))
            }),
            events_stored: Family::default(),
            nats_connected: Gauge::default(),
            nats_connection_events: Family::default(),
            async_buffered: Gauge::default(),
            async_dropped: Family::default(),
            delivery_attempts: Family::default(),
            deliveries: Family::default(),
            // 500 µs .. ~65 s: an app's handler, up to the attempt timeout.
            delivery_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 18))
            }),
            deliveries_in_flight: Family::default(),
            consumer_pending: Family::default(),
            config_reloads: Family::default(),
            filter_errors: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("herald");
        r.register(
            "publish_requests",
            "Publish API requests by route and HTTP status",
            m.requests.clone(),
        );
        r.register(
            "publish_request_duration_seconds",
            "Publish API request latency, from request to response",
            m.request_duration.clone(),
        );
        r.register(
            "events_stored",
            "Events acknowledged by JetStream",
            m.events_stored.clone(),
        );
        r.register(
            "nats_connected",
            "1 while the NATS connection is up",
            m.nats_connected.clone(),
        );
        r.register(
            "nats_connection_events",
            "NATS connects and disconnects",
            m.nats_connection_events.clone(),
        );
        r.register(
            "async_buffered_events",
            "Events waiting in the async buffer",
            m.async_buffered.clone(),
        );
        r.register(
            "async_dropped_events",
            "Async events given up, by reason",
            m.async_dropped.clone(),
        );
        r.register(
            "delivery_attempts",
            "HTTP delivery attempts to the app, by subscription and result",
            m.delivery_attempts.clone(),
        );
        r.register(
            "deliveries",
            "Broker deliveries by subscription and where the event went (acked, redelivery, dead-lettered, dropped, filtered)",
            m.deliveries.clone(),
        );
        r.register(
            "delivery_attempt_duration_seconds",
            "Time from sending an event to the app to its answer",
            m.delivery_duration.clone(),
        );
        r.register(
            "deliveries_in_flight",
            "Deliveries in progress in this sidecar",
            m.deliveries_in_flight.clone(),
        );
        r.register(
            "consumer_pending",
            "Events in the stream not yet delivered to this subscription's consumer (lag)",
            m.consumer_pending.clone(),
        );
        r.register(
            "filter_errors",
            "Events whose filter could not be evaluated (and so were not delivered), by CESQL error kind",
            m.filter_errors.clone(),
        );
        r.register(
            "config_reloads",
            "Changes of the annotations file, by result (applied, unchanged, rejected)",
            m.config_reloads.clone(),
        );
        m
    }
}
