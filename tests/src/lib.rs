//! The end-to-end harness: real processes on ports they pick (port 0), cleaned up on drop.
//!
//! - [`Nats`]: a real `nats-server -js` (binary from `HERALD_TEST_NATS_SERVER`, else `nats-server`
//!   from PATH), random port, temporary store; restartable on the same port to simulate outages.
//! - [`Herald`]: the real `herald` binary (`HERALD_BIN`, else `target/debug/herald`; `scripts/test`
//!   builds it first) as a child process on port 0, reporting its ports in a ports file.
//! - [`kit::Apiserver`]: a real kube-apiserver of the Kubernetes test kit (`HERALD_TEST_K8S`).
//! - [`sink::Sink`]: a real HTTP app receiving deliveries (scripted answers, delays, peak
//!   concurrency, stoppable and restartable on its port).
//! - [`NatsCluster`]: three (or more) such servers joined by routes into one JetStream cluster,
//!   each killable and restartable on its ports.
//! - helpers to create streams with herald's own policy code and read back what JetStream stored.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::StreamMessage};
use herald_core::broker::Admin as _;
use herald_core::policy::StreamPolicy;
use herald_jetstream::JetStream;
use herald_jetstream::natsd::{self, NatsServer, NatsServerOptions, find_binary};

pub mod kit;
pub mod sink;

pub use herald_core;
pub use herald_jetstream;
pub use reqwest;

/// A real nats-server for one test.
pub struct Nats {
    pub server: NatsServer,
}

impl Nats {
    pub fn start() -> Self {
        Self::start_with_config(None)
    }

    /// With a configuration file (`nats-server -c`).
    pub fn start_with_config(config: Option<PathBuf>) -> Self {
        let name =
            std::env::var("HERALD_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let bin = find_binary(&name).unwrap_or_else(|e| panic!("{e}"));
        let server = NatsServer::start(&NatsServerOptions {
            bin,
            port: None,
            store_dir: None,
            config,
        })
        .unwrap_or_else(|e| panic!("starting nats-server: {e}"));
        Nats { server }
    }

    pub fn url(&self) -> String {
        self.server.url().to_owned()
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to the test nats-server");
        jetstream::new(client)
    }

    /// herald's broker on this server, for creating and inspecting streams with herald's own code.
    pub async fn broker(&self) -> JetStream {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to the test nats-server");
        JetStream::new(client, Duration::from_secs(5), "HERALD")
    }

    /// Creates or updates a stream with herald's own policy code.
    pub async fn ensure_stream(&self, policy: &StreamPolicy) {
        self.broker()
            .await
            .ensure_stream(policy)
            .await
            .unwrap_or_else(|e| panic!("ensure {}: {e}", policy.name));
    }

    /// Creates `HERALD` (limits retention, so events stay without consumers) and `HERALD_DLQ`.
    pub async fn create_streams(&self) -> jetstream::Context {
        self.ensure_stream(&StreamPolicy::dev_events("HERALD"))
            .await;
        self.ensure_stream(&StreamPolicy::dead_letters("HERALD_DLQ"))
            .await;
        self.jetstream().await
    }
}

/// A JetStream cluster of real nats-servers on loopback, joined by routes (herald's own
/// [`natsd::NatsCluster`], which `herald bench failover` runs too).
pub struct NatsCluster(pub natsd::NatsCluster);

impl std::ops::Deref for NatsCluster {
    type Target = natsd::NatsCluster;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for NatsCluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl NatsCluster {
    /// `n` servers named `n1`…`nN`.
    pub fn start(n: usize) -> Self {
        let name =
            std::env::var("HERALD_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let bin = find_binary(&name).unwrap_or_else(|e| panic!("{e}"));
        NatsCluster(
            natsd::NatsCluster::start(&bin, n)
                .unwrap_or_else(|e| panic!("starting a {n}-node cluster: {e}")),
        )
    }

    /// A JetStream context through every node (the client fails over between them).
    pub async fn jetstream(&self) -> jetstream::Context {
        let servers: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| n.url().parse().expect("a node URL"))
            .collect();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .expect("connect to the cluster");
        jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client)
    }

