//! How fast internal events reach the stream, with the release `herald-controlplane` binary
//! (controller on) against the Kubernetes test kit's apiserver and a nats-server (2.9, file
//! store), the events stream with limits retention so every event stays to be read:
//!
//! 1. **Schedule firing delay**: `SCHEDULES` (default 100) EventSchedules `* * * * *` for
//!    `BENCH_TICKS` (default 3) minutes; for every event, from its scheduled time (`time`) to
//!    the moment JetStream stored it (the stored message's timestamp). All of them fire in the
//!    same second, so this is the delay under a burst of 100 at once.
//! 2. **Change to stored event**: a KubernetesSource (reference mode, as an impersonated
//!    ServiceAccount) on ConfigMaps, 1,000 ConfigMaps made first, then every one of them patched
//!    by 8 concurrent writers; for each change, from the moment its patch request was sent to the
//!    event stored. In the same run and on the same changes, the same measure for a plain
//!    pipeline with no herald in it: a kube-rs watch (admin client) that publishes each change
//!    with async-nats to a stream of its own and waits for the acknowledgement. The ratio is
//!    herald's over the plain pipeline's.
//!
//! ```sh
//! cargo build --release --bin herald-controlplane
//! HERALD_TEST_K8S=../shared/k8s HERALD_TEST_NATS_SERVER=/usr/sbin/nats-server \
//!   cargo bench -p herald-controlplane --bench sources
//! ```
//!
//! Without the kit or the release binary it says what it skipped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt as _;
use hdrhistogram::Histogram;
use herald_controlplane::controller::crd::EventStream;
use herald_controlplane::sources::kubernetes::KubernetesSource;
use herald_controlplane::sources::schedule::EventSchedule;
use herald_tests::kit::Apiserver;
use herald_tests::{Nats, eventually, header, stored};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

const OBJECTS: usize = 1000;
const WRITERS: usize = 8;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(run());
}

async fn make<K>(api: Api<K>, v: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).expect("an object");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match api.create(&PostParams::default(), &obj).await {
            Ok(o) => return o,
            // A CRD just made takes a moment to be served.
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("create: {e}"),
        }
    }
}

/// The control plane, killed on drop.
struct ControlPlane(Child);

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

fn line(what: &str, h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "{what}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        h.len(),
        ms(0.5),
        ms(0.99),
        h.max() as f64 / 1000.0
    )
}

