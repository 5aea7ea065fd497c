//! The controller against a real kube-apiserver (the Kubernetes test kit, `HERALD_TEST_K8S`)
//! and a real nats-server: two replicas never lead together and hand the Lease over on shutdown
//! (real Lease semantics, server-side apply conflicts included); and the leader sees changes
//! through its watches within seconds, with the period set to an hour — an EventStream edit is
//! reconciled, a pod that missed its sidecar is reported. herald's `Subscription` resources:
//! the schema's rules enforced by the apiserver, a resource's consumer made at once (its events
//! kept with no subscriber), its subscriptions reaching a running sidecar through the bucket and
//! leaving with the resource, its status. Without the kit the tests say so and pass.

use std::sync::Arc;
use std::time::Duration;

use herald_controlplane::controller::crd::EventStream;
use herald_controlplane::controller::metrics::{ControllerMetrics, PassLabels, PassResult};
use herald_controlplane::controller::subscription::Subscription as HeraldSubscription;
use herald_controlplane::controller::{self, ControllerConfig, LeaseConfig};
use herald_runtime::shutdown::Shutdown;
use herald_tests::kit::Apiserver;
use herald_tests::{Nats, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use prometheus_client::registry::Registry;
use serde_json::json;

fn config(identity: &str, period: Duration) -> ControllerConfig {
    ControllerConfig {
        event_stream: "default".into(),
        stream: "HERALD".into(),
        dlq_stream: "HERALD_DLQ".into(),
        period,
        orphan_grace: Duration::from_secs(3600),
        lease: LeaseConfig {
            duration: Duration::from_secs(3),
            grace: Duration::from_secs(1),
            ..LeaseConfig::new("herald-system".into(), identity.into())
        },
        sources: Default::default(),
    }
}

fn passes(m: &ControllerMetrics) -> i64 {
    [PassResult::Ok, PassResult::Error]
        .into_iter()
        .map(|result| m.passes.get_or_create(&PassLabels { result }).get() as i64)
        .sum()
}

/// The CRD, the `herald-system` namespace and the EventStream `default`.
async fn prepare(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &EventStream::crd())
        .await
        .expect("create the EventStream CRD");
    crds.create(&PostParams::default(), &HeraldSubscription::crd())
        .await
        .expect("create the Subscription CRD");
    namespace(client, "herald-system").await;
    let streams: Api<EventStream> = Api::all(client.clone());
    let es: EventStream = serde_json::from_value(json!({
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "EventStream",
        "metadata": {"name": "default"},
        "spec": {}
    }))
    .expect("an EventStream");
    // The CRD takes a moment to be served.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match streams.create(&PostParams::default(), &es).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < until => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("create the EventStream: {e}"),
        }
    }
}

/// A namespace with its `default` ServiceAccount (no controller-manager makes it here).
async fn namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create a namespace");
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), name)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create the default ServiceAccount");
}

struct Replica {
    metrics: Arc<ControllerMetrics>,
    stop: Shutdown,
    task: tokio::task::JoinHandle<Result<(), controller::ControllerError>>,
}

async fn replica(client: &kube::Client, nats: &Nats, identity: &str, period: Duration) -> Replica {
    let metrics = Arc::new(ControllerMetrics::new(&mut Registry::default()));
    let stop = Shutdown::new();
    let broker = Arc::new(nats.broker().await);
    let task = tokio::spawn(controller::lead(
        client.clone(),
        broker,
        config(identity, period),
        metrics.clone(),
        stop.clone(),
    ));
    Replica {
        metrics,
        stop,
        task,
    }
}

