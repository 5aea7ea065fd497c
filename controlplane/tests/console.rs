//! The console's API against a real kube-apiserver (the Kubernetes test kit, `HERALD_TEST_K8S`)
//! and a real nats-server: tokens of real ServiceAccounts (TokenRequest) checked with TokenReview,
//! every read and write authorised with SubjectAccessReview against real RBAC. No token → 401; a
//! user without rights → 403 on every write and on reads, and only the namespaces it may list; a
//! permitted user creates, edits and deletes a Subscription (the controller gives it a consumer)
//! and replays a dead letter, which lands in the event stream for that subscription only; a
//! browser session needs its CSRF token to write; security headers and ETags on every answer.
//! Without the kit the test says so and passes.

mod console_kit;

use std::time::Duration;

use console_kit::{ConsoleKit, create, token};
use herald_controlplane::controller::subscription::Subscription as HeraldSubscription;
use herald_tests::eventually;
use kube::api::{Api, PostParams};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("the console answers");
        let status = r.status();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, v)
    }
}

#[tokio::test]
async fn the_console_api_acts_only_with_the_callers_rights() {
    let Some(kit) = ConsoleKit::start("the_console_api_acts_only_with_the_callers_rights").await
    else {
        return;
    };
    let (admin, nats, base) = (kit.admin.clone(), &kit.nats, kit.base.clone());
    let (alice, bob) = (kit.alice.clone(), kit.bob.clone());
    let c = Client {
        http: reqwest::Client::new(),
        base: base.clone(),
    };
    use reqwest::Method as M;

    // The page: security headers, no inline script.
    let page = c.http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("<script>") && html.contains("console.js"),
        "{html}"
    );

    // No token, a bad token: 401.
    let (s, v) = c.call(M::GET, "/api/v1/whoami", None, None).await;
    assert_eq!(s, 401, "{v}");
    let (s, _) = c
        .call(M::GET, "/api/v1/whoami", Some("not-a-token"), None)
        .await;
    assert_eq!(s, 401);
    let (s, v) = c.call(M::GET, "/api/v1/whoami", Some(&alice), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["user"]["name"], "system:serviceaccount:shop:alice");

    // Reads are filtered: each sees only the namespaces it may list Subscriptions in.
    let (_, v) = c.call(M::GET, "/api/v1/namespaces", Some(&bob), None).await;
    assert_eq!(v["namespaces"], json!(["other"]));
    let (_, v) = c
        .call(M::GET, "/api/v1/namespaces", Some(&alice), None)
        .await;
    assert_eq!(v["namespaces"], json!(["shop"]));
    let (s, v) = c
        .call(M::GET, "/api/v1/eventstreams", Some(&bob), None)
        .await;
    assert_eq!(s, 403);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("list eventstreams.herald.dev"),
        "{v}"
    );
    let (s, v) = c
        .call(M::GET, "/api/v1/eventstreams", Some(&alice), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"][0]["metadata"]["name"], "default");

    // A trigger: app orders gets order.paid.v1 from checkout.
    let trigger = json!({
        "metadata": {"name": "orders-paid"},
        "spec": {"app": "orders", "types": ["order.paid.v1"], "source": "checkout"}
    });
    // bob: 403 on every write and on reads in shop.
    let forbidden = [
        (M::GET, "/api/v1/namespaces/shop/subscriptions", None),
        (
            M::POST,
            "/api/v1/namespaces/shop/subscriptions",
            Some(trigger.clone()),
        ),
        (
            M::PUT,
            "/api/v1/namespaces/shop/subscriptions/orders-paid",
            Some(trigger.clone()),
        ),
        (
            M::DELETE,
            "/api/v1/namespaces/shop/subscriptions/orders-paid",
            None,
        ),
        (
            M::POST,
            "/api/v1/namespaces/shop/subscriptions/orders-paid/deadletters/replay",
            Some(json!({"all": true})),
        ),
    ];
    for (m, path, body) in forbidden.clone() {
        let (s, v) = c.call(m.clone(), path, Some(&bob), body).await;
        assert_eq!(s, 403, "bob {m} {path}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("system:serviceaccount:shop:bob may not"),
            "{v}"
        );
    }

    // alice: an invalid filter is refused naming the field and the column, before anything is made.
    let mut bad = trigger.clone();
    bad["spec"]["filters"] = json!([{"sql": "type = 'a' AND"}]);
    let (s, v) = c
        .call(
            M::POST,
            "/api/v1/namespaces/shop/subscriptions",
            Some(&alice),
            Some(bad),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    // The column the parser of the controller and the sidecars reports.
    let column = herald_cesql::Expression::parse("type = 'a' AND")
        .unwrap_err()
        .column;
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("filters[0].sql") && e.contains(&format!("column {column}")),
        "{e}"
    );
    let (_, v) = c
        .call(
            M::POST,
            "/api/v1/cesql",
            Some(&alice),
            Some(json!({"expression": "type = 'a' AND"})),
        )
        .await;
    assert_eq!(v["column"], column, "{v}");

    // Created: an ordinary resource, which the controller serves (a consumer, in its status).
    let (s, v) = c
        .call(
            M::POST,
            "/api/v1/namespaces/shop/subscriptions",
            Some(&alice),
            Some(trigger.clone()),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let subs: Api<HeraldSubscription> = Api::namespaced(admin.clone(), "shop");
    let consumer = {
        let mut consumer = None;
        eventually(
            Duration::from_secs(30),
            "the Subscription's consumer in its status",
            || {
                let subs = subs.clone();
                async move {
                    subs.get("orders-paid")
                        .await
                        .ok()
                        .and_then(|s| s.status)
                        .is_some_and(|s| !s.consumers.is_empty())
                }
            },
        )
        .await;
        if let Some(s) = subs.get("orders-paid").await.unwrap().status {
            consumer = s.consumers.first().cloned();
        }
        consumer.expect("a consumer")
    };
    let (s, v) = c
        .call(
            M::GET,
            "/api/v1/namespaces/shop/subscriptions",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["items"][0]["metadata"]["name"], "orders-paid");
    assert!(v["items"][0]["metadata"].get("managedFields").is_none());

    // Edited (another type), with the resourceVersion read: visible to kubectl.
    let rv = v["items"][0]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut edit = trigger.clone();
    edit["spec"]["types"] = json!(["order.paid.v1", "order.refunded.v1"]);
    edit["metadata"]["resourceVersion"] = json!(rv);
    let (s, v) = c
        .call(
            M::PUT,
            "/api/v1/namespaces/shop/subscriptions/orders-paid",
            Some(&alice),
            Some(edit.clone()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(subs.get("orders-paid").await.unwrap().spec.types.len(), 2);
    // The same stale resourceVersion again: the apiserver's 409 passes through.
    let (s, _) = c
        .call(
            M::PUT,
            "/api/v1/namespaces/shop/subscriptions/orders-paid",
            Some(&alice),
            Some(edit),
        )
        .await;
    assert_eq!(s, 409);

    // A dead letter of its consumer (as a sidecar writes one), listed, shown and replayed.
    let js = nats.jetstream().await;
    let original = "herald.checkout.order.paid.v1";
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "e-1"),
        ("ce-source", "checkout"),
        ("ce-type", "order.paid.v1"),
        ("Herald-Dlq-Reason", "permanent: 422"),
        ("Herald-Dlq-Status", "422"),
        ("Herald-Dlq-Attempts", "1"),
        ("Herald-Dlq-Subscriber", "shop/orders/order.paid.v1"),
        ("Herald-Dlq-Subject", original),
        ("Herald-Dlq-Consumer", consumer.as_str()),
    ] {
        headers.insert(k, v);
    }
    js.publish_with_headers(
        "herald-dlq.shop.orders.checkout.order.paid.v1",
        headers,
        "{\"n\":1}".into(),
    )
    .await
    .expect("publish a dead letter")
    .await
    .expect("the dead letter stored");
    let dl = "/api/v1/namespaces/shop/subscriptions/orders-paid/deadletters";
    let (s, v) = c.call(M::GET, dl, Some(&alice), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["items"][0]["reason"], "permanent: 422");
    let seq = v["items"][0]["seq"].as_u64().unwrap();
    let (s, v) = c
        .call(M::GET, &format!("{dl}/{seq}"), Some(&alice), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["text"], "{\"n\":1}");
    let (s, v) = c
        .call(
            M::POST,
            &format!("{dl}/replay"),
            Some(&alice),
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["replayed"], json!([seq]));
    let (_, v) = c.call(M::GET, dl, Some(&alice), None).await;
    assert_eq!(
        v["items"],
        json!([]),
        "the dead letter is gone once replayed"
    );
    let stored = herald_tests::stored(&js, "HERALD").await;
    let replayed = stored
        .iter()
        .find(|m| m.subject.as_str() == original)
        .expect("the replay in the event stream");
    let h = replayed.headers.clone();
    assert_eq!(
        h.get("Herald-Replay-For").map(|v| v.as_str()),
        Some("shop/orders/order.paid.v1")
    );
    assert_eq!(&replayed.payload[..], b"{\"n\":1}");

    // The catalog and the topology: the replayed event was seen (source, type, a sample), and
    // flows from checkout through its type to shop/orders.
    let (s, _) = c.call(M::GET, "/api/v1/catalog", Some(&bob), None).await;
    assert_eq!(s, 403);
    eventually(Duration::from_secs(30), "the event in the catalog", || {
        let (http, base, alice) = (c.http.clone(), base.clone(), alice.clone());
        async move {
            let v: Value = http
                .get(format!("{base}/api/v1/catalog?q=paid"))
                .bearer_auth(&alice)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["items"].as_array().is_some_and(|i| {
                i.iter().any(|i| {
                    i["type"] == "order.paid.v1"
                        && i["source"] == "checkout"
                        && i["sample"]["data"]["text"] == "{\"n\":1}"
                })
            })
        }
    })
    .await;
    let (_, v) = c
        .call(
            M::GET,
            "/api/v1/catalog?q=nothing-like-it",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(v["items"], json!([]), "the search filters");
    let (s, v) = c.call(M::GET, "/api/v1/topology", Some(&alice), None).await;
    assert_eq!(s, 200, "{v}");
    let edges = v["edges"].as_array().unwrap();
    let has = |from: &str, to: &str| edges.iter().any(|e| e["from"] == from && e["to"] == to);
    assert!(has("source:checkout", "type:order.paid.v1"), "{v}");
    assert!(has("type:order.paid.v1", "subscriber:shop/orders"), "{v}");
    assert_eq!(v["subscribers"][0]["app"], "orders", "{v}");

    // Workloads: a pod with the sidecar (its app id a target), one that missed it, a Service.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(admin.clone(), "shop");
    for pod in [
        json!({"metadata": {"name": "orders-1", "annotations": {"herald.dev/inject": "true"}},
               "spec": {"containers": [{"name": "app", "image": "app:1"},
                                       {"name": "herald", "image": "herald:1", "env": [{"name": "HERALD_APP_ID", "value": "orders"}]}]}}),
        json!({"metadata": {"name": "stray", "annotations": {"herald.dev/inject": "true"}},
               "spec": {"containers": [{"name": "app", "image": "app:1"}]}}),
    ] {
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(pod).unwrap(),
        )
        .await
        .expect("create a pod");
    }
    create::<k8s_openapi::api::core::v1::Service>(
        Api::namespaced(admin.clone(), "shop"),
        json!({
            "metadata": {"name": "payments"},
            "spec": {"selector": {"app": "payments"}, "ports": [{"port": 8080}]}
        }),
    )
    .await;
    let (s, v) = c
        .call(
            M::GET,
            "/api/v1/namespaces/shop/workloads",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["apps"], json!(["orders"]), "{v}");
    assert_eq!(v["missedInjections"][0]["pod"], "stray", "{v}");
    assert_eq!(
        v["services"][0]["url"], "http://payments.shop.svc.cluster.local:8080",
        "{v}"
    );
    let (s, _) = c
        .call(
            M::GET,
            "/api/v1/namespaces/shop/workloads",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, 403);

    // Bodies must be JSON said as such (no other site's form can sign in or write), and small.
    let r = c
        .http
        .post(format!("{base}/api/v1/session"))
        .header("content-type", "text/plain")
        .body(json!({"token": alice}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = c
        .http
        .post(format!("{base}/api/v1/cesql"))
        .bearer_auth(&alice)
        .json(&json!({"expression": "x".repeat(70_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // A browser session: the cookie signs in, and a write without the CSRF token is refused.
    let (s, v) = c
        .call(
            M::POST,
            "/api/v1/session",
            None,
            Some(json!({"token": alice})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let csrf = v["csrf"].as_str().unwrap().to_owned();
    let signin = c
        .http
        .post(format!("{base}/api/v1/session"))
        .json(&json!({"token": alice}))
        .send()
        .await
        .unwrap();
    let set_cookie = signin.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let session = set_cookie.split(';').next().unwrap().to_owned();
    let csrf2 = signin.json::<Value>().await.unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(csrf, csrf2, "each session has its own CSRF token");
    let whoami = c
        .http
        .get(format!("{base}/api/v1/whoami"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(whoami.status(), 200);
    let path = format!("{base}/api/v1/namespaces/shop/subscriptions/orders-paid");
    let r = c
        .http
        .delete(&path)
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a cookie alone cannot write");
    let r = c
        .http
        .delete(&path)
        .header("cookie", &session)
        .header("x-herald-csrf", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "another session's CSRF token does not either"
    );

    // ETags: an unchanged list answers 304.
    let r = c
        .http
        .get(format!("{base}/api/v1/namespaces/shop/subscriptions"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let tag = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = c
        .http
        .get(format!("{base}/api/v1/namespaces/shop/subscriptions"))
        .bearer_auth(&alice)
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // Deleted with the session's own CSRF token; its consumer goes with it.
    let r = c
        .http
        .delete(&path)
        .header("cookie", &session)
        .header("x-herald-csrf", &csrf2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(subs.get_opt("orders-paid").await.unwrap().is_none());
    eventually(Duration::from_secs(60), "the consumer deleted", || {
        let (js, consumer) = (js.clone(), consumer.clone());
        async move {
            let stream = js.get_stream("HERALD").await.unwrap();
            stream.consumer_info(&consumer).await.is_err()
        }
    })
    .await;
    // Signed out: the cookie no longer works.
    let r = c
        .http
        .delete(format!("{base}/api/v1/session"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .http
        .get(format!("{base}/api/v1/whoami"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Internal publishers: alice may list EventSchedules in shop only, bob nothing of them.
    for (ns, name) in [("shop", "nightly"), ("other", "hourly")] {
        create::<herald_controlplane::sources::schedule::EventSchedule>(
            Api::namespaced(admin.clone(), ns),
            json!({"apiVersion": "herald.dev/v1alpha1", "kind": "EventSchedule",
                   "metadata": {"name": name},
                   "spec": {"schedule": "0 2 * * *", "timeZone": "Europe/Berlin", "type": "report.due.v1"}}),
        )
        .await;
    }
    create::<herald_controlplane::sources::kubernetes::KubernetesSource>(
        Api::namespaced(admin.clone(), "shop"),
        json!({"apiVersion": "herald.dev/v1alpha1", "kind": "KubernetesSource",
               "metadata": {"name": "pricing"},
               "spec": {"serviceAccountName": "default",
                        "resources": [{"apiVersion": "v1", "kind": "ConfigMap"}]}}),
    )
    .await;
    let (s, v) = c.call(M::GET, "/api/v1/sources", Some(&alice), None).await;
    assert_eq!(s, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["kind"], "EventSchedule");
    assert_eq!(items[0]["name"], "nightly");
    assert_eq!(items[0]["types"], json!(["report.due.v1"]));
    assert_eq!(
        items[0]["source"],
        "/apis/herald.dev/v1alpha1/namespaces/shop/eventschedules/nightly"
    );
    let (s, v) = c.call(M::GET, "/api/v1/sources", Some(&bob), None).await;
    assert_eq!((s.as_u16(), v["items"].clone()), (200, json!([])));
    // The admin (cluster-wide) sees all three, the KubernetesSource with Knative's types.
    let admin_token = token(&admin, "herald-system", "console-admin").await;
    create::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(
        Api::all(admin.clone()),
        json!({"metadata": {"name": "console-admin"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
               "subjects": [{"kind": "ServiceAccount", "name": "console-admin", "namespace": "herald-system"}]}),
    )
    .await;
    let (s, v) = c
        .call(M::GET, "/api/v1/sources", Some(&admin_token), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{v}");
    let ks = items
        .iter()
        .find(|i| i["kind"] == "KubernetesSource")
        .unwrap();
    assert_eq!(
        ks["types"],
        json!([
            "dev.knative.apiserver.ref.add",
            "dev.knative.apiserver.ref.update",
            "dev.knative.apiserver.ref.delete"
        ])
    );

    kit.stop().await;
}

/// The catalog against a real nats-server without Kubernetes: what the stream held before the
/// console started is found (last time and sample, not counted), and what is published after is
/// counted; the tail and the observer through JetStream as the control plane runs them.
#[tokio::test]
async fn the_catalog_finds_what_the_stream_holds_and_counts_what_comes() {
    use herald_controlplane::console::catalog::{self, Catalog};
    use herald_core::broker::Broker;
    let nats = herald_tests::Nats::start();
    let js = nats.create_streams().await;
    let publish = |source: &'static str, ty: &'static str, id: &'static str| {
        let js = js.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            for (k, v) in [
                ("ce-specversion", "1.0"),
                ("ce-id", id),
                ("ce-source", source),
                ("ce-type", ty),
            ] {
                h.insert(k, v);
            }
            js.publish_with_headers(
                herald_core::subject::event_subject(source, ty),
                h,
                format!("{{\"id\":\"{id}\"}}").into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
        }
    };
    publish("checkout", "order.paid.v1", "before-1").await;
    publish("billing", "invoice.sent.v1", "before-2").await;

    let broker: std::sync::Arc<dyn Broker> = std::sync::Arc::new(nats.broker().await);
    let cat = std::sync::Arc::new(Catalog::default());
    let stop = herald_runtime::shutdown::Shutdown::new();
    let follow = tokio::spawn(catalog::follow(
        cat.clone(),
        broker,
        "HERALD".into(),
        stop.clone(),
    ));
    let view = |cat: std::sync::Arc<Catalog>| async move { cat.view("", chrono::Utc::now()) };
    eventually(Duration::from_secs(20), "the held events found", || {
        let cat = cat.clone();
        async move {
            let v = view(cat).await;
            v["items"].as_array().is_some_and(|i| {
                i.len() == 2
                    && i.iter()
                        .all(|i| i["count"] == 0 && i["lastSeen"].is_string())
                    && i.iter()
                        .any(|i| i["sample"]["data"]["text"] == "{\"id\":\"before-2\"}")
            })
        }
    })
    .await;
    publish("checkout", "order.paid.v1", "after-1").await;
    publish("checkout", "order.paid.v1", "after-2").await;
    eventually(Duration::from_secs(20), "the new events counted", || {
        let cat = cat.clone();
        async move {
            let v = view(cat).await;
            v["items"].as_array().is_some_and(|i| {
                i.iter()
                    .any(|i| i["source"] == "checkout" && i["count"] == 2)
            })
        }
    })
    .await;
    let v = view(cat.clone()).await;
    let billing = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["source"] == "billing")
        .unwrap();
    assert_eq!(
        billing["count"], 0,
        "what was there before is not counted: {v}"
    );
    stop.trigger();
    follow.await.unwrap();
}
