//! `herald bench deliver`: delivery throughput and end-to-end latency, beside raw async-nats
//! consumers in the same run.
//!
//! The app is an HTTP server inside this process that answers `204` at once and counts what it
//! gets. Scenarios, for each `--max-in-flight` value M:
//! - `raw`: an async-nats pull consumer over a pre-filled stream, M acks in flight, no HTTP: the
//!   ceiling JetStream sets;
//! - `raw+http`: the same consumer POSTing each event to the app before acking, M in flight: what a
//!   hand-written consumer in the app would do;
//! - `sidecar`: a `herald sidecar` process (this binary) subscribed with `maxInFlight: M` and
//!   `start: all` over the same pre-filled events, delivering to the app. Its CPU time is read from
//!   /proc over the delivery window.
//! - `sidecar+filter`: the same with the attribute filter `region = 'eu'`, which half the events
//!   pass; the rate counts every event taken off the stream (delivered or filtered).
//! - `dispatcher`: a `herald dispatch` process (this binary) given one sink subscription through
//!   the configuration bucket, as the controller writes it (`maxInFlight: M`, `start: all`), the
//!   sink's cluster DNS name connected to the app with `--resolve`: the central dispatcher's rate
//!   and CPU per event beside the sidecar's.
//!
//! Then `e2e`: `--apps` sidecars subscribe (each its own app id, so each gets every event); events
//! are published through the first one's HTTP API at `--rate` events/s, each carrying the time it
//! was due; the app records publish-to-delivery latency per delivery.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use crate::BenchError;
use crate::{
    Payload, SOURCE, STREAM, SidecarProcess, TYPE, Target, fmt_ns, free_addr, new_hist, wait_ready,
};
use herald_core::consumer::{self, Subscriber};
use herald_core::contract::{StartPosition, Subscription};
use herald_core::event::TraceContext;
use herald_core::filter::TypeFilter;
use herald_core::settings::{ConfigError, Env, Resolver, parse_count};
use herald_core::subject::event_subject;
use herald_core::wire;
use herald_jetstream::parse_nats_url;

/// The extension attribute carrying, in nanoseconds since the run's epoch, when an event was due.
pub(super) const SENT_HEADER: &str = "ce-benchsent";

#[derive(Debug, clap::Args, Default)]
pub struct DeliverArgs {
    /// NATS server to use [default: start a throwaway nats-server]
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Comma-separated max-in-flight values to measure [default: 64,1]
    #[arg(long)]
    pub max_in_flight: Option<String>,
    /// Events per throughput scenario [default: 100000]
    #[arg(long)]
    pub events: Option<String>,
    /// Data bytes per event [default: 256]
    #[arg(long)]
    pub payload: Option<String>,
    /// Events per second in the end-to-end scenario [default: 1000]
    #[arg(long)]
    pub rate: Option<String>,
    /// Subscribing apps (sidecars) in the end-to-end scenario [default: 1]
    #[arg(long)]
    pub apps: Option<String>,
    /// Measured time of the end-to-end scenario [default: 10s]
    #[arg(long)]
    pub duration: Option<String>,
    /// Unmeasured time before the end-to-end scenario [default: 2s]
    #[arg(long)]
    pub warmup: Option<String>,
    /// Comma-separated scenarios: raw, raw+http, sidecar, sidecar+filter, e2e [default: all]
    #[arg(long)]
    pub scenarios: Option<String>,
    /// nats-server binary to start when no --nats-url is given [default: nats-server]
    #[arg(long)]
    pub nats_server_bin: Option<String>,
}

const SCENARIOS: [&str; 6] = [
    "raw",
    "raw+http",
    "sidecar",
    "sidecar+filter",
    "dispatcher",
    "e2e",
];

/// The attribute filter of the `sidecar+filter` scenario: half the pre-filled events carry
/// `region: eu`, the other half `region: us`.
const HALF_FILTER: &str = "region = 'eu'";

struct Settings {
    nats_url: Option<String>,
    in_flight: Vec<usize>,
    events: u64,
    payload: usize,
    rate: u64,
    apps: usize,
    duration: Duration,
    warmup: Duration,
    scenarios: Vec<String>,
    nats_server_bin: String,
}