async fn holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "herald-system")
        .get_opt("herald-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn two_replicas_never_lead_together_and_hand_over_on_shutdown() {
    let Some(api) = Apiserver::start("two_replicas_never_lead_together") else {
        return;
    };
    let client = api.client().await;
    prepare(&client).await;
    let nats = Nats::start();
    let a = replica(&client, &nats, "herald-a", Duration::from_millis(200)).await;
    eventually(Duration::from_secs(20), "replica a leads", || {
        let m = a.metrics.clone();
        async move { m.leader.get() == 1 }
    })
    .await;
    let b = replica(&client, &nats, "herald-b", Duration::from_millis(200)).await;
    // Several lease renewals and passes of a later, b has still not acted.
    let before = passes(&a.metrics);
    eventually(Duration::from_secs(20), "a runs five more passes", || {
        let m = a.metrics.clone();
        async move { passes(&m) >= before + 5 }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(b.metrics.leader.get(), 0);
    assert_eq!(passes(&b.metrics), 0, "b acted while a led");
    assert_eq!(holder(&client).await.as_deref(), Some("herald-a"));

    // a shuts down and releases the lease; b takes over well before it would expire by
    // itself, and a does nothing more.
    a.stop.trigger();
    a.task.await.unwrap().unwrap();
    assert_eq!(a.metrics.leader.get(), 0);
    let a_passes = passes(&a.metrics);
    eventually(
        Duration::from_secs(20),
        "replica b leads and passes",
        || {
            let m = b.metrics.clone();
            async move { m.leader.get() == 1 && passes(&m) > 0 }
        },
    )
    .await;
    assert_eq!(holder(&client).await.as_deref(), Some("herald-b"));
    assert_eq!(passes(&a.metrics), a_passes);
    b.stop.trigger();
    b.task.await.unwrap().unwrap();
    assert_eq!(holder(&client).await, None);
}

#[tokio::test]
async fn the_leader_sees_changes_through_its_watches() {
    let Some(api) = Apiserver::start("the_leader_sees_changes_through_its_watches") else {
        return;
    };
    let client = api.client().await;
    prepare(&client).await;
    let nats = Nats::start();
    // An hour between periodic passes: whatever happens within seconds comes from the watches.
    let r = replica(&client, &nats, "herald-0", Duration::from_secs(3600)).await;
    let streams: Api<EventStream> = Api::all(client.clone());
    let observed = |generation: i64| {
        let streams = streams.clone();
        async move {
            streams
                .get("default")
                .await
                .ok()
                .and_then(|e| e.status)
                .and_then(|s| s.observed_generation)
                == Some(generation)
        }
    };
    eventually(Duration::from_secs(20), "the first pass reconciles", || {
        observed(1)
    })
    .await;

    // An EventStream edit.
    streams
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxAge": "36h"}})),
        )
        .await
        .expect("edit the EventStream");
    eventually(Duration::from_secs(10), "the edit is reconciled", || {
        observed(2)
    })
    .await;
    let js = nats.jetstream().await;
    let info = js
        .get_stream("HERALD")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.max_age, Duration::from_secs(36 * 3600));

    // A pod that asked for the sidecar and has none (created as if the webhook were down).
    namespace(&client, "shop").await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "annotations": {"herald.dev/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create the pod");
    let events: Api<Event> = Api::namespaced(client.clone(), "shop");
    eventually(
        Duration::from_secs(10),
        "the missed injection is reported",
        || {
            let events = events.clone();
            async move {
                events
                    .list(&ListParams::default())
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .any(|e| e.reason.as_deref() == Some("SidecarMissing"))
                    })
                    .unwrap_or(false)
            }
        },
    )
    .await;
    assert_eq!(r.metrics.missed_injections.get(), 1);
    r.stop.trigger();
    r.task.await.unwrap().unwrap();
}

/// The Ready condition of a Subscription: (status, reason, message).
/// Publishes one event of source `checkout` through `h`.
async fn checkout(h: &herald_tests::Herald, id: &str) {
    let r = herald_tests::binary(&h.url, id, "checkout", "order.paid.v1")
        .body("{}")
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 204);
}

async fn ready(api: &Api<HeraldSubscription>, name: &str) -> Option<(String, String, String)> {
    let s = api.get_opt(name).await.ok().flatten()?;
    let c = s
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason, c.message))
}