    /// Creates the stream once the cluster has elected its meta leader (retried for 30 s).
    pub async fn ensure_stream(&self, policy: &StreamPolicy) {
        let js = self.jetstream().await;
        let broker = JetStream::new(js.client().clone(), Duration::from_secs(5), "HERALD");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match broker.ensure_stream(policy).await {
                Ok(_) => return,
                Err(e) if Instant::now() < until => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("ensure {} on the cluster: {e}", policy.name),
            }
        }
    }
}

/// Every message of a stream, in order.
pub async fn stored(js: &jetstream::Context, stream: &str) -> Vec<StreamMessage> {
    let mut s = js.get_stream(stream).await.expect("stream exists");
    let info = s.info().await.expect("stream info").state.clone();
    let mut out = Vec::new();
    if info.messages == 0 {
        return out;
    }
    for seq in info.first_sequence..=info.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// Logs of what a test runs in its own process (the controller in the apiserver tests) through
/// the test harness's capture, so a failed test prints them (`RUST_LOG` filters; default `info`,
/// kube's own chatter at `warn`). Once per test binary; later calls do nothing.
pub fn trace() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// Polls `check` every 25 ms until it holds; fails the test, naming `what`, after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < until, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits (15 s at most) until the dead-letter stream holds something, and returns its messages.
pub async fn dead_letters(js: &jetstream::Context) -> Vec<StreamMessage> {
    eventually(
        Duration::from_secs(15),
        "an event is dead-lettered",
        || async { !stored(js, "HERALD_DLQ").await.is_empty() },
    )
    .await;
    stored(js, "HERALD_DLQ").await
}

/// A header of a stored message as a string.
pub fn header<'a>(m: &'a StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

/// Waits for a ports file (`--ports-file`) to appear and returns it parsed; fails with the log if
/// the process exits first or takes over 20 s.
pub async fn read_ports(
    path: &std::path::Path,
    child: &mut Child,
    log: &dyn Fn() -> String,
) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        // Renamed into place whole, so a file that exists parses.
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("ports file {text:?}: {e}"));
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("exited ({status}) before listening; log:\n{}", log());
        }
        assert!(
            Instant::now() < until,
            "no ports file after 20 s; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn herald_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_BIN") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/herald");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --bin herald` first (scripts/test does)",
        p.display()
    );
    p
}