impl Settings {
    fn resolve(a: &DeliverArgs, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut r = Resolver::new(env);
        let s = Settings {
            nats_url: r.get("nats-url", &a.nats_url, parse_nats_url),
            in_flight: r
                .get("max-in-flight", &a.max_in_flight, |v| {
                    v.split(',')
                        .map(|n| parse_count(n.trim(), 1, 10_000))
                        .collect()
                })
                .unwrap_or_else(|| vec![64, 1]),
            events: r
                .get("events", &a.events, |v| parse_count(v, 1, 100_000_000))
                .unwrap_or(100_000) as u64,
            payload: r
                .get("payload", &a.payload, herald_core::settings::parse_bytes)
                .unwrap_or(256) as usize,
            rate: r
                .get("rate", &a.rate, |v| parse_count(v, 1, 1_000_000))
                .unwrap_or(1000) as u64,
            apps: r
                .get("apps", &a.apps, |v| parse_count(v, 1, 64))
                .unwrap_or(1),
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
            scenarios: r
                .get("scenarios", &a.scenarios, |v| {
                    crate::parse_scenarios(v, &SCENARIOS)
                })
                .unwrap_or_else(|| SCENARIOS.map(String::from).to_vec()),
            nats_server_bin: r
                .get("nats-server-bin", &a.nats_server_bin, |v| Ok(v.to_owned()))
                .unwrap_or_else(|| "nats-server".into()),
        };
        r.finish()?;
        Ok(s)
    }

    fn wants(&self, s: &str) -> bool {
        self.scenarios.iter().any(|x| x == s)
    }
}

/// The app: answers 204, counts deliveries and records end-to-end latency; when started with
/// [`App::start_recording`], also every delivery's `ce-id` and arrival (since the epoch), for
/// the failover bench's loss and duplicate counts.
pub(crate) struct App {
    pub(crate) addr: SocketAddr,
    received: Arc<AtomicU64>,
    epoch: Instant,
    pub(crate) latency: Mutex<Histogram<u64>>,
    pub(crate) arrivals: Option<Mutex<Vec<(Duration, String)>>>,
}

impl App {
    pub(crate) async fn start(epoch: Instant) -> Result<Arc<App>, BenchError> {
        Self::serve(epoch, false).await
    }

    pub(crate) async fn start_recording(epoch: Instant) -> Result<Arc<App>, BenchError> {
        Self::serve(epoch, true).await
    }

