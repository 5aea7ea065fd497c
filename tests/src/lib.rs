//! The end-to-end harness: real processes on free ports, cleaned up on drop.
//!
//! - [`Nats`]: a real `nats-server -js` (binary from `HERALD_TEST_NATS_SERVER`, else `nats-server`
//!   from PATH), random port, temporary store; restartable on the same port to simulate outages.
//! - [`Herald`]: the real `herald` binary (`HERALD_BIN`, else `target/debug/herald`; `scripts/test`
//!   builds it first) as a child process on free ports.
//! - [`sink::Sink`]: a real HTTP app receiving deliveries (scripted answers, delays, peak
//!   concurrency, stoppable and restartable on its port).
//! - helpers to create streams with herald's own policy code and read back what JetStream stored.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::StreamMessage};
use herald_sidecar::natsd::{NatsServer, NatsServerOptions, find_binary};
use herald_sidecar::streams::{self, StreamPolicy};

pub mod sink;

pub use herald_sidecar;

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

    /// Creates `HERALD` (limits retention, so events stay without consumers) and `HERALD_DLQ`.
    pub async fn create_streams(&self) -> jetstream::Context {
        let js = self.jetstream().await;
        streams::ensure(&js, &StreamPolicy::dev_events("HERALD"))
            .await
            .expect("create HERALD");
        streams::ensure(&js, &StreamPolicy::dead_letters("HERALD_DLQ"))
            .await
            .expect("create HERALD_DLQ");
        js
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

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind :0")
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

    /// Ports come from [`free_port`], so another process of a parallel test can take one in
    /// between; a herald that exits because it cannot listen is started again on new ports.
    pub async fn start_with_env(mode: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        for _ in 0..3 {
            let mut h = Self::spawn(mode, args, env);
            let client = reqwest::Client::new();
            let until = Instant::now() + Duration::from_secs(20);
            loop {
                let up = client.get(format!("{}/healthz", h.admin)).send().await;
                if up.is_ok_and(|r| r.status() == 200) {
                    return h;
                }
                if let Ok(Some(_)) = h.child.try_wait() {
                    if h.log_text().contains("cannot listen") {
                        break;
                    }
                    panic!("herald exited at start; log:\n{}", h.log_text());
                }
                assert!(
                    Instant::now() < until,
                    "/healthz never answered; herald log:\n{}",
                    h.log_text()
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("herald could not listen on free ports three times in a row");
    }

    fn spawn(mode: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("herald.log");
        let child = Command::new(herald_bin())
            .arg(mode)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
            ])
            .args(args)
            .envs(env.iter().copied())
            .env("HERALD_LOG", "info,herald_sidecar=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn herald");
        Herald {
            child,
            url: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            log,
            _dir: dir,
        }
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
    pub async fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
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

/// Publishes event `id` of type `ty` (source `shop`, JSON data, a traceparent) in binary mode;
/// expects 204.
pub async fn publish(h: &Herald, id: &str, ty: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/publish", h.url))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "shop")
        .header("ce-type", ty)
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