#[tokio::test]
async fn subscription_resources_keep_events_reach_running_sidecars_and_leave_with_their_resource() {
    let Some(apiserver) = Apiserver::start("subscription_resources") else {
        return;
    };
    let client = apiserver.client().await;
    prepare(&client).await;
    namespace(&client, "shop").await;
    let nats = Nats::start();
    let leader = replica(&client, &nats, "herald-a", Duration::from_secs(3600)).await;
    let js = nats.jetstream().await;
    eventually(Duration::from_secs(20), "the streams created", || {
        let js = js.clone();
        async move { js.get_stream("HERALD").await.is_ok() }
    })
    .await;
    let subs: Api<HeraldSubscription> = Api::namespaced(client.clone(), "shop");
    let resource = |name: &str, spec: serde_json::Value| -> HeraldSubscription {
        serde_json::from_value(json!({
            "apiVersion": "herald.dev/v1alpha1", "kind": "Subscription",
            "metadata": {"name": name, "namespace": "shop"}, "spec": spec,
        }))
        .expect("a Subscription")
    };

    // The schema: exactly one target, at least one type (the apiserver refuses, naming the rule).
    let both = resource(
        "both",
        json!({"app": "orders", "sink": "http://x.shop.svc", "types": ["a.v1"]}),
    );
    let e = subs
        .create(&PostParams::default(), &both)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exactly one of app and sink"), "{e}");
    let none = resource("none", json!({"app": "orders", "types": []}));
    let e = subs
        .create(&PostParams::default(), &none)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("spec.types"), "{e}");

    // What only the contract knows: Ready=False InvalidSpec, naming the entry and the field.
    subs.create(
        &PostParams::default(),
        &resource(
            "bad-filter",
            json!({"app": "orders", "types": ["x.v1"], "filters": [{"sql": "amount >"}]}),
        ),
    )
    .await
    .expect("create");
    eventually(Duration::from_secs(20), "InvalidSpec reported", || {
        let subs = subs.clone();
        async move {
            ready(&subs, "bad-filter").await.is_some_and(|(s, r, m)| {
                s == "False" && r == "InvalidSpec" && m.contains("entry 1")
            })
        }
    })
    .await;

    // A valid one: its consumer exists at once, so an event published with no subscriber waits.
    subs.create(
        &PostParams::default(),
        &resource(
            "orders-paid",
            json!({"app": "orders", "types": ["order.paid.v1"], "source": "checkout", "maxInFlight": 5}),
        ),
    )
    .await
    .expect("create");
    eventually(
        Duration::from_secs(20),
        "NoSubscriber with its consumer",
        || {
            let subs = subs.clone();
            async move {
                let status = subs
                    .get("orders-paid")
                    .await
                    .ok()
                    .and_then(|s| s.status)
                    .unwrap_or_default();
                ready(&subs, "orders-paid")
                    .await
                    .is_some_and(|(s, r, _)| s == "False" && r == "NoSubscriber")
                    && status.consumers.len() == 1
                    && status.target.as_deref() == Some("app orders")
            }
        },
    )
    .await;
    let consumer = herald_tests::consumer_for(&js, "checkout/order.paid.v1").await;
    assert_eq!(consumer.config.max_ack_pending, 5);
    let publisher = herald_tests::Herald::start(
        "sidecar",
        &[
            "--nats-url",
            &nats.url(),
            "--app-id",
            "checkout",
            "--namespace",
            "shop",
        ],
    )
    .await;
    publisher.wait_ready().await;
    checkout(&publisher, "early-1").await;

    // A sidecar of app `orders` (no subscription annotations) gets it through the bucket.
    let sink = herald_tests::sink::Sink::start().await;
    let port = sink.port.to_string();
    let subscriber = herald_tests::Herald::start(
        "sidecar",
        &[
            "--nats-url",
            &nats.url(),
            "--app-id",
            "orders",
            "--namespace",
            "shop",
            "--app-port",
            &port,
        ],
    )
    .await;
    subscriber.wait_ready().await;
    eventually(
        Duration::from_secs(30),
        "the waiting event delivered",
        || {
            let got = sink
                .received()
                .iter()
                .any(|r| r.header("ce-id") == Some("early-1"));
            async move { got }
        },
    )
    .await;
    checkout(&publisher, "live-1").await;
    eventually(Duration::from_secs(20), "a live event delivered", || {
        let got = sink
            .received()
            .iter()
            .any(|r| r.header("ce-id") == Some("live-1"));
        async move { got }
    })
    .await;

    // The sidecar publishes its delivery facts for the resource (every few seconds)...
    let consumer_name = subs
        .get("orders-paid")
        .await
        .expect("get")
        .status
        .expect("a status")
        .consumers[0]
        .clone();
    let broker = nats.broker().await;
    eventually(
        Duration::from_secs(20),
        "the delivery facts published",
        || {
            let (broker, key) = (&broker, herald_core::report::status_key(&consumer_name));
            async move {
                use herald_core::broker::ConfigStore as _;
                broker
                    .get(herald_core::defaults::BUCKET, &key)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            }
        },
    )
    .await;

    // ...and a pod of app `orders` with the sidecar makes the resource Ready, with those facts.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orders-1", "namespace": "shop", "labels": {"app": "orders"},
            "annotations": {"herald.dev/inject": "true", "herald.dev/app-port": port.clone()}},
        "spec": {"containers": [
            {"name": "app", "image": "orders"},
            {"name": "herald", "image": "herald", "env": [{"name": "HERALD_APP_ID", "value": "orders"}]}
        ]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create the pod");
    eventually(Duration::from_secs(20), "Ready=True Subscribed", || {
        let subs = subs.clone();
        async move {
            ready(&subs, "orders-paid")
                .await
                .is_some_and(|(s, r, _)| s == "True" && r == "Subscribed")
        }
    })
    .await;
    let status = subs
        .get("orders-paid")
        .await
        .expect("get")
        .status
        .expect("a status");
    assert!(status.last_delivery.is_some(), "{status:?}");
    assert_eq!(status.dead_letters, Some(0), "{status:?}");
    assert_eq!(status.pending, Some(0), "{status:?}");

    // A sink whose Service selects that pod (port 80 → the app's port): the app's sidecar
    // delivers it, as the resource (no dispatcher runs in this test).
    let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "orders-svc", "namespace": "shop"},
        "spec": {"selector": {"app": "orders"},
            "ports": [{"port": 80, "targetPort": sink.port}]}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &service)
        .await
        .expect("create the Service");
    subs.create(
        &PostParams::default(),
        &resource(
            "refunds-hook",
            json!({"sink": "http://orders-svc.shop.svc.cluster.local/refunds", "types": ["refund.v1"], "source": "checkout"}),
        ),
    )
    .await
    .expect("create");
    eventually(
        Duration::from_secs(20),
        "served by the app's sidecars",
        || {
            let subs = subs.clone();
            async move {
                ready(&subs, "refunds-hook")
                    .await
                    .is_some_and(|(s, _, m)| s == "True" && m.contains("sidecars of app orders"))
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the sidecar subscribed for the sink",
        || {
            let log = subscriber.log_text();
            async move { log.contains("sink:refunds-hook") }
        },
    )
    .await;
    let r = herald_tests::binary(&publisher.url, "refund-1", "checkout", "refund.v1")
        .body("{}")
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 204);
    eventually(
        Duration::from_secs(20),
        "the refund delivered on /refunds",
        || {
            let got = sink
                .received()
                .iter()
                .any(|r| r.header("ce-id") == Some("refund-1") && r.path == "/refunds");
            async move { got }
        },
    )
    .await;

    // Deleted: the sidecar stops, the consumer goes at once (the orphan grace is an hour here),
    // and the key with it.
    subs.delete("orders-paid", &Default::default())
        .await
        .expect("delete");
    // At once means with the next pass (the orphan grace is an hour here); the minute is for a
    // loaded machine.
    eventually(Duration::from_secs(60), "the consumer deleted", || {
        let js = js.clone();
        async move {
            herald_tests::consumers(&js)
                .await
                .iter()
                .all(|c| c.config.filter_subject != "herald.checkout.order.paid.v1")
        }
    })
    .await;
    eventually(Duration::from_secs(20), "the sidecar unsubscribed", || {
        let log = subscriber.log_text();
        async move { log.contains("unsubscribed") }
    })
    .await;
    leader.stop.trigger();
    let _ = leader.task.await;
}

