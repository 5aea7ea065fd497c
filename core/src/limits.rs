//! Every limit the sidecar puts on what reaches it from outside, in one place: what an app sends
//! to the publish API, what a pod's annotations (and the flags that stand in for them) say, what
//! the controller's key-value bucket holds, and what any client of a listener may do. Each limit
//! is named in the error that enforces it, and docs/SECURITY.md lists them all with the threat
//! each one answers.
//!
//! The numbers are chosen so that nothing one request can carry disturbs another: an accepted
//! event always encodes to a NATS subject well inside nats-server's 4 KiB control line (a longer
//! one makes the server close the connection every publish shares), and no configuration value
//! can overflow the arithmetic of retries and timeouts.

use std::fmt;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Events (the publish API, every content mode)

/// The longest `type`, in bytes.
pub const MAX_TYPE_BYTES: usize = 256;
/// The longest `source`, in bytes.
pub const MAX_SOURCE_BYTES: usize = 256;
/// The longest `id`, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// The longest `subject`, `dataschema` or `datacontenttype`, in bytes.
pub const MAX_URI_BYTES: usize = 1024;
/// The longest attribute name (the specification asks for at most 20 characters).
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 64;
/// The longest value of any other attribute (`time`, extensions), in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 4096;
/// Attributes of one event, the required ones included.
pub const MAX_ATTRIBUTES: usize = 64;
/// Names and values of all attributes of one event together, in bytes (before the
/// percent-encoding of headers, which may triple them).
pub const MAX_ATTRIBUTES_TOTAL_BYTES: usize = 32 << 10;
/// Events in one batch (`application/cloudevents-batch+json`).
pub const MAX_BATCH_EVENTS: usize = 1000;
/// The longest NATS subject an accepted event can have: `herald.`, the source token, and the
/// type tokens, every byte escaped (`~XX`) in the worst case. nats-server closes a connection
/// whose control line passes 4096 bytes; a publish's line is the subject and about 80 more.
pub const MAX_EVENT_SUBJECT_BYTES: usize =
    crate::subject::EVENT_PREFIX.len() + 1 + 3 * MAX_SOURCE_BYTES + 1 + 3 * MAX_TYPE_BYTES;
/// nats-server's default `max_control_line`, which [`MAX_EVENT_SUBJECT_BYTES`] stays well under.
pub const NATS_MAX_CONTROL_LINE: usize = 4096;
// A publish's control line is `HPUB <subject> <reply inbox> <header bytes> <bytes>`, and the
// inbox of async-nats is under 64 bytes: checked when herald is compiled.
const _: () = assert!(MAX_EVENT_SUBJECT_BYTES + 128 < NATS_MAX_CONTROL_LINE / 2);

// ---------------------------------------------------------------------------------------------
// HTTP listeners (publish, admin; the injector's webhook shares the server)

/// The largest request head (request line and headers), in bytes: above it hyper answers `431`.
/// Large enough that an oversized attribute reaches the event's own checks and gets a `400`
/// naming it.
pub const MAX_REQUEST_HEAD_BYTES: usize = 128 << 10;
/// Headers in one request (hyper's default; `431` above it).
pub const MAX_REQUEST_HEADERS: usize = 100;
/// Default time a client has to send a request head, counted from when the connection was
/// accepted or the previous response sent: so it is also how long a keep-alive connection may
/// stay idle.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a client has to send a request body once its head arrived (`408` after it).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default open connections of the publish API (one app's clients); more are closed at once.
pub const DEFAULT_PUBLISH_MAX_CONNECTIONS: usize = 1024;
/// Default open connections of the admin API (the kubelet's probes and Prometheus).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 128;
/// Range of `--max-connections` and `--admin-max-connections`.
pub const MAX_CONNECTIONS_RANGE: (usize, usize) = (1, 100_000);
/// Range of the header and body read timeouts.
pub const READ_TIMEOUT_RANGE: DurationRange =
    DurationRange::new(Duration::from_millis(100), Duration::from_secs(3600));
/// Bytes the async buffer may hold (data and attributes of buffered events), besides its count.
pub const DEFAULT_ASYNC_BUFFER_BYTES: u64 = 64 << 20;

// ---------------------------------------------------------------------------------------------
// Annotations and the flags that stand in for them

