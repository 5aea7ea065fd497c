//! herald on a three-node JetStream cluster: R3 streams, sidecars given all three URLs, and a
//! node SIGKILLed mid-traffic — the stream's leader in one test, the consumer's leader in the
//! other. Every event a publisher got 204 for is stored and delivered; duplicates are counted and
//! printed (at-least-once allows them), never failed on. Real nats-servers joined by routes on
//! loopback, the real `herald` binary, a real HTTP sink.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_tests::herald_core::policy::StreamPolicy;
use herald_tests::sink::Sink;
use herald_tests::{Herald, NatsCluster, eventually, header, stored};
use tokio::sync::Mutex;

/// Which leader to kill.
#[derive(Clone, Copy)]
enum Victim {
    Stream,
    Consumer,
}

async fn leader(cluster: &NatsCluster, victim: Victim) -> usize {
    let js = cluster.jetstream().await;
    let mut stream = js.get_stream("HERALD").await.expect("the stream");
    let name = match victim {
        Victim::Stream => stream.info().await.expect("stream info").cluster.clone(),
        Victim::Consumer => {
            let consumer = {
                let mut names = stream.consumer_names();
                futures::StreamExt::next(&mut names)
                    .await
                    .expect("one consumer")
                    .expect("its name")
            };
            stream
                .consumer_info(&consumer)
                .await
                .expect("consumer info")
                .cluster
                .clone()
        }
    }
    .and_then(|c| c.leader)
    .expect("a leader");
    cluster
        .index_of(&name)
        .unwrap_or_else(|| panic!("leader {name} is not a node"))
}

