//! herald on a real Kubernetes v1.28 node, as users run it: the image built without Docker
//! (`scripts/image`), NATS with JetStream in the cluster, `helm install charts/herald`, and
//! annotated workloads whose pods really run. The node comes from the kit whose directory
//! `HERALD_TEST_K8S` names (`.ci/run` sets it), and only with `HERALD_TEST_K8S_NODE=1` (one node
//! per machine: scripts/test runs the suite in a step of its own); otherwise it says so and
//! passes.
//!
//! One node per machine, so the whole suite is one test that runs its steps in order on one
//! node, each timed; the figures it prints (pod start with and without the sidecar, `kubectl
//! apply` to first delivery, the sidecar's memory) are measurements, never assertions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use herald_tests::sink::Sink;
use serde_json::Value;

const NS: &str = "e2e";
const TAG: &str = "test";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A started node of the kit; stopped on drop. Its directory is removed when the suite passed
/// and kept (logs, kubeconfig) when it failed.
struct Node {
    kit: PathBuf,
    dir: PathBuf,
    env: HashMap<String, String>,
    kubectl: PathBuf,
    helm: PathBuf,
    passed: bool,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new(self.kit.join("stop")).arg(&self.dir).status();
        if self.passed {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "cluster suite failed: logs and kubeconfig kept in {}",
                self.dir.display()
            );
        }
    }
}

fn tool(var: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return p.into();
    }
    let local = repo().join("target/tools").join(name);
    if local.is_file() {
        return local;
    }
    name.into()
}

