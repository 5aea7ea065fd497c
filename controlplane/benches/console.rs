//! What the console costs the control plane, with 50 apps: the release `herald-controlplane`
//! binary (controller on) against the Kubernetes test kit's apiserver and a nats-server; 50
//! sources publishing 10 events/s each (500/s) through JetStream, and 50 triggers (one per app,
//! each its own type). Phases of `BENCH_SECONDS` (default 60) each, CPU (user + system, from
//! /proc) and RSS of the control-plane process:
//!
//! 1. the console off;
//! 2. the console on, no page open;
//! 3. one page open on the topology (it asks every 3 s with `If-None-Match`, as the page does);
//! 4. one page open polling every view's data (catalog, topology, triggers, streams) every 3 s.
//!
//! ```sh
//! cargo build --release --bin herald-controlplane
//! HERALD_TEST_K8S=../shared/k8s HERALD_TEST_NATS_SERVER=/usr/sbin/nats-server \
//!   cargo bench -p herald-controlplane --bench console
//! ```
//!
//! Without the kit or the release binary it says what it skipped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_controlplane::controller::crd::EventStream;
use herald_controlplane::controller::subscription::Subscription;
use herald_tests::kit::Apiserver;
use herald_tests::{Nats, eventually};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const APPS: usize = 50;
const EVENTS_PER_SOURCE_PER_SECOND: u64 = 10;
const POLL: Duration = Duration::from_secs(3);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(run());
}

async fn make<K>(api: Api<K>, v: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).expect("an object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");
}

