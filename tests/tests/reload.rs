//! Hot reload of the annotations file and the YAML subscription form, end to end: real
//! nats-server, the real `herald` binary, a real HTTP sink, the file swapped the way the kubelet
//! swaps it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_tests::sink::Sink;
use herald_tests::{
    Herald, Nats, PodInfo, binary_on, consumer_for, consumers, eventually, sample, wait_settled,
};

const WAIT: Duration = Duration::from_secs(15);

async fn publish(client: &reqwest::Client, url: &str, id: &str, ty: &str) -> u16 {
    binary_on(client, url, id, "shop", ty)
        .header("content-type", "application/json")
        .body(format!("{{\"id\":\"{id}\",\"b\":[1,2]}}"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn metric(h: &Herald, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", h.admin))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    sample(&text, name)
}

#[tokio::test]
async fn reload_adds_and_removes_subscriptions_under_load() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let sink = Sink::start().await;
    // Slow enough that deliveries are in flight when the file changes.
    sink.delay(Duration::from_millis(150));
    let port = sink.port.to_string();
    let mut pod = PodInfo::new(&[
        ("herald.dev/app-port", &port),
        ("herald.dev/subscribe", "order.created.v1"),
        ("herald.dev/max-in-flight", "4"),
    ]);
    let h = Herald::with_annotations(&nats, "billing", &pod.file()).await;

    // Load: both types, one every 10 ms each, for the whole test.
    let published: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (published, stop, url) = (published.clone(), stop.clone(), h.url.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for ty in ["order.created.v1", "order.paid.v1"] {
                    n += 1;
                    let id = format!("e-{n}");
                    assert_eq!(publish(&client, &url, &id, ty).await, 204);
                    published
                        .lock()
                        .unwrap()
                        .push((id, ty.to_owned(), Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    eventually(WAIT, "order.created.v1 events are delivered", || async {
        sink.received().len() >= 8
    })
    .await;
    // Swap: order.paid.v1 in, order.created.v1 out, and a larger max in flight.
    pod.write(&[
        ("herald.dev/app-port", &port),
        ("herald.dev/subscribe", "order.paid.v1"),
        ("herald.dev/max-in-flight", "6"),
    ]);
    let swapped = Instant::now();
    eventually(WAIT, "order.paid.v1 events are delivered", || async {
        sink.received()
            .iter()
            .any(|r| r.header("ce-type") == Some("order.paid.v1"))
    })
    .await;
    let first_paid = sink
        .received()
        .iter()
        .find(|r| r.header("ce-type") == Some("order.paid.v1"))
        .map(|r| r.at)
        .unwrap();
    // Load keeps going past the swap: enough order.paid.v1 events published after it.
    eventually(WAIT, "load continues after the swap", || async {
        published
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, ty, at)| ty == "order.paid.v1" && *at > first_paid)
            .count()
            > 30
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    let published = published.lock().unwrap().clone();
    let paid_after: Vec<&str> = published
        .iter()
        .filter(|(_, ty, at)| ty == "order.paid.v1" && *at > first_paid)
        .map(|(id, _, _)| id.as_str())
        .collect();
    assert!(
        paid_after.len() > 20,
        "load kept going: {}",
        paid_after.len()
    );
    // Every order.paid.v1 event published once the new subscription delivered is delivered.
    eventually(WAIT, "every later order.paid.v1 event arrives", || async {
        let got: Vec<String> = sink
            .received()
            .iter()
            .filter_map(|r| r.header("ce-id").map(str::to_owned))
            .collect();
        paid_after.iter().all(|id| got.iter().any(|g| g == id))
    })
    .await;

    let received = sink.received();
    let created: Vec<_> = received
        .iter()
        .filter(|r| r.header("ce-type") == Some("order.created.v1"))
        .collect();
    // The removed subscription stopped: nothing of it started after the new one was running
    // (the slack covers deliveries that were already pulled when the file changed).
    let last_created = created.iter().map(|r| r.at).max().unwrap();
    assert!(
        last_created < first_paid + Duration::from_millis(500),
        "order.created.v1 still delivered {:?} after the swap",
        last_created - swapped
    );
    // Its deliveries in flight were finished, not dropped: none delivered twice. (That nothing
    // was left leased to it is checked at the end.)
    let mut seen = HashMap::new();
    for r in &created {
        *seen.entry(r.header("ce-id").unwrap()).or_insert(0) += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "duplicates: {seen:?}");
    // The new limit reached the shared consumer.
    assert_eq!(
        consumer_for(&js, "order.paid.v1")
            .await
            .config
            .max_ack_pending,
        6
    );
    assert_eq!(
        metric(&h, "herald_config_reloads_total{result=\"applied\"}").await,
        Some(1.0)
    );

    // A bad version is refused; the running configuration keeps delivering.
    pod.write(&[
        ("herald.dev/app-port", &port),
        ("herald.dev/subscribe", "order..v1"),
    ]);
    eventually(WAIT, "the bad annotations are rejected", || async {
        metric(&h, "herald_config_reloads_total{result=\"rejected\"}").await == Some(1.0)
    })
    .await;
    assert!(h.log_text().contains("herald.dev/subscribe"));
    let client = reqwest::Client::new();
    assert_eq!(
        publish(&client, &h.url, "after-bad", "order.paid.v1").await,
        204
    );
    eventually(WAIT, "delivery goes on after a rejected reload", || async {
        sink.received()
            .iter()
            .any(|r| r.header("ce-id") == Some("after-bad"))
    })
    .await;

    // Nothing stayed leased to the removed subscription (events that reached its open pull
    // request after the stop were handed back): a sidecar subscribing again, on the same
    // consumer, gets every order.created.v1 event not yet delivered within seconds, far less
    // than the ack wait (about 96 s) a stranded event would wait for.
    let sink2 = Sink::start().await;
    let port2 = sink2.port.to_string();
    let _again = Herald::start(
        "sidecar",
        &[
            "--nats-url",
            nats.server.url(),
            "--app-id",
            "billing",
            "--app-port",
            &port2,
            "--subscribe",
            "order.created.v1",
            "--max-in-flight",
            "20",
        ],
    )
    .await;
    let created_ids: Vec<&str> = published
        .iter()
        .filter(|(_, ty, _)| ty == "order.created.v1")
        .map(|(id, _, _)| id.as_str())
        .collect();
    eventually(
        Duration::from_secs(10),
        "every order.created.v1 event is delivered once subscribed again",
        || async {
            let got: std::collections::HashSet<String> = sink
                .received()
                .iter()
                .chain(sink2.received().iter())
                .filter_map(|r| r.header("ce-id").map(str::to_owned))
                .collect();
            created_ids.iter().all(|id| got.contains(*id))
        },
    )
    .await;
    eventually(WAIT, "the created consumer has nothing pending", || async {
        consumer_for(&js, "order.created.v1").await.num_ack_pending == 0
    })
    .await;
}

#[tokio::test]
async fn reload_swaps_the_publish_allowlist() {
    let nats = Nats::start();
    nats.create_streams().await;
    let mut pod = PodInfo::new(&[("herald.dev/publish-allow", "order.>")]);
    let h = Herald::with_annotations(&nats, "shop", &pod.file()).await;
    let client = reqwest::Client::new();
    assert_eq!(publish(&client, &h.url, "1", "invoice.sent.v1").await, 403);
    pod.write(&[("herald.dev/publish-allow", "order.>, invoice.>")]);
    eventually(WAIT, "the new allowlist applies", || async {
        publish(&client, &h.url, "2", "invoice.sent.v1").await == 204
    })
    .await;
}

#[tokio::test]
async fn yaml_subscriptions_choose_mode_path_and_start_position() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    // Two events are stored before the subscriber exists.
    let publisher = Herald::sidecar(&nats, &[]).await;
    publisher.wait_ready().await;
    let client = reqwest::Client::new();
    for (id, ty) in [("old-1", "order.created.v1"), ("old-2", "order.paid.v1")] {
        assert_eq!(publish(&client, &publisher.url, id, ty).await, 204);
    }
    let sink = Sink::start().await;
    let port = sink.port.to_string();
    let yaml = "\
- type: order.created.v1
  source: shop
  path: /structured
  delivery: structured
  start: all
- type: order.paid.v1
  path: /binary
";
    let pod = PodInfo::new(&[
        ("herald.dev/app-port", &port),
        ("herald.dev/subscriptions", yaml),
    ]);
    let h = Herald::with_annotations(&nats, "billing", &pod.file()).await;
    assert_eq!(
        publish(&client, &h.url, "new-1", "order.paid.v1").await,
        204
    );
    sink.wait_for(2, WAIT).await;
    // Settled: whatever was going to be delivered has been.
    wait_settled(&js).await;
    let got = sink.received();
    let ids: Vec<(&str, &str)> = got
        .iter()
        .map(|r| (r.path.as_str(), r.header("ce-id").unwrap_or("-")))
        .collect();
    // `start: all` reads the event stored before; the other subscription starts with new events.
    assert_eq!(got.len(), 2, "{ids:?}");
    let structured = got.iter().find(|r| r.path == "/structured").unwrap();
    assert_eq!(
        structured.header("content-type"),
        Some("application/cloudevents+json; charset=utf-8")
    );
    assert_eq!(structured.header("ce-id"), None);
    let doc: serde_json::Value = serde_json::from_slice(&structured.body).unwrap();
    assert_eq!(doc["id"], "old-1");
    assert_eq!(doc["type"], "order.created.v1");
    assert_eq!(doc["source"], "shop");
    assert_eq!(doc["specversion"], "1.0");
    assert_eq!(doc["datacontenttype"], "application/json");
    // The data bytes are the ones published, not re-serialized.
    let body = std::str::from_utf8(&structured.body).unwrap();
    assert!(
        body.ends_with(r#""data":{"id":"old-1","b":[1,2]}}"#),
        "{body}"
    );
    let binary = got.iter().find(|r| r.path == "/binary").unwrap();
    assert_eq!(binary.header("ce-id"), Some("new-1"));
    assert_eq!(binary.body.as_ref(), br#"{"id":"new-1","b":[1,2]}"#);
    // The consumers were created with those start positions.
    assert_eq!(consumers(&js).await.len(), 2);
}
