//! The controller against a scripted Kubernetes API with state (tests/common/fake.rs) and a
//! real nats-server: a pass reconciles the streams and patches the status, publishes delivery
//! defaults, raises the storage Events, deletes orphan consumers only after the grace period
//! and never one in use, reports missed injections once on their owner. The leader election and
//! the watches run against a real kube-apiserver (tests/apiserver.rs).

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use common::fake::{self, FakeCluster};
use herald_controlplane::controller::metrics::ControllerMetrics;
use herald_controlplane::controller::{Controller, ControllerConfig, LeaseConfig, PassReport};
use herald_core::consumer::{self, Subscriber};
use herald_core::contract::Subscription;
use herald_core::filter::TypeFilter;
use herald_tests::{Nats, eventually};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

fn config(grace: Duration, identity: &str) -> ControllerConfig {
    ControllerConfig {
        event_stream: "default".into(),
        stream: "HERALD".into(),
        dlq_stream: "HERALD_DLQ".into(),
        period: Duration::from_millis(200),
        orphan_grace: grace,
        lease: LeaseConfig {
            duration: Duration::from_secs(2),
            grace: Duration::from_secs(1),
            ..LeaseConfig::new("herald-system".into(), identity.into())
        },
        sources: Default::default(),
    }
}

fn metrics() -> Arc<ControllerMetrics> {
    Arc::new(ControllerMetrics::new(&mut Registry::default()))
}

/// The storage use the controller reports; `None` when it has no sample.
fn used(m: &ControllerMetrics) -> Option<f64> {
    let mut found = None;
    // `get_or_create` would make the sample exist; read it through the encoded registry instead.
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("used", "", m.storage_used_ratio.clone());
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    for line in out.lines().filter(|l| l.starts_with("used")) {
        found = line.split_whitespace().last().and_then(|v| v.parse().ok());
    }
    found
}

async fn controller(
    fake: &FakeCluster,
    nats: &Nats,
    grace: Duration,
) -> (Controller, Arc<ControllerMetrics>) {
    let m = metrics();
    let c = Controller::new(
        fake.client().client,
        Arc::new(nats.broker().await),
        config(grace, "herald-0"),
        m.clone(),
    );
    (c, m)
}

fn deployment(ns: &str, name: &str, subscribe: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
        "spec": {"replicas": 0, "selector": {}, "template": {
            "metadata": {"annotations": {"herald.dev/inject": "true", "herald.dev/app-port": "8080", "herald.dev/subscribe": subscribe}},
            "spec": {"containers": [{"name": "app"}]}}}
    })
}

/// A durable consumer exactly as a sidecar of `ns/app` subscribed to `filter` makes it.
async fn subscribe(js: &jetstream::Context, ns: &str, app: &str, filter: &str) -> String {
    let who = Subscriber {
        namespace: ns.into(),
        app_id: app.into(),
    };
    let sub = Subscription::new(TypeFilter::parse(filter).unwrap());
    let cfg = herald_jetstream::consume::config(&consumer::spec(&who, &sub));
    let name = cfg.durable_name.clone().unwrap();
    js.get_stream("HERALD")
        .await
        .unwrap()
        .create_consumer(cfg)
        .await
        .unwrap();
    name
}

async fn consumer_names(js: &jetstream::Context) -> Vec<String> {
    use futures::TryStreamExt as _;
    let mut names: Vec<String> = js
        .get_stream("HERALD")
        .await
        .unwrap()
        .consumer_names()
        .try_collect()
        .await
        .unwrap();
    names.sort();
    names
}

async fn events_info(js: &jetstream::Context) -> jetstream::stream::Info {
    js.get_stream("HERALD")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}