/// A running `herald` process.
pub struct Herald {
    child: Child,
    /// `http://127.0.0.1:<port>` of the publish API.
    pub url: String,
    /// `http://127.0.0.1:<port>` of the admin API.
    pub admin: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Herald {
    /// Starts `herald <mode> <args>` on free ports and waits until `/healthz` answers.
    pub async fn start(mode: &str, args: &[&str]) -> Self {
        Self::start_with_env(mode, args, &[]).await
    }

    /// Both listeners on port 0: the addresses come from the ports file herald writes once it
    /// listens (`--ports-file`), so parallel tests never race for ports.
    pub async fn start_with_env(mode: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("herald.log");
        let ports = dir.path().join("ports.json");
        // `herald dispatch` has no publish API.
        let listen: &[&str] = if mode == "dispatch" {
            &["--admin-listen", "127.0.0.1:0"]
        } else {
            &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(herald_bin())
            .arg(mode)
            .args(listen)
            .arg("--ports-file")
            .arg(&ports)
            .args(args)
            .envs(env.iter().copied())
            .env("HERALD_LOG", "info,herald_sidecar=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn herald");
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        let listening = read_ports(&ports, &mut child, &log_text).await;
        let address = |name: &str| {
            listening[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} address in the ports file: {listening}"))
                .to_owned()
        };
        let h = Herald {
            url: if mode == "dispatch" {
                String::new()
            } else {
                format!("http://{}", address("publish"))
            },
            admin: format!("http://{}", address("admin")),
            child,
            log,
            _dir: dir,
        };
        h.wait_for("/healthz", 200).await;
        h
    }

    /// `herald sidecar` against `nats`, with app id `test`.
    pub async fn sidecar(nats: &Nats, args: &[&str]) -> Self {
        let mut all = vec!["--nats-url", nats.server.url(), "--app-id", "test"];
        all.extend_from_slice(args);
        // `nats.server.url()` borrows `nats`; the process copies its arguments at spawn.
        Self::start("sidecar", &all).await
    }

    /// `herald sidecar` against `nats` as `app_id`, configured by an annotations file; waits
    /// until ready.
    pub async fn with_annotations(nats: &Nats, app_id: &str, file: &std::path::Path) -> Self {
        let file = file.to_str().expect("a UTF-8 temp path");
        let args = [
            "--nats-url",
            nats.server.url(),
            "--app-id",
            app_id,
            "--annotations-file",
            file,
        ];
        let h = Self::start("sidecar", &args).await;
        h.wait_ready().await;
        h
    }

    /// Polls an admin path until it answers `status` (20 s at most).
    pub async fn wait_for(&self, path: &str, status: u16) {
        let client = reqwest::Client::new();
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let answered = client
                .get(format!("{}{path}", self.admin))
                .send()
                .await
                .map(|r| r.status().as_u16());
            if answered.is_ok_and(|s| s == status) {
                return;
            }
            if Instant::now() > until {
                panic!(
                    "{path} never answered {status}; herald log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (20 s at most) until the sidecar is connected to NATS, ready or not: right after
    /// start every publish gets the fast 503 of a disconnected sidecar.
    pub async fn wait_connected(&self) {
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", self.admin);
        eventually(
            Duration::from_secs(20),
            "the sidecar connects to NATS",
            || async {
                match client.get(&url).send().await {
                    Ok(r) => {
                        let reason = r.text().await.unwrap_or_default();
                        !reason.contains("not connected") && !reason.starts_with("starting")
                    }
                    Err(_) => false,
                }
            },
        )
        .await;
    }

    pub async fn wait_ready(&self) {
        self.wait_for("/readyz", 200).await;
    }

    /// The metrics as Prometheus scrapes them.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics has a body")
    }

    /// The value of one sample (`name{labels}` exactly as exposed); 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        sample(&self.metrics().await, name).unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        use nix::sys::signal::{Signal, kill};
        let _ = kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        );
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Herald {
    /// SIGTERM first, as Kubernetes does: `herald dev` then stops its own nats-server, which a
    /// SIGKILL would orphan. SIGKILL after 5 s.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.sigterm();
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// The downward API volume with the pod's annotations: a [`KubeletDir`] with one file,
/// `annotations`, in the downward API's `key="value"` format.
pub struct PodInfo {
    dir: KubeletDir,
}

impl PodInfo {
    /// Writes the first version; `annotations` are `(key, value)` pairs.
    pub fn new(annotations: &[(&str, &str)]) -> Self {
        PodInfo {
            dir: KubeletDir::new(&[("annotations", &Self::render(annotations))]),
        }
    }

    /// The path the sidecar reads (`--annotations-file`).
    pub fn file(&self) -> PathBuf {
        self.dir.path("annotations")
    }

    /// Swaps in a new version, as the kubelet does after `kubectl annotate`.
    pub fn write(&mut self, annotations: &[(&str, &str)]) {
        self.dir
            .write(&[("annotations", &Self::render(annotations))]);
    }

    fn render(annotations: &[(&str, &str)]) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        for (k, v) in annotations {
            // Go's strconv.Quote, for the characters tests use.
            let quoted = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(text, "{k}=\"{quoted}\"");
        }
        text
    }
}

/// A directory written the way the kubelet writes downward API, ConfigMap and Secret volumes:
/// each version in its own `..<timestamp>` directory, a `..data` symlink to the current one
/// swapped by rename, and each file a symlink through `..data`.
pub struct KubeletDir {
    dir: tempfile::TempDir,
    version: usize,
}

impl KubeletDir {
    /// Writes the first version of `files` (`(name, content)` pairs).
    pub fn new(files: &[(&str, &str)]) -> Self {
        let mut d = KubeletDir {
            dir: tempfile::tempdir().expect("tempdir"),
            version: 0,
        };
        d.write(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), d.path(name))
                .expect("file symlink");
        }
        d
    }

    /// The path a reader uses for `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Swaps in a new version with the same file names.
    pub fn write(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let root = self.dir.path();
        let old = std::fs::read_link(root.join("..data")).ok();
        let name = format!("..2026_11_23_00_00_00.{}", self.version);
        std::fs::create_dir(root.join(&name)).expect("version dir");
        for (file, content) in files {
            std::fs::write(root.join(&name).join(file), content).expect("write file");
        }
        std::os::unix::fs::symlink(&name, root.join("..data_tmp")).expect("..data_tmp");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(root.join(old));
        }
    }
}

/// Runs `herald` with arguments to completion (for CLI tests).
/// Runs `herald` to its end and returns what it printed. A herald that has not exited after
/// 30 s is killed and the test fails, so a command that should have refused to start cannot
/// hang the suite.
pub fn herald_output(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    use std::io::Read as _;
    let mut child = Command::new(herald_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run herald");
    // Read both pipes while waiting, so a chatty herald never blocks on a full pipe.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = r.read_to_end(&mut out);
            out
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for herald") {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            let err = stderr.join().unwrap_or_default();
            panic!(
                "herald {args:?} did not exit within 30 s; it printed:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A ready `herald sidecar` for `app_id` delivering to `sink`, with `extra` flags.
pub async fn subscriber(nats: &Nats, app_id: &str, sink: &sink::Sink, extra: &[&str]) -> Herald {
    let port = sink.port.to_string();
    let mut args = vec![
        "--nats-url",
        nats.server.url(),
        "--app-id",
        app_id,
        "--app-port",
        &port,
    ];
    args.extend_from_slice(extra);
    let h = Herald::start("sidecar", &args).await;
    h.wait_ready().await;
    h
}

/// A binary-mode `POST {base}/publish` with the four required attributes; add headers and a body.
pub fn binary(base: &str, id: &str, source: &str, ty: &str) -> reqwest::RequestBuilder {
    binary_on(&reqwest::Client::new(), base, id, source, ty)
}

/// [`binary`] on `client`, to reuse its connections.
pub fn binary_on(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    source: &str,
    ty: &str,
) -> reqwest::RequestBuilder {
    client
        .post(format!("{base}/publish"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", source)
        .header("ce-type", ty)
}

/// Publishes event `id` of type `ty` (source `shop`, JSON data, a traceparent) in binary mode;
/// expects 204.
pub async fn publish(h: &Herald, id: &str, ty: &str) {
    let r = binary(&h.url, id, "shop", ty)
        .header("content-type", "application/json")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(format!("{{\"id\":\"{id}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

/// The value of one sample (`name{labels}` exactly as exposed) in a metrics text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Every consumer of the events stream `HERALD`.
pub async fn consumers(js: &jetstream::Context) -> Vec<jetstream::consumer::Info> {
    use futures::TryStreamExt as _;
    let stream = js.get_stream("HERALD").await.expect("the events stream");
    stream
        .consumers()
        .try_collect()
        .await
        .expect("consumers listed")
}

/// The consumer of `filter`, found by its description (`namespace/app/filter`).
pub async fn consumer_for(js: &jetstream::Context, filter: &str) -> jetstream::consumer::Info {
    consumers(js)
        .await
        .into_iter()
        .find(|c| {
            c.config
                .description
                .as_deref()
                .is_some_and(|d| d.ends_with(&format!("/{filter}")))
        })
        .unwrap_or_else(|| panic!("no consumer for {filter}"))
}

/// Whether every consumer of `HERALD` has settled everything: nothing pending, nothing leased.
/// Once true, no event is on its way to any app (until something is published again).
pub async fn settled(js: &jetstream::Context) -> bool {
    consumers(js)
        .await
        .iter()
        .all(|c| c.num_pending == 0 && c.num_ack_pending == 0)
}

/// Waits (15 s at most) until [`settled`].
pub async fn wait_settled(js: &jetstream::Context) {
    eventually(
        Duration::from_secs(15),
        "every consumer settled everything",
        || settled(js),
    )
    .await;
}