async fn survive(victim: Victim) {
    let mut cluster = NatsCluster::start(3);
    for policy in [
        StreamPolicy::dev_events("HERALD"),
        StreamPolicy::dead_letters("HERALD_DLQ"),
    ] {
        cluster
            .ensure_stream(&StreamPolicy {
                replicas: 3,
                ..policy
            })
            .await;
    }
    let urls = cluster.urls();
    let sink = Sink::start().await;
    let port = sink.port.to_string();
    let subscriber = Herald::start(
        "sidecar",
        &[
            "--nats-url",
            &urls,
            "--app-id",
            "sub",
            "--app-port",
            &port,
            "--subscribe",
            "tick.v1",
        ],
    )
    .await;
    subscriber.wait_ready().await;
    let publisher = Herald::start("sidecar", &["--nats-url", &urls, "--app-id", "pub"]).await;
    publisher.wait_ready().await;

    // A steady publisher: ~100 events/s; what got 204 is what must arrive.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acked, refused, stop, url) = (
            acked.clone(),
            refused.clone(),
            stop.clone(),
            publisher.url.clone(),
        );
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let id = format!("t-{n}");
                n += 1;
                let r = herald_tests::binary_on(&client, &url, &id, "ticker", "tick.v1")
                    .body("{}")
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 204 => acked.lock().await.push(id),
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        refused.lock().await.push(format!("{id}: {status} {body}"));
                    }
                    Err(e) => refused.lock().await.push(format!("{id}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim_node = leader(&cluster, victim).await;
    let before_kill = acked.lock().await.len();
    cluster.nodes[victim_node].kill();
    let killed = std::time::Instant::now();
    // The cluster goes on without the node: a new leader, publishes taken again.
    eventually(
        Duration::from_secs(60),
        "publishes taken again with the node down",
        || {
            let acked = acked.clone();
            async move { acked.lock().await.len() >= before_kill + 50 }
        },
    )
    .await;
    let recovered = killed.elapsed();
    // Deliveries resume with the node still down: the subscriber asks the new leader (told by
    // JetStream's leader-election advisory) rather than waiting for the dead one's heartbeats
    // (a minute) or for the node's return.
    let sent_after_kill: HashSet<String> = acked.lock().await[before_kill + 25..]
        .iter()
        .cloned()
        .collect();
    eventually(
        Duration::from_secs(30),
        "an event published after the kill delivered with the node still down",
        || {
            let got = sink.received().iter().any(|r| {
                r.header("ce-id")
                    .is_some_and(|id| sent_after_kill.contains(id))
            });
            async move { got }
        },
    )
    .await;
    let resumed = killed.elapsed();
    cluster.nodes[victim_node]
        .restart()
        .expect("restart the killed node");
    let back = acked.lock().await.len();
    eventually(
        Duration::from_secs(60),
        "publishes taken with the node back",
        || {
            let acked = acked.clone();
            async move { acked.lock().await.len() >= back + 50 }
        },
    )
    .await;
    stop.store(true, Ordering::Release);
    load.await.expect("the publisher");

    let acked: Vec<String> = acked.lock().await.clone();
    let refused = refused.lock().await.clone();
    let want: HashSet<&str> = acked.iter().map(String::as_str).collect();
    eventually(
        Duration::from_secs(90),
        "every acknowledged event delivered",
        || {
            let got: HashSet<String> = sink
                .received()
                .iter()
                .filter_map(|r| r.header("ce-id").map(str::to_owned))
                .collect();
            let done = want.iter().all(|id| got.contains(*id));
            async move { done }
        },
    )
    .await;
    let js = cluster.jetstream().await;
    let in_stream: HashSet<String> = stored(&js, "HERALD")
        .await
        .iter()
        .filter_map(|m| header(m, "ce-id").map(str::to_owned))
        .collect();
    let missing: Vec<&&str> = want.iter().filter(|id| !in_stream.contains(**id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    let deliveries = sink.received().len();
    eprintln!(
        "{} killed: publishes taken again {recovered:.1?} after the kill, deliveries by {resumed:.1?}; {} acknowledged, {} refused while failing over, {} deliveries, {} duplicates; refusals: {:?}",
        match victim {
            Victim::Stream => "stream leader",
            Victim::Consumer => "consumer leader",
        },
        acked.len(),
        refused.len(),
        deliveries,
        deliveries.saturating_sub(want.len()),
        refused
            .iter()
            .step_by(refused.len().div_ceil(4).max(1))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_stream_leader_killed_loses_no_acknowledged_event() {
    survive(Victim::Stream).await;
}

#[tokio::test]
async fn the_consumer_leader_killed_loses_no_acknowledged_event() {
    survive(Victim::Consumer).await;
}

/// The configuration bucket is replicated like the events (the controller passes the
/// EventStream's replicas): an R1 bucket made by an older herald is scaled to R3, and with the
/// node leading it SIGKILLed a watcher still sees the next value written.
#[tokio::test]
async fn the_configuration_bucket_is_replicated_and_survives_its_leader() {
    use herald_tests::herald_core::broker::ConfigStore as _;
    use herald_tests::herald_core::defaults::BUCKET;
    let mut cluster = NatsCluster::start(3);
    let js = cluster.jetstream().await;
    let broker = herald_tests::herald_jetstream::JetStream::new(
        js.client().clone(),
        Duration::from_secs(5),
        "HERALD",
    );
    let until = std::time::Instant::now() + Duration::from_secs(30);
    // As an older herald made it, once the cluster has a meta leader.
    while let Err(e) = broker.ensure_bucket(BUCKET, 1).await {
        assert!(std::time::Instant::now() < until, "bucket: {e}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    broker.ensure_bucket(BUCKET, 3).await.expect("scaled to R3");
    let kv_stream = format!("KV_{BUCKET}");
    let mut info = js
        .get_stream(&kv_stream)
        .await
        .expect("the bucket's stream");
    let replicas = info.info().await.expect("info").config.num_replicas;
    assert_eq!(replicas, 3, "the bucket's replicas");
    // While JetStream places the new replicas the bucket's subjects can be briefly unserved
    // ("no stream found"); writers retry, as the controller does on its next pass.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = broker
        .put(BUCKET, "k", bytes::Bytes::from_static(b"one"))
        .await
    {
        assert!(std::time::Instant::now() < until, "put after scaling: {e}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut watch = broker.watch(BUCKET, "k").await.expect("watch");
    let first = watch.next().await.expect("a value").expect("no error");
    assert_eq!(first.as_deref(), Some(&b"one"[..]));

    // Every replica has the value before the leader goes (a lagging follower could be elected
    // otherwise and the test would measure that, not the replication).
    eventually(Duration::from_secs(10), "replicas current", || {
        let js = js.clone();
        let kv_stream = kv_stream.clone();
        async move {
            let mut s = js.get_stream(&kv_stream).await.expect("stream");
            let info = s.info().await.expect("info");
            info.cluster
                .as_ref()
                .map(|c| c.replicas.iter().all(|r| r.current))
                .unwrap_or(false)
        }
    })
    .await;
    let leader = info
        .info()
        .await
        .expect("info")
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("a leader");
    let victim = cluster.index_of(&leader).expect("a node");
    cluster.nodes[victim].kill();
    // A new leader takes the write; the watcher (its client fails over) sees it.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = broker
        .put(BUCKET, "k", bytes::Bytes::from_static(b"two"))
        .await
    {
        assert!(std::time::Instant::now() < until, "put after the kill: {e}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // After failing over, the watch may hand the current value again before the new one, or
    // end with an error (nats-server 2.15: "missed idle heartbeat"); the sidecars then watch
    // again, and so does this.
    let saw_two = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.next().await {
                Some(Ok(Some(v))) if &v[..] == b"two" => return,
                Some(Ok(Some(v))) if &v[..] == b"one" => continue,
                Some(Ok(other)) => panic!("unexpected value {other:?}"),
                Some(Err(_)) | None => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if let Ok(w) = broker.watch(BUCKET, "k").await {
                        watch = w;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        saw_two.is_ok(),
        "the watcher did not see the write within 30 s"
    );
}

/// `herald bench failover`, the operator's version of the tests above, runs to the end and
/// finds every acknowledged event delivered (it exits non-zero when one is missing).
#[test]
fn herald_bench_failover_runs_and_accounts_for_every_event() {
    let bin = std::env::var("HERALD_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let out = herald_tests::herald_output(
        &[
            "bench",
            "failover",
            "--nats-server-bin",
            &bin,
            "--kill",
            "stream",
            "--rate",
            "100",
            "--steady",
            "2s",
            "--down",
            "3s",
            "--drain",
            "10s",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("the stream leader"), "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| stream leader |"))
        .unwrap_or_else(|| panic!("no kill row in:\n{stdout}"));
    assert!(
        !row.contains("never"),
        "publishing or delivery never resumed: {row}"
    );
    // The totals row: acknowledged first, never delivered last.
    let totals: Vec<&str> = stdout
        .lines()
        .last()
        .unwrap_or_default()
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let acknowledged: usize = totals[0].parse().expect("acknowledged count");
    assert!(acknowledged > 300, "too few events got through: {stdout}");
    assert_eq!(
        totals.last(),
        Some(&"0"),
        "acknowledged, never delivered: {stdout}"
    );
}