fn reasons(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_pass_reconciles_the_streams_patches_the_status_and_publishes_delivery_defaults() {
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let fake = FakeCluster::new();
    fake.set_spec(
        "maxBytes: 64MiB\ndelivery: {maxAttempts: 7, backoff: 2s}\n",
        1,
    );
    let (mut c, m) = controller(&fake, &nats, Duration::from_secs(3600)).await;

    let r = c.pass().await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.status_patched && r.defaults_written, "{r:?}");
    assert_eq!(fake.condition("Ready").0, "True");
    assert_eq!(fake.status()["observedGeneration"], 1);
    assert_eq!(fake.status()["percentUsed"], "0%");
    let info = events_info(&js).await;
    assert_eq!(info.config.max_bytes, 64 << 20);
    assert!(js.get_stream("HERALD_DLQ").await.is_ok());
    let kv = js
        .get_key_value(herald_core::defaults::BUCKET)
        .await
        .unwrap();
    let defaults = kv
        .get(herald_core::defaults::DELIVERY_KEY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&defaults).unwrap(),
        json!({"maxAttempts": 7, "backoff": "2s"})
    );
    assert_eq!(used(&m), Some(0.0));

    // Nothing changed: no status patch, no second write.
    let r = c.pass().await;
    assert_eq!(r, PassReport::default());
    assert_eq!(fake.state.lock().unwrap().status_patches, 1);

    // A new generation is applied and observed.
    fake.set_spec("maxBytes: 128MiB\ndelivery: {maxAttempts: 3}\n", 2);
    let r = c.pass().await;
    assert!(
        r.errors.is_empty() && r.status_patched && r.defaults_written,
        "{r:?}"
    );
    assert_eq!(fake.status()["observedGeneration"], 2);
    let info = events_info(&js).await;
    assert_eq!(info.config.max_bytes, 128 << 20);
    let defaults = kv
        .get(herald_core::defaults::DELIVERY_KEY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&defaults[..], br#"{"maxAttempts":3}"#);

    // Retention cannot change in place: Degraded with what to do, the stream keeps serving,
    // the defaults of that spec are not published, and the pass fails without a crash.
    fake.set_spec(
        "retention: limits\nmaxBytes: 128MiB\ndelivery: {maxAttempts: 9}\n",
        3,
    );
    let r = c.pass().await;
    assert!(r.status_patched && !r.defaults_written, "{r:?}");
    assert!(r.errors[0].contains("retention"), "{:?}", r.errors);
    let (status, reason, message) = fake.condition("Degraded");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ImmutableField")
    );
    assert!(message.contains("retention"), "{message}");
    assert!(fake.status()["lastError"].is_string());
    let info = events_info(&js).await;
    assert_eq!(
        info.config.retention,
        jetstream::stream::RetentionPolicy::Interest
    );

    // Back to a spec it can apply: Degraded clears and lastError is removed, not left stale.
    fake.set_spec("maxBytes: 128MiB\n", 4);
    let r = c.pass().await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(fake.condition("Degraded").0, "False");
    assert!(
        fake.status().get("lastError").is_none(),
        "{}",
        fake.status()
    );
    let text = metrics_text(&m);
    assert!(
        text.contains("herald_controller_passes_total{result=\"ok\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("herald_controller_passes_total{result=\"error\"} 1"),
        "{text}"
    );
}