    async fn serve(epoch: Instant, record: bool) -> Result<Arc<App>, BenchError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| BenchError::Runtime(format!("cannot start the bench app: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| BenchError::Runtime(e.to_string()))?;
        let app = Arc::new(App {
            addr,
            received: Arc::new(AtomicU64::new(0)),
            epoch,
            latency: Mutex::new(new_hist()),
            arrivals: record.then(|| Mutex::new(Vec::new())),
        });
        let this = app.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let app = this.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let app = app.clone();
                        async move { Ok::<_, std::convert::Infallible>(app.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(app)
    }

    async fn handle(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<Full<Bytes>> {
        let sent = req
            .headers()
            .get(SENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(arrivals) = &self.arrivals {
            let id = req
                .headers()
                .get("ce-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if let Ok(mut a) = arrivals.lock() {
                a.push((self.epoch.elapsed(), id));
            }
        }
        let _ = req.into_body().collect().await;
        if let Some(sent) = sent {
            let now = self.epoch.elapsed().as_nanos() as u64;
            if let Ok(mut h) = self.latency.lock() {
                let _ = h.record(now.saturating_sub(sent).max(1));
            }
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        let mut resp = http::Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = http::StatusCode::NO_CONTENT;
        resp
    }

    pub(crate) fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The delivery counter, for a progress reporter that outlives a borrow.
    pub(crate) fn received_counter(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }
}

/// CPU time (user + system) of a process so far. Linux reports it in clock ticks of 1/100 s
/// (USER_HZ), so runs are long enough for that to be a small error.
pub(crate) fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the command name: state is field 3, utime 14, stime 15.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// One throughput result.
struct Throughput {
    name: String,
    events: u64,
    elapsed: Duration,
    cpu: Option<Duration>,
}

impl Throughput {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

pub async fn run(args: DeliverArgs, env: &dyn Env) -> Result<(), BenchError> {
    let s = Settings::resolve(&args, env)?;
    let (_embedded, url, js) = crate::bench_nats(&s.nats_url, &s.nats_server_bin).await?;
    let epoch = Instant::now();
    let app = App::start(epoch).await?;
    let pad = s.payload.saturating_sub(10).max(1);
    let payload = Arc::new(Payload {
        data: Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(pad))),
        counter: AtomicU64::new(0),
        run: uuid::Uuid::new_v4().simple().to_string(),
        sent_epoch: None,
    });
    let work = tempfile::tempdir().map_err(|e| BenchError::Runtime(e.to_string()))?;
    eprintln!(
        "herald bench deliver: {} events per throughput scenario, max in flight {:?}, {} B payload, NATS {url}",
        s.events,
        s.in_flight,
        payload.data.len()
    );

    let mut results = Vec::new();
    let mut fill_rate = None;
    for &m in &s.in_flight {
        if !(s.wants("raw")
            || s.wants("raw+http")
            || s.wants("sidecar")
            || s.wants("sidecar+filter")
            || s.wants("dispatcher"))
        {
            break;
        }
        if let Ok(st) = js.get_stream(STREAM).await {
            let _ = st.purge().await;
        }
        let t = Instant::now();
        prefill(&js, &payload, s.events).await?;
        fill_rate.get_or_insert(s.events as f64 / t.elapsed().as_secs_f64());
        for (name, http) in [("raw", false), ("raw+http", true)] {
            if s.wants(name) {
                let who = bench_subscriber(&format!("{name}-{m}"), &payload.run);
                let r = raw_consume(&js, &who, m, s.events, http.then_some(app.addr)).await?;
                eprintln!(
                    "  {name} @ {m}: {:.0} ev/s",
                    r.events as f64 / r.elapsed.as_secs_f64()
                );
                results.push(Throughput {
                    name: format!("{name} @ in-flight {m}"),
                    ..r
                });
            }
        }
        for (name, filter) in [("sidecar", None), ("sidecar+filter", Some(HALF_FILTER))] {
            if s.wants(name) {
                let r = sidecar_consume(&url, &app, m, s.events, &payload.run, work.path(), filter)
                    .await?;
                eprintln!("  {name} @ {m}: {:.0} ev/s", r.rate());
                results.push(Throughput {
                    name: format!("{name} @ in-flight {m}"),
                    ..r
                });
            }
        }
        if s.wants("dispatcher") {
            let r = dispatcher_consume(&url, &js, &app, m, s.events, &payload.run).await?;
            eprintln!("  dispatcher @ {m}: {:.0} ev/s", r.rate());
            results.push(Throughput {
                name: format!("dispatcher @ in-flight {m}"),
                ..r
            });
        }
    }

    let mut e2e = None;
    if s.wants("e2e") {
        e2e = Some(end_to_end(&s, &url, &app, &payload, work.path(), epoch).await?);
    }
    let _ = js.delete_stream(STREAM).await;

    println!();
    if let Some(f) = fill_rate {
        println!("(pre-filled the stream at {f:.0} ev/s with pipelined raw publishes)");
    }
    println!(
        "{:<28} {:>10} {:>9} {:>14}",
        "scenario", "events/s", "vs raw", "sidecar CPU/ev"
    );
    for r in &results {
        let m = r.name.rsplit(' ').next().unwrap_or("");
        let raw = results
            .iter()
            .find(|x| x.name == format!("raw @ in-flight {m}"))
            .map(Throughput::rate);
        println!(
            "{:<28} {:>10.0} {:>9} {:>14}",
            r.name,
            r.rate(),
            raw.map_or("-".into(), |raw| format!("{:.2}", r.rate() / raw)),
            r.cpu.map_or("-".into(), |c| format!(
                "{:.1} µs",
                c.as_secs_f64() * 1e6 / r.events as f64
            )),
        );
    }
    if let Some((rate, publish, deliver, cpu)) = e2e {
        println!();
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "end to end", "samples", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, h) in [
            (format!("publish (HTTP 204) @ {rate}/s"), &publish),
            (
                format!("publish→app @ {rate}/s, {} app(s)", s.apps),
                &deliver,
            ),
        ] {
            println!(
                "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                name,
                h.len(),
                fmt_ns(h.value_at_quantile(0.5)),
                fmt_ns(h.value_at_quantile(0.9)),
                fmt_ns(h.value_at_quantile(0.99)),
                fmt_ns(h.value_at_quantile(0.999)),
                fmt_ns(h.max())
            );
        }
        println!(
            "sidecar CPU per delivered event in the e2e run (publish + delivery): {cpu:.1} µs"
        );
    }
    Ok(())
}

/// `bench/<name>-<run>`: a fresh consumer per scenario, so none resumes another's position.
fn bench_subscriber(name: &str, run: &str) -> Subscriber {
    Subscriber {
        namespace: "bench".into(),
        app_id: format!("{name}-{}", &run[..8.min(run.len())]),
    }
}

fn bench_subscription(max_in_flight: usize) -> Result<Subscription, BenchError> {
    let filter = TypeFilter::with_source(Some(SOURCE), TYPE)
        .map_err(|e| BenchError::Runtime(e.to_string()))?;
    Ok(Subscription {
        max_in_flight,
        start: StartPosition::All,
        ..Subscription::new(filter)
    })
}

/// Stores `n` events, pipelining up to 1,000 unacknowledged publishes.
async fn prefill(js: &jetstream::Context, p: &Payload, n: u64) -> Result<(), BenchError> {
    let subject = event_subject(SOURCE, TYPE);
    let mut sent = 0;
    while sent < n {
        let mut acks = Vec::new();
        for _ in 0..(n - sent).min(1000) {
            let mut ev = p.event();
            let region = if sent % 2 == 0 { "eu" } else { "us" };
            ev.attributes.push(("region".into(), region.into()));
            let msg = PublishMessage::build()
                .headers(herald_jetstream::publish::header_map(&wire::message(
                    &ev,
                    &TraceContext::default(),
                )))
                .payload(ev.data.clone());
            acks.push(
                js.send_publish(subject.clone(), msg)
                    .await
                    .map_err(|e| BenchError::Runtime(format!("pre-fill: {e}")))?,
            );
            sent += 1;
        }
        for a in acks {
            a.await
                .map_err(|e| BenchError::Runtime(format!("pre-fill: {e}")))?;
        }
    }
    Ok(())
}

/// A raw async-nats consumer with herald's consumer settings: pulls, optionally POSTs to the app,
/// acks, with at most `m` events in flight.
async fn raw_consume(
    js: &jetstream::Context,
    who: &Subscriber,
    m: usize,
    n: u64,
    http: Option<SocketAddr>,
) -> Result<Throughput, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError::Runtime(format!("raw consumer: {e}"));
    let sub = bench_subscription(m)?;
    let stream = js.get_stream(STREAM).await.map_err(|e| err(&e))?;
    let c = stream
        .create_consumer(herald_jetstream::consume::config(&consumer::spec(
            who, &sub,
        )))
        .await
        .map_err(|e| err(&e))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let messages = c
        .stream()
        .max_messages_per_batch(m)
        .messages()
        .await
        .map_err(|e| err(&e))?;
    let start = Instant::now();
    let done = messages
        .take(n as usize)
        .map(|msg| {
            let client = client.clone();
            async move {
                let msg = msg.map_err(|e| err(&e))?;
                if let Some(addr) = http {
                    let mut req = http::Request::post(format!("http://{addr}/"));
                    for (name, values) in msg.headers.iter().flat_map(|h| h.iter()) {
                        for v in values {
                            req = req.header(AsRef::<str>::as_ref(name), v.as_str());
                        }
                    }
                    let req = req
                        .body(Full::new(msg.payload.clone()))
                        .map_err(|e| err(&e))?;
                    let resp = client.request(req).await.map_err(|e| err(&e))?;
                    let _ = resp.into_body().collect().await;
                }
                msg.ack().await.map_err(|e| err(&*e))
            }
        })
        .buffer_unordered(m)
        .fold(Ok(0u64), |acc, r| async move {
            match (acc, r) {
                (Ok(k), Ok(())) => Ok(k + 1),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        })
        .await?;
    let elapsed = start.elapsed();
    let _ = stream
        .delete_consumer(&who.consumer_name(&sub.filter))
        .await;
    Ok(Throughput {
        name: String::new(),
        events: done,
        elapsed,
        cpu: None,
    })
}

/// Starts `herald sidecar` subscribed from an annotations file (YAML form).
pub(crate) async fn start_sidecar(
    url: &str,
    app: &App,
    app_id: &str,
    yaml: &str,
    dir: &std::path::Path,
) -> Result<(SidecarProcess, SocketAddr), BenchError> {
    let file = dir.join(format!("{app_id}.annotations"));
    let quoted = serde_json::to_string(yaml).map_err(|e| BenchError::Runtime(e.to_string()))?;
    let mut text = format!("herald.dev/app-port=\"{}\"\n", app.addr.port());
    // No subscriptions (a publisher only): no annotation, as an empty list is refused.
    if !yaml.is_empty() {
        text.push_str(&format!("herald.dev/subscriptions={quoted}\n"));
    }
    std::fs::write(&file, text).map_err(|e| BenchError::Runtime(e.to_string()))?;
    let (listen, admin) = (free_addr()?, free_addr()?);
    // HERALD_BENCH_SIDECAR_BIN: another build's sidecar (a before-and-after comparison in one
    // harness); by default this very binary.
    let exe = match std::env::var_os("HERALD_BENCH_SIDECAR_BIN") {
        Some(bin) => std::path::PathBuf::from(bin),
        None => std::env::current_exe().map_err(|e| BenchError::Runtime(e.to_string()))?,
    };
    let child = std::process::Command::new(exe)
        .args(["sidecar", "--app-id", app_id, "--namespace", "bench"])
        .args(["--nats-url", url, "--stream", STREAM])
        .args(["--listen", &listen.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--annotations-file")
        .arg(&file)
        .env(
            "HERALD_LOG",
            std::env::var("HERALD_BENCH_SIDECAR_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Runtime(format!("cannot start the sidecar: {e}")))?;
    let sidecar = SidecarProcess(child);
    wait_ready(admin).await?;
    Ok((sidecar, listen))
}

/// The sidecar delivers the pre-filled events; timed from its first delivery to its last. With a
/// filter that passes every other event, half are delivered; the rate counts all `n` taken off the
/// stream.
async fn sidecar_consume(
    url: &str,
    app: &App,
    m: usize,
    n: u64,
    run: &str,
    dir: &std::path::Path,
    filter: Option<&str>,
) -> Result<Throughput, BenchError> {
    let before = app.count();
    let mut yaml =
        format!("- type: {TYPE}\n  source: {SOURCE}\n  maxInFlight: {m}\n  start: all\n");
    if let Some(f) = filter {
        let quoted = serde_json::to_string(f).map_err(|e| BenchError::Runtime(e.to_string()))?;
        yaml.push_str(&format!("  filters: [{{sql: {quoted}}}]\n"));
    }
    // Events taken off the stream per delivery.
    let per_delivery = if filter.is_some() { 2 } else { 1 };
    let name = if filter.is_some() {
        "sidecar+filter"
    } else {
        "sidecar"
    };
    let app_id = bench_subscriber(&format!("{name}-{m}"), run).app_id;
    let (sidecar, _) = start_sidecar(url, app, &app_id, &yaml, dir).await?;
    measure(
        app,
        &sidecar,
        before,
        n,
        per_delivery,
        &format!("{name} @ {m}"),
    )
    .await
}

/// The `dispatcher` scenario: one sink subscription in the bucket, `herald dispatch` delivering
/// it to the app through `--resolve`.
async fn dispatcher_consume(
    url: &str,
    js: &jetstream::Context,
    app: &App,
    m: usize,
    n: u64,
    run: &str,
) -> Result<Throughput, BenchError> {
    use herald_core::broker::ConfigStore as _;
    let before = app.count();
    let host = "bench-sink.bench.svc.cluster.local";
    let port = app.addr.port();
    let value = serde_json::json!([{
        "namespace": "bench",
        "name": format!("dispatch-{m}-{}", &run[..8]),
        "url": format!("http://{host}:{port}/"),
        "entries": [{"type": TYPE, "source": SOURCE, "maxInFlight": m, "start": "all"}],
    }]);
    let broker =
        herald_jetstream::JetStream::new(js.client().clone(), Duration::from_secs(5), STREAM);
    let put = async {
        broker
            .ensure_bucket(herald_core::defaults::BUCKET, 1)
            .await?;
        broker
            .put(
                herald_core::defaults::BUCKET,
                herald_core::sinks::SINKS_KEY,
                Bytes::from(value.to_string()),
            )
            .await
    };
    put.await
        .map_err(|e| BenchError::Runtime(format!("the sink subscription: {e}")))?;
    let admin = free_addr()?;
    let exe = match std::env::var_os("HERALD_BENCH_SIDECAR_BIN") {
        Some(bin) => std::path::PathBuf::from(bin),
        None => std::env::current_exe().map_err(|e| BenchError::Runtime(e.to_string()))?,
    };
    let child = std::process::Command::new(exe)
        .args(["dispatch", "--nats-url", url, "--stream", STREAM])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .env(
            "HERALD_LOG",
            std::env::var("HERALD_BENCH_SIDECAR_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Runtime(format!("cannot start the dispatcher: {e}")))?;
    let dispatcher = SidecarProcess(child);
    wait_ready(admin).await?;
    let r = measure(app, &dispatcher, before, n, 1, &format!("dispatcher @ {m}")).await;
    // The next scenario starts from an empty key.
    let _ = broker
        .put(
            herald_core::defaults::BUCKET,
            herald_core::sinks::SINKS_KEY,
            Bytes::from_static(b"[]"),
        )
        .await;
    r
}

/// Waits until `process` delivered what `n` pre-filled events make (`per_delivery` taken off
/// the stream per delivery), timed from its first delivery to its last, with its CPU time.
async fn measure(
    app: &App,
    process: &SidecarProcess,
    before: u64,
    n: u64,
    per_delivery: u64,
    name: &str,
) -> Result<Throughput, BenchError> {
    let n_delivered = n.div_ceil(per_delivery);
    let pid = process.0.id();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        let got = app.count() - before;
        if got >= 1 && first.is_none() {
            first = Some((Instant::now(), cpu_time(pid), got));
        }
        if got >= n_delivered {
            break;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Runtime(format!(
                "{name}: {got} of {n_delivered} events delivered within 600 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (t0, cpu0, got0) = first.unwrap_or((Instant::now(), Duration::ZERO, 0));
    let cpu = cpu_time(pid).saturating_sub(cpu0);
    Ok(Throughput {
        name: String::new(),
        events: n.saturating_sub(got0 * per_delivery),
        elapsed: t0.elapsed(),
        cpu: Some(cpu),
    })
}

/// Publishes at `rate` through the first sidecar while `apps` sidecars deliver to the app.
/// Returns the rate, the publish and publish→app latency histograms, and the publishing sidecar's
/// CPU per delivered event.
async fn end_to_end(
    s: &Settings,
    url: &str,
    app: &Arc<App>,
    payload: &Arc<Payload>,
    dir: &std::path::Path,
    epoch: Instant,
) -> Result<(u64, Histogram<u64>, Histogram<u64>, f64), BenchError> {
    let mut sidecars = Vec::new();
    for i in 0..s.apps {
        let yaml = format!("- type: {TYPE}\n  source: {SOURCE}\n  maxInFlight: 64\n");
        let app_id = bench_subscriber(&format!("e2e-{i}"), &payload.run).app_id;
        sidecars.push(start_sidecar(url, app, &app_id, &yaml, dir).await?);
    }
    let listen = sidecars[0].1;
    let timed = Arc::new(Payload {
        data: payload.data.clone(),
        counter: AtomicU64::new(0),
        // Ids of their own: the pre-filled events' ids are still in the duplicate window.
        run: format!("{}-e2e", payload.run),
        sent_epoch: Some(epoch),
    });
    let settings = crate::Settings {
        nats_url: None,
        concurrency: 8,
        payload: s.payload,
        duration: s.duration,
        warmup: s.warmup,
        batch: 1,
        rate: s.rate,
        scenarios: vec![],
        nats_server_bin: String::new(),
        consumers: 0,
    };
    // Deliveries of warm-up events are not recorded: reset when measuring starts.
    let reset = {
        let (app, warmup) = (app.clone(), s.warmup);
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            if let Ok(mut h) = app.latency.lock() {
                h.reset();
            }
        })
    };
    let pid = sidecars[0].0.0.id();
    let cpu0 = cpu_time(pid);
    let publish = crate::scenario(
        "e2e publish",
        Target::Binary(listen),
        8,
        Some(s.rate),
        &settings,
        &timed,
    )
    .await?;
    // Let the last deliveries land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = cpu_time(pid).saturating_sub(cpu0);
    reset
        .await
        .map_err(|e| BenchError::Runtime(e.to_string()))?;
    // Every published event was also delivered through this sidecar.
    let per_event = cpu.as_secs_f64() * 1e6 / (timed.counter.load(Ordering::Relaxed).max(1)) as f64;
    let deliver = app
        .latency
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| new_hist());
    drop(sidecars);
    Ok((s.rate, publish.hist, deliver, per_event))
}
