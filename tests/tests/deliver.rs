//! Delivery end to end: real nats-server, the real `herald` binary, a real HTTP sink.

use std::time::Duration;

use herald_tests::sink::Sink;
use herald_tests::{
    Herald, Nats, consumers, dead_letters, eventually, header, publish, settled, stored,
    subscriber, wait_settled,
};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn an_event_waits_in_the_stream_while_the_app_is_down_and_is_delivered_when_it_is_back() {
    let nats = Nats::start();
    nats.create_streams().await;
    let mut sink = Sink::start().await;
    let h = subscriber(
        &nats,
        "billing",
        &sink,
        &[
            "--subscribe",
            "order.created.v1",
            "--path",
            "/in",
            "--redelivery-delay",
            "300ms",
        ],
    )
    .await;
    sink.down();
    publish(&h, "o-1", "order.created.v1").await;
    // Tried while the app is down, and handed back to wait in the stream.
    eventually(WAIT, "a failed attempt and a redelivery", || async {
        h.metric(r#"herald_deliveries_total{subscription="order.created.v1",outcome="redelivery"}"#)
            .await
            >= 1.0
    })
    .await;
    assert!(sink.received().is_empty());
    sink.up().await;
    let got = sink.wait_for(1, WAIT).await;
    let r = &got[0];
    assert_eq!(r.path, "/in");
    assert_eq!(r.header("ce-id"), Some("o-1"));
    assert_eq!(r.header("ce-type"), Some("order.created.v1"));
    assert_eq!(r.header("ce-source"), Some("shop"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert!(
        r.header("herald-delivery-attempt")
            .unwrap()
            .parse::<u32>()
            .unwrap()
            > 1
    );
    assert_eq!(&r.body[..], br#"{"id":"o-1"}"#);
}

#[tokio::test]
async fn two_apps_each_get_every_event_and_replicas_share_them() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let (billing, shipping_a, shipping_b) = (
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
    );
    let sub = ["--subscribe", "order.*.v1"];
    let b = subscriber(&nats, "billing", &billing, &sub).await;
    let _sa = subscriber(&nats, "shipping", &shipping_a, &sub).await;
    let _sb = subscriber(&nats, "shipping", &shipping_b, &sub).await;
    for i in 0..40 {
        publish(&b, &format!("e{i}"), "order.created.v1").await;
    }
    publish(&b, "other", "invoice.sent.v1").await;
    billing.wait_for(40, WAIT).await;
    eventually(WAIT, "the shipping replicas get every event", || async {
        shipping_a.received().len() + shipping_b.received().len() >= 40
    })
    .await;
    // Every delivery acknowledged: nothing more is on its way.
    wait_settled(&js).await;
    let ids = |s: &Sink| {
        s.received()
            .iter()
            .map(|r| r.header("ce-id").unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let mut shipping: Vec<String> = ids(&shipping_a)
        .into_iter()
        .chain(ids(&shipping_b))
        .collect();
    shipping.sort();
    shipping.dedup();
    assert_eq!(
        shipping.len(),
        40,
        "every event reaches the shipping workload"
    );
    assert_eq!(
        ids(&billing).len(),
        40,
        "billing gets each event once, and not invoice.sent.v1"
    );
    let dups = shipping_a.received().len() + shipping_b.received().len() - 40;
    eprintln!(
        "shipping: replica a {}, replica b {}, redelivered duplicates {dups}",
        shipping_a.received().len(),
        shipping_b.received().len()
    );
    assert!(
        !shipping_a.received().is_empty() && !shipping_b.received().is_empty(),
        "both replicas share the work"
    );
}

#[tokio::test]
async fn a_server_error_is_retried_and_the_attempt_is_counted() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let sink = Sink::start().await;
    sink.script(&[(500, None), (502, None)]);
    let h = subscriber(&nats, "billing", &sink, &["--subscribe", "order.>"]).await;
    publish(&h, "r-1", "order.created.v1").await;
    let got = sink.wait_for(3, WAIT).await;
    let attempts: Vec<_> = got
        .iter()
        .map(|r| r.header("herald-delivery-attempt").unwrap().to_owned())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    wait_settled(&js).await;
    assert_eq!(
        sink.received().len(),
        3,
        "acknowledged after the 2xx: not delivered again"
    );
    let metrics = reqwest::get(format!("{}/metrics", h.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"herald_delivery_attempts_total{subscription="order.>",result="retryable"} 2"#,
        r#"herald_delivery_attempts_total{subscription="order.>",result="delivered"} 1"#,
        r#"herald_deliveries_total{subscription="order.>",outcome="acked"} 1"#,
        r#"herald_deliveries_in_flight{subscription="order.>"} 0"#,
        r#"herald_delivery_attempt_duration_seconds_count{subscription="order.>"} 3"#,
        r#"herald_consumer_pending{subscription="order.>"}"#,
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }
}

#[tokio::test]
async fn a_client_error_is_dead_lettered_at_once() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let sink = Sink::start().await;
    sink.always(400);
    let h = subscriber(
        &nats,
        "billing",
        &sink,
        &["--subscribe", "order.created.v1", "--namespace", "prod"],
    )
    .await;
    publish(&h, "bad-1", "order.created.v1").await;
    dead_letters(&js).await;
    wait_settled(&js).await;
    assert_eq!(
        sink.received().len(),
        1,
        "a permanent failure is not retried"
    );
    let dl = stored(&js, "HERALD_DLQ").await;
    assert_eq!(dl.len(), 1);
    let m = &dl[0];
    assert_eq!(
        m.subject.as_str(),
        "herald-dlq.prod.billing.shop.order.created.v1"
    );
    assert_eq!(header(m, "Herald-Dlq-Status"), Some("400"));
    assert_eq!(header(m, "Herald-Dlq-Attempts"), Some("1"));
    assert_eq!(
        header(m, "Herald-Dlq-Subscriber"),
        Some("prod/billing/order.created.v1")
    );
    assert_eq!(
        header(m, "Herald-Dlq-Subject"),
        Some("herald.shop.order.created.v1")
    );
    assert!(header(m, "Herald-Dlq-Reason").unwrap().contains("400"));
    assert_eq!(header(m, "ce-id"), Some("bad-1"));
    assert_eq!(&m.payload[..], br#"{"id":"bad-1"}"#);
    // Counted per subscriber as a Subscription's status counts them (the filter the controller
    // derives from the consumer's own filter subject).
    use herald_tests::herald_core::broker::Admin as _;
    let broker = nats.broker().await;
    let mine = herald_tests::herald_core::delivery::dlq_subject(
        &herald_tests::herald_core::consumer::Subscriber {
            namespace: "prod".into(),
            app_id: "billing".into(),
        },
        "herald.*.order.created.v1",
    );
    assert_eq!(broker.count("HERALD_DLQ", &mine).await.unwrap(), 1);
    assert_eq!(
        broker
            .count("HERALD_DLQ", "herald-dlq.prod.other.>")
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn an_exhausted_budget_is_dead_lettered_with_the_reason() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let sink = Sink::start().await;
    sink.always(503);
    let h = subscriber(
        &nats,
        "billing",
        &sink,
        &[
            "--subscribe",
            "order.created.v1",
            "--max-attempts",
            "5",
            "--redelivery-delay",
            "200ms",
        ],
    )
    .await;
    publish(&h, "x-1", "order.created.v1").await;
    let dl = dead_letters(&js).await;
    assert_eq!(header(&dl[0], "Herald-Dlq-Attempts"), Some("5"));
    assert_eq!(header(&dl[0], "Herald-Dlq-Status"), Some("503"));
    assert!(
        header(&dl[0], "Herald-Dlq-Reason")
            .unwrap()
            .contains("gave up after 5 attempts")
    );
    wait_settled(&js).await;
    let attempts: Vec<String> = sink
        .received()
        .iter()
        .map(|r| r.header("herald-delivery-attempt").unwrap().to_owned())
        .collect();
    assert_eq!(
        attempts,
        ["1", "2", "3", "4", "5"],
        "one budget over local retries and redeliveries"
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let nats = Nats::start();
    nats.create_streams().await;
    let sink = Sink::start().await;
    sink.script(&[(429, Some(1))]);
    let h = subscriber(
        &nats,
        "billing",
        &sink,
        &["--subscribe", "order.created.v1"],
    )
    .await;
    publish(&h, "ra-1", "order.created.v1").await;
    let got = sink.wait_for(2, WAIT).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "retried after {gap:?}, before Retry-After: 1"
    );
}

#[tokio::test]
async fn max_in_flight_is_never_exceeded() {
    let nats = Nats::start();
    nats.create_streams().await;
    let sink = Sink::start().await;
    sink.delay(Duration::from_millis(200));
    let h = subscriber(
        &nats,
        "billing",
        &sink,
        &["--subscribe", "order.created.v1", "--max-in-flight", "3"],
    )
    .await;
    for i in 0..15 {
        publish(&h, &format!("m{i}"), "order.created.v1").await;
    }
    sink.wait_for(15, WAIT).await;
    assert!(
        sink.peak_concurrency() <= 3,
        "peak concurrency {}",
        sink.peak_concurrency()
    );
    assert!(
        sink.peak_concurrency() >= 2,
        "deliveries should overlap up to the limit"
    );
}

#[tokio::test]
async fn sigterm_lets_a_slow_delivery_finish_and_dead_letters_nothing() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let sink = Sink::start().await;
    sink.delay(Duration::from_millis(1500));
    let mut h = subscriber(
        &nats,
        "billing",
        &sink,
        &["--subscribe", "order.created.v1"],
    )
    .await;
    publish(&h, "slow-1", "order.created.v1").await;
    sink.wait_for(1, WAIT).await;
    h.sigterm();
    let status = tokio::task::spawn_blocking(move || h.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(status.is_some_and(|s| s.success()));
    assert!(stored(&js, "HERALD_DLQ").await.is_empty());
    // The delivery completed and was acknowledged before the sidecar exited: nothing is leased
    // (it would come back after the ack wait) and nothing waits.
    assert!(settled(&js).await, "{:?}", consumers(&js).await);
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn subscriptions_come_from_the_annotations_file() {
    let nats = Nats::start();
    nats.create_streams().await;
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("annotations");
    std::fs::write(
        &file,
        format!(
            "herald.dev/app-port=\"{}\"\nherald.dev/inject=\"true\"\nherald.dev/path=\"/hook\"\nherald.dev/subscribe=\"shop/order.\\u003e\"\n",
            sink.port
        ),
    )
    .unwrap();
    let h = Herald::with_annotations(&nats, "billing", &file).await;
    publish(&h, "f-1", "order.paid.v1").await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].path, "/hook");
}

#[test]
fn bad_subscription_settings_are_refused_naming_the_key() {
    let out = herald_tests::herald_output(
        &["sidecar", "--app-id", "a", "--subscribe", "order..v1"],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--subscribe"), "{err}");
    assert!(err.contains("herald.dev/app-port"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("annotations");
    std::fs::write(
        &file,
        "herald.dev/max-in-flight=\"lots\"\nherald.dev/subscibe=\"x\"\n",
    )
    .unwrap();
    let out = herald_tests::herald_output(
        &[
            "sidecar",
            "--app-id",
            "a",
            "--annotations-file",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("herald.dev/max-in-flight") && err.contains("herald.dev/subscibe"),
        "{err}"
    );
}

/// Counts deliveries per event id; every id must be there at least once.
fn at_least_once(sink: &Sink, ids: &[String]) -> usize {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in sink.received() {
        *seen
            .entry(r.header("ce-id").unwrap().to_owned())
            .or_default() += 1;
    }
    let missing: Vec<_> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    seen.values().map(|n| n - 1).sum()
}

async fn wait_all(sink: &Sink, ids: &[String], limit: Duration) {
    eventually(limit, "every event is delivered", || async {
        let got: std::collections::HashSet<String> = sink
            .received()
            .iter()
            .map(|r| r.header("ce-id").unwrap().to_owned())
            .collect();
        ids.iter().all(|id| got.contains(id))
    })
    .await;
}

#[tokio::test]
async fn a_sidecar_killed_mid_delivery_loses_nothing() {
    let nats = Nats::start();
    nats.create_streams().await;
    let sink = Sink::start().await;
    sink.delay(Duration::from_millis(300));
    // A short attempt timeout keeps the ack wait, after which JetStream redelivers, short.
    let args = [
        "--subscribe",
        "order.created.v1",
        "--max-in-flight",
        "5",
        "--attempt-timeout",
        "1s",
    ];
    let mut h = subscriber(&nats, "billing", &sink, &args).await;
    let ids: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for id in &ids {
        publish(&h, id, "order.created.v1").await;
    }
    sink.wait_for(3, WAIT).await;
    h.kill();
    let _h2 = subscriber(&nats, "billing", &sink, &args).await;
    wait_all(&sink, &ids, Duration::from_secs(30)).await;
    let dups = at_least_once(&sink, &ids);
    eprintln!(
        "sidecar SIGKILL: {} events, {} deliveries, {dups} duplicates",
        ids.len(),
        sink.received().len()
    );
}

#[tokio::test]
async fn nats_killed_during_delivery_loses_nothing() {
    let mut nats = Nats::start();
    nats.create_streams().await;
    let sink = Sink::start().await;
    sink.delay(Duration::from_millis(100));
    let args = [
        "--subscribe",
        "order.created.v1",
        "--max-in-flight",
        "5",
        "--attempt-timeout",
        "1s",
    ];
    let h = subscriber(&nats, "billing", &sink, &args).await;
    let ids: Vec<String> = (0..30).map(|i| format!("n{i}")).collect();
    for id in &ids {
        publish(&h, id, "order.created.v1").await;
    }
    sink.wait_for(5, WAIT).await;
    nats.server.kill();
    // Down until the sidecar has noticed.
    eventually(WAIT, "the sidecar sees NATS gone", || async {
        h.metric("herald_nats_connected").await == 0.0
    })
    .await;
    nats.server.restart().unwrap();
    wait_all(&sink, &ids, Duration::from_secs(40)).await;
    let dups = at_least_once(&sink, &ids);
    eprintln!(
        "nats SIGKILL: {} events, {} deliveries, {dups} duplicates",
        ids.len(),
        sink.received().len()
    );
}

#[tokio::test]
async fn deadletter_list_and_replay_redeliver_to_the_failed_subscription_only() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let (billing, shipping) = (Sink::start().await, Sink::start().await);
    billing.always(422);
    let h = subscriber(
        &nats,
        "billing",
        &billing,
        &["--subscribe", "order.created.v1"],
    )
    .await;
    let _s = subscriber(
        &nats,
        "shipping",
        &shipping,
        &["--subscribe", "order.created.v1"],
    )
    .await;
    publish(&h, "dl-1", "order.created.v1").await;
    shipping.wait_for(1, WAIT).await;
    dead_letters(&js).await;
    let url = nats.url();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            herald_tests::herald_output(&args, &[])
        })
    };
    let out = run(vec![
        "deadletter".into(),
        "list".into(),
        "--nats-url".into(),
        url.clone(),
    ])
    .await
    .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    let row = text.lines().nth(1).unwrap_or_default();
    for needle in [
        "default/billing/order.created.v1",
        "order.created.v1",
        "dl-1",
        "422",
    ] {
        assert!(row.contains(needle), "{needle} not in {text}");
    }
    let out = run(vec![
        "deadletter".into(),
        "replay".into(),
        "--nats-url".into(),
        url.clone(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64), "replay needs a selection");

    billing.always(204);
    let out = run(vec![
        "deadletter".into(),
        "replay".into(),
        "--nats-url".into(),
        url.clone(),
        "--app".into(),
        "billing".into(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = billing.wait_for(2, WAIT).await;
    assert_eq!(got[1].header("ce-id"), Some("dl-1"));
    assert_eq!(&got[1].body[..], br#"{"id":"dl-1"}"#);
    // Every consumer, shipping's included, has taken the replay and settled it.
    wait_settled(&js).await;
    assert_eq!(
        shipping.received().len(),
        1,
        "the replay is for billing only"
    );
    assert!(
        stored(&js, "HERALD_DLQ").await.is_empty(),
        "a replayed dead letter is removed"
    );
}
