//! `herald bench`: measurements of the `herald` binary against raw async-nats in the same run.
//! `herald bench publish` (here), `herald bench deliver` ([`deliver`]), `herald bench fanout`
//! ([`fanout`]), `herald bench failover` ([`failover`]) and `herald bench slow-clients` ([`slow`]). Tooling, not production code: the sidecar library does
//! not depend on it; the `herald` binary links it for the subcommand.
//!
//! `herald bench publish`: one run that measures publishing through the sidecar and directly with
//! async-nats against the same nats-server, and prints the ratio.
//!
//! The sidecar under test is a separate process (this binary, `herald sidecar`), so its memory can
//! be read and its CPU competes with the load generator as it would with an app. Scenarios:
//! - `raw`: async-nats JetStream publishes, each awaiting its ack, with the same headers and
//!   `Nats-Msg-Id` the sidecar writes (closed loop, `--concurrency` tasks);
//! - `sidecar`: binary-mode `POST /publish`, one keep-alive HTTP/1.1 connection per task;
//! - `batch`: `application/cloudevents-batch+json` requests of `--batch` events;
//! - `rate`: open loop at `--rate` events/s through the sidecar and raw; a request that had to wait
//!   for its worker is timed from when it was due, so a stall is not hidden by coordinated
//!   omission.
//!
//! Events go to a stream of its own (`HERALD_BENCH`, subjects `herald.herald-bench.>`), which is
//! purged between scenarios and deleted at the end; other streams are never touched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

pub mod deliver;
pub mod failover;
pub mod fanout;
pub mod slow;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    NatsServer(#[from] herald_jetstream::natsd::NatsdError),
    #[error("{0}")]
    Runtime(String),
}
use herald_core::broker::Admin as _;
use herald_core::event::{Event, TraceContext};
use herald_core::policy::StreamPolicy;
use herald_core::settings::{ConfigError, Env, Resolver, parse_bytes, parse_count};
use herald_core::subject::event_subject;
use herald_core::wire;
use herald_jetstream::natsd::{self, NatsServer, NatsServerOptions};
use herald_jetstream::parse_nats_url;

const STREAM: &str = "HERALD_BENCH";
const SOURCE: &str = "herald-bench";
const TYPE: &str = "bench.tick.v1";

#[derive(Debug, clap::Args, Default)]
pub struct BenchArgs {
    /// NATS server to use [default: start a throwaway nats-server]
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Concurrent publishers in the closed-loop scenarios [default: 64]
    #[arg(long)]
    pub concurrency: Option<String>,
    /// Data bytes per event [default: 256]
    #[arg(long)]
    pub payload: Option<String>,
    /// Measured time per scenario [default: 10s]
    #[arg(long)]
    pub duration: Option<String>,
    /// Unmeasured time before each scenario [default: 2s]
    #[arg(long)]
    pub warmup: Option<String>,
    /// Events per request in the batch scenario [default: 32]
    #[arg(long)]
    pub batch: Option<String>,
    /// Events per second in the fixed-rate latency scenario [default: 1000]
    #[arg(long)]
    pub rate: Option<String>,
    /// Comma-separated scenarios: raw, sidecar, batch, rate [default: all]
    #[arg(long)]
    pub scenarios: Option<String>,
    /// nats-server binary to start when no --nats-url is given [default: nats-server]
    #[arg(long)]
    pub nats_server_bin: Option<String>,
    /// Durable consumers beside the publish path: the stream becomes interest-retention, one
    /// consumer takes the published type (the subscriber), the others filter on types of their
    /// own, as N apps subscribed to one stream [default: 0]
    #[arg(long)]
    pub consumers: Option<String>,
}

const SCENARIOS: [&str; 4] = ["raw", "sidecar", "batch", "rate"];

/// `--scenarios`: a comma-separated subset of `known`.
fn parse_scenarios(v: &str, known: &[&str]) -> Result<Vec<String>, String> {
    let list: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
    match list.iter().find(|s| !known.contains(&s.as_str())) {
        Some(bad) => Err(format!("unknown scenario `{bad}` ({})", known.join(", "))),
        None => Ok(list),
    }
}

struct Settings {
    nats_url: Option<String>,
    concurrency: usize,
    payload: usize,
    duration: Duration,
    warmup: Duration,
    batch: usize,
    rate: u64,
    scenarios: Vec<String>,
    nats_server_bin: String,
    consumers: usize,
}

