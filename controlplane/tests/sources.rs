//! Internal events against a real kube-apiserver (the Kubernetes test kit, `HERALD_TEST_K8S`)
//! and a real nats-server, run by the controller's leader as in production:
//! - an `EventSchedule` every minute with two replicas and a leader change between ticks sends
//!   exactly one event per tick, with the ids derived from uid and tick;
//! - ticks missed while no leader ran: the latest one sent once (never a burst) within
//!   `startingDeadlineSeconds`, skipped beyond it; an invalid time zone or schedule is
//!   `Ready=False` naming the field;
//! - a `KubernetesSource` on ConfigMaps sends add, update and delete in order with Knative's
//!   types, only for its selector; one whose ServiceAccount may not list Secrets is refused
//!   with the reason, through real RBAC;
//! - a leader killed in the middle of a stream of changes: the next one loses none and repeats
//!   none.
//!
//! Without the kit the tests say so and pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use chrono::{DateTime, Timelike as _, Utc};
use herald_controlplane::controller::crd::EventStream;
use herald_controlplane::controller::metrics::ControllerMetrics;
use herald_controlplane::controller::{self, ControllerConfig, LeaseConfig};
use herald_controlplane::sources::SourcesConfig;
use herald_controlplane::sources::kubernetes::{self, Ident, KubernetesSource, Op};
use herald_controlplane::sources::schedule::{self, EventSchedule};
use herald_runtime::shutdown::Shutdown;
use herald_tests::kit::Apiserver;
use herald_tests::{Nats, eventually, header, stored};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use prometheus_client::registry::Registry;
use serde_json::json;

struct Cluster {
    _api: Apiserver,
    client: kube::Client,
    config: kube::Config,
    nats: Nats,
}

/// An apiserver with herald's CRDs, the `default` EventStream and the namespace `shop`; a nats-server.
async fn cluster(test: &str) -> Option<Cluster> {
    let api = Apiserver::start(test)?;
    let client = api.client().await;
    let kubeconfig = kube::config::Kubeconfig::read_from(api.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        EventStream::crd(),
        EventSchedule::crd(),
        KubernetesSource::crd(),
    ] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    for ns in ["herald-system", "shop"] {
        let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap();
    }
    let es: EventStream = serde_json::from_value(json!({
        "apiVersion": "herald.dev/v1alpha1", "kind": "EventStream",
        // Limits retention: the events stay for the test to read without a subscriber.
        "metadata": {"name": "default"}, "spec": {"retention": "limits"}
    }))
    .unwrap();
    retry_create(&Api::<EventStream>::all(client.clone()), &es).await;
    Some(Cluster {
        _api: api,
        client,
        config,
        nats: Nats::start(),
    })
}

/// Creates `obj`, waiting for a just-made CRD to be served.
async fn retry_create<K>(api: &Api<K>, obj: &K) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match api.create(&PostParams::default(), obj).await {
            Ok(o) => return o,
            Err(e) if std::time::Instant::now() < until => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("create: {e}"),
        }
    }
}

struct Replica {
    stop: Shutdown,
    task: tokio::task::JoinHandle<Result<(), controller::ControllerError>>,
    metrics: Arc<ControllerMetrics>,
}

async fn replica(c: &Cluster, identity: &str) -> Replica {
    let metrics = Arc::new(ControllerMetrics::new(&mut Registry::default()));
    let stop = Shutdown::new();
    let cfg = ControllerConfig {
        event_stream: "default".into(),
        stream: "HERALD".into(),
        dlq_stream: "HERALD_DLQ".into(),
        period: Duration::from_secs(3600),
        orphan_grace: Duration::from_secs(3600),
        lease: LeaseConfig {
            duration: Duration::from_secs(3),
            grace: Duration::from_secs(1),
            ..LeaseConfig::new("herald-system".into(), identity.into())
        },
        sources: SourcesConfig {
            kube: Some(c.config.clone()),
            replicas: 1,
        },
    };
    let task = tokio::spawn(controller::lead(
        c.client.clone(),
        Arc::new(c.nats.broker().await),
        cfg,
        metrics.clone(),
        stop.clone(),
    ));
    Replica {
        stop,
        task,
        metrics,
    }
}

/// The stored events whose `ce-source` is `source`, in stream order.
async fn events_of(c: &Cluster, source: &str) -> Vec<StreamMessage> {
    let js = c.nats.jetstream().await;
    if js.get_stream("HERALD").await.is_err() {
        return Vec::new();
    }
    let all = stored(&js, "HERALD").await;
    if std::env::var_os("DEBUG_SOURCES").is_some() {
        for m in &all {
            eprintln!("{} {:?}", m.subject, m.headers);
        }
    }
    all.into_iter()
        .filter(|m| header(m, "ce-source").map(decode).as_deref() == Some(source))
        .collect()
}

