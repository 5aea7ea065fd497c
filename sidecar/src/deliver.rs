//! Delivery: from a subscription's pull consumer to the app, over HTTP, at least once.
//!
//! A subscription pulls only as many events as it has free slots (`max in flight`), so nothing
//! waits in a local buffer that a crash would strand. Each event is POSTed to
//! `http://127.0.0.1:<app-port><path>` in binary mode: the stored `ce-*` headers are copied as they
//! are (they are already in the HTTP binding's encoding), with `content-type`, `traceparent`,
//! `tracestate` and `herald-delivery-attempt`.
//!
//! Before a slot is taken, the event is checked against the subscription's attribute filters
//! ([`crate::attrfilter`]); one that does not pass is acknowledged without delivery and counted.
//!
//! Outcomes: `2xx` acks. `429`, `503`, other `5xx`, `404`, `408`, `409`, network errors and timeouts
//! are retried; `429`/`503` honour `Retry-After`. Other `4xx` are permanent and dead-lettered at once.
//! Retries follow one budget (`max_attempts`) over two levels: a few quick local attempts with
//! jittered exponential backoff (the ack deadline is extended meanwhile), then a delayed NAK so
//! JetStream redelivers later, which survives a sidecar restart. The attempt number is derived from
//! JetStream's delivery count, so the budget survives restarts too. When the budget is spent the
//! event is written to the dead-letter stream with the reason, the last status and the attempt
//! count, and only then is the original terminated; if that write fails, the event is NAKed, never
//! dropped.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message};
use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use rand::Rng as _;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::attrfilter;
use crate::broker::header_value;
use crate::consumer::{self, Subscriber};
use crate::metrics::{
    AttemptLabels, AttemptResult, DeliveryOutcome, FilterErrorLabels, Metrics, OutcomeLabels,
    SubscriptionLabels,
};
use crate::shutdown::Shutdown;
use crate::subject::{EVENT_PREFIX, encode_token_into};
use crate::subscribe::{DeliveryMode, Subscription};

/// Header with the attempt number (1 for the first delivery).
pub const ATTEMPT_HEADER: &str = "herald-delivery-attempt";
/// Prefix of dead-letter subjects.
pub const DLQ_PREFIX: &str = "herald-dlq";

/// Headers a dead letter carries besides the original event's; `herald deadletter` reads them.
pub mod dlq_header {
    /// Every dead-letter header starts with this (replay strips them).
    pub const PREFIX: &str = "Herald-Dlq-";
    pub const REASON: &str = "Herald-Dlq-Reason";
    pub const STATUS: &str = "Herald-Dlq-Status";
    pub const ATTEMPTS: &str = "Herald-Dlq-Attempts";
    pub const SUBSCRIBER: &str = "Herald-Dlq-Subscriber";
    pub const SUBJECT: &str = "Herald-Dlq-Subject";
    pub const CONSUMER: &str = "Herald-Dlq-Consumer";
}
/// A `Retry-After` or backoff longer than this is waited out by the broker (delayed NAK), not in
/// the sidecar.
const LONGEST_LOCAL_WAIT: Duration = Duration::from_secs(2);
/// How long one pull request waits for events. Short, because at shutdown the sidecar keeps its
/// open request until it ends (see [`Deliverer::run`]).
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Retry {
        status: Option<u16>,
        retry_after: Option<Duration>,
        reason: String,
    },
    Permanent {
        status: u16,
        reason: String,
    },
}

/// Classifies the app's answer.
pub fn classify(status: StatusCode, retry_after: Option<&HeaderValue>) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        return Outcome::Delivered;
    }
    let retryable = status.is_server_error() || matches!(code, 404 | 408 | 409 | 429);
    if retryable {
        let retry_after = if matches!(code, 429 | 503) {
            retry_after.and_then(parse_retry_after)
        } else {
            None
        };
        Outcome::Retry {
            status: Some(code),
            retry_after,
            reason: format!("the app answered {status}"),
        }
    } else {
        Outcome::Permanent {
            status: code,
            reason: format!("the app answered {status}, which is not retried"),
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from apps and is ignored).
fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    v.to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(3600)))
}