fn metrics_text(m: &ControllerMetrics) -> String {
    // Registered anew so the text holds this controller's figures only.
    let mut registry = Registry::default();
    let r = registry.sub_registry_with_prefix("herald_controller");
    r.register("passes", "", m.passes.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

#[tokio::test]
async fn storage_warnings_raise_one_event_each_way_and_a_missing_event_stream_is_reported() {
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let fake = FakeCluster::new();
    let (mut c, m) = controller(&fake, &nats, Duration::from_secs(3600)).await;

    let r = c.pass().await;
    assert!(
        r.errors[0].contains("EventStream \"default\" does not exist"),
        "{:?}",
        r.errors
    );

    fake.set_spec("maxBytes: 10KiB\nstorageWarningPercent: 50\n", 1);
    let r = c.pass().await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // An interest stream keeps events only while a consumer wants them.
    subscribe(&js, "shop", "payments", "order.created.v1").await;
    fake.put(
        fake::DEPLOYMENTS,
        vec![deployment("shop", "payments", "order.created.v1")],
    );
    for _ in 0..6 {
        js.publish("herald.shop.order.created.v1", vec![b'x'; 1000].into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let r = c.pass().await;
    assert_eq!(r.events, ["StorageNearlyFull"], "{r:?}");
    assert_eq!(fake.condition("StorageNearlyFull").0, "True");
    assert!(used(&m).unwrap() >= 0.5);
    let event = &fake.events()[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["metadata"]["namespace"], "default");
    assert_eq!(event["regarding"]["kind"], "EventStream");
    assert_eq!(event["regarding"]["uid"], "es-uid-1");
    assert!(event["note"].as_str().unwrap().contains("raise maxBytes"));

    // Still full: no second Event.
    assert!(c.pass().await.events.is_empty());
    js.get_stream("HERALD")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let r = c.pass().await;
    assert_eq!(r.events, ["StorageBelowWarning"]);
    assert_eq!(fake.condition("StorageNearlyFull").0, "False");
    assert_eq!(
        reasons(&fake.events()),
        ["StorageNearlyFull", "StorageBelowWarning"]
    );
}

#[tokio::test]
async fn orphan_consumers_go_after_the_grace_period_and_never_one_in_use() {
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let fake = FakeCluster::new();
    fake.set_spec("{}", 1);
    let (mut c, m) = controller(&fake, &nats, Duration::from_secs(1)).await;
    // The first pass creates the streams; there is nothing to orphan yet.
    let r = c.pass().await;
    assert!(r.errors.is_empty() && r.orphans_waiting.is_empty(), "{r:?}");
    // In use: a Deployment scaled to zero, a CronJob between runs, a pod whose sidecar has
    // its own app id.
    fake.put(
        fake::DEPLOYMENTS,
        vec![deployment("shop", "payments", "order.created.v1")],
    );
    fake.put(
        fake::CRONJOBS,
        vec![json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "nightly", "namespace": "ops"},
            "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {
                "metadata": {"annotations": {"herald.dev/inject": "true", "herald.dev/app-port": "8080", "herald.dev/subscribe": "report.due.v1"}},
                "spec": {"containers": []}}}}}
        })],
    );
    fake.put(
        fake::PODS,
        vec![json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "legacy-0", "namespace": "shop",
                "annotations": {"herald.dev/inject": "true", "herald.dev/app-port": "8080", "herald.dev/subscribe": "order.paid.v1"}},
            "spec": {"containers": [{"name": "app"}, {"name": "herald", "env": [{"name": "HERALD_APP_ID", "value": "legacy"}]}]}
        })],
    );
    let payments = subscribe(&js, "shop", "payments", "order.created.v1").await;
    let nightly = subscribe(&js, "ops", "nightly", "report.due.v1").await;
    let legacy = subscribe(&js, "shop", "legacy", "order.paid.v1").await;
    // Orphans: a workload that is gone, and one that comes back within the grace period.
    let gone = subscribe(&js, "shop", "gone", "order.created.v1").await;
    let back = subscribe(&js, "shop", "back", "order.created.v1").await;
    // Not herald's: its name is not the hash of its description.
    js.get_stream("HERALD")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("audit".into()),
            description: Some("shop/gone/order.created.v1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // An orphan by the cluster's account that a client outside it is pulling from right now.
    let busy = subscribe(&js, "laptop", "dev", "order.created.v1").await;
    let busy_consumer: jetstream::consumer::PullConsumer = js
        .get_stream("HERALD")
        .await
        .unwrap()
        .get_consumer(&busy)
        .await
        .unwrap();
    let mut pulling = busy_consumer
        .stream()
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .unwrap();
    let pull = tokio::spawn(async move {
        use futures::StreamExt as _;
        pulling.next().await.map(|_| ())
    });
    eventually(
        Duration::from_secs(5),
        "the pull request is waiting",
        || {
            let c = busy_consumer.clone();
            async move { c.clone().info().await.unwrap().num_waiting > 0 }
        },
    )
    .await;

    let r = c.pass().await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        r.orphans_waiting,
        ["shop/back/order.created.v1", "shop/gone/order.created.v1"]
    );
    assert!(r.orphans_deleted.is_empty());
    assert_eq!(m.orphan_consumers.get(), 2);

    // `back` is deployed again before its grace period ends.
    let mut deployments = vec![
        deployment("shop", "payments", "order.created.v1"),
        deployment("shop", "back", "order.created.v1"),
    ];
    fake.put(fake::DEPLOYMENTS, deployments.clone());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A failed listing stops the orphan check: nothing is deleted on partial knowledge.
    fake.state.lock().unwrap().failing.push(fake::PODS.into());
    let r = c.pass().await;
    assert!(r.orphans_deleted.is_empty());
    assert!(
        r.errors[0].contains("listing workloads failed"),
        "{:?}",
        r.errors
    );
    fake.state.lock().unwrap().failing.clear();

    let r = c.pass().await;
    assert_eq!(r.orphans_deleted, ["shop/gone/order.created.v1"], "{r:?}");
    assert!(r.orphans_waiting.is_empty());
    let mut expected = vec![
        payments.clone(),
        nightly,
        legacy,
        back.clone(),
        busy,
        "audit".into(),
    ];
    expected.sort();
    assert_eq!(consumer_names(&js).await, expected);
    assert!(!consumer_names(&js).await.contains(&gone));
    assert_eq!(m.orphans_deleted.get(), 1);
    assert_eq!(m.orphan_consumers.get(), 0);
    let events = fake.events();
    assert_eq!(reasons(&events), ["OrphanConsumerDeleted"]);
    let message = events[0]["note"].as_str().unwrap();
    assert!(
        message.contains(&gone) && message.contains("shop/gone/order.created.v1"),
        "{message}"
    );

    // A workload removed later starts its own grace period.
    deployments.pop();
    fake.put(fake::DEPLOYMENTS, deployments);
    let r = c.pass().await;
    assert_eq!(r.orphans_waiting, ["shop/back/order.created.v1"]);
    assert!(r.orphans_deleted.is_empty());
    pull.abort();
}

