//! The delivery engine on the in-memory broker and a scripted app, under paused time: every wait
//! below is the engine's own, advanced by tokio's clock, so the timings asserted are exact.

use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use herald_core::broker::{Admin as _, BoxFuture, ConsumerState, Store as _, StoredMessage};
use herald_core::contract::{RetryPolicy, StartPosition};
use herald_core::delivery::dlq_header;
use herald_core::filter::TypeFilter;
use herald_core::policy::StreamPolicy;
use herald_core::subject::event_subject;
use herald_core::wire::{Headers, Message};
use herald_membroker::MemBroker;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::*;
use crate::metrics::{DeliveryOutcome, OutcomeLabels};

const STREAM: &str = "HERALD";
const DLQ: &str = "HERALD_DLQ";

/// One attempt the app saw.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    id: String,
    attempt: u32,
    delivered: u32,
    /// Since the script was made.
    at: Duration,
}

/// The app: answers by a rule, optionally taking its time, and records every attempt.
struct Script {
    start: Instant,
    calls: Mutex<Vec<Call>>,
    answer: fn(&Call) -> Outcome,
    /// How long each answer takes.
    takes: Duration,
    busy: AtomicUsize,
    most_busy: AtomicUsize,
}

impl Script {
    fn new(answer: fn(&Call) -> Outcome) -> Arc<Self> {
        Self::slow(answer, Duration::ZERO)
    }

    fn slow(answer: fn(&Call) -> Outcome, takes: Duration) -> Arc<Self> {
        Arc::new(Script {
            start: Instant::now(),
            calls: Mutex::new(Vec::new()),
            answer,
            takes,
            busy: AtomicUsize::new(0),
            most_busy: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn attempts(&self) -> Vec<(u32, Duration)> {
        self.calls().iter().map(|c| (c.attempt, c.at)).collect()
    }
}

impl Endpoint for Script {
    fn send<'a>(
        &'a self,
        _target: &'a Target,
        event: &'a dyn Leased,
        attempt: u32,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let call = Call {
                id: event
                    .headers()
                    .find(&|n| n.eq_ignore_ascii_case("ce-id"))
                    .unwrap_or_default()
                    .to_owned(),
                attempt,
                delivered: event.info().map_or(0, |i| i.delivered),
                at: self.start.elapsed(),
            };
            self.calls.lock().unwrap().push(call.clone());
            let busy = self.busy.fetch_add(1, Ordering::AcqRel) + 1;
            self.most_busy.fetch_max(busy, Ordering::AcqRel);
            tokio::time::sleep(self.takes).await;
            self.busy.fetch_sub(1, Ordering::AcqRel);
            (self.answer)(&call)
        })
    }
}

fn ok(_: &Call) -> Outcome {
    Outcome::Delivered
}

fn unavailable(_: &Call) -> Outcome {
    Outcome::Retry {
        status: Some(503),
        retry_after: None,
        reason: "status 503".into(),
    }
}

fn bad_request(_: &Call) -> Outcome {
    Outcome::Permanent {
        status: 400,
        reason: "status 400".into(),
    }
}

fn who() -> Subscriber {
    Subscriber {
        namespace: "shop".into(),
        app_id: "orders".into(),
    }
}

fn subscription() -> Subscription {
    let mut sub = Subscription::new(TypeFilter::parse("order.>").unwrap());
    sub.start = StartPosition::All;
    sub.retry = RetryPolicy {
        max_attempts: 5,
        local_attempts: 2,
        local_backoff: Duration::from_millis(100),
        redelivery_delay: Duration::from_secs(1),
        max_redelivery_delay: Duration::from_secs(10),
    };
    sub
}

fn event(id: &str, ty: &str) -> Message {
    let mut headers = Headers::new();
    headers.push("ce-specversion", "1.0");
    headers.push("ce-id", id);
    headers.push("ce-source", "shop");
    headers.push("ce-type", ty);
    Message {
        subject: event_subject("shop", ty),
        headers,
        payload: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
        dedup_id: Some(format!("shop {id}")),
    }
}

