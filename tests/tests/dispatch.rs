//! `herald dispatch`: subscriptions to sinks, as the controller puts them in the configuration
//! bucket, delivered over HTTP to a real sink named by its cluster DNS name (connected to
//! loopback with `--resolve`, as in a local run): delivered through a sink outage (kept, then
//! delivered), max in flight honoured, two dispatchers sharing the consumer without delivering an
//! event twice, and a removed subscription stopped. Real nats-server, real processes.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use herald_tests::herald_core::broker::ConfigStore as _;
use herald_tests::herald_core::defaults::BUCKET;
use herald_tests::herald_core::sinks::SINKS_KEY;
use herald_tests::sink::Sink;
use herald_tests::{Herald, Nats, eventually};

const HOST: &str = "orders-fn.shop.svc.cluster.local";

async fn dispatcher(nats: &Nats, sink: &Sink) -> Herald {
    let resolve = format!("{HOST}:{}:127.0.0.1", sink.port);
    let h = Herald::start(
        "dispatch",
        &["--nats-url", &nats.url(), "--resolve", &resolve],
    )
    .await;
    h.wait_ready().await;
    h
}

fn sinks_value(port: u16, max_in_flight: u32) -> Bytes {
    Bytes::from(
        serde_json::json!([{
            "namespace": "shop", "name": "orders-fn",
            "url": format!("http://{HOST}:{port}/events"),
            "entries": [{"type": "order.paid.v1", "source": "checkout", "maxInFlight": max_in_flight,
                         "retry": {"backoff": "50ms", "redeliveryDelay": "500ms"}}]
        }])
        .to_string(),
    )
}

#[tokio::test]
async fn sinks_get_their_events_through_an_outage_shared_by_two_dispatchers() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let broker = nats.broker().await;
    broker.ensure_bucket(BUCKET, 1).await.expect("bucket");
    let mut sink = Sink::start().await;
    sink.delay(Duration::from_millis(100));
    broker
        .put(BUCKET, SINKS_KEY, sinks_value(sink.port, 3))
        .await
        .expect("put");
    let a = dispatcher(&nats, &sink).await;
    let b = dispatcher(&nats, &sink).await;
    eventually(
        Duration::from_secs(20),
        "both dispatchers subscribed",
        || {
            let (la, lb) = (a.log_text(), b.log_text());
            async move { la.contains("subscribed") && lb.contains("subscribed") }
        },
    )
    .await;
    let publisher = Herald::start(
        "sidecar",
        &["--nats-url", &nats.url(), "--app-id", "checkout"],
    )
    .await;
    publisher.wait_ready().await;
    let client = reqwest::Client::new();
    let publish = |id: String| {
        let url = publisher.url.clone();
        let client = client.clone();
        async move {
            let r = herald_tests::binary_on(&client, &url, &id, "checkout", "order.paid.v1")
                .body("{}")
                .send()
                .await
                .expect("publish");
            assert_eq!(r.status(), 204, "publish {id}");
        }
    };
    for i in 0..30 {
        publish(format!("a-{i}")).await;
    }
    let got = sink.wait_for(30, Duration::from_secs(30)).await;
    let r = &got[0];
    assert_eq!(
        r.header("host"),
        Some(format!("{HOST}:{}", sink.port).as_str())
    );
    assert_eq!(r.path, "/events");
    assert!(
        sink.peak_concurrency() <= 3,
        "max in flight 3 across both dispatchers, peak {}",
        sink.peak_concurrency()
    );

    // Delivered attempts per dispatcher, from its metrics.
    let share = |text: String| {
        text.lines()
            .filter(|l| {
                l.starts_with("herald_delivery_attempts_total")
                    && l.contains("shop/orders-fn/checkout/order.paid.v1")
                    && l.contains("result=\"delivered\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // Every answer is in before the outage: a request cut by it would be delivered again, as
    // at-least-once allows, and this test counts duplicates.
    eventually(Duration::from_secs(20), "30 deliveries answered", || {
        let (a, b) = (&a, &b);
        async move { share(a.metrics().await) + share(b.metrics().await) >= 30.0 }
    })
    .await;

    // The sink goes down: events are kept, and delivered once it is back.
    sink.down();
    for i in 0..10 {
        publish(format!("b-{i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    sink.up().await;
    let got = sink.wait_for(40, Duration::from_secs(60)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *counts
            .entry(r.header("ce-id").unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    for i in 0..30 {
        assert_eq!(counts.get(&format!("a-{i}")), Some(&1), "a-{i} once");
    }
    for i in 0..10 {
        assert!(
            counts.contains_key(&format!("b-{i}")),
            "b-{i} delivered after the outage"
        );
    }
    // Both dispatchers took a share (the consumer is shared, not copied).
    let (sa, sb) = (share(a.metrics().await), share(b.metrics().await));
    assert!(sa > 0.0 && sb > 0.0, "both delivered: {sa} and {sb}");

    // The subscription removed: both stop.
    broker
        .put(BUCKET, SINKS_KEY, Bytes::from_static(b"[]"))
        .await
        .expect("put");
    eventually(Duration::from_secs(20), "both unsubscribed", || {
        let (la, lb) = (a.log_text(), b.log_text());
        async move { la.contains("unsubscribed") && lb.contains("unsubscribed") }
    })
    .await;
    drop(js);
}