impl Settings {
    fn resolve(a: &BenchArgs, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut r = Resolver::new(env);
        let s = Settings {
            nats_url: r.get("nats-url", &a.nats_url, parse_nats_url),
            concurrency: r
                .get("concurrency", &a.concurrency, |v| parse_count(v, 1, 4096))
                .unwrap_or(64),
            payload: r.get("payload", &a.payload, parse_bytes).unwrap_or(256) as usize,
            duration: r
                .get(
                    "duration",
                    &a.duration,
                    herald_core::settings::in_range(herald_core::limits::BENCH_DURATION),
                )
                .unwrap_or(Duration::from_secs(10)),
            warmup: r
                .get(
                    "warmup",
                    &a.warmup,
                    herald_core::settings::in_range(herald_core::limits::BENCH_DURATION),
                )
                .unwrap_or(Duration::from_secs(2)),
            batch: r
                .get("batch", &a.batch, |v| parse_count(v, 1, 10_000))
                .unwrap_or(32),
            rate: r
                .get("rate", &a.rate, |v| parse_count(v, 1, 1_000_000))
                .unwrap_or(1000) as u64,
            scenarios: r
                .get("scenarios", &a.scenarios, |v| {
                    parse_scenarios(v, &SCENARIOS)
                })
                .unwrap_or_else(|| SCENARIOS.map(String::from).to_vec()),
            nats_server_bin: r
                .get("nats-server-bin", &a.nats_server_bin, |v| Ok(v.to_owned()))
                .unwrap_or_else(|| "nats-server".into()),
            consumers: r
                .get("consumers", &a.consumers, |v| parse_count(v, 0, 100_000))
                .unwrap_or(0),
        };
        r.finish()?;
        Ok(s)
    }

    fn wants(&self, s: &str) -> bool {
        self.scenarios.iter().any(|x| x == s)
    }
}

/// The outcome of one scenario.
struct Run {
    name: String,
    events: u64,
    errors: u64,
    window: Duration,
    /// Request latency in nanoseconds.
    hist: Histogram<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.events as f64 / self.window.as_secs_f64()
    }

    fn pct(&self, q: f64) -> String {
        fmt_ns(self.hist.value_at_quantile(q))
    }
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{} µs", ns / 1000)
    }
}

/// What one request publishes.
#[derive(Clone)]
enum Target {
    Raw(jetstream::Context),
    Binary(SocketAddr),
    Batch(SocketAddr, usize),
}

/// A connected worker.
enum Conn {
    Raw(jetstream::Context),
    Http(SendRequest<Full<Bytes>>, Target),
}

struct Payload {
    data: Bytes,
    counter: AtomicU64,
    run: String,
    /// When set, binary requests carry the send time since this instant (end-to-end latency).
    sent_epoch: Option<Instant>,
}

impl Payload {
    fn next_id(&self) -> String {
        format!(
            "{}-{}",
            self.run,
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn event(&self) -> Event {
        Event {
            id: self.next_id(),
            source: SOURCE.into(),
            ty: TYPE.into(),
            datacontenttype: Some("application/json".into()),
            attributes: vec![],
            data: self.data.clone(),
        }
    }
}

impl Target {
    async fn connect(&self) -> Result<Conn, String> {
        match self {
            Target::Raw(js) => Ok(Conn::Raw(js.clone())),
            Target::Binary(addr) | Target::Batch(addr, _) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| e.to_string())?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Ok(Conn::Http(send, self.clone()))
            }
        }
    }
}