impl Node {
    fn start(kit: PathBuf) -> Self {
        // The kit wants a short directory (unix socket paths).
        let dir = PathBuf::from(format!("/tmp/hk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("node directory");
        let started = Instant::now();
        let out = Command::new(kit.join("start"))
            .arg(&dir)
            .arg("--node")
            .output()
            .expect("run the kit's start");
        assert!(
            out.status.success(),
            "the kit could not start a node in {}:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("env"))
            .expect("the node's env file")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        eprintln!("node started in {:.1?}", started.elapsed());
        Node {
            kit,
            dir,
            env,
            kubectl: tool("HERALD_TEST_KUBECTL", "kubectl"),
            helm: tool("HERALD_TEST_HELM", "helm"),
            passed: false,
        }
    }

    fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the node's env"))
    }

    fn run(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write as _;
        let mut child = Command::new(program)
            .args(args)
            .env("KUBECONFIG", self.var("KUBECONFIG"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        if let Some(input) = stdin {
            let _ = child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes());
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("wait");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `kubectl ARGS`, which must succeed; its output.
    fn kubectl(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(&self.kubectl, args, None);
        assert!(ok, "kubectl {}:\n{out}", args.join(" "));
        out
    }

    fn apply(&self, yaml: &str) {
        let (ok, out) = self.run(&self.kubectl, &["apply", "-f", "-"], Some(yaml));
        assert!(ok, "kubectl apply:\n{out}\n---\n{yaml}");
    }

    /// `kubectl apply` of objects that name no namespace into `ns`.
    fn apply_in(&self, ns: &str, yaml: &str) {
        let (ok, out) = self.run(&self.kubectl, &["-n", ns, "apply", "-f", "-"], Some(yaml));
        assert!(ok, "kubectl apply:\n{out}\n---\n{yaml}");
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).expect("kubectl JSON")
    }

    fn helm(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(&self.helm, args, None);
        assert!(ok, "helm {}:\n{out}", args.join(" "));
        out
    }

    /// The running pods of `app` in `ns`.
    fn pods(&self, ns: &str, app: &str) -> Vec<Value> {
        let list = self.json(&["-n", ns, "get", "pods", "-l", &format!("app={app}")]);
        list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect()
    }

    fn logs(&self, ns: &str, target: &str, container: &str) -> String {
        self.run(
            &self.kubectl,
            &["-n", ns, "logs", target, "-c", container],
            None,
        )
        .1
    }
}

/// Polls `check` every 100 ms until it holds; fails naming `what` after `limit`.
async fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids the sink received on `path` (each JSON record's `id`), in order.
fn ids(sink: &Sink, path: &str) -> Vec<String> {
    records(sink, path)
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

fn records(sink: &Sink, path: &str) -> Vec<Value> {
    sink.received()
        .iter()
        .filter(|r| r.path == path)
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

/// A Deployment of the suite's app (tests/cluster/apps/probe.py) in `NS`.
fn app(name: &str, annotations: &[(&str, &str)], env: &[(&str, &str)], sink: &str) -> String {
    let mut notes = String::new();
    for (k, v) in annotations {
        notes.push_str(&format!(
            "        {k}: {}\n",
            serde_json::to_string(v).unwrap()
        ));
    }
    let mut vars = format!(
        "            - {{name: SINK, value: \"{sink}\"}}\n            - name: POD_NAME\n              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}\n"
    );
    for (k, v) in env {
        vars.push_str(&format!("            - {{name: {k}, value: \"{v}\"}}\n"));
    }
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations:
{notes}    spec:
      terminationGracePeriodSeconds: 30
      containers:
        - name: app
          image: herald-example-orders:{TAG}
          command: [python3, /app/probe.py]
          env:
{vars}          volumeMounts: [{{name: code, mountPath: /app}}]
      volumes:
        - name: code
          configMap: {{name: probe-code}}
"
    )
}

struct Step {
    name: &'static str,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_on_a_real_cluster() {
    let Some(kit) = std::env::var_os("HERALD_TEST_K8S").map(PathBuf::from) else {
        eprintln!(
            "SKIPPED the real-cluster suite: HERALD_TEST_K8S is not set (the directory of the \
             Kubernetes test kit, ../shared/k8s; .ci/run sets it)"
        );
        return;
    };
    // The kit runs one node per machine: the suite runs where asked (scripts/test's own step),
    // not in every `cargo test` that has the kit for its apiserver.
    if std::env::var("HERALD_TEST_K8S_NODE").as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED the real-cluster suite: HERALD_TEST_K8S_NODE=1 is not set (it needs the \
             machine's one node; scripts/test runs it in a step of its own)"
        );
        return;
    }
    let suite = Instant::now();
    let mut steps: Vec<Step> = Vec::new();
    let mut node = Node::start(kit);
    let node_ip: IpAddr = node.var("NODE_IP").parse().expect("NODE_IP");
    let sink = Sink::start_on(node_ip).await;
    let sink_url = format!("http://{node_ip}:{}", sink.port);
    let mut t = Instant::now();
    let done = |steps: &mut Vec<Step>, name: &'static str, t: &mut Instant| {
        eprintln!("== {name}: {:.1?}", t.elapsed());
        steps.push(Step {
            name,
            took: t.elapsed(),
        });
        *t = Instant::now();
    };

    // Images: herald (the Dockerfile's, from the debug binaries the test command built), NATS,
    // the examples. Imported into the node's containerd.
    // HERALD_TEST_K8S_RELEASE=1 takes the release binaries instead (for published figures).
    let mut args = vec!["herald", "nats", "examples", "--no-build", "--tag", TAG];
    if std::env::var("HERALD_TEST_K8S_RELEASE").as_deref() != Ok("1") {
        args.push("--debug");
    }
    let out = Command::new(repo().join("scripts/image"))
        .args(&args)
        .arg("--out")
        .arg(node.dir.join("images"))
        .arg("--import")
        .arg(node.var("CONTAINERD_SOCK"))
        .output()
        .expect("scripts/image");
    assert!(
        out.status.success(),
        "scripts/image:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    done(&mut steps, "images built and imported", &mut t);

    // NATS, then the chart, given NATS by pod IP (the kit has no cluster DNS).
    node.kubectl(&[
        "apply",
        "-f",
        &repo().join("tests/cluster/nats.yaml").display().to_string(),
    ]);
    node.kubectl(&[
        "-n",
        "nats",
        "wait",
        "deploy/nats",
        "--for=condition=Available",
        "--timeout=60s",
    ]);
    let nats_ip = node.pods("nats", "nats")[0]["status"]["podIP"]
        .as_str()
        .expect("the NATS pod's IP")
        .to_owned();
    let chart = repo().join("charts/herald").display().to_string();
    let nats_url = format!("nats.url=nats://{nats_ip}:4222");
    let install = |extra: &[&str]| {
        let mut args = vec![
            "upgrade",
            "--install",
            "herald",
            &chart,
            "-n",
            "herald-system",
            "--create-namespace",
            "--set",
            "image.repository=herald",
            "--set",
            "image.tag=test",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            &nats_url,
            "--set",
            "controller.period=2s",
            "--set",
            "controller.orphanGrace=1h",
            "--set",
            "console.enabled=true",
            "--wait",
            "--timeout",
            "120s",
        ];
        args.extend_from_slice(extra);
        node.helm(&args);
    };
    install(&[]);
    done(&mut steps, "NATS and helm install", &mut t);

    // The controller makes the EventStream Ready.
    until(Duration::from_secs(60), "EventStream default Ready", || {
        node.json(&["get", "eventstream", "default"])["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    })
    .await;
    done(&mut steps, "EventStream Ready", &mut t);

    // The examples: payments and shipping first (their consumers start at new events), then
    // orders; the three orders go orders -> payments -> shipping -> orders.
    node.kubectl(&["create", "namespace", "shop"]);
    let examples = repo().join("tests/cluster/examples").display().to_string();
    let rendered = node.kubectl(&["kustomize", &examples]);
    let (first, orders): (Vec<&str>, Vec<&str>) = rendered
        .split("\n---\n")
        .partition(|doc| !doc.contains("name: orders\n") || doc.contains("kind: ConfigMap"));
    node.apply_in("shop", &first.join("\n---\n"));
    for d in ["payments", "shipping"] {
        node.kubectl(&[
            "-n",
            "shop",
            "wait",
            &format!("deploy/{d}"),
            "--for=condition=Available",
            "--timeout=90s",
        ]);
    }
    node.apply_in("shop", &orders.join("\n---\n"));
    until(Duration::from_secs(90), "three orders shipped", || {
        node.logs("shop", "deploy/orders", "app")
            .matches(" shipped (")
            .count()
            >= 3
    })
    .await;
    let pod = &node.pods("shop", "orders")[0];
    let init: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(init, ["herald"], "a native sidecar was injected");
    // An ordinary start (NATS up, the stream there) is not worth a warning.
    for app in ["orders", "payments", "shipping"] {
        let log = node.logs("shop", &format!("deploy/{app}"), "herald");
        assert!(
            log.contains("\"message\":\"ready\""),
            "{app}'s sidecar:\n{log}"
        );
        assert!(
            !log.contains("\"level\":\"WARN\""),
            "{app}'s sidecar warned while starting:\n{log}"
        );
    }

    // The console, on the chart's grants and through `kubectl port-forward`: a user's token
    // reviewed (TokenReview), what it may see reviewed (SubjectAccessReview), the catalog filled
    // by what the examples published; a token without rights is refused.
    node.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: console-viewer, namespace: shop}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: nobody, namespace: shop}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: console-viewer}\n\
         rules: [{apiGroups: [herald.dev], resources: [subscriptions, eventstreams], verbs: [get, list]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: console-viewer}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: console-viewer}\n\
         subjects: [{kind: ServiceAccount, name: console-viewer, namespace: shop}]\n",
    );
    let token = |sa: &str| {
        node.kubectl(&["-n", "shop", "create", "token", sa])
            .trim()
            .to_owned()
    };
    let (viewer, nobody) = (token("console-viewer"), token("nobody"));
    // Reached as docs/CONSOLE.md says: `kubectl port-forward` to the Service's console port.
    let mut forward = Command::new(&node.kubectl)
        .args(["-n", "herald-system", "port-forward", "svc/herald", ":8090"])
        .env("KUBECONFIG", node.var("KUBECONFIG"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl port-forward");
    let first = {
        use std::io::BufRead as _;
        let out = forward.stdout.take().expect("its output");
        let mut reader = std::io::BufReader::new(out);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("kubectl port-forward says where it listens");
        // It says "Handling connection for PORT" for each connection: keep reading, or it fails
        // writing and drops the connection.
        std::thread::spawn(move || for _ in reader.lines() {});
        line
    };
    // "Forwarding from 127.0.0.1:PORT -> 8090"
    let local = first
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("kubectl port-forward said {first:?}"))
        .to_owned();
    let console = format!("http://{local}/api/v1");
    let http = reqwest::Client::new();
    let get = |path: &str, token: &str| {
        http.get(format!("{console}{path}"))
            .bearer_auth(token)
            .send()
    };
    let who: Value = get("/whoami", &viewer)
        .await
        .expect("the console answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        who["user"]["name"],
        "system:serviceaccount:shop:console-viewer"
    );
    let catalog: Value = get("/catalog?q=order", &viewer)
        .await
        .expect("the console answers")
        .json()
        .await
        .expect("JSON");
    let types: Vec<&str> = catalog["items"]
        .as_array()
        .map(|i| i.iter().filter_map(|i| i["type"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        types.contains(&"order.created.v1") && types.contains(&"order.shipped.v1"),
        "{catalog}"
    );
    let refused = get("/catalog", &nobody).await.expect("the console answers");
    assert_eq!(refused.status(), 403);
    let _ = forward.kill();
    let _ = forward.wait();
    done(&mut steps, "console on the chart's grants", &mut t);
    done(
        &mut steps,
        "examples: orders -> payments -> shipping -> orders",
        &mut t,
    );

    // The suite's own apps.
    node.kubectl(&["create", "namespace", NS]);
    let code = repo()
        .join("tests/cluster/apps/probe.py")
        .display()
        .to_string();
    node.kubectl(&[
        "-n",
        NS,
        "create",
        "configmap",
        "probe-code",
        &format!("--from-file=probe.py={code}"),
    ]);

    // A live annotation change: the listener moves from probe.v1 to probe.v2 without a restart.

    node.apply(&app(
        "listener",
        &sub("probe.v1,farewell.v1,job.v1"),
        &[("MODE", "relay")],
        &sink_url,
    ));
    node.kubectl(&[
        "-n",
        NS,
        "wait",
        "deploy/listener",
        "--for=condition=Available",
        "--timeout=60s",
    ]);
    let listener = node.pods(NS, "listener")[0]["metadata"]["name"]
        .as_str()
        .expect("listener pod")
        .to_owned();
    node.kubectl(&[
        "-n",
        NS,
        "annotate",
        "pod",
        &listener,
        "--overwrite",
        "herald.dev/subscribe=probe.v2,farewell.v1,job.v1",
    ]);
    let reloaded = Instant::now();
    until(
        Duration::from_secs(30),
        "the listener's sidecar reloads",
        || {
            node.logs(NS, &format!("pod/{listener}"), "herald")
                .contains("configuration reloaded")
        },
    )
    .await;
    eprintln!("   annotation to reload: {:.1?}", reloaded.elapsed());
    // Wait until the new consumer has been bound, then publish both types from a Job.
    until(
        Duration::from_secs(30),
        "the probe.v2 consumer is bound",
        || {
            node.logs(NS, &format!("pod/{listener}"), "herald")
                .contains("\"subscription\":\"probe.v2\"")
        },
    )
    .await;
    for ty in ["probe.v1", "probe.v2"] {
        node.apply(&job(
            &format!("send-{}", ty.replace('.', "-")),
            ty,
            &sink_url,
        ));
    }
    until(Duration::from_secs(60), "probe.v2 delivered", || {
        records(&sink, "/delivered")
            .iter()
            .any(|r| r["type"] == "probe.v2")
    })
    .await;
    assert!(
        !records(&sink, "/delivered")
            .iter()
            .any(|r| r["type"] == "probe.v1"),
        "probe.v1 is no longer subscribed"
    );
    done(
        &mut steps,
        "kubectl annotate: live subscription change",
        &mut t,
    );

    // A Job with a native sidecar completes.
    until(Duration::from_secs(60), "the Jobs complete", || {
        ["send-probe-v1", "send-probe-v2"]
            .iter()
            .all(|j| node.json(&["-n", NS, "get", "job", j])["status"]["succeeded"] == 1)
    })
    .await;
    done(&mut steps, "Jobs with a native sidecar complete", &mut t);

    // A publish from the app's own SIGTERM handler (Kubernetes 1.28 signals app and sidecar
    // together): answered 204 and delivered.
    node.apply(&app(
        "farewell",
        &[("herald.dev/inject", "true")],
        &[("MODE", "farewell"), ("TYPE", "farewell.v1")],
        &sink_url,
    ));
    node.kubectl(&[
        "-n",
        NS,
        "wait",
        "deploy/farewell",
        "--for=condition=Available",
        "--timeout=60s",
    ]);
    // The sidecar's log to its end: it must close the publish API because the app is gone, not
    // because the window ran out.
    // By pod name: `deploy/farewell` would no longer resolve once the Deployment is deleted.
    let pod = node.pods(NS, "farewell")[0]["metadata"]["name"]
        .as_str()
        .expect("the farewell pod's name")
        .to_owned();
    let mut sidecar_log = Command::new(&node.kubectl)
        .args([
            "-n",
            NS,
            "logs",
            "-f",
            &format!("pod/{pod}"),
            "-c",
            "herald",
        ])
        .env("KUBECONFIG", node.var("KUBECONFIG"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let log_reader = {
        let mut out = sidecar_log.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut text);
            text
        })
    };
    node.kubectl(&["-n", NS, "delete", "deploy/farewell", "--wait=false"]);
    until(Duration::from_secs(60), "the farewell is recorded", || {
        !records(&sink, "/farewell").is_empty()
    })
    .await;
    let farewell = &records(&sink, "/farewell")[0];
    assert_eq!(farewell["status"], 204, "{farewell}");
    let id = farewell["id"].as_str().unwrap().to_owned();
    until(Duration::from_secs(60), "the farewell is delivered", || {
        ids(&sink, "/delivered").contains(&id)
    })
    .await;
    until(
        Duration::from_secs(60),
        "the farewell sidecar's log ends",
        || matches!(sidecar_log.try_wait(), Ok(Some(_))),
    )
    .await;
    let log = log_reader.join().expect("the log reader");
    assert!(
        log.contains("closing the publish API: the app is gone"),
        "the sidecar should see its app gone:\n{log}"
    );
    done(&mut steps, "publish from the app's SIGTERM handler", &mut t);

    // A rolling restart of a subscriber under a steady publish load loses no acknowledged event.
    node.apply(&app(
        "ticks",
        &sub("tick.v1"),
        &[("MODE", "relay")],
        &sink_url,
    ));
    node.kubectl(&["-n", NS, "scale", "deploy/ticks", "--replicas=2"]);
    node.kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deploy/ticks",
        "--timeout=90s",
    ]);
    node.apply(&app(
        "loadgen",
        &[("herald.dev/inject", "true")],
        &[
            ("MODE", "publisher"),
            ("TYPE", "tick.v1"),
            ("RATE", "50"),
            ("PREFIX", "tick"),
        ],
        &sink_url,
    ));
    until(Duration::from_secs(60), "load flows", || {
        ids(&sink, "/acked")
            .iter()
            .filter(|i| i.starts_with("tick-"))
            .count()
            >= 100
    })
    .await;
    node.kubectl(&["-n", NS, "rollout", "restart", "deploy/ticks"]);
    node.kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deploy/ticks",
        "--timeout=120s",
    ]);
    let acked_at_restart = ids(&sink, "/acked").len();
    until(Duration::from_secs(60), "load after the restart", || {
        ids(&sink, "/acked").len() >= acked_at_restart + 100
    })
    .await;
    node.kubectl(&["-n", NS, "scale", "deploy/loadgen", "--replicas=0"]);
    until(
        Duration::from_secs(60),
        "the load generator is gone",
        || node.pods(NS, "loadgen").is_empty(),
    )
    .await;
    let acked: Vec<String> = ids(&sink, "/acked")
        .into_iter()
        .filter(|i| i.starts_with("tick-"))
        .collect();
    until(
        Duration::from_secs(120),
        "every acknowledged tick delivered",
        || {
            let got: std::collections::HashSet<String> =
                ids(&sink, "/delivered").into_iter().collect();
            acked.iter().all(|i| got.contains(i))
        },
    )
    .await;
    let delivered: Vec<String> = ids(&sink, "/delivered")
        .into_iter()
        .filter(|i| i.starts_with("tick-"))
        .collect();
    let unique: std::collections::HashSet<&String> = delivered.iter().collect();
    eprintln!(
        "   rolling restart under load: {} acknowledged, {} deliveries, {} duplicates",
        acked.len(),
        delivered.len(),
        delivered.len() - unique.len()
    );
    done(
        &mut steps,
        "rollout restart under load loses nothing",
        &mut t,
    );

    // A pod created while the webhook is down runs without the sidecar and is reported.
    node.kubectl(&[
        "-n",
        "herald-system",
        "scale",
        "deploy/herald",
        "--replicas=0",
    ]);
    until(Duration::from_secs(60), "the control plane is gone", || {
        node.json(&[
            "-n",
            "herald-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=herald",
        ])["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
    })
    .await;
    node.apply(&app(
        "stray",
        &[("herald.dev/inject", "true")],
        &[("MODE", "relay")],
        &sink_url,
    ));
    node.kubectl(&[
        "-n",
        NS,
        "wait",
        "deploy/stray",
        "--for=condition=Available",
        "--timeout=60s",
    ]);
    let stray = &node.pods(NS, "stray")[0];
    assert!(
        stray["spec"]["initContainers"].is_null(),
        "created while the webhook was down"
    );
    node.kubectl(&[
        "-n",
        "herald-system",
        "scale",
        "deploy/herald",
        "--replicas=1",
    ]);
    until(
        Duration::from_secs(90),
        "SidecarMissing on deployment/stray",
        || {
            let events = node.json(&["-n", NS, "get", "events.events.k8s.io"]);
            events["items"].as_array().is_some_and(|es| {
                es.iter()
                    .any(|e| e["reason"] == "SidecarMissing" && e["regarding"]["name"] == "stray")
            })
        },
    )
    .await;
    done(&mut steps, "missed injection reported", &mut t);

    // Plain-container mode: the sidecar as a regular container held by its postStart wait.
    install(&["--set", "sidecar.nativeSidecar=false"]);
    node.apply(&app(
        "plain",
        &sub("plain.v1"),
        &[("MODE", "echo"), ("TYPE", "plain.v1")],
        &sink_url,
    ));
    node.kubectl(&[
        "-n",
        NS,
        "wait",
        "deploy/plain",
        "--for=condition=Available",
        "--timeout=60s",
    ]);
    let plain = &node.pods(NS, "plain")[0];
    let containers: Vec<&str> = plain["spec"]["containers"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(containers, ["herald", "app"]);
    assert!(!plain["spec"]["containers"][0]["lifecycle"]["postStart"].is_null());
    until(
        Duration::from_secs(60),
        "the plain pod's echo is delivered",
        || {
            ids(&sink, "/delivered")
                .iter()
                .any(|i| i.starts_with("echo-plain"))
        },
    )
    .await;
    let ready: Vec<Duration> = (0..RUNS)
        .map(|i| pod_ready(&node, &format!("start-plain-{i}"), true, &sink_url))
        .collect();
    eprintln!(
        "   kubectl apply -> pod Ready, plain-container sidecar: {}",
        show(&ready)
    );
    install(&["--set", "sidecar.nativeSidecar=auto"]);
    done(&mut steps, "plain-container mode", &mut t);

    // Figures (printed, not asserted): pod start with and without the sidecar, apply to first
    // delivery, the sidecar's memory.
    figures(&node, &sink, &sink_url).await;
    done(&mut steps, "figures", &mut t);

    eprintln!("cluster suite: {:.1?} in all", suite.elapsed());
    for s in &steps {
        eprintln!("  {:>7.1?}  {}", s.took, s.name);
    }
    node.passed = true;
}

/// A bare Pod of the suite's app in relay mode (for start-up timing: no Deployment controller in
/// between).
fn bare_pod(name: &str, annotations: &[(&str, &str)], sink: &str) -> String {
    let mut notes = String::from("{");
    for (i, (k, v)) in annotations.iter().enumerate() {
        if i > 0 {
            notes.push_str(", ");
        }
        notes.push_str(&format!("{k}: {}", serde_json::to_string(v).unwrap()));
    }
    notes.push('}');
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NS}
  annotations: {notes}
spec:
  containers:
    - name: app
      image: herald-example-orders:{TAG}
      command: [python3, /app/probe.py]
      env:
        - {{name: SINK, value: \"{sink}\"}}
        - {{name: MODE, value: relay}}
      volumeMounts: [{{name: code, mountPath: /app}}]
  volumes:
    - name: code
      configMap: {{name: probe-code}}
"
    )
}

/// A Job of the suite's app that publishes one `ty` event.
/// Annotations that inject the sidecar and subscribe port 8080 to `types`.
fn sub(types: &str) -> [(&'static str, &str); 3] {
    [
        ("herald.dev/inject", "true"),
        ("herald.dev/app-port", "8080"),
        ("herald.dev/subscribe", types),
    ]
}

fn job(name: &str, ty: &str, sink: &str) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata: {{name: {name}, namespace: {NS}}}
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations: {{herald.dev/inject: \"true\"}}
    spec:
      restartPolicy: Never
      containers:
        - name: app
          image: herald-example-orders:{TAG}
          command: [python3, /app/probe.py]
          env:
            - {{name: SINK, value: \"{sink}\"}}
            - {{name: MODE, value: once}}
            - {{name: TYPE, value: \"{ty}\"}}
            - name: POD_NAME
              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
          volumeMounts: [{{name: code, mountPath: /app}}]
      volumes:
        - name: code
          configMap: {{name: probe-code}}
"
    )
}

/// `kubectl apply` of a bare pod (with the sidecar injected or without) to its Ready condition.
fn pod_ready(node: &Node, name: &str, sidecar: bool, sink_url: &str) -> Duration {
    let annotations: &[(&str, &str)] = if sidecar {
        &[
            ("herald.dev/inject", "true"),
            ("herald.dev/app-port", "8080"),
            (
                "herald.dev/subscriptions",
                "- type: echo.v1\n  source: cluster-suite\n",
            ),
        ]
    } else {
        &[]
    };
    let yaml = bare_pod(name, annotations, sink_url);
    let started = Instant::now();
    node.apply(&yaml);
    node.kubectl(&[
        "-n",
        NS,
        "wait",
        &format!("pod/{name}"),
        "--for=condition=Ready",
        "--timeout=60s",
    ]);
    let took = started.elapsed();
    // Gone before the next run, so a terminating pod does not share the kubelet with it.
    node.kubectl(&["-n", NS, "delete", "pod", name, "--wait=true"]);
    took
}

/// Median, min and max of timings, for the figures.
fn show(v: &[Duration]) -> String {
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64()).collect();
    s.sort_by(f64::total_cmp);
    format!(
        "median {:.2} s, min {:.2} s, max {:.2} s ({} runs)",
        s[s.len() / 2],
        s[0],
        s[s.len() - 1],
        s.len()
    )
}

const RUNS: usize = 5;

async fn figures(node: &Node, sink: &Sink, sink_url: &str) {
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut first_delivery = Vec::new();
    for i in 0..RUNS {
        with.push(pod_ready(node, &format!("start-with-{i}"), true, sink_url));
        without.push(pod_ready(
            node,
            &format!("start-without-{i}"),
            false,
            sink_url,
        ));
        // kubectl apply to the first delivery: a pod that publishes to itself once ready.
        let name = format!("echo-{i}");
        let ty = format!("echo{i}.v1");
        let yaml = app(
            &name,
            &[
                ("herald.dev/inject", "true"),
                ("herald.dev/app-port", "8080"),
                ("herald.dev/subscribe", &ty),
            ],
            &[("MODE", "echo"), ("TYPE", &ty)],
            sink_url,
        );
        let started = Instant::now();
        node.apply(&yaml);
        let prefix = format!("echo-{name}");
        until(Duration::from_secs(60), "the echo is delivered", || {
            ids(sink, "/delivered")
                .iter()
                .any(|i| i.starts_with(&prefix))
        })
        .await;
        first_delivery.push(started.elapsed());
    }
    // The sidecar's resident memory, from the node's process table.
    let mut rss = Vec::new();
    for line in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(line.path().join("cmdline")) else {
            continue;
        };
        if cmdline.starts_with(b"/usr/local/bin/herald\0sidecar")
            && let Ok(status) = std::fs::read_to_string(line.path().join("status"))
            && let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            rss.push(kib);
        }
    }
    eprintln!(
        "   kubectl apply -> pod Ready, native sidecar:      {}",
        show(&with)
    );
    eprintln!(
        "   kubectl apply -> pod Ready, without the sidecar: {}",
        show(&without)
    );
    eprintln!(
        "   kubectl apply -> first delivery (publish to itself once ready): {}",
        show(&first_delivery)
    );
    rss.sort_unstable();
    eprintln!(
        "   sidecar RSS in the pods ({} sidecars): {:?} KiB",
        rss.len(),
        rss
    );
}
