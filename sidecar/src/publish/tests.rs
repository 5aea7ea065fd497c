//! The publish API and the async buffer on the in-memory broker, without sockets: requests are
//! built here and handed to [`Api::handle`]; waits run on tokio's paused clock.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use herald_core::broker::{Admin as _, StoredMessage};
use herald_core::policy::StreamPolicy;
use herald_core::wire::DEDUP_HEADER;
use herald_membroker::MemBroker;
use http::Response;
use http_body_util::Full;
use hyper::body::Frame;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::*;
use crate::metrics::{DropLabels, DropReason};

const STREAM: &str = "HERALD";
const PEER: &str = "127.0.0.1:40000";

struct Harness {
    broker: MemBroker,
    api: Arc<Api>,
    metrics: Arc<Metrics>,
    drainer: Option<buffer::Drainer>,
    shutdown: Shutdown,
}

impl Harness {
    async fn new() -> Self {
        Self::with(|_| {}, 16, 1 << 20).await
    }

    async fn with(tune: impl FnOnce(&mut ApiConfig), capacity: usize, max_bytes: u64) -> Self {
        let broker = MemBroker::new();
        broker
            .ensure_stream(&StreamPolicy::dev_events(STREAM))
            .await
            .unwrap();
        Self::on(broker, tune, capacity, max_bytes)
    }

    fn on(
        broker: MemBroker,
        tune: impl FnOnce(&mut ApiConfig),
        capacity: usize,
        max_bytes: u64,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let store: Arc<dyn Store> = Arc::new(broker.clone());
        let (buffer, drainer) =
            AsyncBuffer::start(store.clone(), capacity, max_bytes, metrics.clone());
        let mut cfg = ApiConfig {
            app_id: "orders".into(),
            max_body_bytes: 1024,
            body_read_timeout: Duration::from_secs(10),
            publish_allow: Default::default(),
        };
        tune(&mut cfg);
        let shutdown = Shutdown::new();
        let api = Arc::new(Api::new(
            cfg,
            store,
            buffer,
            metrics.clone(),
            shutdown.clone(),
        ));
        Harness {
            broker,
            api,
            metrics,
            drainer: Some(drainer),
            shutdown,
        }
    }

    async fn send<B: RequestBody>(&self, req: Request<B>) -> (StatusCode, HeaderMap, Value) {
        self.send_from(PEER, req).await
    }

    async fn send_from<B: RequestBody>(
        &self,
        peer: &str,
        req: Request<B>,
    ) -> (StatusCode, HeaderMap, Value) {
        let resp: Response<Full<Bytes>> = self.api.clone().handle(peer.parse().unwrap(), req).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (parts.status, parts.headers, json)
    }

    fn stored(&self) -> Vec<StoredMessage> {
        self.broker.stored(STREAM)
    }

    fn stored_count(&self, durability: Durability) -> u64 {
        self.metrics
            .events_stored
            .get_or_create(&StoredLabels { durability })
            .get()
    }

    fn dropped(&self, reason: DropReason) -> u64 {
        self.metrics
            .async_dropped
            .get_or_create(&DropLabels { reason })
            .get()
    }
}

fn post(uri: &str) -> http::request::Builder {
    Request::post(uri)
}

fn binary(id: &str) -> Request<Full<Bytes>> {
    post("/publish")
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "shop")
        .header("ce-type", "order.created")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"total\": 1.50}")))
        .unwrap()
}

fn structured(doc: Value) -> Request<Full<Bytes>> {
    post("/publish")
        .header("content-type", "application/cloudevents+json")
        .body(Full::new(Bytes::from(doc.to_string())))
        .unwrap()
}

/// A body that sends its first bytes and then nothing, forever.
struct Stalled(bool);