#[tokio::test]
async fn kyma_subscriptions_work_as_written_through_the_dispatcher() {
    use herald_controlplane::controller::kyma::Subscription as KymaSubscription;
    let Some(apiserver) = Apiserver::start("kyma_subscriptions") else {
        return;
    };
    let client = apiserver.client().await;
    prepare(&client).await;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &KymaSubscription::crd())
        .await
        .expect("create Kyma's Subscription CRD");
    namespace(&client, "shop").await;
    let nats = Nats::start();
    let leader = replica(&client, &nats, "herald-a", Duration::from_secs(3600)).await;
    let js = nats.jetstream().await;
    eventually(Duration::from_secs(20), "the streams created", || {
        let js = js.clone();
        async move { js.get_stream("HERALD").await.is_ok() }
    })
    .await;
    let sink = herald_tests::sink::Sink::start().await;
    let host = "order-fn.shop.svc.cluster.local";
    let dispatcher = herald_tests::Herald::start(
        "dispatch",
        &[
            "--nats-url",
            &nats.url(),
            "--resolve",
            &format!("{host}:{}:127.0.0.1", sink.port),
        ],
    )
    .await;
    let subs: Api<KymaSubscription> = Api::namespaced(client.clone(), "shop");
    // Kyma's documented example, as written (with the Function's port).
    let kyma = |name: &str, sink: &str| -> KymaSubscription {
        serde_json::from_value(json!({
            "apiVersion": "eventing.kyma-project.io/v1alpha2", "kind": "Subscription",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"sink": sink, "source": "commerce", "types": ["order.created.v1"]},
        }))
        .expect("a Kyma Subscription")
    };
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let sink_url = format!("http://{host}:{}", sink.port);
    while let Err(e) = subs
        .create(&PostParams::default(), &kyma("order-created", &sink_url))
        .await
    {
        assert!(std::time::Instant::now() < until, "create: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    subs.create(
        &PostParams::default(),
        &kyma("elsewhere", "http://fn.other.svc.cluster.local"),
    )
    .await
    .expect("create");
    eventually(Duration::from_secs(20), "Kyma's status filled", || {
        let subs = subs.clone();
        async move {
            let Some(s) = subs.get("order-created").await.ok().and_then(|s| s.status) else {
                return false;
            };
            s.ready
                && s.types.first().is_some_and(|t| {
                    t.original_type == "order.created.v1" && t.clean_type == "order.created.v1"
                })
                && s.backend.as_ref().is_some_and(|b| {
                    b.types.first().is_some_and(|t| {
                        t.consumer_name
                            .as_deref()
                            .is_some_and(|c| c.starts_with("herald-"))
                    })
                })
                && s.conditions.first().is_some_and(|c| {
                    c.type_.as_deref() == Some("Subscription active") && c.status == "True"
                })
        }
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "a sink of another namespace refused",
        || {
            let subs = subs.clone();
            async move {
                subs.get("elsewhere")
                    .await
                    .ok()
                    .and_then(|s| s.status)
                    .is_some_and(|s| {
                        !s.ready
                            && s.conditions.first().is_some_and(|c| {
                                c.message
                                    .as_deref()
                                    .is_some_and(|m| m.contains("namespace other"))
                            })
                    })
            }
        },
    )
    .await;
    // A Kyma app publishes a legacy event; the Function gets it as a CloudEvent.
    let publisher = herald_tests::Herald::start(
        "sidecar",
        &[
            "--nats-url",
            &nats.url(),
            "--app-id",
            "commerce",
            "--namespace",
            "shop",
        ],
    )
    .await;
    publisher.wait_ready().await;
    let r = herald_tests::reqwest::Client::new()
        .post(format!("{}/commerce/v1/events", publisher.url))
        .json(&json!({
            "event-type": "order.created", "event-type-version": "v1",
            "event-time": "2026-12-02T10:00:00Z", "data": {"orderCode": "42"}
        }))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
    let got = sink.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].header("ce-type"), Some("order.created.v1"));
    assert_eq!(got[0].header("ce-source"), Some("commerce"));
    assert_eq!(&got[0].body[..], br#"{"orderCode":"42"}"#);

    // The Function is down: the event is kept, and delivered once it is back.
    let mut sink = sink;
    sink.down();
    let r = herald_tests::reqwest::Client::new()
        .post(format!("{}/commerce/v1/events", publisher.url))
        .json(&json!({
            "event-type": "order.created", "event-type-version": "v1",
            "event-time": "2026-12-02T10:00:01Z", "data": {"orderCode": "43"}
        }))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sink.up().await;
    eventually(
        Duration::from_secs(60),
        "delivered after the outage",
        || {
            let got = sink
                .received()
                .iter()
                .any(|r| &r.body[..] == br#"{"orderCode":"43"}"#);
            async move { got }
        },
    )
    .await;
    drop(dispatcher);
    leader.stop.trigger();
    let _ = leader.task.await;
}
