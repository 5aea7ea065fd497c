//! What the console tests share: a real kube-apiserver from the Kubernetes test kit with herald's
//! CRDs, the EventStream, and two ServiceAccounts with real tokens and RBAC — alice may do
//! everything with Subscriptions in `shop` (and list its pods and Services, and read
//! EventStreams); bob may only list Subscriptions in `other` — a real nats-server, the controller
//! (it gives Subscriptions their consumers) and the console on a free port, acting with the
//! admin's client as the control plane acts with its ServiceAccount.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use herald_controlplane::console::{self, Console};
use herald_controlplane::controller::crd::EventStream;
use herald_controlplane::controller::metrics::ControllerMetrics;
use herald_controlplane::controller::subscription::Subscription as HeraldSubscription;
use herald_controlplane::controller::{self, ControllerConfig, LeaseConfig};
use herald_runtime::http_server::HttpMetrics;
use herald_runtime::shutdown::Shutdown;
use herald_tests::kit::Apiserver;
use herald_tests::{Nats, eventually};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use kube::api::{Api, PostParams};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

pub struct ConsoleKit {
    pub admin: kube::Client,
    pub nats: Nats,
    /// The console's address, `http://127.0.0.1:PORT`.
    pub base: String,
    pub alice: String,
    pub bob: String,
    stop: Shutdown,
    console_stop: Shutdown,
    leader: tokio::task::JoinHandle<Result<(), controller::ControllerError>>,
    served: tokio::task::JoinHandle<()>,
    // Last: the apiserver outlives what talks to it.
    _api: Apiserver,
}

pub async fn create<K>(api: Api<K>, v: Value)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).expect("a valid object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create an object");
}

pub async fn token(client: &kube::Client, ns: &str, sa: &str) -> String {
    create::<ServiceAccount>(
        Api::namespaced(client.clone(), ns),
        json!({"metadata": {"name": sa}}),
    )
    .await;
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .expect("a token")
        .status
        .expect("the token's status")
        .token
}

impl ConsoleKit {
    /// `None` (the test says it skipped) without the Kubernetes test kit.
    pub async fn start(test: &str) -> Option<Self> {
        let api = Apiserver::start(test)?;
        let admin = api.client().await;
        let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
        for crd in [
            EventStream::crd(),
            HeraldSubscription::crd(),
            herald_controlplane::sources::schedule::EventSchedule::crd(),
            herald_controlplane::sources::kubernetes::KubernetesSource::crd(),
        ] {
            crds.create(&PostParams::default(), &crd)
                .await
                .expect("create a CRD");
        }
        for ns in ["herald-system", "shop", "other"] {
            create::<Namespace>(Api::all(admin.clone()), json!({"metadata": {"name": ns}})).await;
            create::<ServiceAccount>(
                Api::namespaced(admin.clone(), ns),
                json!({"metadata": {"name": "default"}}),
            )
            .await;
        }
        // The EventStream, once its CRD is served.
        let streams: Api<EventStream> = Api::all(admin.clone());
        let es: EventStream = serde_json::from_value(json!({
            "apiVersion": "herald.dev/v1alpha1", "kind": "EventStream",
            "metadata": {"name": "default"}, "spec": {}
        }))
        .unwrap();
        eventually(
            Duration::from_secs(20),
            "the EventStream CRD served",
            || {
                let (streams, es) = (streams.clone(), es.clone());
                async move { streams.create(&PostParams::default(), &es).await.is_ok() }
            },
        )
        .await;

        // alice may do everything with Subscriptions in shop and read EventStreams; bob may only
        // list Subscriptions in other.
        create::<Role>(Api::namespaced(admin.clone(), "shop"), json!({
            "metadata": {"name": "triggers"},
            "rules": [
                {"apiGroups": ["herald.dev"], "resources": ["subscriptions"], "verbs": ["get", "list", "watch", "create", "update", "delete"]},
                {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["list"]},
                {"apiGroups": ["herald.dev"], "resources": ["eventschedules"], "verbs": ["list"]}
            ]
        })).await;
        create::<RoleBinding>(Api::namespaced(admin.clone(), "shop"), json!({
            "metadata": {"name": "alice-triggers"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "triggers"},
            "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": "shop"}]
        })).await;
        create::<ClusterRole>(Api::all(admin.clone()), json!({
            "metadata": {"name": "eventstream-reader"},
            "rules": [{"apiGroups": ["herald.dev"], "resources": ["eventstreams"], "verbs": ["get", "list"]}]
        })).await;
        create::<ClusterRoleBinding>(Api::all(admin.clone()), json!({
            "metadata": {"name": "alice-eventstreams"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "eventstream-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": "shop"}]
        })).await;
        create::<Role>(Api::namespaced(admin.clone(), "other"), json!({
            "metadata": {"name": "list-triggers"},
            "rules": [{"apiGroups": ["herald.dev"], "resources": ["subscriptions"], "verbs": ["list"]}]
        })).await;
        create::<RoleBinding>(Api::namespaced(admin.clone(), "other"), json!({
            "metadata": {"name": "bob-list"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-triggers"},
            "subjects": [{"kind": "ServiceAccount", "name": "bob", "namespace": "shop"}]
        })).await;
        let alice = token(&admin, "shop", "alice").await;
        let bob = token(&admin, "shop", "bob").await;

        // NATS, the controller (it gives Subscriptions their consumers), and the console, which acts
        // with the admin's client as the control plane acts with its ServiceAccount.
        let nats = Nats::start();
        let broker = Arc::new(nats.broker().await);
        let stop = Shutdown::new();
        let cfg = ControllerConfig {
            event_stream: "default".into(),
            stream: "HERALD".into(),
            dlq_stream: "HERALD_DLQ".into(),
            period: Duration::from_secs(3600),
            orphan_grace: Duration::from_secs(3600),
            lease: LeaseConfig::new("herald-system".into(), "herald-0".into()),
            sources: Default::default(),
        };
        let leader = tokio::spawn(controller::lead(
            admin.clone(),
            broker.clone(),
            cfg,
            Arc::new(ControllerMetrics::new(&mut Registry::default())),
            stop.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let console_stop = Shutdown::new();
        let served = tokio::spawn(console::serve(
            Arc::new(Console::new(
                admin.clone(),
                broker.clone(),
                ("HERALD".into(), "HERALD_DLQ".into()),
                Duration::from_secs(5),
            )),
            listener,
            HttpMetrics::new(&mut Registry::default()),
            Duration::from_secs(5),
            console_stop.clone(),
        ));
        Some(ConsoleKit {
            admin,
            nats,
            base,
            alice,
            bob,
            stop,
            console_stop,
            leader,
            served,
            _api: api,
        })
    }

    /// Stops the console and the controller (the controller releases its Lease).
    pub async fn stop(self) {
        self.console_stop.trigger();
        self.served.await.expect("the console stops");
        self.stop.trigger();
        self.leader
            .await
            .expect("the controller stops")
            .expect("the controller ran");
    }
}
