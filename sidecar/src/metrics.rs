//! The sidecar's Prometheus metrics. Labels are enums (or status codes), never free text, so their
//! cardinality is fixed.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which publish endpoint served a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
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
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Durability {
    Sync,
    Async,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoredLabels {
    pub durability: Durability,
}

/// Why the async buffer gave an event up.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DropReason {
    Rejected,
    Shutdown,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: DropReason,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ConnectionEvent {
    Connected,
    Disconnected,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub event: ConnectionEvent,
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub events_stored: Family<StoredLabels, Counter>,
    pub nats_connected: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub nats_connection_events: Family<ConnectionLabels, Counter>,
    pub async_buffered: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub async_dropped: Family<DropLabels, Counter<u64, AtomicU64>>,
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
        m
    }
}
