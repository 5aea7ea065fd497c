//! The NATS side of the sidecar: one connection that reconnects forever, JetStream publishing
//! with an ack, and the classification of every NATS failure into a [`PublishError`] kind.
//!
//! Events are stored in the NATS binary form of the CloudEvents NATS binding: every attribute is a
//! `ce-<name>` header (values percent-encoded as in HTTP headers), `datacontenttype` is
//! `content-type`, the data is the payload. `Nats-Msg-Id` is `source` and `id` (each encoded, joined
//! by a space, which the encoding never produces), so a retried publish inside the stream's
//! duplicate window is stored once.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{
    self, context::PublishAckFuture, context::PublishErrorKind, message::PublishMessage,
};
use async_nats::{Client, ConnectOptions, HeaderMap, HeaderValue};
use rand::Rng as _;

use crate::error::PublishError;
use crate::event::{CE_PREFIX, Event, TraceContext, encode_header_value};
use crate::metrics::{ConnectionEvent, ConnectionLabels, Metrics};
use crate::subject::event_subject;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Comma-separated server URLs.
    pub url: String,
    /// Client name shown by the server (`herald-<app id>`).
    pub name: String,
    /// A NATS credentials file (user JWT and NKey seed).
    pub creds: Option<String>,
}

/// Backoff between reconnect attempts: 0, then doubling from 100 ms up to 5 s, with ±20% jitter
/// so a fleet of sidecars does not reconnect in lockstep after a NATS restart.
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let base = 100u64.saturating_mul(1 << (attempts - 2).min(6)).min(5_000);
    let jitter = rand::rng().random_range(0.8..1.2);
    Duration::from_millis((base as f64 * jitter) as u64)
}

/// Connects in the background: returns at once, even when NATS is down, and keeps reconnecting.
/// `closed` is notified once the connection is closed for good (after a drain).
pub async fn connect(
    cfg: &NatsConfig,
    metrics: Arc<Metrics>,
    closed: Arc<tokio::sync::Notify>,
) -> Result<Client, async_nats::ConnectError> {
    let servers: Vec<async_nats::ServerAddr> = cfg
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, e)
        })?;
    let options = match &cfg.creds {
        // Read once: a rotated credentials file takes effect when the sidecar restarts.
        Some(path) => ConnectOptions::new()
            .credentials_file(path)
            .await
            .map_err(|e| {
                async_nats::ConnectError::with_source(
                    async_nats::ConnectErrorKind::Authentication,
                    e,
                )
            })?,
        None => ConnectOptions::new(),
    };
    options
        .name(&cfg.name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let (metrics, closed) = (metrics.clone(), closed.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connected");
                        metrics.nats_connected.set(1);
                        metrics
                            .nats_connection_events
                            .get_or_create(&ConnectionLabels {
                                event: ConnectionEvent::Connected,
                            })
                            .inc();
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected; reconnecting");
                        metrics.nats_connected.set(0);
                        metrics
                            .nats_connection_events
                            .get_or_create(&ConnectionLabels {
                                event: ConnectionEvent::Disconnected,
                            })
                            .inc();
                    }
                    async_nats::Event::Closed => {
                        tracing::debug!("NATS connection closed");
                        closed.notify_one();
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        })
        .connect(servers)
        .await
}

/// One connection for a command that runs and exits (`herald stream info`, `herald deadletter`):
/// it fails at once instead of reconnecting forever. The error names the URL.
pub async fn connect_once(url: &str, creds: Option<&str>) -> Result<Client, String> {
    let options = match creds {
        Some(path) => ConnectOptions::new()
            .credentials_file(path)
            .await
            .map_err(|e| format!("--nats-creds={path:?}: {e}"))?,
        None => ConnectOptions::new(),
    };
    options
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))
}

/// Publishes events to JetStream.
#[derive(Clone)]
pub struct Broker {
    client: Client,
    js: jetstream::Context,
    stream: Arc<str>,
    ack_timeout: Duration,
}

