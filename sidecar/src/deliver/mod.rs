//! Delivery: from a subscription's consumer to the app, over HTTP, at least once, through the
//! broker seam ([`herald_core::broker`]); nothing here knows which broker it is.
//!
//! A subscription leases only as many events as it has free slots (`max in flight`), a request at
//! a time, so nothing waits in a local buffer that a crash would strand ([`Deliverer::run`]).
//! Before a slot is taken, an event is checked against the subscription's attribute filters; one
//! that does not pass is acknowledged without delivery and counted.
//!
//! Each event is POSTed to the app ([`attempt`]) within one retry budget
//! ([`herald_core::delivery::Budget`]): a few quick local attempts with jittered backoff (the
//! lease is extended meanwhile), then a delayed redelivery by the broker, which survives a
//! sidecar restart; attempts are numbered from the broker's delivery count, so the budget
//! survives restarts too. A permanent failure, or a spent budget, is dead-lettered
//! ([`deadletter`]) and only then terminated.

pub mod attempt;
pub mod board;
pub mod deadletter;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald_core::attrfilter;
use herald_core::broker::{Broker, BrokerError, Lease, Leased, Settle};
use herald_core::consumer::{self, Subscriber};
use herald_core::contract::Subscription;
use herald_core::delivery::{Budget, Next, Outcome, REPLAY_FOR, Target};
use herald_core::wire::StoredAttributes;
use herald_runtime::shutdown::Shutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::metrics::{
    AttemptLabels, AttemptResult, DeliveryOutcome, FilterErrorLabels, Metrics, OutcomeLabels,
    SubscriptionLabels,
};
use attempt::{AppClient, Endpoint};
use deadletter::{Failure, Written};

/// How long one pull request waits for events. Long, so an idle subscription costs the broker a
/// request every two minutes: a stopping subscription cancels its open request
/// ([`herald_core::broker::Lease::cancel`]) rather than waiting for it to expire.
const PULL_EXPIRES: Duration = Duration::from_secs(120);
/// How long an event handed back at shutdown waits before its redelivery. A hand-back can cross
/// the cancellation of the open request on its way to the broker; with no delay the broker could
/// lease the event straight back to that request, and each bounce would count as a delivery and
/// spend the event's retry budget without an attempt. Another replica, or the restarted sidecar,
/// gets it after this delay.
const HAND_BACK: Duration = Duration::from_secs(1);
/// Time between attempts to bind a consumer (the stream may not exist yet) or to pull again.
const RETRY: Duration = Duration::from_secs(1);
/// The lag (the consumer's pending count) travels with every leased event; a subscription that
/// leased nothing for this long asks the broker (jittered ±20 %), so an idle one costs a request
/// every few minutes, not one every few seconds.
const LAG_IDLE: Duration = Duration::from_secs(300);

/// Delivers the events of every subscription of one app.
#[derive(Clone)]
pub struct Deliverer {
    app: Arc<dyn Endpoint>,
    broker: Arc<dyn Broker>,
    stream: String,
    who: Subscriber,
    metrics: Arc<Metrics>,
    /// Spreads computed waits; the identity in tests, so their timing is exact.
    jitter: fn(Duration) -> Duration,
    /// Put before the filter in the `subscription` label of the metrics: empty in a sidecar
    /// (the pod says whose they are), `namespace/resource/` in the dispatcher, which delivers
    /// for many.
    label_prefix: String,
    /// Where the facts of reported subscriptions go ([`board`]).
    board: Option<Arc<board::StatusBoard>>,
}

/// What woke a subscription's loop.
enum Step {
    Event(Option<Result<Box<dyn Leased>, BrokerError>>),
    Changed(bool),
    Freed,
    Stop,
}

impl Deliverer {
    /// Delivers to the app over HTTP.
    pub fn new(
        broker: Arc<dyn Broker>,
        stream: &str,
        who: Subscriber,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Self::with_endpoint(
            broker,
            stream,
            who,
            metrics,
            Arc::new(AppClient::default()),
            attempt::jitter,
        )
    }

    /// Delivers to `app`, spreading computed waits with `jitter`.
    pub fn with_endpoint(
        broker: Arc<dyn Broker>,
        stream: &str,
        who: Subscriber,
        metrics: Arc<Metrics>,
        app: Arc<dyn Endpoint>,
        jitter: fn(Duration) -> Duration,
    ) -> Arc<Self> {
        Arc::new(Deliverer {
            app,
            broker,
            stream: stream.to_owned(),
            who,
            metrics,
            jitter,
            label_prefix: String::new(),
            board: None,
        })
    }

