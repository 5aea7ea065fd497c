//! Attribute filters end to end: real nats-server, the real `herald` binary, a real HTTP sink.
//! Events that do not pass are acknowledged without delivery and counted; filter errors are
//! counted by kind; a changed filter applies on hot reload.

use std::time::Duration;

use herald_tests::sink::Sink;
use herald_tests::{Herald, Nats, PodInfo, binary, eventually, sample, settled};

const WAIT: Duration = Duration::from_secs(15);

/// An event: id, source, extensions.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

async fn publish(h: &Herald, id: &str, source: &str, ext: &[(&str, &str)]) {
    let mut req =
        binary(&h.url, id, source, "order.created.v1").header("content-type", "application/json");
    for (k, v) in ext {
        req = req.header(format!("ce-{k}"), *v);
    }
    let r = req.body("{}").send().await.unwrap();
    assert_eq!(r.status(), 204, "{id}");
}

fn value(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or(0.0)
}

fn ids(sink: &Sink) -> Vec<String> {
    let mut v: Vec<String> = sink
        .received()
        .iter()
        .map(|r| r.header("ce-id").unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn only_matching_events_are_delivered_and_the_rest_are_acked_and_counted() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let sink = Sink::start().await;
    let port = sink.port.to_string();
    let mut pod = PodInfo::new(&[
        ("herald.dev/app-port", &port),
        (
            "herald.dev/subscriptions",
            "- type: order.created.v1\n  filters:\n    - exact: {region: eu}\n    - sql: \"INT(amount) > 100\"\n",
        ),
        ("herald.dev/filter", "source LIKE 'shop%'"),
    ]);
    let h = Herald::with_annotations(&nats, "billing", &pod.file()).await;
    let cases: [Case; 7] = [
        ("pass-1", "shop", &[("region", "eu"), ("amount", "250")]),
        ("us", "shop", &[("region", "us"), ("amount", "250")]),
        ("small", "shop", &[("region", "eu"), ("amount", "50")]),
        ("no-amount", "shop", &[("region", "eu")]),
        (
            "bad-amount",
            "shop",
            &[("region", "eu"), ("amount", "lots")],
        ),
        (
            "other-source",
            "crm",
            &[("region", "eu"), ("amount", "999")],
        ),
        // Values are matched decoded: %65u is "eu".
        (
            "pass-2",
            "shop/eu",
            &[("region", "%65u"), ("amount", "101")],
        ),
    ];
    for (id, source, ext) in cases {
        publish(&h, id, source, ext).await;
    }
    sink.wait_for(2, WAIT).await;
    eventually(WAIT, "every event is acked", || settled(&js)).await;
    assert_eq!(ids(&sink), ["pass-1", "pass-2"]);
    let m = h.metrics().await;
    let sub = r#"{subscription="order.created.v1","#;
    assert_eq!(
        value(
            &m,
            &format!("herald_deliveries_total{sub}outcome=\"filtered\"}}")
        ),
        5.0,
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            &format!("herald_deliveries_total{sub}outcome=\"acked\"}}")
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            &format!("herald_filter_errors_total{sub}kind=\"missing_attribute\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &format!("herald_filter_errors_total{sub}kind=\"cast\"}}")
        ),
        1.0
    );

    // A new filter applies on reload, without a restart, to the events after it.
    pod.write(&[
        ("herald.dev/app-port", &port),
        ("herald.dev/subscribe", "order.created.v1"),
        ("herald.dev/filter", "region = 'us'"),
    ]);
    eventually(WAIT, "the reload is applied", || async {
        value(
            &h.metrics().await,
            "herald_config_reloads_total{result=\"applied\"}",
        ) >= 1.0
    })
    .await;
    publish(&h, "eu-after", "shop", &[("region", "eu")]).await;
    publish(&h, "us-after", "shop", &[("region", "us")]).await;
    sink.wait_for(3, WAIT).await;
    eventually(WAIT, "every event is acked", || settled(&js)).await;
    assert_eq!(ids(&sink), ["pass-1", "pass-2", "us-after"]);
}

#[test]
fn a_filter_that_does_not_parse_is_refused_with_its_column() {
    let out = herald_tests::herald_output(
        &[
            "sidecar",
            "--app-id",
            "a",
            "--app-port",
            "8080",
            "--subscribe",
            "order.created.v1",
            "--filter",
            "region = 'eu' AND",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--filter")
            && err.contains("is not a valid CESQL expression: column 18: expected a value, found the end of the expression"),
        "{err}"
    );
}