impl Broker {
    pub fn new(client: Client, stream: &str, ack_timeout: Duration) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(ack_timeout)
            .build(client.clone());
        Broker {
            client,
            js,
            stream: stream.into(),
            ack_timeout,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Sends the event without waiting for the ack; await the returned future for it. Sending a
    /// batch first and awaiting the acks after pipelines the round trips.
    pub async fn send(&self, ev: &Event, trace: &TraceContext) -> Result<PendingAck, PublishError> {
        // Fail fast while disconnected: the client would queue the publish and the app would wait
        // for the ack timeout to learn what we already know.
        if !self.is_connected() {
            return Err(PublishError::Unavailable(
                "not connected (reconnecting)".into(),
            ));
        }
        let subject = event_subject(&ev.source, &ev.ty);
        let publish = PublishMessage::build()
            .headers(nats_headers(ev, trace))
            .payload(ev.data.clone());
        let fut = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(|e| self.classify(e))?;
        Ok(PendingAck {
            fut,
            broker: self.clone(),
        })
    }

    /// Sends the event and waits until JetStream has stored it.
    pub async fn publish(&self, ev: &Event, trace: &TraceContext) -> Result<(), PublishError> {
        self.send(ev, trace).await?.wait().await
    }

    fn classify(&self, err: jetstream::context::PublishError) -> PublishError {
        match err.kind() {
            PublishErrorKind::StreamNotFound => PublishError::NoStream(self.stream.to_string()),
            PublishErrorKind::TimedOut if !self.is_connected() => {
                PublishError::Unavailable("connection lost before the ack arrived".into())
            }
            PublishErrorKind::TimedOut => PublishError::Timeout(self.ack_timeout),
            PublishErrorKind::BrokenPipe => {
                PublishError::Unavailable("connection lost before the ack arrived".into())
            }
            PublishErrorKind::MaxAckPending => {
                PublishError::Unavailable("too many publishes waiting for an ack".into())
            }
            PublishErrorKind::MaxPayloadExceeded => PublishError::TooLarge {
                what: "the event (data and attributes)",
                limit: self.client.server_info().max_payload as u64,
            },
            _ => classify_server_error(&err),
        }
    }
}

/// Maps a JetStream API error in a publish ack to its kind.
fn classify_server_error(err: &jetstream::context::PublishError) -> PublishError {
    use std::error::Error as _;
    let Some(api) = err
        .source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
    else {
        return PublishError::Internal(format!("publish failed: {err}"));
    };
    let code = api.error_code();
    let text = api.to_string();
    use jetstream::ErrorCode as C;
    if code == C::STORAGE_RESOURCES_EXCEEDED
        || code == C::INSUFFICIENT_RESOURCES
        || code == C::MEMORY_RESOURCES_EXCEEDED
        || (code == C::STREAM_STORE_FAILED
            && (text.contains("maximum bytes") || text.contains("maximum messages")))
    {
        PublishError::StreamFull(text)
    } else if code == C::STREAM_MESSAGE_EXCEEDS_MAXIMUM {
        PublishError::TooLarge {
            what: "the event (data and attributes)",
            limit: 0,
        }
    } else {
        PublishError::Internal(format!("JetStream refused the event: {text}"))
    }
}

/// A sent publish waiting for its ack.
pub struct PendingAck {
    fut: PublishAckFuture,
    broker: Broker,
}

impl PendingAck {
    pub async fn wait(self) -> Result<(), PublishError> {
        self.fut
            .await
            .map(|_| ())
            .map_err(|e| self.broker.classify(e))
    }
}

/// A NATS header value. async-nats panics on a value with a line break; every value herald
/// writes is validated or encoded before it gets here, and this makes sure: a line break that
/// slipped through becomes a space instead of a panic.
pub fn header_value(v: &str) -> HeaderValue {
    v.parse()
        .unwrap_or_else(|_| v.replace(['\r', '\n'], " ").parse().unwrap_or_default())
}

/// The NATS headers of a stored event.
pub fn nats_headers(ev: &Event, trace: &TraceContext) -> HeaderMap {
    let mut h = HeaderMap::new();
    // Attribute names are validated `[a-z0-9]+`, so these header names are always legal, and
    // values are percent-encoded (no control characters).
    h.insert("ce-specversion", "1.0");
    h.insert("ce-id", header_value(&encode_header_value(&ev.id)));
    h.insert("ce-source", header_value(&encode_header_value(&ev.source)));
    h.insert("ce-type", header_value(&encode_header_value(&ev.ty)));
    for (name, value) in &ev.attributes {
        h.insert(
            format!("{CE_PREFIX}{name}"),
            header_value(&encode_header_value(value)),
        );
    }
    if let Some(ct) = &ev.datacontenttype {
        h.insert("content-type", header_value(ct));
    }
    if let Some(tp) = &trace.traceparent {
        h.insert("traceparent", header_value(tp));
    }
    if let Some(ts) = &trace.tracestate {
        h.insert("tracestate", header_value(ts));
    }
    h.insert(
        async_nats::header::NATS_MESSAGE_ID,
        header_value(&msg_id(ev)),
    );
    h
}

/// The deduplication id: `source` and `id` joined by a space (encoded values never contain one).
pub fn msg_id(ev: &Event) -> String {
    format!(
        "{} {}",
        encode_header_value(&ev.source),
        encode_header_value(&ev.id)
    )
}