    /// The same engine subscribing as `who` (a resource with a sink whose Service selects this
    /// app's pods), its metrics labelled `<who's app id>/filter`.
    pub fn as_subscriber(self: &Arc<Self>, who: Subscriber) -> Arc<Self> {
        let mut d = Deliverer::clone(self);
        d.label_prefix = format!("{}/", who.app_id);
        d.who = who;
        Arc::new(d)
    }

    /// The namespace it subscribes in.
    pub fn namespace(&self) -> &str {
        &self.who.namespace
    }

    /// The same engine, recording the facts of reported subscriptions on `board`.
    pub fn with_board(self: Arc<Self>, board: Arc<board::StatusBoard>) -> Arc<Self> {
        let mut d = Deliverer::clone(&self);
        d.board = Some(board);
        Arc::new(d)
    }

    /// For the dispatcher: delivers to `sink_client`, and labels the metrics
    /// `namespace/resource/filter`.
    pub fn for_resource(
        broker: Arc<dyn Broker>,
        stream: &str,
        who: Subscriber,
        metrics: Arc<Metrics>,
        sink_client: Arc<dyn Endpoint>,
        resource: &str,
    ) -> Arc<Self> {
        let mut d = Deliverer::clone(&Self::with_endpoint(
            broker,
            stream,
            who,
            metrics,
            sink_client,
            attempt::jitter,
        ));
        d.label_prefix = format!("{resource}/");
        Arc::new(d)
    }

    fn label(&self, filter: &herald_core::filter::TypeFilter) -> String {
        format!("{}{filter}", self.label_prefix)
    }