async fn broker(with_dead_letters: bool) -> MemBroker {
    let b = MemBroker::new();
    b.ensure_stream(&StreamPolicy::dev_events(STREAM))
        .await
        .unwrap();
    if with_dead_letters {
        b.ensure_stream(&StreamPolicy::dead_letters(DLQ))
            .await
            .unwrap();
    }
    b
}

async fn publish(b: &MemBroker, msg: Message) {
    b.send(msg).await.unwrap().stored().await.unwrap();
}

/// A running subscription of one sidecar.
struct Running {
    metrics: Arc<Metrics>,
    stop: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(b: &MemBroker, sub: Subscription, app: Arc<Script>, grace: Duration) -> Self {
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let deliverer = Deliverer::with_endpoint(
            Arc::new(b.clone()),
            STREAM,
            who(),
            metrics.clone(),
            app,
            |d| d,
        );
        let (_tx, live) = watch::channel(Arc::new(Target {
            sub,
            dest: herald_core::delivery::Destination::App(1),
            reported: false,
        }));
        let stop = Shutdown::new();
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                // The sender lives as long as the subscription (its end stops the loop).
                let _tx = _tx;
                deliverer
                    .run(live, stop, grace, move || {
                        let _ = bound_tx.send(());
                    })
                    .await;
            }
        });
        bound_rx.await.unwrap();
        Running {
            metrics,
            stop,
            task,
        }
    }

    fn count(&self, outcome: DeliveryOutcome) -> u64 {
        self.metrics
            .deliveries
            .get_or_create(&OutcomeLabels {
                subscription: "order.>".into(),
                outcome,
            })
            .get()
    }

    async fn stop(self) {
        self.stop.trigger();
        self.task.await.unwrap();
    }
}

/// Waits (on tokio's clock) until `cond` holds; an hour of it means it never will.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn consumer(b: &MemBroker) -> ConsumerState {
    b.consumer_state(STREAM, &who().consumer_name(&subscription().filter))
        .unwrap()
}