/// `d` ±20 %. Computed in seconds so that no duration can make it panic (`mul_f64` does on
/// overflow); configured durations are at most a day anyway.
fn jitter(d: Duration) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * rand::rng().random_range(0.8..1.2)).unwrap_or(d)
}

/// What one subscription delivers to, as currently configured. Replaced as a whole on reload;
/// each delivery keeps the snapshot it started with.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub sub: Subscription,
    pub app_port: u16,
}

/// Delivers events of all subscriptions of one app.
pub struct Deliverer {
    http: Client<HttpConnector, Full<Bytes>>,
    js: jetstream::Context,
    stream: String,
    who: Subscriber,
    metrics: Arc<Metrics>,
}

impl Deliverer {
    pub fn new(
        js: jetstream::Context,
        stream: &str,
        who: Subscriber,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // Connections to the app are reused; the pool keeps as many as deliveries in flight.
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Arc::new(Deliverer {
            http,
            js,
            stream: stream.to_owned(),
            who,
            metrics,
        })
    }

    /// One HTTP attempt, measured.
    async fn attempt(&self, target: &Target, msg: &Message, attempt: u32) -> Outcome {
        let label = SubscriptionLabels {
            subscription: target.sub.filter.to_string(),
        };
        let started = std::time::Instant::now();
        let outcome = self.send(target, msg, attempt).await;
        self.metrics
            .delivery_duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        let result = match outcome {
            Outcome::Delivered => AttemptResult::Delivered,
            Outcome::Retry { .. } => AttemptResult::Retryable,
            Outcome::Permanent { .. } => AttemptResult::Permanent,
        };
        self.metrics
            .delivery_attempts
            .get_or_create(&AttemptLabels {
                subscription: label.subscription,
                result,
            })
            .inc();
        outcome
    }

    fn count(&self, sub: &Subscription, outcome: DeliveryOutcome) {
        self.metrics
            .deliveries
            .get_or_create(&OutcomeLabels {
                subscription: sub.filter.to_string(),
                outcome,
            })
            .inc();
    }

    /// Whether the event passes the subscription's attribute filters. A filter that cannot be
    /// evaluated on it (a missing attribute, a failed cast) is no match, and is counted by kind.
    fn passes(&self, sub: &Subscription, msg: &Message) -> bool {
        if sub.filters.is_empty() {
            return true;
        }
        let empty = async_nats::HeaderMap::new();
        let headers = msg.headers.as_ref().unwrap_or(&empty);
        let mut error = None;
        let pass = attrfilter::matches_all(
            &sub.filters,
            &attrfilter::StoredAttributes(headers),
            &mut error,
        );
        if let Some(kind) = error {
            tracing::debug!(subscription = %sub.filter, %kind, "a filter could not be evaluated on an event");
            self.metrics
                .filter_errors
                .get_or_create(&FilterErrorLabels {
                    subscription: sub.filter.to_string(),
                    kind: kind.as_str().to_owned(),
                })
                .inc();
        }
        pass
    }