/// The largest value of `herald.dev/subscriptions` (the YAML form), in bytes.
pub const MAX_SUBSCRIPTIONS_ANNOTATION_BYTES: usize = 64 << 10;
/// The largest value of `herald.dev/subscribe` and `herald.dev/publish-allow`, in bytes.
pub const MAX_FILTER_LIST_BYTES: usize = 16 << 10;
/// The largest value of any other `herald.dev/*` annotation, in bytes (`herald.dev/filter` has
/// CESQL's own limit, [`herald_cesql::MAX_LENGTH`]).
pub const MAX_ANNOTATION_BYTES: usize = 1024;
/// Subscriptions of one pod (each is a JetStream consumer).
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Type filters in `herald.dev/publish-allow`.
pub const MAX_PUBLISH_ALLOW: usize = 64;
/// The longest type pattern of a filter, in bytes (as an event's `type`).
pub const MAX_FILTER_TYPE_BYTES: usize = MAX_TYPE_BYTES;
/// The longest source of a filter, in bytes (as an event's `source`).
pub const MAX_FILTER_SOURCE_BYTES: usize = MAX_SOURCE_BYTES;
/// The longest app id, in bytes (a Kubernetes object name's limit).
pub const MAX_APP_ID_BYTES: usize = 253;
/// The longest namespace, in bytes (a Kubernetes namespace name's limit).
pub const MAX_NAMESPACE_BYTES: usize = 63;
/// How deep attribute filters nest (`all`, `any`, `not` inside each other).
pub const MAX_FILTER_DEPTH: usize = 16;
/// Attribute filters of one subscription, counted through every nesting level.
pub const MAX_FILTERS: usize = 64;
/// The largest annotations file read from the downward API (Kubernetes keeps all annotations
/// of a pod under 256 KiB).
pub const MAX_ANNOTATIONS_FILE_BYTES: u64 = 1 << 20;

/// Delivery timeouts, backoffs and redelivery delays (annotations, flags, the cluster
/// defaults).
pub const DELIVERY_DURATION: DurationRange =
    DurationRange::new(Duration::from_millis(1), Duration::from_secs(24 * 3600));
/// `herald.dev/max-in-flight`, `maxInFlight`.
pub const MAX_IN_FLIGHT_RANGE: (u64, u64) = (1, 10_000);
/// `retry.maxAttempts`, `--max-attempts`.
pub const MAX_ATTEMPTS_RANGE: (u32, u32) = (1, 1000);
/// `retry.localAttempts`.
pub const LOCAL_ATTEMPTS_RANGE: (u32, u32) = (1, 10);

// ---------------------------------------------------------------------------------------------
// Flags of the process itself

/// `--publish-timeout`: the wait for JetStream's ack.
pub const PUBLISH_TIMEOUT: DurationRange =
    DurationRange::new(Duration::from_millis(1), Duration::from_secs(300));
/// `--shutdown-grace`.
pub const SHUTDOWN_GRACE: DurationRange =
    DurationRange::new(Duration::ZERO, Duration::from_secs(3600));
/// `herald.dev/shutdown-window`, `--shutdown-window`: how long the publish API stays up after
/// SIGTERM while the app may still publish (bounded again by `--shutdown-grace` at run time).
pub const SHUTDOWN_WINDOW: DurationRange =
    DurationRange::new(Duration::ZERO, Duration::from_secs(3600));
/// `herald wait --timeout`.
pub const WAIT_TIMEOUT: DurationRange =
    DurationRange::new(Duration::from_millis(1), Duration::from_secs(24 * 3600));
/// `--async-buffer` (events).
pub const ASYNC_BUFFER_RANGE: (usize, usize) = (1, 10_000_000);
/// `herald deadletter --since`.
pub const DEADLETTER_SINCE: DurationRange =
    DurationRange::new(Duration::ZERO, Duration::from_secs(36_500 * 86_400));
/// `herald bench --duration` and `--warmup`.
pub const BENCH_DURATION: DurationRange =
    DurationRange::new(Duration::ZERO, Duration::from_secs(24 * 3600));

// ---------------------------------------------------------------------------------------------
// The controller's key-value bucket

/// The largest value herald reads from the configuration bucket.
pub const MAX_KV_VALUE_BYTES: usize = 64 << 10;

/// An inclusive range of durations, printed as herald writes durations (`1ms`, `24h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

impl DurationRange {
    pub const fn new(min: Duration, max: Duration) -> Self {
        DurationRange { min, max }
    }

    /// `d` if it is in range, else the rule it breaks.
    pub fn check(&self, d: Duration) -> Result<Duration, String> {
        if d < self.min || d > self.max {
            Err(format!(
                "must be from {} to {}",
                human(self.min),
                human(self.max)
            ))
        } else {
            Ok(d)
        }
    }
}

impl fmt::Display for DurationRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to {}", human(self.min), human(self.max))
    }
}

/// A duration the way herald's flags take it: the largest unit that writes it exactly.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    // Days only from two on: `24h` reads better than `1d`.
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) && (unit != "d" || ms >= 2 * size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_event_fits_nats_control_line_with_margin() {
        let worst = crate::subject::event_subject(
            &"/".repeat(MAX_SOURCE_BYTES),
            &"/".repeat(MAX_TYPE_BYTES),
        );
        assert_eq!(worst.len(), MAX_EVENT_SUBJECT_BYTES);
    }

    #[test]
    fn ranges_name_their_bounds() {
        assert_eq!(
            DELIVERY_DURATION.check(Duration::from_secs(90_000)),
            Err("must be from 1ms to 24h".into())
        );
        assert!(DELIVERY_DURATION.check(Duration::from_secs(3600)).is_ok());
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
        assert_eq!(human(Duration::from_secs(120)), "2m");
    }
}