impl Conn {
    /// One request; returns the number of events it stored.
    async fn op(&mut self, p: &Payload) -> Result<u64, String> {
        match self {
            Conn::Raw(js) => {
                let ev = p.event();
                let msg = PublishMessage::build()
                    .headers(herald_jetstream::publish::header_map(&wire::message(
                        &ev,
                        &TraceContext::default(),
                    )))
                    .payload(ev.data.clone());
                let ack = js
                    .send_publish(event_subject(SOURCE, TYPE), msg)
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map_err(|e| e.to_string())?;
                Ok(1)
            }
            Conn::Http(send, target) => {
                let (req, n) = match target {
                    Target::Batch(_, n) => {
                        let mut body = Vec::with_capacity(*n * (p.data.len() + 128));
                        body.push(b'[');
                        for i in 0..*n {
                            if i > 0 {
                                body.push(b',');
                            }
                            body.extend_from_slice(
                                format!(r#"{{"specversion":"1.0","id":"{}","source":"{SOURCE}","type":"{TYPE}","data":"#, p.next_id())
                                    .as_bytes(),
                            );
                            body.extend_from_slice(&p.data);
                            body.push(b'}');
                        }
                        body.push(b']');
                        let req = http::Request::post("/publish")
                            .header(http::header::HOST, "127.0.0.1")
                            .header(
                                http::header::CONTENT_TYPE,
                                "application/cloudevents-batch+json",
                            )
                            .body(Full::new(Bytes::from(body)));
                        (req, *n as u64)
                    }
                    _ => {
                        let mut req = http::Request::post("/publish");
                        if let Some(epoch) = p.sent_epoch {
                            req = req.header(
                                deliver::SENT_HEADER,
                                epoch.elapsed().as_nanos().to_string(),
                            );
                        }
                        let req = req
                            .header(http::header::HOST, "127.0.0.1")
                            .header("ce-specversion", "1.0")
                            .header("ce-id", p.next_id())
                            .header("ce-source", SOURCE)
                            .header("ce-type", TYPE)
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(Full::new(p.data.clone()));
                        (req, 1)
                    }
                };
                let req = req.map_err(|e| e.to_string())?;
                send.ready().await.map_err(|e| e.to_string())?;
                let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                if status == http::StatusCode::NO_CONTENT {
                    Ok(n)
                } else {
                    Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
                }
            }
        }
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Runs `workers` tasks against `target`, closed loop (or open loop at `rate` events/s).
async fn scenario(
    name: &str,
    target: Target,
    workers: usize,
    rate: Option<u64>,
    s: &Settings,
    payload: &Arc<Payload>,
) -> Result<Run, BenchError> {
    let progress = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + s.warmup;
    let end = measure_from + s.duration;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut conn = target
            .connect()
            .await
            .map_err(|e| BenchError::Runtime(format!("{name}: cannot connect: {e}")))?;
        let (payload, progress) = (payload.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let (mut hist, mut events, mut errors, mut first_error) =
                (new_hist(), 0u64, 0u64, None);
            let mut k: u64 = 0;
            let mut free_at = start;
            loop {
                // Open loop: request k of worker w is due at start + (k*workers + w)/rate.
                let due = rate.map(|r| {
                    start
                        + Duration::from_secs_f64((k * workers as u64 + w as u64) as f64 / r as f64)
                });
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
                k += 1;
                // A request that waited because this worker was still busy is timed from when it
                // was due (that wait is the system's fault); one that waited only for the timer
                // (1 ms granularity) is timed from when it was sent.
                let t0 = match due {
                    Some(due) if free_at > due => due,
                    _ => Instant::now(),
                };
                if t0 >= end {
                    break;
                }
                let outcome = conn.op(&payload).await;
                free_at = Instant::now();
                if t0 < measure_from {
                    continue;
                }
                match outcome {
                    Ok(n) => {
                        events += n;
                        progress.fetch_add(n, Ordering::Relaxed);
                        let _ = hist.record(t0.elapsed().as_nanos() as u64);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (hist, events, errors, first_error)
        }));
    }
    // Progress, once a second.
    let reporter = {
        let (progress, name) = (progress.clone(), name.to_owned());
        let (warmup, duration) = (s.warmup, s.duration);
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = progress.load(Ordering::Relaxed);
                let elapsed = start.elapsed();
                let phase = if elapsed < warmup {
                    "warm-up"
                } else {
                    "measuring"
                };
                eprintln!(
                    "  {name}: {phase} {:>4.0}s/{:.0}s  {:>8} ev/s",
                    elapsed.as_secs_f64(),
                    (warmup + duration).as_secs_f64(),
                    now - last
                );
                last = now;
            }
        })
    };
    let mut run = Run {
        name: name.to_owned(),
        events: 0,
        errors: 0,
        window: s.duration,
        hist: new_hist(),
    };
    let mut first_error = None;
    for t in tasks {
        let (h, e, err, fe) = t.await.map_err(|e| BenchError::Runtime(e.to_string()))?;
        let _ = run.hist.add(h);
        run.events += e;
        run.errors += err;
        if first_error.is_none() {
            first_error = fe;
        }
    }
    reporter.abort();
    if let Some(e) = first_error {
        eprintln!("  {name}: {} failed requests; first: {e}", run.errors);
    }
    Ok(run)
}