fn header<'m>(m: &'m StoredMessage, name: &str) -> &'m str {
    m.headers.get(name).unwrap_or_default()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn the_budget_retries_locally_then_redelivers_then_dead_letters() {
    let b = broker(true).await;
    let app = Script::new(unavailable);
    let run = Running::start(&b, subscription(), app.clone(), ms(100)).await;
    publish(&b, event("1", "order.created")).await;
    until("a dead letter", || b.stored(DLQ).len() == 1).await;

    // Two local attempts 100 ms apart, handed back for 1 s, two more, handed back for 2 s, and
    // the fifth attempt is the last: numbered across deliveries by the broker's count.
    assert_eq!(
        app.attempts(),
        [
            (1, ms(0)),
            (2, ms(100)),
            (3, ms(1100)),
            (4, ms(1200)),
            (5, ms(3200))
        ]
    );
    let delivered: Vec<u32> = app.calls().iter().map(|c| c.delivered).collect();
    assert_eq!(delivered, [1, 1, 2, 2, 3]);

    let dead = &b.stored(DLQ)[0];
    let original = &b.stored(STREAM)[0];
    assert_eq!(dead.subject, "herald-dlq.shop.orders.shop.order.created");
    assert_eq!(dead.payload, original.payload);
    assert_eq!(header(dead, "ce-id"), "1");
    assert_eq!(header(dead, dlq_header::STATUS), "503");
    assert_eq!(header(dead, dlq_header::ATTEMPTS), "5");
    assert_eq!(
        header(dead, dlq_header::REASON),
        "status 503; gave up after 5 attempts"
    );
    assert_eq!(header(dead, dlq_header::SUBSCRIBER), "shop/orders/order.>");
    assert_eq!(header(dead, dlq_header::SUBJECT), original.subject);
    // The original is terminated once its dead letter is stored: nothing leased, nothing due.
    until("the original settled", || consumer(&b).ack_pending == 0).await;
    assert_eq!(run.count(DeliveryOutcome::Redelivery), 2);
    assert_eq!(run.count(DeliveryOutcome::DeadLettered), 1);
    assert_eq!(run.count(DeliveryOutcome::Acked), 0);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_is_dead_lettered_at_once() {
    let b = broker(true).await;
    let app = Script::new(bad_request);
    let run = Running::start(&b, subscription(), app.clone(), ms(100)).await;
    publish(&b, event("1", "order.created")).await;
    until("a dead letter", || b.stored(DLQ).len() == 1).await;
    assert_eq!(app.attempts(), [(1, ms(0))]);
    assert_eq!(header(&b.stored(DLQ)[0], dlq_header::STATUS), "400");
    assert_eq!(run.count(DeliveryOutcome::DeadLettered), 1);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn dead_letters_off_drops_the_event_and_counts_it() {
    let b = broker(true).await;
    let mut sub = subscription();
    sub.dead_letter = false;
    let run = Running::start(&b, sub, Script::new(bad_request), ms(100)).await;
    publish(&b, event("1", "order.created")).await;
    until("dropped", || run.count(DeliveryOutcome::Dropped) == 1).await;
    assert!(b.stored(DLQ).is_empty());
    until("the original settled", || consumer(&b).ack_pending == 0).await;
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_event_whose_dead_letter_cannot_be_stored_is_kept() {
    // No dead-letter stream: the write fails, and the event is handed back, not terminated.
    let b = broker(false).await;
    let app = Script::new(bad_request);
    let run = Running::start(&b, subscription(), app.clone(), ms(100)).await;
    publish(&b, event("1", "order.created")).await;
    until("a first attempt", || app.calls().len() == 1).await;
    until("handed back", || consumer(&b).ack_pending == 1).await;
    b.ensure_stream(&StreamPolicy::dead_letters(DLQ))
        .await
        .unwrap();
    until("a dead letter", || b.stored(DLQ).len() == 1).await;
    // Handed back for 5 s, then dead-lettered on its second delivery.
    assert_eq!(app.attempts(), [(1, ms(0)), (3, ms(5000))]);
    assert_eq!(run.count(DeliveryOutcome::DeadLettered), 1);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn delivered_events_are_acked_in_order_of_arrival() {
    let b = broker(true).await;
    let app = Script::new(ok);
    let run = Running::start(&b, subscription(), app.clone(), ms(100)).await;
    for id in ["1", "2", "3"] {
        publish(&b, event(id, "order.created")).await;
    }
    // Not subscribed to.
    publish(&b, event("x", "invoice.created")).await;
    until("three deliveries", || {
        run.count(DeliveryOutcome::Acked) == 3
    })
    .await;
    let ids: Vec<String> = app.calls().iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, ["1", "2", "3"]);
    assert_eq!(consumer(&b).ack_pending, 0);
    assert_eq!(consumer(&b).pending, 0);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn no_more_than_max_in_flight_are_delivered_at_once() {
    let b = broker(true).await;
    let mut sub = subscription();
    sub.max_in_flight = 3;
    let app = Script::slow(ok, Duration::from_secs(1));
    let run = Running::start(&b, sub, app.clone(), ms(100)).await;
    for i in 0..10 {
        publish(&b, event(&i.to_string(), "order.created")).await;
    }
    until("ten deliveries", || run.count(DeliveryOutcome::Acked) == 10).await;
    assert_eq!(app.most_busy.load(Ordering::Acquire), 3);
    // Three at a time, a second each: the tenth starts after three full rounds.
    let last = app.calls().last().unwrap().at;
    assert_eq!(last, Duration::from_secs(3));
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn filtered_and_foreign_replays_are_acked_without_delivery() {
    let b = broker(true).await;
    let mut sub = subscription();
    sub.filters = vec![attrfilter::AttrFilter::Exact(vec![(
        "id".into(),
        "keep".into(),
    )])];
    let app = Script::new(ok);
    let run = Running::start(&b, sub, app.clone(), ms(100)).await;
    publish(&b, event("drop", "order.created")).await;
    let mut replay = event("keep", "order.created");
    replay.headers.push(REPLAY_FOR, "shop/billing/order.>");
    replay.dedup_id = Some("replayed".into());
    publish(&b, replay).await;
    publish(&b, event("keep", "order.updated")).await;
    until("all settled", || {
        consumer(&b).pending == 0 && consumer(&b).ack_pending == 0
    })
    .await;
    // Only the event that passes the filter and is not another subscription's replay arrives.
    assert_eq!(app.calls().len(), 1);
    assert_eq!(run.count(DeliveryOutcome::Filtered), 1);
    assert_eq!(run.count(DeliveryOutcome::Acked), 1);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stop_hands_back_an_event_waiting_for_a_local_retry_at_once() {
    let b = broker(true).await;
    let mut sub = subscription();
    sub.retry.local_attempts = 3;
    sub.retry.local_backoff = Duration::from_secs(2);
    let first = Script::new(unavailable);
    let run = Running::start(&b, sub.clone(), first.clone(), Duration::from_secs(30)).await;
    publish(&b, event("1", "order.created")).await;
    until("a first attempt", || first.calls().len() == 1).await;
    tokio::time::sleep(ms(500)).await;
    let stopped = first.start.elapsed();
    run.stop().await;
    // The stop read the last pull request to its end, no longer.
    assert!(first.start.elapsed() - stopped <= PULL_EXPIRES);
    // The sidecar is gone and nothing is leased to it: the event is due again as soon as the
    // sidecar's last pull request has expired, not after the ack wait.
    assert_eq!(consumer(&b).ack_pending, 1);

    let second = Script::new(ok);
    let run = Running::start(&b, sub, second.clone(), Duration::from_secs(30)).await;
    until("redelivered", || second.calls().len() == 1).await;
    let call = &second.calls()[0];
    // Delivered once more, not bounced through the stopping sidecar's open request.
    assert_eq!(call.delivered, 2);
    // Three local attempts per delivery: the second delivery's first is attempt 4.
    assert_eq!(call.attempt, 4);
    let at = second.start.duration_since(first.start) + call.at;
    assert_eq!(at, stopped + HAND_BACK);
    until("acked", || consumer(&b).ack_pending == 0).await;
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn deliveries_in_flight_get_the_grace_period_then_come_back_later() {
    let b = broker(true).await;
    let sub = subscription();
    let ack_wait = consumer::spec(&who(), &sub).ack_wait;
    // Longer than the grace period and the ack wait: the sidecar is killed mid-delivery.
    let hung = Script::slow(ok, Duration::from_secs(3600));
    let run = Running::start(&b, sub.clone(), hung.clone(), Duration::from_secs(2)).await;
    publish(&b, event("1", "order.created")).await;
    until("an attempt", || hung.calls().len() == 1).await;
    let stopping = Instant::now();
    run.stop().await;
    assert_eq!(stopping.elapsed(), Duration::from_secs(2));

    // Still leased to the sidecar that died: it comes back when the lease runs out.
    let next = Script::new(ok);
    let run = Running::start(&b, sub, next.clone(), Duration::from_secs(2)).await;
    until("redelivered", || next.calls().len() == 1).await;
    assert_eq!(next.calls()[0].delivered, 2);
    assert!(
        hung.start.elapsed() >= ack_wait,
        "redelivered after {:?}, before the ack wait {ack_wait:?}",
        hung.start.elapsed()
    );
    until("acked", || consumer(&b).ack_pending == 0).await;
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_broker_is_waited_for_and_nothing_is_lost() {
    let b = broker(true).await;
    let app = Script::new(ok);
    let run = Running::start(&b, subscription(), app.clone(), ms(100)).await;
    publish(&b, event("1", "order.created")).await;
    until("delivered", || run.count(DeliveryOutcome::Acked) == 1).await;
    b.set_connected(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    b.set_connected(true);
    publish(&b, event("2", "order.created")).await;
    until("delivered after the outage", || {
        run.count(DeliveryOutcome::Acked) == 2
    })
    .await;
    run.stop().await;
}