    /// One HTTP attempt, measured.
    async fn attempt(&self, target: &Target, event: &dyn Leased, attempt: u32) -> Outcome {
        let label = SubscriptionLabels {
            subscription: self.label(&target.sub.filter),
        };
        let started = std::time::Instant::now();
        let outcome = self.app.send(target, event, attempt).await;
        if target.reported
            && let Some(board) = &self.board
        {
            board.record(self.who.consumer_name(&target.sub.filter), &outcome);
        }
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
                subscription: self.label(&sub.filter),
                outcome,
            })
            .inc();
    }

    /// Whether the event passes the subscription's attribute filters. A filter that cannot be
    /// evaluated on it (a missing attribute, a failed cast) is no match, and is counted by kind.
    fn passes(&self, sub: &Subscription, event: &dyn Leased) -> bool {
        if sub.filters.is_empty() {
            return true;
        }
        let mut error = None;
        let pass =
            attrfilter::matches_all(&sub.filters, &StoredAttributes(event.headers()), &mut error);
        if let Some(kind) = error {
            tracing::debug!(%kind, "a filter could not be evaluated on an event");
            self.metrics
                .filter_errors
                .get_or_create(&FilterErrorLabels {
                    subscription: self.label(&sub.filter),
                    kind: kind.into(),
                })
                .inc();
        }
        pass
    }

    /// Delivers one event within the retry budget, then acks, hands back or dead-letters it.
    /// `stop` cuts a local backoff short (the event is handed back at once).
    async fn deliver(&self, target: &Target, event: Box<dyn Leased>, stop: &Shutdown) {
        let sub = &target.sub;
        // A replayed dead letter is for one subscription only; the others let it pass.
        let replay_for = event
            .headers()
            .find(&|n| n.eq_ignore_ascii_case(REPLAY_FOR))
            .map(str::to_owned);
        if replay_for.is_some_and(|r| r != self.who.describe(&sub.filter)) {
            let _ = event.settle(Settle::Ack).await;
            return;
        }
        let budget = Budget {
            policy: &sub.retry,
            delivered: event.info().map_or(1, |i| i.delivered),
        };
        for i in 0..budget.local_attempts() {
            let attempt = budget.attempt(i);
            let (status, retry_after, reason) = match self
                .attempt(target, event.as_ref(), attempt)
                .await
            {
                Outcome::Delivered => {
                    self.count(sub, DeliveryOutcome::Acked);
                    if let Err(e) = event.settle(Settle::Ack).await {
                        tracing::warn!(error = %e, "ack failed; the event will be delivered again");
                    }
                    return;
                }
                Outcome::Permanent { status, reason } => {
                    let failure = Failure {
                        reason: &reason,
                        status: Some(status),
                        attempts: attempt,
                    };
                    return self.dead_letter(sub, event.as_ref(), failure).await;
                }
                Outcome::Retry {
                    status,
                    retry_after,
                    reason,
                } => (status, retry_after, reason),
            };
            match budget.after_failure(i, retry_after, &reason, self.jitter) {
                Next::DeadLetter(reason) => {
                    let failure = Failure {
                        reason: &reason,
                        status,
                        attempts: attempt,
                    };
                    return self.dead_letter(sub, event.as_ref(), failure).await;
                }
                Next::RetryLocally(wait) => {
                    let _ = event.settle(Settle::Progress).await;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = stop.wait() => {
                            // Draining: hand the event back now instead of waiting.
                            let _ = event.settle(Settle::Nak(Some(HAND_BACK))).await;
                            return;
                        }
                    }
                }
                Next::Redeliver(delay) => {
                    tracing::debug!(attempt, ?delay, %reason, "handing the event back for redelivery");
                    self.count(sub, DeliveryOutcome::Redelivery);
                    if let Err(e) = event.settle(Settle::Nak(Some(delay))).await {
                        tracing::warn!(error = %e, "nak failed; the event comes back after the ack wait");
                    }
                    return;
                }
            }
        }
    }

    async fn dead_letter(&self, sub: &Subscription, event: &dyn Leased, failure: Failure<'_>) {
        match deadletter::write(self.broker.as_ref(), &self.who, sub, event, failure).await {
            Written::DeadLettered => self.count(sub, DeliveryOutcome::DeadLettered),
            Written::Dropped => self.count(sub, DeliveryOutcome::Dropped),
            Written::Retried => {}
        }
    }

    /// Runs one subscription until `stop`: binds its consumer, then leases as many events as
    /// there are free slots and delivers each in its own task. A new [`Target`] on `live` applies
    /// to the next deliveries (and updates the consumer); deliveries in flight finish with the one
    /// they started with. After `stop`, in-flight deliveries get `grace` to finish.
    pub async fn run(
        self: Arc<Self>,
        mut live: watch::Receiver<Arc<Target>>,
        stop: Shutdown,
        grace: Duration,
        bound: impl FnOnce(),
    ) {
        let mut target = live.borrow_and_update().clone();
        let filter = target.sub.filter.clone();
        let Some(mut lease) = self.bind(&target.sub, &stop).await else {
            bound();
            return;
        };
        let consumer = self.who.consumer_name(&filter);
        match &target.dest {
            herald_core::delivery::Destination::App(port) => {
                tracing::info!(%consumer, port, path = %target.sub.path, "subscribed");
            }
            herald_core::delivery::Destination::Sink(sink) => {
                tracing::info!(%consumer, sink = %format!("http://{}{}", sink.authority(), sink.path), "subscribed");
            }
        }
        bound();
        let label = SubscriptionLabels {
            subscription: self.label(&filter),
        };
        let in_flight = self
            .metrics
            .deliveries_in_flight
            .get_or_create(&label)
            .clone();
        let pending = self.metrics.consumer_pending.get_or_create(&label).clone();
        let lag = Arc::new(Lag::new(pending));
        let lag_task = tokio::spawn(
            refresh_lag(
                self.broker.clone(),
                self.stream.clone(),
                consumer,
                lag.clone(),
                self.jitter,
                stop.clone(),
            )
            .in_current_span(),
        );
        // Slots are counted rather than held as semaphore permits so a reload can change the
        // limit while deliveries are in flight.
        let active = Arc::new(AtomicUsize::new(0));
        let freed = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        // A request that ended in an error (the consumer deleted, the request lost): the consumer
        // is bound again (created if it is gone) before the next request.
        let mut rebind = false;
        'pull: while !stop.is_triggered() {
            while tasks.try_join_next().is_some() {}
            let free = target
                .sub
                .max_in_flight
                .saturating_sub(active.load(Ordering::Acquire));
            if free == 0 {
                let step = tokio::select! {
                    _ = freed.notified() => Step::Freed,
                    changed = live.changed() => Step::Changed(changed.is_ok()),
                    _ = stop.wait() => Step::Stop,
                };
                match step {
                    // The sender is gone only when the subscription is.
                    Step::Changed(false) | Step::Stop => break,
                    Step::Changed(true) => {
                        target = live.borrow_and_update().clone();
                        self.update(lease.as_mut(), &target.sub).await;
                    }
                    Step::Freed | Step::Event(_) => {}
                }
                continue;
            }
            if rebind {
                match self.bind(&target.sub, &stop).await {
                    Some(l) => lease = l,
                    None => break,
                }
                rebind = false;
            }
            // Not abandoned on stop: it is cancelled and read to its end (below).
            if let Err(e) = lease.request(free, PULL_EXPIRES).await {
                tracing::warn!(error = %e, "pull failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = stop.wait() => break,
                }
            }
            loop {
                let step = tokio::select! {
                    event = lease.next() => Step::Event(event),
                    changed = live.changed() => Step::Changed(changed.is_ok()),
                    _ = stop.wait() => Step::Stop,
                };
                let event = match step {
                    Step::Changed(false) | Step::Stop => break 'pull,
                    Step::Changed(true) => {
                        // The request in progress is read to its end (its events are leased to
                        // this sidecar already); they and the next requests use the new settings.
                        target = live.borrow_and_update().clone();
                        self.update(lease.as_mut(), &target.sub).await;
                        continue;
                    }
                    Step::Freed | Step::Event(None) => break,
                    Step::Event(Some(Err(e))) => {
                        tracing::info!(error = %e, "pull request ended; binding the consumer again");
                        rebind = true;
                        break;
                    }
                    Step::Event(Some(Ok(event))) => event,
                };
                if let Some(info) = event.info() {
                    lag.seen(info.pending);
                }
                // Filtered here, before a slot is taken, so dropped events cost no task.
                if !self.passes(&target.sub, event.as_ref()) {
                    self.count(&target.sub, DeliveryOutcome::Filtered);
                    if let Err(e) = event.settle(Settle::Ack).await {
                        tracing::warn!(error = %e, "ack of a filtered event failed; it will be filtered again");
                    }
                    continue;
                }
                let (this, target, stop) = (self.clone(), target.clone(), stop.clone());
                let (active, freed, in_flight) = (active.clone(), freed.clone(), in_flight.clone());
                active.fetch_add(1, Ordering::AcqRel);
                in_flight.inc();
                tasks.spawn(
                    async move {
                        this.deliver(&target, event, &stop).await;
                        in_flight.dec();
                        active.fetch_sub(1, Ordering::AcqRel);
                        freed.notify_one();
                    }
                    .in_current_span(),
                );
                while tasks.try_join_next().is_some() {}
            }
        }
        lag_task.abort();
        // The open request is cancelled; what the broker had already sent to it still arrives and
        // is handed back at once instead of stranding it until the ack wait. Meanwhile the
        // deliveries in flight finish.
        lease.cancel().await;
        let drain = async {
            let mut delivering = true;
            while delivering || lease.is_open() {
                tokio::select! {
                    event = lease.next(), if lease.is_open() => {
                        if let Some(Ok(event)) = event {
                            let _ = event.settle(Settle::Nak(Some(HAND_BACK))).await;
                        }
                    }
                    done = tasks.join_next(), if delivering => delivering = done.is_some(),
                }
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("grace period over with deliveries in flight; they will be redelivered");
            tasks.abort_all();
        }
    }

    /// Creates or updates the subscription's consumer and opens it, retrying (the stream may not
    /// exist yet) until it succeeds or `stop` fires.
    async fn bind(&self, sub: &Subscription, stop: &Shutdown) -> Option<Box<dyn Lease>> {
        let spec = consumer::spec(&self.who, sub);
        loop {
            match self.broker.bind(&self.stream, &spec).await {
                Ok(lease) => return Some(lease),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot bind the consumer; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = stop.wait() => return None,
                    }
                }
            }
        }
    }

    /// Brings the consumer in line with changed settings; a failure leaves it as it was (the
    /// settings still apply to deliveries).
    async fn update(&self, lease: &mut dyn Lease, sub: &Subscription) {
        if let Err(e) = lease.update(&consumer::spec(&self.who, sub)).await {
            tracing::warn!(error = %e, "cannot update the consumer; it keeps its settings");
        }
    }
}