#[tokio::test]
async fn missed_injections_are_counted_and_reported_once_on_the_owner() {
    let nats = Nats::start();
    let fake = FakeCluster::new();
    fake.set_spec("{}", 1);
    fake.put(
        fake::DEPLOYMENTS,
        vec![deployment("shop", "payments", "order.created.v1")],
    );
    let pod = |name: &str, sidecar: bool| {
        let mut containers = vec![json!({"name": "app"})];
        if sidecar {
            containers.push(
                json!({"name": "herald", "env": [{"name": "HERALD_APP_ID", "value": "payments"}]}),
            );
        }
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop",
                "labels": {"pod-template-hash": "5c8d"},
                "annotations": {"herald.dev/inject": "true", "herald.dev/app-port": "8080", "herald.dev/subscribe": "order.created.v1"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "payments-5c8d", "uid": "rs-1", "controller": true}]},
            "spec": {"containers": containers},
            "status": {"phase": "Running"}
        })
    };
    fake.put(
        fake::PODS,
        vec![
            pod("payments-5c8d-a", false),
            pod("payments-5c8d-b", false),
            pod("payments-5c8d-c", true),
        ],
    );
    let (mut c, m) = controller(&fake, &nats, Duration::from_secs(3600)).await;

    let r = c.pass().await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.missed_injections, 2);
    assert_eq!(m.missed_injections.get(), 2);
    // One Event for the Deployment, not one per pod.
    assert_eq!(r.events, ["SidecarMissing"]);
    let event = &fake.events()[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["metadata"]["namespace"], "shop");
    assert_eq!(event["regarding"]["kind"], "Deployment");
    assert_eq!(event["regarding"]["name"], "payments");
    assert_eq!(event["regarding"]["uid"], "uid-payments");
    assert_eq!(event["reportingController"], "herald.dev/herald-controller");
    let message = event["note"].as_str().unwrap();
    assert!(
        message.contains("kubectl rollout restart deployment/payments -n shop"),
        "{message}"
    );

    // Reported once while it lasts.
    let r = c.pass().await;
    assert!(r.events.is_empty() && r.missed_injections == 2, "{r:?}");

    // Restarted: every pod has the sidecar.
    fake.put(fake::PODS, vec![pod("payments-5c8d-c", true)]);
    let r = c.pass().await;
    assert_eq!((r.missed_injections, r.events.len()), (0, 0));
    assert_eq!(m.missed_injections.get(), 0);

    // Broken again later: reported again.
    fake.put(fake::PODS, vec![pod("payments-5c8d-d", false)]);
    assert_eq!(c.pass().await.events, ["SidecarMissing"]);
}