    /// One HTTP request to the app.
    async fn send(&self, target: &Target, msg: &Message, attempt: u32) -> Outcome {
        let sub = &target.sub;
        let req = match request(target, msg.headers.as_ref(), &msg.payload, attempt) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Permanent {
                    status: 0,
                    reason: format!("the stored event cannot be sent over HTTP: {e}"),
                };
            }
        };
        match tokio::time::timeout(sub.attempt_timeout, self.http.request(req)).await {
            Err(_) => Outcome::Retry {
                status: None,
                retry_after: None,
                reason: format!("no answer within {:?}", sub.attempt_timeout),
            },
            Ok(Err(e)) => Outcome::Retry {
                status: None,
                retry_after: None,
                reason: format!("cannot reach the app: {e}"),
            },
            Ok(Ok(resp)) => {
                let outcome =
                    classify(resp.status(), resp.headers().get(http::header::RETRY_AFTER));
                // Read the (small) answer so the connection can be reused.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), resp.into_body().collect()).await;
                outcome
            }
        }
    }

    /// Delivers one event within the retry budget, then acks, NAKs or dead-letters it. `stop` cuts
    /// a local backoff short (the event is handed back at once).
    async fn deliver(&self, target: &Target, msg: Message, stop: &Shutdown) {
        let sub = &target.sub;
        // A replayed dead letter is for one subscription only; the others let it pass.
        let replay_for = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(crate::deadletter::REPLAY_FOR));
        if replay_for.is_some_and(|r| r.as_str() != self.who.describe(&sub.filter)) {
            let _ = msg.ack().await;
            return;
        }
        let delivered = msg
            .info()
            .map(|i| u32::try_from(i.delivered.max(1)).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let local = sub.retry.local_attempts.max(1);
        let first = (delivered - 1).saturating_mul(local);
        for i in 0..local {
            let attempt = first.saturating_add(i + 1);
            let (status, retry_after, reason) = match self.attempt(target, &msg, attempt).await {
                Outcome::Delivered => {
                    self.count(sub, DeliveryOutcome::Acked);
                    if let Err(e) = msg.ack().await {
                        tracing::warn!(error = %e, "ack failed; the event will be delivered again");
                    }
                    return;
                }
                Outcome::Permanent { status, reason } => {
                    return self
                        .dead_letter(sub, &msg, &reason, Some(status), attempt)
                        .await;
                }
                Outcome::Retry {
                    status,
                    retry_after,
                    reason,
                } => (status, retry_after, reason),
            };
            if attempt >= sub.retry.max_attempts {
                let reason = format!("{reason}; gave up after {attempt} attempts");
                return self.dead_letter(sub, &msg, &reason, status, attempt).await;
            }
            let local_wait = retry_after.unwrap_or_else(|| {
                jitter(
                    sub.retry
                        .local_backoff
                        .saturating_mul(2u32.saturating_pow(i)),
                )
            });
            if i + 1 < local && local_wait <= LONGEST_LOCAL_WAIT {
                let _ = msg.ack_with(AckKind::Progress).await;
                tokio::select! {
                    _ = tokio::time::sleep(local_wait) => continue,
                    _ = stop.wait() => {
                        // Draining: hand the event back now instead of waiting.
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        return;
                    }
                }
            }
            let backoff = sub
                .retry
                .redelivery_delay
                .saturating_mul(2u32.saturating_pow(delivered - 1));
            let delay =
                retry_after.unwrap_or_else(|| jitter(backoff.min(sub.retry.max_redelivery_delay)));
            tracing::debug!(attempt, ?delay, %reason, "handing the event back for redelivery");
            self.count(sub, DeliveryOutcome::Redelivery);
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(error = %e, "nak failed; the event comes back after the ack wait");
            }
            return;
        }
    }

    /// Writes the event to the dead-letter stream, then terminates the original.
    async fn dead_letter(
        &self,
        sub: &Subscription,
        msg: &Message,
        reason: &str,
        status: Option<u16>,
        attempts: u32,
    ) {
        if !sub.dead_letter {
            tracing::warn!(%reason, attempts, "event dropped (dead letters are off for this subscription)");
            self.count(sub, DeliveryOutcome::Dropped);
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        let info = msg.info().ok();
        let consumer = info
            .as_ref()
            .map(|i| i.consumer.to_owned())
            .unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        if let Some(original) = &msg.headers {
            for (name, values) in original.iter() {
                if AsRef::<str>::as_ref(name).eq_ignore_ascii_case("Nats-Msg-Id") {
                    continue;
                }
                for v in values {
                    headers.append(name.clone(), v.clone());
                }
            }
        }
        headers.insert(dlq_header::REASON, header_value(reason));
        headers.insert(
            dlq_header::STATUS,
            status.map_or_else(|| "none".to_owned(), |s| s.to_string()),
        );
        headers.insert(dlq_header::ATTEMPTS, attempts.to_string());
        headers.insert(
            dlq_header::SUBSCRIBER,
            header_value(&self.who.describe(&sub.filter)),
        );
        headers.insert(dlq_header::SUBJECT, header_value(msg.subject.as_str()));
        headers.insert(dlq_header::CONSUMER, header_value(&consumer));
        // A retried dead-letter write is stored once; without delivery metadata (never for a
        // consumer's message) no id is set rather than one that would merge different events.
        if let Some(i) = &info {
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                header_value(&format!("{}:{}", i.consumer, i.stream_sequence)),
            );
        }
        let subject = dlq_subject(&self.who, msg.subject.as_str());
        let stored = async {
            self.js
                .publish_with_headers(subject, headers, msg.payload.clone())
                .await?
                .await?;
            Ok::<_, async_nats::Error>(())
        }
        .await;
        match stored {
            Ok(()) => {
                tracing::warn!(%reason, ?status, attempts, subject = %msg.subject, "event dead-lettered");
                self.count(sub, DeliveryOutcome::DeadLettered);
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "term failed after dead-lettering; the event may be dead-lettered again");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the dead letter; the event will be retried");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
        }
    }

    /// Runs one subscription until `stop`: binds its consumer, then pulls as many events as there
    /// are free slots and delivers each in its own task. A new [`Target`] on `live` applies to the
    /// next deliveries (and updates the consumer); deliveries in flight finish with the one they
    /// started with. After `stop`, in-flight deliveries get `grace` to finish.
    pub async fn run(
        self: Arc<Self>,
        mut live: watch::Receiver<Arc<Target>>,
        stop: Shutdown,
        grace: Duration,
        bound: impl FnOnce(),
    ) {
        let mut target = live.borrow_and_update().clone();
        let filter = target.sub.filter.clone();
        let Some(mut consumer) = self.bind(&target.sub, &stop).await else {
            bound();
            return;
        };
        tracing::info!(%filter, consumer = %self.who.consumer_name(&filter), port = target.app_port, path = %target.sub.path, "subscribed");
        bound();
        let label = SubscriptionLabels {
            subscription: filter.to_string(),
        };
        let in_flight = self
            .metrics
            .deliveries_in_flight
            .get_or_create(&label)
            .clone();
        let pending = self.metrics.consumer_pending.get_or_create(&label).clone();
        let lag = tokio::spawn(report_lag(consumer.clone(), pending, stop.clone()));
        // Slots are counted rather than held as semaphore permits so a reload can change the limit
        // while deliveries are in flight.
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let freed = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        // The pull request in progress, if any.
        let mut open: Option<Batch> = None;
        'pull: while !stop.is_triggered() {
            while tasks.try_join_next().is_some() {}
            let busy = active.load(std::sync::atomic::Ordering::Acquire);
            let free = target.sub.max_in_flight.saturating_sub(busy);
            if free == 0 {
                tokio::select! {
                    _ = freed.notified() => {}
                    changed = live.changed() => {
                        // The sender is gone only when the subscription is.
                        if changed.is_err() { break; }
                        target = live.borrow_and_update().clone();
                        if let Some(c) = self.bind(&target.sub, &stop).await { consumer = c; }
                    }
                    _ = stop.wait() => break,
                }
                continue;
            }
            // Not abandoned on stop: once the request is sent it must be read to its end (below).
            let batch = consumer
                .batch()
                .max_messages(free)
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let batch = match batch {
                Ok(b) => open.insert(b),
                Err(e) => {
                    tracing::warn!(error = %e, %filter, "pull failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.wait() => break,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    m = batch.next() => m,
                    changed = live.changed() => {
                        if changed.is_err() { break 'pull; }
                        // The pull in progress is read to its end (its events are leased to this
                        // sidecar already); they and the next pulls use the new settings.
                        target = live.borrow_and_update().clone();
                        if let Some(c) = self.bind(&target.sub, &stop).await { consumer = c; }
                        continue;
                    }
                    _ = stop.wait() => break 'pull,
                };
                match next {
                    None => {
                        open = None;
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "pull ended");
                        open = None;
                        break;
                    }
                    Some(Ok(msg)) => {
                        // Filtered here, before a slot is taken, so dropped events cost no task.
                        if !self.passes(&target.sub, &msg) {
                            self.count(&target.sub, DeliveryOutcome::Filtered);
                            if let Err(e) = msg.ack().await {
                                tracing::warn!(error = %e, "ack of a filtered event failed; it will be filtered again");
                            }
                            continue;
                        }
                        let (this, target, stop) = (self.clone(), target.clone(), stop.clone());
                        let (active, freed, in_flight) =
                            (active.clone(), freed.clone(), in_flight.clone());
                        active.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        in_flight.inc();
                        tasks.spawn(async move {
                            this.deliver(&target, msg, &stop).await;
                            in_flight.dec();
                            active.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                            freed.notify_one();
                        });
                    }
                }
                while tasks.try_join_next().is_some() {}
            }
        }
        lag.abort();
        // JetStream may still send events to the open request (it cannot be cancelled): read it
        // to its end, at most PULL_EXPIRES, handing every late event back at once instead of
        // stranding it until the ack wait. Meanwhile the deliveries in flight finish.
        let drain = async {
            let mut delivering = true;
            while delivering || open.is_some() {
                tokio::select! {
                    m = next_of(&mut open) => match m {
                        Some(Ok(msg)) => { let _ = msg.ack_with(AckKind::Nak(None)).await; }
                        _ => open = None,
                    },
                    done = tasks.join_next(), if delivering => delivering = done.is_some(),
                }
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(%filter, "grace period over with deliveries in flight; they will be redelivered");
            tasks.abort_all();
        }
    }

    /// Creates or updates the subscription's consumer, retrying (the stream may not exist yet)
    /// until it succeeds or `stop` fires.
    async fn bind(
        &self,
        sub: &Subscription,
        stop: &Shutdown,
    ) -> Option<jetstream::consumer::Consumer<jetstream::consumer::pull::Config>> {
        loop {
            match consumer::ensure(&self.js, &self.stream, &self.who, sub).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(filter = %sub.filter, error = %e, "cannot bind the consumer; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait() => return None,
                    }
                }
            }
        }
    }
}

