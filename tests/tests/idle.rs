//! An idle sidecar costs the broker almost nothing: with its subscriptions bound and nothing
//! published, it makes at most 2 JetStream API requests per subscription per minute (a pull
//! request every two minutes, a readiness check a minute per sidecar, a rare lag refresh).
//! Counted over two real minutes (a whole pull cycle) by a client subscribed to `$JS.API.>` in the same account, which the server sends
//! a copy of every request (pull requests included, which the account's `api.total` leaves
//! out); then an event published after the quiet minute is still delivered at once by the
//! long-open pull request.

use std::time::Duration;

use herald_tests::herald_core::broker::ConfigStore as _;
use herald_tests::herald_core::defaults::BUCKET;
use herald_tests::sink::Sink;
use herald_tests::{Nats, publish, subscriber};

#[tokio::test]
async fn an_idle_sidecar_makes_at_most_two_requests_per_subscription_a_minute() {
    const SUBS: u64 = 5;
    const MINUTES: u64 = 2;
    let nats = Nats::start();
    nats.create_streams().await;
    // As in a cluster: the controller's configuration bucket exists.
    nats.broker().await.ensure_bucket(BUCKET, 1).await.unwrap();
    let sink = Sink::start().await;
    let types = (0..SUBS)
        .map(|i| format!("idle{i}.v1"))
        .collect::<Vec<_>>()
        .join(",");
    let h = subscriber(&nats, "idle", &sink, &["--subscribe", &types]).await;
    // Past the start (binding, the first lag reading).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spy = async_nats::connect(nats.server.url()).await.unwrap();
    let mut seen = spy.subscribe("$JS.API.>").await.unwrap();
    spy.flush().await.unwrap();
    let mut requests = 0u64;
    let mut subjects = Vec::new();
    let quiet = tokio::time::sleep(Duration::from_secs(60 * MINUTES + 1));
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            _ = &mut quiet => break,
            Some(m) = futures::StreamExt::next(&mut seen) => {
                requests += 1;
                subjects.push(m.subject.to_string());
            }
        }
    }
    assert!(
        requests <= 2 * SUBS * MINUTES,
        "{requests} JetStream API requests in {MINUTES} quiet minutes for {SUBS} subscriptions: {subjects:#?}"
    );
    // The open pull request still works.
    publish(&h, "after-quiet", "idle3.v1").await;
    let got = sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].header("ce-id"), Some("after-quiet"));
    eprintln!("{requests} API requests in {MINUTES} quiet minutes, {SUBS} subscriptions");
}