/// A subscription's lag gauge and when it was last set from a leased event.
struct Lag {
    gauge: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Milliseconds since `since` at the last leased event.
    last: std::sync::atomic::AtomicU64,
    since: tokio::time::Instant,
}

impl Lag {
    fn new(gauge: Gauge<i64, std::sync::atomic::AtomicI64>) -> Self {
        Lag {
            gauge,
            last: std::sync::atomic::AtomicU64::new(0),
            since: tokio::time::Instant::now(),
        }
    }

    fn set(&self, pending: u64) {
        self.gauge.set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// A leased event said how many are pending after it.
    fn seen(&self, pending: u64) {
        self.set(pending);
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }
}

/// Sets the lag from the broker once at the start, then whenever no leased event has set it for
/// [`LAG_IDLE`] (jittered, so many sidecars do not ask together).
async fn refresh_lag(
    broker: Arc<dyn Broker>,
    stream: String,
    consumer: String,
    lag: Arc<Lag>,
    jitter: fn(Duration) -> Duration,
    shutdown: Shutdown,
) {
    let mut ask = true;
    loop {
        if ask && let Ok(c) = broker.consumer(&stream, &consumer).await {
            lag.set(c.pending);
        }
        let wait = jitter(LAG_IDLE).saturating_sub(lag.quiet_for());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return,
        }
        ask = lag.quiet_for() >= LAG_IDLE.mul_f64(0.8);
    }
}