/// The control plane, killed on drop.
struct ControlPlane {
    child: Child,
    console: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for ControlPlane {
    /// SIGTERM, so the controller hands its Lease over and the next phase leads at once.
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < until {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControlPlane {
    async fn start(bin: &PathBuf, api: &Apiserver, nats: &Nats, console: bool) -> Self {
        let dir = tempfile::tempdir().expect("a directory");
        let ports = dir.path().join("ports.json");
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", api.kubeconfig())
            .args([
                "--webhook=false",
                "--controller=true",
                "--admin-listen=127.0.0.1:0",
            ])
            .arg(format!("--nats-url={}", nats.url()))
            .arg("--pod-name=bench")
            .arg(format!("--ports-file={}", ports.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if console {
            cmd.arg("--console-listen=127.0.0.1:0");
        }
        let child = cmd.spawn().expect("start herald-controlplane");
        let until = Instant::now() + Duration::from_secs(30);
        let listening: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ports)
                && let Ok(v) = serde_json::from_str(&text)
            {
                break v;
            }
            assert!(Instant::now() < until, "herald-controlplane did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let console = listening["console"].as_str().map(|a| format!("http://{a}"));
        ControlPlane {
            child,
            console,
            _dir: dir,
        }
    }

    /// (CPU seconds, RSS KiB) of the process so far.
    fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is the 14th field of
        // the line, stime the 15th, in clock ticks (USER_HZ, 100 on Linux).
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let cpu = (ticks(11) + ticks(12)) as f64 / 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (cpu, rss)
    }
}

/// One open page: asks for `paths` every 3 s with the ETag it last got.
async fn page(base: String, token: String, paths: Vec<&'static str>, until: Instant) -> u64 {
    let http = reqwest::Client::new();
    let mut etags: std::collections::HashMap<&str, String> = Default::default();
    let mut not_modified = 0;
    while Instant::now() < until {
        for p in &paths {
            let mut req = http.get(format!("{base}/api/v1{p}")).bearer_auth(&token);
            if let Some(tag) = etags.get(p) {
                req = req.header("if-none-match", tag);
            }
            if let Ok(r) = req.send().await {
                if r.status() == 304 {
                    not_modified += 1;
                }
                if let Some(tag) = r.headers().get("etag").and_then(|v| v.to_str().ok()) {
                    etags.insert(p, tag.to_owned());
                }
                let _ = r.bytes().await;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    not_modified
}

async fn run() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/release/herald-controlplane");
    if !bin.is_file() {
        eprintln!(
            "SKIPPED console bench: {} is missing: cargo build --release --bin herald-controlplane",
            bin.display()
        );
        return;
    }
    let Some(api) = Apiserver::start("console-bench") else {
        return;
    };
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let admin = api.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in [EventStream::crd(), Subscription::crd()] {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("a CRD");
    }
    for ns in ["shop"] {
        make::<Namespace>(Api::all(admin.clone()), json!({"metadata": {"name": ns}})).await;
    }
    let streams: Api<EventStream> = Api::all(admin.clone());
    eventually(Duration::from_secs(20), "the EventStream created", || {
        let streams = streams.clone();
        async move {
            let es: EventStream = serde_json::from_value(json!({
                "apiVersion": "herald.dev/v1alpha1", "kind": "EventStream",
                "metadata": {"name": "default"}, "spec": {}
            }))
            .unwrap();
            streams.create(&PostParams::default(), &es).await.is_ok()
        }
    })
    .await;
    // A viewer who may see everything the console shows.
    make::<ServiceAccount>(
        Api::namespaced(admin.clone(), "shop"),
        json!({"metadata": {"name": "viewer"}}),
    )
    .await;
    make::<ClusterRole>(Api::all(admin.clone()), json!({
        "metadata": {"name": "console-viewer"},
        "rules": [
            {"apiGroups": ["herald.dev"], "resources": ["subscriptions", "eventstreams"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["list"]}
        ]
    })).await;
    make::<ClusterRoleBinding>(Api::all(admin.clone()), json!({
        "metadata": {"name": "console-viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "console-viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": "shop"}]
    })).await;
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), "shop")
        .create_token_request(
            "viewer",
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(7200),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("a token")
        .status
        .expect("its status")
        .token;

    let nats = Nats::start();
    // 50 triggers, one per app, each its own type.
    let subs: Api<Subscription> = Api::namespaced(admin.clone(), "shop");
    for i in 0..APPS {
        make::<Subscription>(subs.clone(), json!({
            "apiVersion": "herald.dev/v1alpha1", "kind": "Subscription",
            "metadata": {"name": format!("app-{i}")},
            "spec": {"app": format!("app-{i}"), "types": [format!("event-{i}.v1")], "source": format!("src-{i}")}
        })).await;
    }

    let mut rows = Vec::new();
    for (phase, console, paths) in [
        ("console off", false, None),
        ("console on, no page open", true, None),
        ("one page open: topology", true, Some(vec!["/topology"])),
        (
            "one page open: every view",
            true,
            Some(vec![
                "/catalog",
                "/topology",
                "/namespaces/shop/subscriptions",
                "/eventstreams",
            ]),
        ),
    ] {
        let cp = ControlPlane::start(&bin, &api, &nats, console).await;
        // The controller leads and has made the streams and the consumers.
        let js = nats.jetstream().await;
        eventually(Duration::from_secs(60), "the 50 consumers made", || {
            let js = js.clone();
            async move {
                match js.get_stream("HERALD").await {
                    Ok(mut s) => s.info().await.is_ok_and(|i| i.state.consumer_count >= APPS),
                    Err(_) => false,
                }
            }
        })
        .await;
        // Publishers: 500 events/s in all.
        let until = Instant::now() + Duration::from_secs(5 + seconds);
        let publisher = tokio::spawn({
            let js = js.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_micros(
                    1_000_000 / (EVENTS_PER_SOURCE_PER_SECOND * APPS as u64),
                ));
                let mut n = 0u64;
                while Instant::now() < until {
                    tick.tick().await;
                    let i = n as usize % APPS;
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("ce-specversion", "1.0");
                    h.insert("ce-id", format!("e-{n}").as_str());
                    h.insert("ce-source", format!("src-{i}").as_str());
                    h.insert("ce-type", format!("event-{i}.v1").as_str());
                    let _ = js
                        .publish_with_headers(
                            format!("herald.src-{i}.event-{i}.v1"),
                            h,
                            "{\"n\":1}".into(),
                        )
                        .await;
                    n += 1;
                }
                n
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (cpu0, _) = cp.usage();
        let started = Instant::now();
        let polls = match (&cp.console, paths) {
            (Some(base), Some(paths)) => {
                tokio::spawn(page(base.clone(), token.clone(), paths, until))
                    .await
                    .unwrap_or(0)
            }
            _ => {
                tokio::time::sleep_until(until.into()).await;
                0
            }
        };
        let (cpu1, rss) = cp.usage();
        let wall = started.elapsed().as_secs_f64();
        let published = publisher.await.unwrap_or(0);
        rows.push(format!(
            "| {phase} | {:.2} % | {:.1} MiB | {published} events published; {polls} answers were 304 |",
            100.0 * (cpu1 - cpu0) / wall,
            rss as f64 / 1024.0
        ));
        drop(cp);
    }
    println!(
        "| phase ({seconds} s, {APPS} apps, {} events/s) | control-plane CPU | RSS at the end | |",
        EVENTS_PER_SOURCE_PER_SECOND * APPS as u64
    );
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
