//! The publish path end to end: the real `herald` binary in front of a real nats-server.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloudevents::binding::reqwest::RequestBuilderExt as _;
use cloudevents::{EventBuilder as _, EventBuilderV10};
use futures::StreamExt as _;
use herald_tests::{Herald, Nats, binary, eventually, header, stored};
use serde_json::{Value, json};

/// A nats-server with both streams, and a ready `herald sidecar` in front of it.
async fn ready_sidecar(args: &[&str]) -> (Nats, async_nats::jetstream::Context, Herald) {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let h = Herald::sidecar(&nats, args).await;
    h.wait_ready().await;
    (nats, js, h)
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn publish_binary(h: &Herald, id: &str) -> reqwest::Response {
    binary(&h.url, id, "shop", "order.created.v1")
        .header("content-type", "application/json")
        .body(format!("{{\"n\":\"{id}\"}}"))
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn sdk_binary_mode_keeps_every_attribute_and_the_data_bytes() {
    let (_nats, js, h) = ready_sidecar(&[]).await;

    let data = br#"{"z":1,"a":[1.50,2e3],"big":123456789012345678901234567890}"#.to_vec();
    let event = EventBuilderV10::new()
        .id("evt-1")
        .source("https://shop.example/orders")
        .ty("order.created.v1")
        .subject("order/42")
        .time("2024-05-01T12:00:00Z")
        .extension("tenant", "acme corp")
        .extension("priority", 5)
        .data("application/json", data.clone())
        .build()
        .unwrap();
    let resp = client()
        .post(format!("{}/publish", h.url))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", "vendor=x")
        .event(event)
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "{}", resp.text().await.unwrap());

    let msgs = stored(&js, "HERALD").await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(
        m.subject.as_str(),
        "herald.https~3A~2F~2Fshop~2Eexample~2Forders.order.created.v1"
    );
    assert_eq!(&m.payload[..], &data[..], "data bytes must be exact");
    assert_eq!(header(m, "ce-id"), Some("evt-1"));
    assert_eq!(header(m, "ce-specversion"), Some("1.0"));
    assert_eq!(header(m, "ce-source"), Some("https://shop.example/orders"));
    assert_eq!(header(m, "ce-type"), Some("order.created.v1"));
    assert_eq!(header(m, "ce-subject"), Some("order/42"));
    assert!(
        header(m, "ce-time")
            .unwrap()
            .starts_with("2024-05-01T12:00:00")
    );
    assert_eq!(
        header(m, "ce-tenant"),
        Some("acme%20corp"),
        "values are stored percent-encoded like HTTP headers"
    );
    assert_eq!(header(m, "ce-priority"), Some("5"));
    assert_eq!(header(m, "content-type"), Some("application/json"));
    assert_eq!(
        header(m, "traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(header(m, "tracestate"), Some("vendor=x"));
    assert_eq!(
        header(m, "Nats-Msg-Id"),
        Some("https://shop.example/orders evt-1")
    );
}

#[tokio::test]
async fn sdk_structured_and_batch_modes_are_stored() {
    let (_nats, js, h) = ready_sidecar(&[]).await;

    let ev = |id: &str| {
        EventBuilderV10::new()
            .id(id)
            .source("shop")
            .ty("order.paid.v1")
            .extension("region", "eu")
            .data("application/json", json!({"id": id, "total": 12.5}))
            .build()
            .unwrap()
    };
    // Structured mode, serialised by the SDK.
    let body = serde_json::to_vec(&ev("s1")).unwrap();
    let r = client()
        .post(format!("{}/publish", h.url))
        .header("content-type", "application/cloudevents+json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    // Batch mode, serialised by the SDK.
    let r = client()
        .post(format!("{}/publish", h.url))
        .events(vec![ev("b1"), ev("b2")])
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());

    let msgs = stored(&js, "HERALD").await;
    let ids: Vec<_> = msgs
        .iter()
        .map(|m| header(m, "ce-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["s1", "b1", "b2"]);
    let sent: Value = serde_json::from_slice(&body).unwrap();
    let stored_data: Value = serde_json::from_slice(&msgs[0].payload).unwrap();
    assert_eq!(stored_data, sent["data"]);
    assert_eq!(header(&msgs[0], "ce-region"), Some("eu"));
}

#[tokio::test]
async fn structured_data_bytes_are_kept_exactly() {
    let (_nats, js, h) = ready_sidecar(&[]).await;
    let data = r#"{ "zeta" : 1.0, "alpha":[3,2,1], "n":12345678901234567890123 }"#;
    let body = format!(
        r#"{{"specversion":"1.0","id":"x1","source":"shop","type":"t.v1","datacontenttype":"application/json","data":{data}}}"#
    );
    let r = client()
        .post(format!("{}/publish", h.url))
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let msgs = stored(&js, "HERALD").await;
    assert_eq!(std::str::from_utf8(&msgs[0].payload).unwrap(), data);
}

#[tokio::test]
async fn batch_stores_the_valid_events_and_lists_the_failed_ones() {
    let (_nats, js, h) = ready_sidecar(&["--publish-allow", "order.>"]).await;
    let batch = json!([
        {"specversion":"1.0","id":"1","source":"shop","type":"order.created.v1","data":{"a":1}},
        {"specversion":"1.0","id":"2","source":"shop"},
        {"specversion":"1.0","id":"3","source":"shop","type":"payment.done.v1"},
        {"specversion":"1.0","id":"4","source":"shop","type":"order.paid.v1"}
    ]);
    let r = client()
        .post(format!("{}/publish", h.url))
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the highest status among the failures");
    let body: Value = r.json().await.unwrap();
    let failed = body["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2);
    assert_eq!(
        (failed[0]["index"].as_u64(), failed[0]["status"].as_u64()),
        (Some(1), Some(400))
    );
    assert!(failed[0]["error"].as_str().unwrap().contains("`type`"));
    assert_eq!(
        (failed[1]["index"].as_u64(), failed[1]["status"].as_u64()),
        (Some(2), Some(403))
    );
    let ids: Vec<_> = stored(&js, "HERALD")
        .await
        .iter()
        .map(|m| header(m, "ce-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["1", "4"], "every entry not listed was stored");

    let r = client()
        .post(format!("{}/publish", h.url))
        .header("content-type", "application/cloudevents-batch+json")
        .body("{\"not\":\"an array\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn raw_events_endpoint_fills_the_attributes() {
    let (_nats, js, h) = ready_sidecar(&[]).await;
    let r = client()
        .post(format!("{}/events/order.created.v1", h.url))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = client()
        .post(format!("{}/events/order.created.v1", h.url))
        .header("ce-id", "mine")
        .header("ce-type", "other")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "ce-type conflicts with the path");
    let msgs = stored(&js, "HERALD").await;
    let m = &msgs[0];
    assert_eq!(&m.payload[..], b"hello");
    assert_eq!(
        header(m, "ce-source"),
        Some("test"),
        "source defaults to the app id"
    );
    assert_eq!(header(m, "ce-type"), Some("order.created.v1"));
    assert_eq!(header(m, "content-type"), Some("text/plain"));
    assert_eq!(header(m, "ce-id").unwrap().len(), 36);
    assert!(header(m, "ce-time").is_some());
}

#[tokio::test]
async fn kyma_legacy_events_convert_and_errors_keep_kymas_shapes() {
    let (_nats, js, h) = ready_sidecar(&[]).await;
    let url = format!("{}/commerce/v1/events", h.url);
    let id = "8945ec08-256b-11eb-9928-acde48001122";
    let r = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"event-type":"order.created","event-type-version":"v1","event-id":"{id}","event-time":"2020-04-02T21:37:00Z","data":{{"orderCode":"123","b":1}}}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"event-id": id, "status": "", "reason": ""})
    );
    let msgs = stored(&js, "HERALD").await;
    let m = &msgs[0];
    assert_eq!(m.subject.as_str(), "herald.commerce.order.created.v1");
    assert_eq!(header(m, "ce-type"), Some("order.created.v1"));
    assert_eq!(header(m, "ce-source"), Some("commerce"));
    assert_eq!(header(m, "ce-eventtypeversion"), Some("v1"));
    assert_eq!(&m.payload[..], br#"{"orderCode":"123","b":1}"#);

    let cases = [
        (
            r#"{"event-type-version":"v1","event-time":"2020-04-02T21:37:00Z","data":1}"#,
            "event-type",
            "missing_field",
        ),
        (
            r#"{"event-type":"a","event-type-version":"v1","event-time":"yesterday","data":1}"#,
            "event-time",
            "invalid_field",
        ),
        (
            r#"{"event-type":"a","event-type-version":"v1","event-time":"2020-04-02T21:37:00Z","event-id":"nope","data":1}"#,
            "event-id",
            "invalid_field",
        ),
        (
            r#"{"event-type":"a","event-type-version":"v1","event-time":"2020-04-02T21:37:00Z"}"#,
            "data",
            "missing_field",
        ),
    ];
    for (body, field, kind) in cases {
        let r = client().post(&url).body(body).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["type"], "validation_violation");
        assert_eq!(e["details"][0]["field"], field);
        assert_eq!(e["details"][0]["type"], kind);
    }
    let r = client().post(&url).body("{broken").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["message"].as_str()),
        (Some("bad_payload_syntax"), Some("Bad payload syntax"))
    );
    let r = client()
        .post(&url)
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["type"],
        "request_body_too_large"
    );
}

#[tokio::test]
async fn same_source_and_id_is_stored_once() {
    let (_nats, js, h) = ready_sidecar(&[]).await;
    for _ in 0..3 {
        assert_eq!(publish_binary(&h, "dup-1").await.status(), 204);
    }
    assert_eq!(publish_binary(&h, "dup-2").await.status(), 204);
    assert_eq!(stored(&js, "HERALD").await.len(), 2);
}

#[tokio::test]
async fn oversized_bodies_get_413_without_being_buffered() {
    let (_nats, _js, h) = ready_sidecar(&[]).await;
    let before = h.rss_kib();
    let big = vec![b'x'; 2 << 20];
    let mut statuses = Vec::new();
    for _ in 0..10 {
        // With Content-Length: refused before reading.
        let r = binary(&h.url, "big", "s", "t")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        // Chunked, no Content-Length: cut off at the limit while reading.
        let chunks =
            futures::stream::iter((0..32).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 64 << 10])));
        let r = client()
            .post(format!("{}/publish", h.url))
            .header("content-type", "application/cloudevents+json")
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await;
        if let Ok(r) = r {
            statuses.push(r.status().as_u16());
        }
    }
    assert!(statuses.iter().all(|s| *s == 413), "{statuses:?}");
    let r = binary(&h.url, "big", "s", "t")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("1048576"),
        "{body}"
    );
    let growth = h.rss_kib().saturating_sub(before);
    // 20 requests of 2 MiB were refused; buffering them would have grown the heap by tens of MiB.
    assert!(growth < 8 * 1024, "RSS grew by {growth} KiB");
}