type Batch = jetstream::consumer::pull::Batch;

/// The next event of the open pull request; never resolves without one.
async fn next_of(open: &mut Option<Batch>) -> Option<Result<Message, async_nats::Error>> {
    match open {
        Some(b) => b.next().await,
        None => std::future::pending().await,
    }
}

/// Publishes the consumer's pending count (events not yet delivered to it) every 5 s.
async fn report_lag(
    mut consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    gauge: prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>,
    shutdown: Shutdown,
) {
    loop {
        if let Ok(info) = consumer.info().await {
            gauge.set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// The HTTP request delivering a stored event (its NATS headers and payload) to the app. Any
/// stored event may come from a publisher that bypassed the sidecar, so a header the HTTP
/// binding cannot carry is an error here (the event is dead-lettered), never a panic.
pub fn request(
    target: &Target,
    headers: Option<&async_nats::HeaderMap>,
    payload: &Bytes,
    attempt: u32,
) -> Result<http::Request<Full<Bytes>>, http::Error> {
    let sub = &target.sub;
    let mut req = http::Request::post(format!("http://127.0.0.1:{}{}", target.app_port, sub.path));
    let body = match sub.mode {
        DeliveryMode::Binary => payload.clone(),
        DeliveryMode::Structured => {
            let pairs = headers.into_iter().flat_map(|h| {
                h.iter().flat_map(|(n, vs)| {
                    vs.iter()
                        .map(move |v| (AsRef::<str>::as_ref(n), v.as_str()))
                })
            });
            req = req.header(
                http::header::CONTENT_TYPE,
                "application/cloudevents+json; charset=utf-8",
            );
            Bytes::from(crate::event::to_structured(pairs, payload))
        }
    };
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            let lower = name.to_ascii_lowercase();
            let wanted = match sub.mode {
                DeliveryMode::Binary => lower.starts_with("ce-") || lower == "content-type",
                DeliveryMode::Structured => false,
            };
            if wanted || matches!(lower.as_str(), "traceparent" | "tracestate") {
                for v in values {
                    req = req.header(lower.as_str(), v.as_str());
                }
            }
        }
    }
    req.header(ATTEMPT_HEADER, attempt).body(Full::new(body))
}

/// `herald-dlq.<namespace>.<app id>.<the original subject without "herald.">`.
pub fn dlq_subject(who: &Subscriber, original: &str) -> String {
    let mut s = String::from(DLQ_PREFIX);
    s.push('.');
    encode_token_into(&who.namespace, &mut s);
    s.push('.');
    encode_token_into(&who.app_id, &mut s);
    let tail = original.strip_prefix(EVENT_PREFIX).unwrap_or(original);
    if !tail.starts_with('.') {
        s.push('.');
    }
    s.push_str(tail);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_contract() {
        let retry = |c: u16| {
            matches!(
                classify(StatusCode::from_u16(c).unwrap(), None),
                Outcome::Retry { .. }
            )
        };
        assert_eq!(classify(StatusCode::NO_CONTENT, None), Outcome::Delivered);
        for c in [404, 408, 409, 429, 500, 502, 503, 504] {
            assert!(retry(c), "{c} is retried");
        }
        for c in [400, 401, 403, 405, 410, 413, 415, 422] {
            assert!(
                matches!(
                    classify(StatusCode::from_u16(c).unwrap(), None),
                    Outcome::Permanent { .. }
                ),
                "{c} is permanent"
            );
        }
        let ra = HeaderValue::from_static("7");
        let Outcome::Retry { retry_after, .. } = classify(StatusCode::TOO_MANY_REQUESTS, Some(&ra))
        else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(7)));
        let Outcome::Retry { retry_after, .. } =
            classify(StatusCode::INTERNAL_SERVER_ERROR, Some(&ra))
        else {
            panic!()
        };
        assert_eq!(retry_after, None, "only 429 and 503 carry Retry-After");
    }

    #[test]
    fn requests_carry_the_binding_and_refuse_what_http_cannot_carry() {
        let target = Target {
            sub: Subscription::new(crate::filter::TypeFilter::parse("a").unwrap()),
            app_port: 8080,
        };
        let mut h = async_nats::HeaderMap::new();
        h.insert("ce-id", "1");
        h.insert("ce-type", "a");
        h.insert("Content-Type", "text/plain");
        h.insert("traceparent", "00-abc");
        h.insert("Nats-Msg-Id", "s 1");
        let req = request(&target, Some(&h), &Bytes::from_static(b"hi"), 3).unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:8080/");
        let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        for n in [
            "ce-id",
            "ce-type",
            "content-type",
            "traceparent",
            ATTEMPT_HEADER,
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert!(!names.contains(&"nats-msg-id"));
        // A publisher that wrote to NATS directly can store a value HTTP cannot carry.
        let mut bad = async_nats::HeaderMap::new();
        bad.insert("ce-id", "control\u{1}char");
        assert!(request(&target, Some(&bad), &Bytes::new(), 1).is_err());
        let mut structured = target.clone();
        structured.sub.mode = DeliveryMode::Structured;
        let req = request(&structured, Some(&h), &Bytes::from_static(b"hi"), 1).unwrap();
        let body = futures::executor::block_on(req.into_body().collect())
            .unwrap()
            .to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"id": "1", "type": "a", "datacontenttype": "text/plain", "data": "hi"})
        );
    }

    #[test]
    fn dead_letter_subjects() {
        let who = Subscriber {
            namespace: "prod".into(),
            app_id: "billing".into(),
        };
        assert_eq!(
            dlq_subject(&who, "herald.shop.order.created.v1"),
            "herald-dlq.prod.billing.shop.order.created.v1"
        );
    }
}