fn decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

fn ce(m: &StreamMessage, name: &str) -> String {
    header(m, name).map(decode).unwrap_or_default()
}

async fn schedule_of(c: &Cluster, name: &str) -> EventSchedule {
    Api::<EventSchedule>::namespaced(c.client.clone(), "shop")
        .get(name)
        .await
        .unwrap()
}

fn ready(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(String, String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn tick_of(m: &StreamMessage) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&ce(m, "ce-time"))
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn a_schedule_sends_one_event_per_tick_across_a_leader_change() {
    let Some(c) = cluster("a_schedule_sends_one_event_per_tick_across_a_leader_change").await
    else {
        return;
    };
    let a = replica(&c, "herald-a").await;
    let b = replica(&c, "herald-b").await;
    let api: Api<EventSchedule> = Api::namespaced(c.client.clone(), "shop");
    let es: EventSchedule = serde_json::from_value(json!({
        "apiVersion": "herald.dev/v1alpha1", "kind": "EventSchedule",
        "metadata": {"name": "every-minute"},
        "spec": {"schedule": "* * * * *", "type": "tick.v1", "data": {"hello": "world"}}
    }))
    .unwrap();
    let es = retry_create(&api, &es).await;
    let uid = es.metadata.uid.clone().unwrap();
    let source = "/apis/herald.dev/v1alpha1/namespaces/shop/eventschedules/every-minute";

    // The first tick, sent by whichever replica leads.
    eventually(Duration::from_secs(75), "the first tick's event", || {
        let c = &c;
        async move { !events_of(c, source).await.is_empty() }
    })
    .await;
    let first = tick_of(&events_of(&c, source).await[0]);
    // The leader goes away (its lease released), the other takes over before the next tick
    // (the first tick came at least 0 s ago; the next one is 60 s after it).
    let (leader, other) = if a.metrics.leader.get() == 1 {
        (a, b)
    } else {
        (b, a)
    };
    leader.stop.trigger();
    leader.task.await.unwrap().unwrap();
    eventually(Duration::from_secs(20), "the other replica leads", || {
        let m = other.metrics.clone();
        async move { m.leader.get() == 1 }
    })
    .await;
    let second = first + chrono::Duration::minutes(1);
    eventually(Duration::from_secs(80), "the second tick's event", || {
        let c = &c;
        async move { events_of(c, source).await.len() >= 2 }
    })
    .await;
    // A moment for a stray duplicate to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = events_of(&c, source).await;
    let ticks: Vec<DateTime<Utc>> = events.iter().map(tick_of).collect();
    let third = second + chrono::Duration::minutes(1);
    let expected: Vec<DateTime<Utc>> = [first, second, third]
        .into_iter()
        .take(ticks.len())
        .collect();
    assert_eq!(ticks, expected, "one event per tick, in order");
    for (m, t) in events.iter().zip(&ticks) {
        assert_eq!(ce(m, "ce-id"), schedule::event_id(&uid, *t));
        assert_eq!(ce(m, "ce-type"), "tick.v1");
        assert_eq!(header(m, "content-type"), Some("application/json"));
        assert_eq!(&m.payload[..], br#"{"hello":"world"}"#);
        assert_eq!(t.second(), 0);
    }
    let status = schedule_of(&c, "every-minute").await.status.unwrap();
    let last = ticks.last().unwrap();
    assert_eq!(
        status.last_event_id.as_deref(),
        Some(schedule::event_id(&uid, *last).as_str())
    );
    assert_eq!(
        ready(&status.conditions).map(|r| r.0).as_deref(),
        Some("True")
    );
    assert!(status.next_schedule_time.is_some());
    other.stop.trigger();
    other.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn missed_ticks_follow_the_starting_deadline_and_bad_specs_are_reported() {
    let Some(c) = cluster("missed_ticks_follow_the_starting_deadline").await else {
        return;
    };
    let api: Api<EventSchedule> = Api::namespaced(c.client.clone(), "shop");
    let now = Utc::now();
    // A minute of the hour about 30 minutes ago: that tick was missed (no leader ran).
    let minute = (now.minute() + 30) % 60;
    let hour_ago = schedule::rfc3339(now - chrono::Duration::hours(2));
    let ten_ago = schedule::rfc3339(now - chrono::Duration::minutes(10));
    let mut uids = BTreeMap::new();
    for (name, schedule, deadline, last, tz) in [
        // Every minute, last sent 10 minutes ago: one event (the latest tick), not ten.
        (
            "burst",
            "* * * * *".to_owned(),
            Some(3600),
            ten_ago.clone(),
            None,
        ),
        // The tick 30 minutes ago, with a deadline of 2 hours: sent late.
        (
            "within",
            format!("{minute} * * * *"),
            Some(7200),
            hour_ago.clone(),
            None,
        ),
        // The same tick with a deadline of a minute: skipped.
        (
            "beyond",
            format!("{minute} * * * *"),
            Some(60),
            hour_ago.clone(),
            None,
        ),
        (
            "bad-zone",
            "@hourly".to_owned(),
            None,
            hour_ago.clone(),
            Some("Mars/Olympus"),
        ),
        (
            "bad-cron",
            "61 * * * *".to_owned(),
            None,
            hour_ago.clone(),
            None,
        ),
    ] {
        let mut spec = json!({"schedule": schedule, "type": format!("{name}.v1")});
        if let Some(d) = deadline {
            spec["startingDeadlineSeconds"] = json!(d);
        }
        if let Some(tz) = tz {
            spec["timeZone"] = json!(tz);
        }
        let es: EventSchedule = serde_json::from_value(json!({
            "apiVersion": "herald.dev/v1alpha1", "kind": "EventSchedule",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        let made = retry_create(&api, &es).await;
        uids.insert(name, made.metadata.uid.unwrap());
        // As if a leader had sent a tick then, before the control plane went away.
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastScheduleTime": last}})),
        )
        .await
        .unwrap();
    }
    let started = Utc::now();
    let r = replica(&c, "herald-0").await;
    let src = |n: &str| format!("/apis/herald.dev/v1alpha1/namespaces/shop/eventschedules/{n}");
    eventually(Duration::from_secs(30), "the missed ticks handled", || {
        let c = &c;
        async move {
            !events_of(c, &src("burst")).await.is_empty()
                && !events_of(c, &src("within")).await.is_empty()
                && schedule_of(c, "beyond")
                    .await
                    .status
                    .and_then(|s| s.last_missed_time)
                    .is_some()
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every-minute: the latest tick only (a burst would have ticks from 10 minutes ago).
    let burst = events_of(&c, &src("burst")).await;
    let floor = |t: DateTime<Utc>| t.with_second(0).unwrap().with_nanosecond(0).unwrap();
    assert!(
        burst.len() <= 1 + (Utc::now() - started).num_minutes() as usize + 1,
        "a burst: {} events",
        burst.len()
    );
    for m in &burst {
        assert!(
            tick_of(m) >= floor(started),
            "an old tick was sent: {}",
            ce(m, "ce-time")
        );
    }
    // Within the deadline: the tick 30 minutes ago, once, with its derived id.
    let within = events_of(&c, &src("within")).await;
    assert_eq!(within.len(), 1);
    let tick = tick_of(&within[0]);
    assert_eq!(tick.minute(), minute);
    assert!(Utc::now() - tick > chrono::Duration::minutes(25));
    assert_eq!(
        ce(&within[0], "ce-id"),
        schedule::event_id(&uids["within"], tick)
    );
    // Beyond it: nothing sent, the skip recorded.
    assert!(events_of(&c, &src("beyond")).await.is_empty());
    let beyond = schedule_of(&c, "beyond").await.status.unwrap();
    assert_eq!(
        beyond.last_missed_time.map(|t| t.0.as_second()),
        Some(tick.timestamp())
    );
    assert_eq!(
        beyond.last_schedule_time.map(|t| t.0.to_string()),
        Some(hour_ago.clone())
    );
    // Bad specs: Ready=False naming the field and the value.
    for (name, field, value) in [
        ("bad-zone", "spec.timeZone", "Mars/Olympus"),
        ("bad-cron", "spec.schedule", "61 * * * *"),
    ] {
        eventually(Duration::from_secs(20), "the bad spec reported", || {
            let c = &c;
            async move {
                schedule_of(c, name)
                    .await
                    .status
                    .and_then(|s| ready(&s.conditions))
                    .is_some()
            }
        })
        .await;
        let (status, reason, message) =
            ready(&schedule_of(&c, name).await.status.unwrap().conditions).unwrap();
        assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
        assert!(
            message.contains(field) && message.contains(value),
            "{message}"
        );
        assert!(events_of(&c, &src(name)).await.is_empty());
    }
    r.stop.trigger();
    r.task.await.unwrap().unwrap();
}

/// The ServiceAccount `reader` of `shop`, which may list and watch ConfigMaps only.
async fn reader(c: &Cluster) {
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "reader"}})).unwrap();
    Api::<ServiceAccount>::namespaced(c.client.clone(), "shop")
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}]
    }))
    .unwrap();
    Api::<Role>::namespaced(c.client.clone(), "shop")
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "configmap-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "shop"}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(c.client.clone(), "shop")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