#[tokio::test]
async fn unsupported_content_types_get_415_and_non_events_400() {
    let (_nats, _js, h) = ready_sidecar(&[]).await;
    for ct in [
        "application/cloudevents+xml",
        "application/cloudevents+avro",
        "application/cloudevents-batch+protobuf",
    ] {
        let r = client()
            .post(format!("{}/publish", h.url))
            .header("content-type", ct)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{ct}");
    }
    let r = client()
        .post(format!("{}/publish", h.url))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["attribute"], "specversion");
    let r = client()
        .get(format!("{}/publish", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = client()
        .post(format!("{}/nope", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .post(format!("{}/publish?durability=later", h.url))
        .header("ce-specversion", "1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("herald-durability"));
}

#[tokio::test]
async fn types_outside_the_allowlist_get_403() {
    let (_nats, js, h) = ready_sidecar(&["--publish-allow", "order.*.v1, shop/invoice.>"]).await;
    let send = |ty: &'static str, source: &'static str| {
        let req = binary(&h.url, ty, source, ty);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send("order.created.v1", "any").await, 204);
    assert_eq!(send("invoice.sent.v2", "shop").await, 204);
    assert_eq!(send("invoice.sent.v2", "elsewhere").await, 403);
    assert_eq!(send("order.created.v2", "any").await, 403);
    assert_eq!(stored(&js, "HERALD").await.len(), 2);
}

#[tokio::test]
async fn a_full_stream_answers_507() {
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let mut policy = herald_tests::herald_core::policy::StreamPolicy::dev_events("HERALD");
    policy.max_bytes = 4096;
    nats.ensure_stream(&policy).await;
    let h = Herald::sidecar(&nats, &[]).await;
    h.wait_ready().await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        statuses.push(
            publish_binary(&h, &format!("fill-{i}"))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses[0], 204);
    assert_eq!(*statuses.last().unwrap(), 507, "{statuses:?}");
    let stored_ok = statuses.iter().filter(|s| **s == 204).count();
    assert_eq!(
        stored(&js, "HERALD").await.len(),
        stored_ok,
        "every 204 is stored, no 507 is"
    );
}

#[tokio::test]
async fn nats_down_answers_503_fast_and_recovers() {
    let mut nats = Nats::start();
    let js = nats.create_streams().await;
    let h = Herald::sidecar(&nats, &[]).await;
    h.wait_ready().await;
    assert_eq!(publish_binary(&h, "before").await.status(), 204);
    nats.server.kill();
    h.wait_for("/readyz", 503).await;
    let started = std::time::Instant::now();
    let r = publish_binary(&h, "during").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "503 must not wait for the ack timeout"
    );
    nats.server.restart().unwrap();
    h.wait_ready().await;
    assert_eq!(publish_binary(&h, "after").await.status(), 204);
    drop(js);
    let js = nats.jetstream().await;
    let ids: Vec<_> = stored(&js, "HERALD")
        .await
        .iter()
        .map(|m| header(m, "ce-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["before", "after"]);
}

#[tokio::test]
async fn nats_killed_and_restarted_under_load_loses_no_acknowledged_event() {
    let mut nats = Nats::start();
    nats.create_streams().await;
    let h = Herald::sidecar(&nats, &[]).await;
    h.wait_ready().await;
    let url = h.url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (url, stop) = (url.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0u32);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let id = format!("w{w}-{i}");
                let r = binary(&url, &id, "load", "tick.v1")
                    .body(id.clone())
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match r.map(|r| r.status().as_u16()) {
                    Ok(204) => acked.push(id),
                    _ => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (acked, refused)
        }));
    }
    let stored_sync = r#"herald_events_stored_total{durability="sync"}"#;
    let wait = Duration::from_secs(20);
    eventually(wait, "load before the outage", || async {
        h.metric(stored_sync).await >= 100.0
    })
    .await;
    nats.server.kill();
    // Down until the sidecar has noticed and refused publishes for it.
    eventually(wait, "publishes refused during the outage", || async {
        h.metric(r#"herald_publish_requests_total{route="publish",status="503"}"#)
            .await
            >= 1.0
    })
    .await;
    nats.server.restart().unwrap();
    h.wait_ready().await;
    let before = h.metric(stored_sync).await;
    eventually(wait, "load after the outage", || async {
        h.metric(stored_sync).await >= before + 100.0
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut refused) = (HashSet::new(), 0);
    for w in workers {
        let (a, r) = w.await.unwrap();
        acked.extend(a);
        refused += r;
    }
    let js = nats.jetstream().await;
    let have: HashSet<String> = stored(&js, "HERALD")
        .await
        .iter()
        .map(|m| header(m, "ce-id").unwrap().to_owned())
        .collect();
    let missing: Vec<_> = acked.difference(&have).collect();
    eprintln!(
        "acknowledged {}, refused during the outage {refused}, stored {}",
        acked.len(),
        have.len()
    );
    assert!(refused > 0, "the outage was not observed");
    assert!(
        acked.len() > 50,
        "too little load to mean anything: {}",
        acked.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged events are not in the stream: {missing:?}",
        missing.len()
    );
}

/// A NATS responder that answers JetStream publishes on `herald.>` itself, to produce the
/// failures a healthy server never does. The counter says how many publishes reached it.
async fn fake_jetstream(
    nats: &Nats,
    reply: Option<(&'static str, Duration)>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    let c = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = c.subscribe("herald.>").await.unwrap();
    c.flush().await.unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            counter.fetch_add(1, Ordering::AcqRel);
            if let (Some((body, delay)), Some(to)) = (reply, m.reply) {
                let c = c.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    c.publish(to, body.into()).await.unwrap();
                    c.flush().await.unwrap();
                });
            }
        }
    });
    (task, received)
}