/// Resident and peak memory of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The sidecar under test, killed on drop.
struct SidecarProcess(std::process::Child);

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> Result<SocketAddr, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| BenchError::Runtime(format!("no free port: {e}")))
}

/// The NATS server to measure against (a throwaway one unless `url` is given, kept alive by the
/// returned handle), and the bench stream on it, created empty.
async fn bench_nats(
    url: &Option<String>,
    server_bin: &str,
) -> Result<(Option<NatsServer>, String, jetstream::Context), BenchError> {
    let (embedded, url) = match url {
        Some(u) => (None, u.clone()),
        None => {
            let bin = natsd::find_binary(server_bin)?;
            let server = tokio::task::spawn_blocking(move || {
                NatsServer::start(&NatsServerOptions {
                    bin,
                    port: None,
                    store_dir: None,
                    config: None,
                })
            })
            .await
            .map_err(|e| BenchError::Runtime(e.to_string()))??;
            let url = server.url().to_owned();
            (Some(server), url)
        }
    };
    let client = async_nats::connect(&url)
        .await
        .map_err(|e| BenchError::Runtime(format!("cannot connect to {url}: {e}")))?;
    let js = jetstream::new(client);
    let policy = bench_stream();
    // A stream left by an interrupted run would hold old events.
    let _ = js.delete_stream(STREAM).await;
    herald_jetstream::JetStream::new(js.client().clone(), Duration::from_secs(5), STREAM)
        .ensure_stream(&policy)
        .await
        .map_err(|e| BenchError::Runtime(e.to_string()))?;
    Ok((embedded, url, js))
}

/// The bench stream: subjects of the bench source only, herald's development policy.
fn bench_stream() -> StreamPolicy {
    StreamPolicy {
        subjects: vec![format!(
            "{}.>",
            event_subject(SOURCE, "x").trim_end_matches(".x")
        )],
        ..StreamPolicy::dev_events(STREAM)
    }
}

/// Makes the bench stream interest-retention and gives it `n` durable pull consumers: the first
/// filters on the published type, the others on types of their own. Nothing acknowledges, so
/// what the first consumer holds stays until the stream is purged between scenarios.
async fn add_consumers(js: &jetstream::Context, n: usize) -> Result<(), BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError::Runtime(format!("{n} consumers: {e}"));
    let _ = js.delete_stream(STREAM).await;
    let policy = StreamPolicy {
        subjects: vec![format!(
            "{}.>",
            event_subject(SOURCE, "x").trim_end_matches(".x")
        )],
        ..StreamPolicy::events(STREAM)
    };
    herald_jetstream::JetStream::new(js.client().clone(), Duration::from_secs(5), STREAM)
        .ensure_stream(&policy)
        .await
        .map_err(|e| err(&e))?;
    let stream = js.get_stream(STREAM).await.map_err(|e| err(&e))?;
    let started = Instant::now();
    for i in 0..n {
        let ty = if i == 0 {
            TYPE.to_owned()
        } else {
            format!("other.c{i}.v1")
        };
        stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(format!("bench-c{i}")),
                filter_subject: event_subject(SOURCE, &ty),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
    }
    eprintln!(
        "  {n} consumers created in {:.1?} (interest retention)",
        started.elapsed()
    );
    Ok(())
}