impl Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 {
            Poll::Pending
        } else {
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"spec")))))
        }
    }
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_binary_event_is_stored_with_its_headers_and_exact_data() {
    let h = Harness::new().await;
    let (status, _, _) = h.send(binary("1")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let stored = h.stored();
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert_eq!(m.subject, "herald.shop.order.created");
    assert_eq!(m.payload, Bytes::from_static(b"{\"total\": 1.50}"));
    assert_eq!(m.headers.get("ce-id"), Some("1"));
    assert_eq!(m.headers.get("content-type"), Some("application/json"));
    assert_eq!(h.stored_count(Durability::Sync), 1);
    // A retried publish is stored once.
    let (status, _, _) = h.send(binary("1")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h.stored().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_structured_event_keeps_its_data_bytes() {
    let h = Harness::new().await;
    let (status, _, _) = h
        .send(structured(json!({
            "specversion": "1.0", "id": "s1", "source": "shop", "type": "order.created",
            "datacontenttype": "application/json", "data": {"total": 1.50, "b": [1, 2]},
        })))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // serde_json writes the document as given; the data is stored as it was sent, not re-encoded.
    assert_eq!(
        h.stored()[0].payload,
        Bytes::from_static(b"{\"b\":[1,2],\"total\":1.5}")
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_events_name_the_attribute_and_the_rule() {
    let h = Harness::new().await;
    let req = post("/publish")
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-type", "order.created")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = h.send(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["attribute"], "source");
    assert_eq!(body["status"], 400);
    assert!(body["error"].as_str().unwrap().contains("source"), "{body}");

    let no_specversion = post("/publish").body(Full::new(Bytes::new())).unwrap();
    let (status, _, body) = h.send(no_specversion).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["attribute"], "specversion");

    let batch_ct = post("/publish")
        .header("content-type", "application/cloudevents-bundle+json")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(h.send(batch_ct).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let mut bad_durability = binary("1");
    bad_durability
        .headers_mut()
        .insert(DURABILITY_HEADER, "eventually".parse().unwrap());
    let (status, _, body) = h.send(bad_durability).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"],
        "herald-durability: must be `sync` or `async`, not `eventually`"
    );
    assert!(h.stored().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_batch_stores_what_is_valid_and_answers_with_the_worst_failure() {
    let h = Harness::with(
        |c| {
            c.publish_allow = Arc::new(arc_swap::ArcSwap::from_pointee(vec![
                TypeFilter::parse("order.>").unwrap(),
            ]))
        },
        16,
        1 << 20,
    )
    .await;
    let batch = json!([
        {"specversion": "1.0", "id": "a", "source": "shop", "type": "order.created"},
        {"specversion": "1.0", "id": "b", "source": "shop"},
        {"specversion": "1.0", "id": "c", "source": "shop", "type": "invoice.created"},
        {"specversion": "1.0", "id": "d", "source": "shop", "type": "order.paid"},
    ]);
    let req = post("/publish")
        .header("content-type", "application/cloudevents-batch+json")
        .body(Full::new(Bytes::from(batch.to_string())))
        .unwrap();
    let (status, _, body) = h.send(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let failed: Vec<(u64, u64)> = body["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["index"].as_u64().unwrap(), f["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(failed, [(1, 400), (2, 403)]);
    let stored = h.stored();
    let ids: Vec<&str> = stored
        .iter()
        .map(|m| m.headers.get("ce-id").unwrap_or_default())
        .collect();
    assert_eq!(ids, ["a", "d"]);
    assert_eq!(h.stored_count(Durability::Sync), 2);
}

#[tokio::test(start_paused = true)]
async fn events_by_type_fill_in_what_the_app_left_out() {
    let h = Harness::new().await;
    let req = post("/events/order.created")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    assert_eq!(h.send(req).await.0, StatusCode::NO_CONTENT);
    let m = &h.stored()[0];
    assert_eq!(m.headers.get("ce-type"), Some("order.created"));
    assert_eq!(m.headers.get("ce-source"), Some("orders"));
    assert_eq!(m.headers.get("ce-specversion"), Some("1.0"));
    assert!(m.headers.get("ce-id").is_some_and(|id| id.len() == 36));
    assert!(m.headers.get("ce-time").is_some());
    assert!(
        m.headers.get(DEDUP_HEADER).is_none(),
        "the id travels as the message's, not a header"
    );

    let twice = post("/events/order.created")
        .header("ce-type", "order.updated")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = h.send(twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["attribute"], "type");
}

#[tokio::test(start_paused = true)]
async fn the_kyma_legacy_route_answers_in_kymas_shapes() {
    let h = Harness::new().await;
    let ok = post("/commerce/v1/events")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"event-type": "order.created", "event-type-version": "v1", "event-time": "2024-01-01T00:00:00Z", "data": {"n": 1}, "event-id": "8954ad1c-78ed-4c58-a639-68bd44031de0"}).to_string(),
        )))
        .unwrap();
    let (status, _, body) = h.send(ok).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["event-id"], "8954ad1c-78ed-4c58-a639-68bd44031de0");
    assert_eq!(h.stored().len(), 1);

    let bad = post("/commerce/v1/events")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let (status, _, body) = h.send(bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "validation_violation");

    h.broker.set_connected(false);
    let (status, headers, body) = h.send(binary_legacy()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "1");
    assert_eq!(body["status"], 503);
}

fn binary_legacy() -> Request<Full<Bytes>> {
    post("/commerce/v1/events")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"event-type": "order.created", "event-type-version": "v1", "event-time": "2024-01-01T00:00:00Z", "data": 1}).to_string(),
        )))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn broker_failures_map_to_retryable_statuses() {
    let h = Harness::new().await;
    h.broker.set_connected(false);
    let (status, headers, body) = h.send(binary("1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "1");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("NATS is unreachable"),
        "{body}"
    );
    h.broker.set_connected(true);

    // An event nothing stores (no stream takes its subject): retry later, when the stream exists.
    let req = post("/publish")
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-source", "shop")
        .header("ce-type", "order.created")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let empty_broker = Harness::on(MemBroker::new(), |_| {}, 16, 1 << 20);
    let (status, headers, _) = empty_broker.send(req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "5");
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_limit_or_too_slow_are_refused() {
    let h = Harness::new().await;
    let mut big = binary("1");
    *big.body_mut() = Full::new(Bytes::from(vec![b'x'; 1025]));
    let (status, _, body) = h.send(big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        body["error"],
        "the request body is larger than the limit of 1024 bytes"
    );

    let slow = post("/publish")
        .header("content-type", "application/cloudevents+json")
        .body(Stalled(false))
        .unwrap();
    let started = tokio::time::Instant::now();
    let (status, _, _) = h.send(slow).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(h.stored().is_empty());
}

#[tokio::test(start_paused = true)]
async fn routes_methods_and_shutdown() {
    let h = Harness::new().await;
    let get = Request::get("/publish")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _) = h.send(get).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers.get(header::ALLOW).unwrap(), "POST");
    let (status, _, body) = h
        .send(post("/nope").body(Full::new(Bytes::new())).unwrap())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no such endpoint: /nope");

    let shutdown = || post("/shutdown").body(Full::new(Bytes::new())).unwrap();
    let (status, _, _) = h.send_from("10.0.0.7:5000", shutdown()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!h.shutdown.is_triggered());
    let (status, _, _) = h.send(shutdown()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(h.shutdown.is_triggered());
}

fn async_(mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    req.headers_mut()
        .insert(DURABILITY_HEADER, "async".parse().unwrap());
    req
}

#[tokio::test(start_paused = true)]
async fn async_events_are_stored_once_the_broker_is_back() {
    let h = Harness::new().await;
    h.broker.set_connected(false);
    let (status, _, _) = h.send(async_(binary("1"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(h.stored().is_empty());
    assert_eq!(h.metrics.async_buffered.get(), 1);
    h.broker.set_connected(true);
    until("stored", || h.stored().len() == 1).await;
    assert_eq!(h.stored_count(Durability::Async), 1);
    until("the buffer emptied", || h.metrics.async_buffered.get() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_async_buffer_answers_503_by_count_and_by_bytes() {
    let h = Harness::with(|_| {}, 2, 1 << 20).await;
    h.broker.set_connected(false);
    // Two events held, whether waiting or being retried.
    for id in ["1", "2"] {
        assert_eq!(h.send(async_(binary(id))).await.0, StatusCode::ACCEPTED);
        tokio::task::yield_now().await;
    }
    let (status, headers, body) = h.send(async_(binary("3"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "1");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("2 events are waiting"),
        "{body}"
    );
    // Room again once one is stored.
    h.broker.set_connected(true);
    until("stored", || h.stored().len() == 2).await;
    assert_eq!(h.send(async_(binary("3"))).await.0, StatusCode::ACCEPTED);

    let small = Harness::with(|_| {}, 100, 64).await;
    small.broker.set_connected(false);
    assert_eq!(
        small.send(async_(binary("1"))).await.0,
        StatusCode::ACCEPTED
    );
    let (status, _, body) = small.send(async_(binary("2"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the limit is 64 bytes"),
        "{body}"
    );
}

#[tokio::test(start_paused = true)]
async fn draining_stores_what_it_can_within_the_grace_period() {
    let mut h = Harness::new().await;
    h.broker.set_connected(false);
    assert_eq!(h.send(async_(binary("1"))).await.0, StatusCode::ACCEPTED);
    let started = tokio::time::Instant::now();
    h.drainer
        .take()
        .unwrap()
        .drain(Duration::from_secs(3))
        .await;
    // The broker never came back: the event is dropped at the deadline, and counted.
    assert!(started.elapsed() <= Duration::from_secs(4));
    assert_eq!(h.dropped(DropReason::Shutdown), 1);
    // Closed: a late async publish is refused, not accepted and lost.
    let (status, headers, _) = h.send(async_(binary("2"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "2");

    let mut h = Harness::new().await;
    h.broker.set_connected(false);
    assert_eq!(h.send(async_(binary("1"))).await.0, StatusCode::ACCEPTED);
    let broker = h.broker.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.set_connected(true);
    });
    h.drainer
        .take()
        .unwrap()
        .drain(Duration::from_secs(3))
        .await;
    assert_eq!(h.stored().len(), 1);
    assert_eq!(h.dropped(DropReason::Shutdown), 0);
}
