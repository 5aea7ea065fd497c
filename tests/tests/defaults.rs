//! The cluster's delivery defaults (the controller's `HERALD_CONFIG` bucket) reach sidecars at
//! start and while they run, settings of the pod win over them, and a bad value changes nothing.
//! Real nats-server, the real `herald` binary, a real HTTP sink that always fails, so the retry
//! budget shows as the attempt count on the dead letter.

use std::time::Duration;

use herald_tests::herald_core::broker::ConfigStore as _;
use herald_tests::herald_core::defaults::{BUCKET, DELIVERY_KEY};
use herald_tests::sink::Sink;
use herald_tests::{Nats, eventually, header, publish, stored, subscriber};

/// The attempt count on the dead letter of event `id`, once it is there.
async fn attempts_of(js: &async_nats::jetstream::Context, id: &str) -> String {
    let find = || async {
        stored(js, "HERALD_DLQ")
            .await
            .into_iter()
            .find(|m| header(m, "ce-id") == Some(id))
    };
    eventually(
        Duration::from_secs(15),
        &format!("{id} is dead-lettered"),
        || async { find().await.is_some() },
    )
    .await;
    let m = find().await.unwrap();
    header(&m, "Herald-Dlq-Attempts").unwrap().to_owned()
}

#[tokio::test]
async fn cluster_defaults_apply_at_start_and_while_running_and_the_pod_wins() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let broker = nats.broker().await;
    broker.ensure_bucket(BUCKET, 1).await.unwrap();
    broker
        .put(
            BUCKET,
            DELIVERY_KEY,
            r#"{"maxAttempts": 2, "backoff": "10ms"}"#.into(),
        )
        .await
        .unwrap();

    let sink = Sink::start().await;
    sink.always(503);
    let h = subscriber(
        &nats,
        "billing",
        &sink,
        &[
            "--subscribe",
            "order.created.v1",
            "--redelivery-delay",
            "100ms",
        ],
    )
    .await;
    // Read at start: 2 attempts, not the built-in 10.
    publish(&h, "x-1", "order.created.v1").await;
    assert_eq!(attempts_of(&js, "x-1").await, "2");

    // Changed while running: the next event gets the new budget, without a restart.
    broker
        .put(BUCKET, DELIVERY_KEY, r#"{"maxAttempts": 3}"#.into())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the sidecar reloads", || async {
        h.log_text().contains("configuration reloaded")
    })
    .await;
    publish(&h, "x-2", "order.created.v1").await;
    assert_eq!(attempts_of(&js, "x-2").await, "3");

    // A bad value is refused with its field named; the last good defaults stay.
    broker
        .put(BUCKET, DELIVERY_KEY, r#"{"maxAttempts": 0}"#.into())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the bad value is reported",
        || async { h.log_text().contains("maxAttempts must be from 1 to 1000") },
    )
    .await;
    publish(&h, "x-3", "order.created.v1").await;
    assert_eq!(attempts_of(&js, "x-3").await, "3");

    // The pod's own setting (the flag stands in for the annotation) wins over the cluster's.
    let other_sink = Sink::start().await;
    other_sink.always(503);
    let pinned = subscriber(
        &nats,
        "audit",
        &other_sink,
        &[
            "--subscribe",
            "order.paid.v1",
            "--max-attempts",
            "1",
            "--redelivery-delay",
            "100ms",
        ],
    )
    .await;
    publish(&pinned, "y-1", "order.paid.v1").await;
    assert_eq!(attempts_of(&js, "y-1").await, "1");

    // The key removed: back to the built-in budget of 10 (4 seen here is enough to tell).
    broker.delete(BUCKET, DELIVERY_KEY).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the sidecar reloads again",
        || async { h.log_text().matches("configuration reloaded").count() >= 2 },
    )
    .await;
    let before = sink.received().len();
    publish(&h, "x-4", "order.created.v1").await;
    eventually(Duration::from_secs(10), "more than 3 attempts", || async {
        sink.received().len() - before > 3
    })
    .await;
}