pub async fn run(args: BenchArgs, env: &dyn Env) -> Result<(), BenchError> {
    let s = Settings::resolve(&args, env)?;
    let (embedded, url, js) = bench_nats(&s.nats_url, &s.nats_server_bin).await?;
    if s.consumers > 0 {
        add_consumers(&js, s.consumers).await?;
    }
    let nats_rss = || embedded.as_ref().map(|n| memory_kib(n.pid()).0);
    let nats_rss_before = nats_rss();

    // The sidecar under test: this very binary.
    let (listen, admin) = (free_addr()?, free_addr()?);
    let exe = std::env::current_exe().map_err(|e| BenchError::Runtime(e.to_string()))?;
    let child = std::process::Command::new(exe)
        .args([
            "sidecar",
            "--app-id",
            "bench",
            "--nats-url",
            &url,
            "--stream",
            STREAM,
        ])
        .args([
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .env("HERALD_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Runtime(format!("cannot start the sidecar: {e}")))?;
    let sidecar = SidecarProcess(child);
    wait_ready(admin).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, _) = memory_kib(sidecar.0.id());

    // A JSON payload of exactly `payload` bytes, valid as structured `data` too.
    let pad = s.payload.saturating_sub(10).max(1);
    let data = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(pad)));
    let payload = Arc::new(Payload {
        data,
        counter: AtomicU64::new(0),
        run: uuid::Uuid::new_v4().simple().to_string(),
        sent_epoch: None,
    });

    eprintln!(
        "herald bench publish: {} concurrent, {} B payload, {:?} per scenario after {:?} warm-up, NATS {url}",
        s.concurrency,
        payload.data.len(),
        s.duration,
        s.warmup
    );
    let mut runs = Vec::new();
    let purge = || {
        let js = js.clone();
        async move {
            if let Ok(st) = js.get_stream(STREAM).await {
                let _ = st.purge().await;
            }
        }
    };
    if s.wants("raw") {
        purge().await;
        runs.push(
            scenario(
                "raw async-nats",
                Target::Raw(js.clone()),
                s.concurrency,
                None,
                &s,
                &payload,
            )
            .await?,
        );
    }
    if s.wants("sidecar") {
        purge().await;
        runs.push(
            scenario(
                "sidecar binary",
                Target::Binary(listen),
                s.concurrency,
                None,
                &s,
                &payload,
            )
            .await?,
        );
    }
    if s.wants("batch") {
        purge().await;
        let name = format!("sidecar batch x{}", s.batch);
        runs.push(
            scenario(
                &name,
                Target::Batch(listen, s.batch),
                s.concurrency,
                None,
                &s,
                &payload,
            )
            .await?,
        );
    }
    let mut rate_runs = Vec::new();
    if s.wants("rate") {
        // Enough workers that one slow request does not hold up the schedule.
        let workers = 8;
        purge().await;
        rate_runs.push(
            scenario(
                &format!("raw @ {}/s", s.rate),
                Target::Raw(js.clone()),
                workers,
                Some(s.rate),
                &s,
                &payload,
            )
            .await?,
        );
        purge().await;
        rate_runs.push(
            scenario(
                &format!("sidecar @ {}/s", s.rate),
                Target::Binary(listen),
                workers,
                Some(s.rate),
                &s,
                &payload,
            )
            .await?,
        );
    }
    let (after_rss, peak_rss) = memory_kib(sidecar.0.id());
    let nats_after = nats_rss();
    drop(sidecar);
    let _ = js.delete_stream(STREAM).await;

    println!();
    println!(
        "{:<24} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "scenario", "events/s", "p50", "p90", "p99", "p99.9", "max", "errors"
    );
    for r in runs.iter().chain(&rate_runs) {
        println!(
            "{:<24} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            r.name,
            r.rate(),
            r.pct(0.5),
            r.pct(0.9),
            r.pct(0.99),
            r.pct(0.999),
            fmt_ns(r.hist.max()),
            r.errors
        );
    }
    println!(
        "(batch latency is per request of {} events; fixed-rate latency counts from the scheduled time when a request had to queue)",
        s.batch
    );
    let find = |prefix: &str| {
        runs.iter()
            .find(|r| r.name.starts_with(prefix))
            .map(Run::rate)
    };
    if let Some(raw) = find("raw") {
        if let Some(side) = find("sidecar binary") {
            println!("ratio sidecar binary / raw async-nats: {:.2}", side / raw);
        }
        if let Some(batch) = find("sidecar batch") {
            println!("ratio sidecar batch / raw async-nats:  {:.2}", batch / raw);
        }
    }
    println!(
        "sidecar memory: RSS idle {:.1} MiB, after the run {:.1} MiB, peak {:.1} MiB",
        idle_rss as f64 / 1024.0,
        after_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    if let (Some(before), Some(after)) = (nats_rss_before, nats_after) {
        println!(
            "nats-server memory with {} consumers on the stream: RSS {:.1} MiB before the run, {:.1} MiB after",
            s.consumers,
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
    }
    Ok(())
}

async fn wait_ready(admin: SocketAddr) -> Result<(), BenchError> {
    let until = Instant::now() + Duration::from_secs(20);
    while !herald_runtime::admin::get_ok(admin, "/readyz")
        .await
        .unwrap_or(false)
    {
        if Instant::now() > until {
            return Err(BenchError::Runtime(
                "the sidecar under test did not become ready within 20 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