#[tokio::test]
async fn no_ack_in_time_answers_504() {
    let nats = Nats::start();
    let _responder = fake_jetstream(&nats, None).await;
    let h = Herald::sidecar(&nats, &["--publish-timeout", "300ms"]).await;
    // Connected, but unready: the fake responder is not a stream.
    h.wait_connected().await;
    let r = publish_binary(&h, "slow").await;
    assert_eq!(r.status(), 504);
}

#[tokio::test]
async fn an_unintelligible_ack_answers_500() {
    let nats = Nats::start();
    let _responder = fake_jetstream(&nats, Some(("not json", Duration::ZERO))).await;
    let h = Herald::sidecar(&nats, &[]).await;
    h.wait_connected().await;
    let r = publish_binary(&h, "x").await;
    assert_eq!(r.status(), 500);
}

#[tokio::test]
async fn a_missing_stream_makes_the_sidecar_unready_and_publishes_503() {
    let nats = Nats::start();
    let h = Herald::sidecar(&nats, &[]).await;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = client()
            .get(format!("{}/readyz", h.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        if r.text()
            .await
            .unwrap()
            .contains("stream `HERALD` does not exist")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "readyz never named the missing stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = publish_binary(&h, "x").await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("does not exist"));
    nats.create_streams().await;
    h.wait_ready().await;
    assert_eq!(publish_binary(&h, "y").await.status(), 204);
}

#[tokio::test]
async fn async_durability_answers_202_and_stores_later() {
    let (_nats, js, h) = ready_sidecar(&[]).await;
    for i in 0..50 {
        let r = client()
            .post(format!("{}/events/tick.v1?durability=async", h.url))
            .header("ce-id", format!("a{i}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = client()
        .post(format!("{}/events/tick.v1", h.url))
        .header("herald-durability", "async")
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually(
        Duration::from_secs(10),
        "the async events are stored",
        || async { stored(&js, "HERALD").await.len() >= 51 },
    )
    .await;
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_publish_finish() {
    let nats = Nats::start();
    let (_responder, received) = fake_jetstream(
        &nats,
        Some((
            r#"{"stream":"HERALD","seq":1}"#,
            Duration::from_millis(1500),
        )),
    )
    .await;
    let mut h = Herald::sidecar(&nats, &["--shutdown-grace", "10s"]).await;
    h.wait_connected().await;
    let url = h.url.clone();
    let inflight = tokio::spawn(async move {
        binary(&url, "slow", "s", "t")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // In flight: JetStream (the fake) has it and has not answered yet.
    eventually(
        Duration::from_secs(5),
        "the publish reaches JetStream",
        || async { received.load(Ordering::Acquire) >= 1 },
    )
    .await;
    h.sigterm();
    // Draining: the admin API still answers, and says why the sidecar is not ready.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = client()
            .get(format!("{}/readyz", h.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.trim() == "shutting down" {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "readyz said {text:?} while draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        inflight.await.unwrap().unwrap(),
        204,
        "the in-flight publish completes"
    );
    let status = tokio::task::spawn_blocking(move || {
        let s = h.wait_exit(Duration::from_secs(10));
        (s, h.log_text())
    })
    .await
    .unwrap();
    assert!(
        status.0.is_some_and(|s| s.success()),
        "exit {:?}; log:\n{}",
        status.0,
        status.1
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (_nats, _js, h) = ready_sidecar(&[]).await;
    publish_binary(&h, "m1").await;
    client()
        .post(format!("{}/publish", h.url))
        .body("x")
        .send()
        .await
        .unwrap();
    let r = client()
        .get(format!("{}/healthz", h.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = client()
        .get(format!("{}/metrics", h.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"herald_publish_requests_total{route="publish",status="204"} 1"#,
        r#"herald_publish_requests_total{route="publish",status="400"} 1"#,
        "herald_publish_request_duration_seconds_bucket",
        "herald_nats_connected 1",
        r#"herald_events_stored_total{durability="sync"} 1"#,
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
}

#[tokio::test]
async fn shutdown_endpoint_stops_the_sidecar() {
    let nats = Nats::start();
    nats.create_streams().await;
    let mut h = Herald::sidecar(&nats, &[]).await;
    let r = client()
        .post(format!("{}/shutdown", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status = tokio::task::spawn_blocking(move || h.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(status.is_some_and(|s| s.success()));
}

#[tokio::test]
async fn a_body_in_many_chunks_is_stored_whole() {
    let (_nats, js, h) = ready_sidecar(&[]).await;
    let parts = [
        r#"{"specversion":"1.0","id":"c1","source":"s","type":"t","#,
        r#""data":{"b":[1,2,3],"#,
        r#""a":"x"}}"#,
    ];
    let chunks =
        futures::stream::iter(parts.map(|p| Ok::<_, std::io::Error>(p.as_bytes().to_vec())));
    let r = client()
        .post(format!("{}/publish", h.url))
        .header("content-type", "application/cloudevents+json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let msgs = stored(&js, "HERALD").await;
    assert_eq!(&msgs[0].payload[..], br#"{"b":[1,2,3],"a":"x"}"#);
}

/// Kubernetes 1.28 sends SIGTERM to the app and its native sidecar at once: the app's shutdown
/// handler may still publish. The sidecar drains (not ready, no new deliveries) but answers
/// publishes for the shutdown window, until the app says it is done (`POST /shutdown`).
#[tokio::test]
async fn publishes_after_sigterm_are_taken_during_the_shutdown_window() {
    let nats = Nats::start();
    nats.create_streams().await;
    let sink = herald_tests::sink::Sink::start().await;
    let _subscriber =
        herald_tests::subscriber(&nats, "audit", &sink, &["--subscribe", "farewell.v1"]).await;
    let mut h = Herald::sidecar(
        &nats,
        &["--shutdown-window", "30s", "--shutdown-grace", "60s"],
    )
    .await;
    h.wait_ready().await;
    h.sigterm();
    h.wait_for("/readyz", 503).await;
    // The app's SIGTERM handler publishes: taken, stored, delivered.
    herald_tests::publish(&h, "farewell-1", "farewell.v1").await;
    let got = sink.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("ce-id"), Some("farewell-1"));
    // The app is done: the publish API closes and the sidecar exits, long before the window.
    let r = client()
        .post(format!("{}/shutdown", h.url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "POST /shutdown: {}", r.status());
    let (status, log) = tokio::task::spawn_blocking(move || {
        let s = h.wait_exit(Duration::from_secs(15));
        (s, h.log_text())
    })
    .await
    .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}; log:\n{log}"
    );
    assert!(
        log.contains("closing the publish API: the app asked for the shutdown"),
        "{log}"
    );
}

/// The window ends by itself; a window of 0 closes the publish API with the drain.
#[tokio::test]
async fn the_shutdown_window_elapses_and_zero_means_none() {
    let nats = Nats::start();
    nats.create_streams().await;
    let mut timed = Herald::sidecar(&nats, &["--shutdown-window", "1s"]).await;
    let mut none = Herald::sidecar(&nats, &["--shutdown-window", "0s"]).await;
    timed.wait_ready().await;
    none.wait_ready().await;
    timed.sigterm();
    none.sigterm();
    timed.wait_for("/readyz", 503).await;
    herald_tests::publish(&timed, "late-1", "late.v1").await;
    let (timed_exit, timed_log, none_exit, none_log) = tokio::task::spawn_blocking(move || {
        let a = timed.wait_exit(Duration::from_secs(15));
        let b = none.wait_exit(Duration::from_secs(15));
        (a, timed.log_text(), b, none.log_text())
    })
    .await
    .unwrap();
    assert!(timed_exit.is_some_and(|s| s.success()), "{timed_log}");
    assert!(
        timed_log.contains("closing the publish API: the shutdown window has passed"),
        "{timed_log}"
    );
    assert!(none_exit.is_some_and(|s| s.success()), "{none_log}");
    assert!(
        !none_log.contains("the publish API stays up"),
        "no window with --shutdown-window 0s:\n{none_log}"
    );
    let js = nats.jetstream().await;
    assert!(
        stored(&js, "HERALD")
            .await
            .iter()
            .any(|m| header(m, "ce-id") == Some("late-1")),
        "the event published in the window is stored"
    );
}

/// A sidecar is not ready for the few milliseconds before NATS answers: that is how every start
/// goes, and is logged at debug level, not as a warning.
#[tokio::test]
async fn an_ordinary_start_warns_of_nothing() {
    let nats = Nats::start();
    nats.create_streams().await;
    let h = Herald::sidecar(&nats, &[]).await;
    h.wait_ready().await;
    let log = h.log_text();
    assert!(log.contains("ready"), "{log}");
    assert!(
        !log.contains(" WARN "),
        "a warning in an ordinary start:\n{log}"
    );
}