async fn source(c: &Cluster, name: &str, spec: serde_json::Value) -> String {
    let s: KubernetesSource = serde_json::from_value(json!({
        "apiVersion": "herald.dev/v1alpha1", "kind": "KubernetesSource",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    let api: Api<KubernetesSource> = Api::namespaced(c.client.clone(), "shop");
    retry_create(&api, &s).await.metadata.uid.unwrap()
}

async fn source_ready(c: &Cluster, name: &str) -> Option<(String, String, String)> {
    Api::<KubernetesSource>::namespaced(c.client.clone(), "shop")
        .get(name)
        .await
        .ok()
        .and_then(|s| s.status)
        .and_then(|s| ready(&s.conditions))
}

async fn wait_ready(c: &Cluster, name: &str) {
    eventually(
        Duration::from_secs(30),
        "the source is Ready",
        || async move { source_ready(c, name).await.map(|r| r.0).as_deref() == Some("True") },
    )
    .await;
}

fn configmap(name: &str, labels: serde_json::Value, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "data": {"value": value}
    }))
    .unwrap()
}

#[tokio::test]
async fn a_configmap_source_sends_changes_in_order_and_a_forbidden_one_says_why() {
    let Some(c) = cluster("a_configmap_source_sends_changes_in_order").await else {
        return;
    };
    reader(&c).await;
    let r = replica(&c, "herald-0").await;
    let uid = source(
        &c,
        "pricing",
        json!({
            "serviceAccountName": "reader", "mode": "Resource",
            "resources": [{"apiVersion": "v1", "kind": "ConfigMap",
                           "selector": {"matchLabels": {"app": "pricing"}}}],
            "extensions": {"team": "pricing"}
        }),
    )
    .await;
    wait_ready(&c, "pricing").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "shop");
    let made = cms
        .create(
            &PostParams::default(),
            &configmap("prices", json!({"app": "pricing"}), "1"),
        )
        .await
        .unwrap();
    // Not selected: never sent.
    cms.create(
        &PostParams::default(),
        &configmap("other", json!({"app": "other"}), "1"),
    )
    .await
    .unwrap();
    let updated = cms
        .patch(
            "prices",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"value": "2"}})),
        )
        .await
        .unwrap();
    cms.delete("prices", &DeleteParams::default())
        .await
        .unwrap();

    let apiserver = c
        .config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    eventually(Duration::from_secs(30), "three events", || {
        let c = &c;
        let apiserver = apiserver.clone();
        async move { events_of(c, &apiserver).await.len() >= 3 }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = events_of(&c, &apiserver).await;
    let types: Vec<String> = events.iter().map(|m| ce(m, "ce-type")).collect();
    assert_eq!(
        types,
        [
            "dev.knative.apiserver.resource.add",
            "dev.knative.apiserver.resource.update",
            "dev.knative.apiserver.resource.delete"
        ]
    );
    for m in &events {
        assert_eq!(
            ce(m, "ce-subject"),
            "/apis/v1/namespaces/shop/configmaps/prices"
        );
        assert_eq!(ce(m, "ce-kind"), "ConfigMap");
        assert_eq!(ce(m, "ce-name"), "prices");
        assert_eq!(ce(m, "ce-namespace"), "shop");
        assert_eq!(ce(m, "ce-team"), "pricing");
        assert_eq!(header(m, "content-type"), Some("application/json"));
    }
    let data: Vec<serde_json::Value> = events
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(data[0]["data"]["value"], "1");
    assert_eq!(data[1]["data"]["value"], "2");
    assert_eq!(data[0]["kind"], "ConfigMap");
    let ident = |o: &ConfigMap| Ident {
        uid: o.metadata.uid.clone().unwrap(),
        name: "prices".into(),
        resource_version: o.metadata.resource_version.clone().unwrap(),
    };
    assert_eq!(
        ce(&events[0], "ce-id"),
        kubernetes::event_id(&uid, Op::Add, &ident(&made))
    );
    assert_eq!(
        ce(&events[1], "ce-id"),
        kubernetes::event_id(&uid, Op::Update, &ident(&updated))
    );
    assert_eq!(
        ce(&events[2], "ce-id"),
        kubernetes::event_id(&uid, Op::Delete, &ident(&made))
    );

    // The same account may not list Secrets: refused, with the verb and the resource named.
    source(
        &c,
        "secrets",
        json!({"serviceAccountName": "reader",
               "resources": [{"apiVersion": "v1", "kind": "Secret"}]}),
    )
    .await;
    eventually(Duration::from_secs(30), "the Secrets source is refused", || {
        let c = &c;
        async move {
            source_ready(c, "secrets").await.map(|r| r.1).as_deref() == Some("Forbidden")
        }
    })
    .await;
    let (status, _, message) = source_ready(&c, "secrets").await.unwrap();
    assert_eq!(status, "False");
    for word in ["system:serviceaccount:shop:reader", "list", "secrets"] {
        assert!(message.contains(word), "{word:?} not in {message}");
    }
    // A deleted source's checkpoint goes with it.
    use herald_core::broker::ConfigStore as _;
    let broker = c.nats.broker().await;
    let key = format!("ks.{uid}");
    assert!(
        broker
            .get(herald_controlplane::sources::BUCKET, &key)
            .await
            .unwrap()
            .is_some()
    );
    Api::<KubernetesSource>::namespaced(c.client.clone(), "shop")
        .delete("pricing", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the checkpoint deleted", || {
        let (broker, key) = (&broker, &key);
        async move {
            broker
                .get(herald_controlplane::sources::BUCKET, key)
                .await
                .unwrap()
                .is_none()
        }
    })
    .await;
    r.stop.trigger();
    r.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_leader_killed_in_the_middle_of_changes_loses_none_and_repeats_none() {
    let Some(c) = cluster("a_leader_killed_in_the_middle_of_changes").await else {
        return;
    };
    reader(&c).await;
    let a = replica(&c, "herald-a").await;
    source(
        &c,
        "all",
        json!({"serviceAccountName": "reader",
               "resources": [{"apiVersion": "v1", "kind": "ConfigMap"}]}),
    )
    .await;
    wait_ready(&c, "all").await;
    // 30 creations, 30 updates, 15 deletions, a change every 40 ms; the leader is killed
    // (no lease released, as a crash) after the first third, a new replica started later.
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "shop");
    let writer = tokio::spawn({
        let cms = cms.clone();
        async move {
            let mut changes = Vec::new();
            for i in 0..30 {
                cms.create(
                    &PostParams::default(),
                    &configmap(&format!("cm-{i}"), json!({}), "1"),
                )
                .await
                .unwrap();
                changes.push(("add", format!("cm-{i}")));
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            for i in 0..30 {
                cms.patch(
                    &format!("cm-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"value": "2"}})),
                )
                .await
                .unwrap();
                changes.push(("update", format!("cm-{i}")));
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            for i in 0..15 {
                cms.delete(&format!("cm-{i}"), &DeleteParams::default())
                    .await
                    .unwrap();
                changes.push(("delete", format!("cm-{i}")));
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            changes
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.task.abort();
    let _ = a.task.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = replica(&c, "herald-b").await;
    let changes = writer.await.unwrap();
    let apiserver = c
        .config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    eventually(Duration::from_secs(60), "every change stored", || {
        let c = &c;
        let apiserver = apiserver.clone();
        async move { events_of(c, &apiserver).await.len() >= 75 }
    })
    .await;
    // Time for a repeat to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = events_of(&c, &apiserver).await;
    let got: Vec<(String, String)> = events
        .iter()
        .map(|m| {
            let ty = ce(m, "ce-type");
            let op = ty.rsplit('.').next().unwrap_or_default().to_owned();
            (op, ce(m, "ce-name"))
        })
        .collect();
    let want: Vec<(String, String)> = changes
        .into_iter()
        .map(|(op, n)| (op.to_owned(), n))
        .collect();
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    assert_eq!(sorted_got, sorted_want, "each change exactly once");
    // And in order per object.
    for i in 0..30 {
        let name = format!("cm-{i}");
        let ops: Vec<&str> = got
            .iter()
            .filter(|(_, n)| *n == name)
            .map(|(o, _)| o.as_str())
            .collect();
        let expect: &[&str] = if i < 15 {
            &["add", "update", "delete"]
        } else {
            &["add", "update"]
        };
        assert_eq!(ops, expect, "{name}");
    }
    assert!(b.metrics.leader.get() == 1);
    b.stop.trigger();
    b.task.await.unwrap().unwrap();
}