async fn run() {
    let Some(api) = Apiserver::start("sources bench") else {
        return;
    };
    let bin =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/herald-controlplane");
    if !bin.exists() {
        eprintln!(
            "SKIPPED: {} is missing: cargo build --release --bin herald-controlplane",
            bin.display()
        );
        return;
    }
    let schedules: usize = std::env::var("SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let ticks: usize = std::env::var("BENCH_TICKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let client = api.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        EventStream::crd(),
        EventSchedule::crd(),
        KubernetesSource::crd(),
    ] {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("a CRD");
    }
    for ns in ["herald-system", "bench"] {
        make::<Namespace>(Api::all(client.clone()), json!({"metadata": {"name": ns}})).await;
    }
    make::<EventStream>(
        Api::all(client.clone()),
        json!({"apiVersion": "herald.dev/v1alpha1", "kind": "EventStream",
               "metadata": {"name": "default"}, "spec": {"retention": "limits"}}),
    )
    .await;
    let nats = Nats::start();
    let _cp = ControlPlane(
        Command::new(&bin)
            .env("KUBECONFIG", api.kubeconfig())
            .args([
                "--webhook=false",
                "--controller=true",
                "--admin-listen=127.0.0.1:0",
            ])
            .arg(format!("--nats-url={}", nats.url()))
            .arg("--pod-name=bench")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start herald-controlplane"),
    );
    let js = nats.jetstream().await;
    eventually(
        Duration::from_secs(30),
        "the controller made the stream",
        || {
            let js = js.clone();
            async move { js.get_stream("HERALD").await.is_ok() }
        },
    )
    .await;

    // 1. Schedules.
    let schedule_api: Api<EventSchedule> = Api::namespaced(client.clone(), "bench");
    for i in 0..schedules {
        make(
            schedule_api.clone(),
            json!({"apiVersion": "herald.dev/v1alpha1", "kind": "EventSchedule",
                   "metadata": {"name": format!("tick-{i}")},
                   "spec": {"schedule": "* * * * *", "type": "bench.tick.v1"}}),
        )
        .await;
    }
    eprintln!("{schedules} schedules made; waiting {ticks} ticks");
    let want = schedules * ticks;
    let until = Instant::now() + Duration::from_secs(60 * (ticks as u64 + 2));
    let mut delays = Histogram::<u64>::new(3).expect("a histogram");
    loop {
        let msgs: Vec<_> = stored(&js, "HERALD")
            .await
            .into_iter()
            .filter(|m| header(m, "ce-type") == Some("bench.tick.v1"))
            .collect();
        if msgs.len() >= want || Instant::now() > until {
            for m in &msgs {
                let tick = chrono::DateTime::parse_from_rfc3339(&decode(
                    header(m, "ce-time").unwrap_or(""),
                ))
                .map(|t| t.timestamp_nanos_opt().unwrap_or(0) as i128)
                .unwrap_or(0);
                let us = (((m.time.timestamp_nanos_opt().unwrap_or(0) as i128) - tick) / 1000)
                    .max(0) as u64;
                delays.record(us).ok();
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    println!(
        "{}",
        line(
            &format!(
                "schedule firing delay ({schedules} schedules firing together, {ticks} ticks)"
            ),
            &delays
        )
    );
    // The schedules stop: their events would mix with the next measure's.
    for i in 0..schedules {
        let _ = schedule_api
            .delete(&format!("tick-{i}"), &Default::default())
            .await;
    }

    // 2. ConfigMaps: the source reads as `reader`, which may list and watch them.
    make::<ServiceAccount>(
        Api::namespaced(client.clone(), "bench"),
        json!({"metadata": {"name": "reader"}}),
    )
    .await;
    make::<Role>(
        Api::namespaced(client.clone(), "bench"),
        json!({
            "metadata": {"name": "cm"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}]
        }),
    )
    .await;
    make::<RoleBinding>(
        Api::namespaced(client.clone(), "bench"),
        json!({
            "metadata": {"name": "cm"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "bench"}]
        }),
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "bench");
    let made = Instant::now();
    for chunk in (0..OBJECTS).collect::<Vec<_>>().chunks(OBJECTS / WRITERS) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| {
                let cms = cms.clone();
                let i = *i;
                tokio::spawn(async move {
                    make(
                        cms,
                        json!({"metadata": {"name": format!("cm-{i}")}, "data": {"v": "0"}}),
                    )
                    .await;
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a creation");
        }
    }
    eprintln!("{OBJECTS} ConfigMaps made in {:.1?}", made.elapsed());
    make::<KubernetesSource>(
        Api::namespaced(client.clone(), "bench"),
        json!({"apiVersion": "herald.dev/v1alpha1", "kind": "KubernetesSource",
               "metadata": {"name": "cms"},
               "spec": {"serviceAccountName": "reader",
                        "resources": [{"apiVersion": "v1", "kind": "ConfigMap"}]}}),
    )
    .await;
    let ksrc: Api<KubernetesSource> = Api::namespaced(client.clone(), "bench");
    eventually(Duration::from_secs(60), "the source is Ready", || {
        let ksrc = ksrc.clone();
        async move {
            ksrc.get("cms")
                .await
                .ok()
                .and_then(|s| s.status)
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
        }
    })
    .await;

    // The plain pipeline: a watch from now, each change published with async-nats, acknowledged.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "PLAIN".into(),
        subjects: vec!["plain.>".into()],
        ..Default::default()
    })
    .await
    .expect("the plain stream");
    let rv = cms
        .list_metadata(&Default::default())
        .await
        .expect("a list")
        .metadata
        .resource_version
        .unwrap_or_default();
    let plain = tokio::spawn({
        let cms = cms.clone();
        let js = js.clone();
        async move {
            let mut seen = 0;
            let mut rv = rv;
            while seen < OBJECTS {
                let stream = cms
                    .watch(&WatchParams::default(), &rv)
                    .await
                    .expect("a watch");
                let mut stream = std::pin::pin!(stream);
                while let Ok(Some(ev)) = stream.try_next().await {
                    if let WatchEvent::Modified(o) = ev {
                        rv = o.metadata.resource_version.clone().unwrap_or_default();
                        let name = o.metadata.name.clone().unwrap_or_default();
                        let body =
                            serde_json::to_vec(&json!({"name": name, "resourceVersion": rv}))
                                .unwrap_or_default();
                        js.publish(format!("plain.{name}"), body.into())
                            .await
                            .expect("publish")
                            .await
                            .expect("stored");
                        seen += 1;
                        if seen >= OBJECTS {
                            break;
                        }
                    }
                }
            }
        }
    });

    // Every ConfigMap patched once, by WRITERS writers; when each request was sent.
    let sent: Arc<Mutex<HashMap<String, i128>>> = Arc::default();
    let mut writers = Vec::new();
    let mut write = Histogram::<u64>::new(3).expect("a histogram");
    let started = Instant::now();
    for w in 0..WRITERS {
        let cms = cms.clone();
        let sent = sent.clone();
        writers.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("a histogram");
            for i in (w..OBJECTS).step_by(WRITERS) {
                let name = format!("cm-{i}");
                sent.lock().unwrap().insert(name.clone(), now_ns());
                let t = Instant::now();
                cms.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"v": "1"}})),
                )
                .await
                .expect("a patch");
                h.record(t.elapsed().as_micros() as u64).ok();
            }
            h
        }));
    }
    for w in writers {
        write.add(w.await.expect("a writer")).ok();
    }
    let took = started.elapsed();
    plain.await.expect("the plain pipeline");
    let apiserver_url = {
        let kubeconfig = kube::config::Kubeconfig::read_from(api.kubeconfig()).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config");
        config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned()
    };
    let until = Instant::now() + Duration::from_secs(120);
    let herald_msgs = loop {
        let msgs: Vec<_> = stored(&js, "HERALD")
            .await
            .into_iter()
            .filter(|m| {
                header(m, "ce-source").map(decode).as_deref() == Some(apiserver_url.as_str())
            })
            .filter(|m| header(m, "ce-type") == Some("dev.knative.apiserver.ref.update"))
            .collect();
        if msgs.len() >= OBJECTS || Instant::now() > until {
            break msgs;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let sent = sent.lock().unwrap().clone();
    let mut herald = Histogram::<u64>::new(3).expect("a histogram");
    for m in &herald_msgs {
        let name = decode(header(m, "ce-name").unwrap_or(""));
        if let Some(at) = sent.get(&name) {
            herald
                .record(
                    (((m.time.timestamp_nanos_opt().unwrap_or(0) as i128) - at) / 1000).max(0)
                        as u64,
                )
                .ok();
        }
    }
    let mut raw = Histogram::<u64>::new(3).expect("a histogram");
    for m in stored(&js, "PLAIN").await {
        let name = m.subject.trim_start_matches("plain.").to_owned();
        if let Some(at) = sent.get(&name) {
            raw.record(
                (((m.time.timestamp_nanos_opt().unwrap_or(0) as i128) - at) / 1000).max(0) as u64,
            )
            .ok();
        }
    }
    println!(
        "{OBJECTS} ConfigMaps patched by {WRITERS} writers in {:.1?} ({:.0} changes/s)",
        took,
        OBJECTS as f64 / took.as_secs_f64()
    );
    println!("{}", line("patch request (apiserver write)", &write));
    println!(
        "{}",
        line("change to stored event, herald KubernetesSource", &herald)
    );
    println!(
        "{}",
        line(
            "change to stored event, plain kube watch + async-nats",
            &raw
        )
    );
    let ratio =
        |q: f64| herald.value_at_quantile(q) as f64 / raw.value_at_quantile(q).max(1) as f64;
    println!(
        "ratio herald/plain: p50 {:.2}, p99 {:.2}",
        ratio(0.5),
        ratio(0.99)
    );
}
