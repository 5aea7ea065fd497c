//! Hostile input against the real binary: values that overflowed, attributes that broke the NATS
//! connection every publish shares, clients that never finish a request, and more connections
//! than a listener takes (docs/SECURITY.md).

use std::time::{Duration, Instant};

use futures::future::join_all;
use herald_tests::{Herald, Nats, binary_on, herald_output, stored};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn durations_that_overflowed_exit_64_naming_the_setting() {
    let huge = "9000000000000000000s";
    for (flag, rule) in [
        ("--attempt-timeout", "must be from 1ms to 24h"),
        ("--redelivery-delay", "must be from 1ms to 24h"),
        ("--publish-timeout", "must be from 1ms to 5m"),
        ("--shutdown-grace", "must be from 0s to 1h"),
        ("--header-read-timeout", "must be from 100ms to 1h"),
        ("--body-read-timeout", "must be from 100ms to 1h"),
    ] {
        let out = herald_output(&["sidecar", "--app-id", "a", flag, huge], &[]);
        assert_eq!(out.status.code(), Some(64), "{flag}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{flag}=\"{huge}\": {rule}")),
            "{flag}: {err}"
        );
    }
    let out = herald_output(&["wait", "--timeout", huge], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("--timeout=\"9000000000000000000s\": must be from 1ms to 24h"));
    // The variable too.
    let out = herald_output(
        &["sidecar", "--app-id", "a"],
        &[("HERALD_ATTEMPT_TIMEOUT", huge)],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("HERALD_ATTEMPT_TIMEOUT=\"9000000000000000000s\""));

    // The annotation the issue found: it passed validation, then panicked the delivery task.
    for (field, yaml) in [
        ("timeout", format!("- type: a\n  timeout: {huge}\n")),
        (
            "retry.backoff",
            format!("- type: a\n  retry: {{backoff: {huge}}}\n"),
        ),
        (
            "retry.redeliveryDelay",
            format!("- type: a\n  retry: {{redeliveryDelay: {huge}}}\n"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("annotations");
        let quoted = serde_json::to_string(&yaml).unwrap();
        std::fs::write(
            &file,
            format!("herald.dev/app-port=\"8080\"\nherald.dev/subscriptions={quoted}\n"),
        )
        .unwrap();
        let out = herald_output(
            &[
                "sidecar",
                "--app-id",
                "a",
                "--annotations-file",
                file.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(64), "{field}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "herald.dev/subscriptions: entry 1 (type \"a\"): {field} must be from 1ms to 24h, not \"{huge}\""
            )),
            "{field}: {err}"
        );
    }
}

/// A binary-mode publish of `ty` from `source`.
fn publish(
    client: &reqwest::Client,
    h: &Herald,
    id: &str,
    source: &str,
    ty: &str,
) -> reqwest::RequestBuilder {
    binary_on(client, &h.url, id, source, ty).body("{}")
}

#[tokio::test]
async fn an_oversized_attribute_is_a_400_and_disturbs_no_other_publish() {
    let nats = Nats::start();
    let js = nats.create_streams().await;
    let h = Herald::sidecar(&nats, &[]).await;
    h.wait_ready().await;
    let client = reqwest::Client::new();
    let long = "x".repeat(70_000);

    // Each oversized request goes out in the middle of 20 valid ones, all at once.
    for (attribute, source, ty) in [
        ("type", "shop", long.as_str()),
        ("source", long.as_str(), "order.created.v1"),
    ] {
        let valid = (0..20).map(|i| {
            publish(
                &client,
                &h,
                &format!("{attribute}-{i}"),
                "shop",
                "order.created.v1",
            )
            .send()
        });
        let hostile = publish(&client, &h, "hostile", source, ty).send();
        let (hostile, valid) = tokio::join!(hostile, join_all(valid));
        let hostile = hostile.unwrap();
        assert_eq!(hostile.status(), 400, "{attribute}");
        let body: serde_json::Value = hostile.json().await.unwrap();
        assert_eq!(body["attribute"], attribute);
        assert_eq!(
            body["error"],
            format!("attribute `{attribute}`: is 70000 bytes long; the limit is 256")
        );
        for (i, r) in valid.into_iter().enumerate() {
            assert_eq!(
                r.unwrap().status(),
                204,
                "valid publish {i} beside a long {attribute}"
            );
        }
    }
    // Structured mode reads the same attributes from the body.
    let doc = serde_json::json!({"specversion": "1.0", "id": "s", "source": "shop", "type": long});
    let r = client
        .post(format!("{}/publish", h.url))
        .header("content-type", "application/cloudevents+json")
        .body(doc.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The connection to NATS never broke.
    assert!(
        !h.log_text().contains("disconnected"),
        "NATS connection lost:\n{}",
        h.log_text()
    );
    assert_eq!(stored(&js, "HERALD").await.len(), 40);
    // A batch over the limit is refused as a whole.
    let one = r#"{"specversion":"1.0","id":"b","source":"s","type":"t"}"#;
    let r = client
        .post(format!("{}/publish", h.url))
        .header("content-type", "application/cloudevents-batch+json")
        .body(format!("[{}]", vec![one; 1001].join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

/// Opens `n` connections that each send half a request head and then nothing.
async fn half_sent(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\nce-specversion: 1")
            .await
            .expect("write half a head");
        conns.push(c);
    }
    conns
}

/// Waits until the server closes `c` (EOF or a reset); the time it took.
async fn closed_by_server(mut c: TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_cut_off_while_normal_requests_are_served() {
    let nats = Nats::start();
    nats.create_streams().await;
    let timeout = Duration::from_secs(2);
    let h = Herald::sidecar(
        &nats,
        &["--header-read-timeout", "2s", "--body-read-timeout", "2s"],
    )
    .await;
    h.wait_ready().await;
    let addr = h.url.trim_start_matches("http://").to_owned();
    let client = reqwest::Client::new();

    let opened = Instant::now();
    let slow = half_sent(&addr, 1000).await;
    // The listener still serves while they hang.
    let r = publish(&client, &h, "normal", "shop", "order.created.v1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let waited = join_all(slow.into_iter().map(closed_by_server)).await;
    let slowest = opened.elapsed();
    assert_eq!(waited.len(), 1000);
    assert!(
        slowest < timeout + Duration::from_secs(8),
        "the last half-sent request was cut off after {slowest:?} (timeout {timeout:?})"
    );
    assert!(
        h.metric("herald_http_header_timeouts_total{listener=\"publish\"}")
            .await
            >= 1000.0
    );

    // A head without its body: 408 once the body timeout passes.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    c.write_all(
        b"POST /publish HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: 1\r\nce-source: s\r\nce-type: t\r\nContent-Length: 100\r\n\r\n{\"partial",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // An idle keep-alive connection is closed after the same timeout.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let idle = closed_by_server(c).await;
    assert!(idle < timeout + Duration::from_secs(5), "idle for {idle:?}");
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let nats = Nats::start();
    nats.create_streams().await;
    let h = Herald::sidecar(&nats, &["--max-connections", "10"]).await;
    h.wait_ready().await;
    let addr = h.url.trim_start_matches("http://").to_owned();
    let held = half_sent(&addr, 10).await;
    // Accepted by the kernel, then closed by herald without a byte.
    let extra = TcpStream::connect(&addr).await.unwrap();
    let refused_in = closed_by_server(extra).await;
    assert!(refused_in < Duration::from_secs(5), "{refused_in:?}");
    assert_eq!(
        h.metric("herald_http_connections_refused_total{listener=\"publish\"}")
            .await,
        1.0
    );
    assert_eq!(
        h.metric("herald_http_connections{listener=\"publish\"}")
            .await,
        10.0
    );
    // Once the holders go, the listener serves again.
    drop(held);
    let client = reqwest::Client::new();
    herald_tests::eventually(Duration::from_secs(10), "a slot frees up", || async {
        publish(&client, &h, "after", "shop", "order.created.v1")
            .send()
            .await
            .is_ok_and(|r| r.status() == 204)
    })
    .await;
}
