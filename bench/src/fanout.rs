//! `herald bench fanout`: what many sidecars with many subscriptions cost, idle and under load.
//!
//! `--sidecars` N `herald sidecar` processes (this binary), each its own app id with
//! `--subscriptions` M subscriptions on distinct types (`fan.s<i>.t<j>.v1`), all delivering to one
//! app inside this process that answers 204. Then:
//! - **idle** for `--idle`: nothing is published; the CPU time of nats-server (when this run
//!   started it) and of the sidecars, and the JetStream API requests, pull requests included
//!   (counted by a client subscribed to `$JS.API.>` in the same account, which the server sends
//!   a copy of every request; the account's `api.total` leaves pull requests out);
//! - **loaded** for `--duration` after `--warmup`, unless `--rate 0`: events published at
//!   `--rate` events/s in total, round robin over the N × M types (so each is delivered once),
//!   each carrying the time it was due — with raw async-nats, or with `--publishers P` through
//!   the publish API of the first P sidecars (binary mode, a keep-alive connection each): the
//!   same CPU and API figures, the delivery rate, and due-to-app latency percentiles.
//!
//! Sidecar memory (RSS) is read from /proc after each phase. Events go to `HERALD_BENCH`, created
//! empty and deleted at the end; the configuration bucket is created as the controller would.
//! `HERALD_BENCH_SIDECAR_BIN` runs another build's sidecars (before and after in one harness).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use herald_core::event::{Event, TraceContext};
use herald_core::settings::{ConfigError, Env, Resolver, parse_count};
use herald_core::subject::event_subject;
use herald_core::wire;
use herald_jetstream::parse_nats_url;

use crate::deliver::{App, SENT_HEADER, cpu_time, start_sidecar};
use crate::{BenchError, SOURCE, SidecarProcess, fmt_ns, memory_kib};

#[derive(Debug, clap::Args, Default)]
pub struct FanoutArgs {
    /// NATS server to use [default: start a throwaway nats-server]
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Sidecar processes [default: 40]
    #[arg(long)]
    pub sidecars: Option<String>,
    /// Subscriptions per sidecar, each on a type of its own [default: 5]
    #[arg(long)]
    pub subscriptions: Option<String>,
    /// Measured idle time [default: 120s: an idle subscription pulls once every two minutes]
    #[arg(long)]
    pub idle: Option<String>,
    /// Events per second in the loaded phase, over all types; 0 skips it [default: 1000]
    #[arg(long)]
    pub rate: Option<String>,
    /// Measured time of the loaded phase [default: 20s]
    #[arg(long)]
    pub duration: Option<String>,
    /// Unmeasured time before each phase [default: 5s]
    #[arg(long)]
    pub warmup: Option<String>,
    /// Publish through the HTTP API of this many of the sidecars instead of raw async-nats
    /// [default: 0]
    #[arg(long)]
    pub publishers: Option<String>,
    /// nats-server binary to start when no --nats-url is given [default: nats-server]
    #[arg(long)]
    pub nats_server_bin: Option<String>,
}

struct Settings {
    nats_url: Option<String>,
    sidecars: usize,
    subscriptions: usize,
    idle: Duration,
    rate: u64,
    duration: Duration,
    warmup: Duration,
    publishers: usize,
    nats_server_bin: String,
}

impl Settings {
    fn resolve(a: &FanoutArgs, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut r = Resolver::new(env);
        let range = herald_core::settings::in_range(herald_core::limits::BENCH_DURATION);
        let s = Settings {
            nats_url: r.get("nats-url", &a.nats_url, parse_nats_url),
            sidecars: r
                .get("sidecars", &a.sidecars, |v| parse_count(v, 1, 1000))
                .unwrap_or(40),
            subscriptions: r
                .get("subscriptions", &a.subscriptions, |v| {
                    parse_count(v, 1, 100)
                })
                .unwrap_or(5),
            idle: r
                .get("idle", &a.idle, &range)
                .unwrap_or(Duration::from_secs(120)),
            rate: r
                .get("rate", &a.rate, |v| parse_count(v, 0, 1_000_000))
                .unwrap_or(1000) as u64,
            duration: r
                .get("duration", &a.duration, &range)
                .unwrap_or(Duration::from_secs(20)),
            warmup: r
                .get("warmup", &a.warmup, &range)
                .unwrap_or(Duration::from_secs(5)),
            publishers: r
                .get("publishers", &a.publishers, |v| parse_count(v, 0, 1000))
                .unwrap_or(0),
            nats_server_bin: r
                .get("nats-server-bin", &a.nats_server_bin, |v| Ok(v.to_owned()))
                .unwrap_or_else(|| "nats-server".into()),
        };
        r.finish()?;
        if s.publishers > s.sidecars {
            return Err(ConfigError(vec![format!(
                "--publishers={}: at most --sidecars ({})",
                s.publishers, s.sidecars
            )]));
        }
        Ok(s)
    }
}

fn ty(sidecar: usize, sub: usize) -> String {
    format!("fan.s{sidecar}.t{sub}.v1")
}

/// Counts every JetStream API request of the account from now on (a copy of each reaches this
/// subscription), pull requests (`CONSUMER.MSG.NEXT`) apart.
async fn spy(url: &str) -> Result<(Arc<AtomicU64>, Arc<AtomicU64>), BenchError> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| BenchError::Runtime(format!("cannot connect to {url}: {e}")))?;
    let mut sub = client
        .subscribe("$JS.API.>")
        .await
        .map_err(|e| BenchError::Runtime(e.to_string()))?;
    client
        .flush()
        .await
        .map_err(|e| BenchError::Runtime(e.to_string()))?;
    let (all, pulls) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (a, p) = (all.clone(), pulls.clone());
    tokio::spawn(async move {
        let _client = client;
        while let Some(m) = futures::StreamExt::next(&mut sub).await {
            a.fetch_add(1, Ordering::Relaxed);
            if m.subject.contains(".CONSUMER.MSG.NEXT.") {
                p.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok((all, pulls))
}

/// One phase's figures.
struct Phase {
    name: &'static str,
    window: Duration,
    nats_cpu: Option<Duration>,
    sidecars_cpu: Duration,
    api_requests: u64,
    pulls: u64,
    delivered: u64,
    rss_kib: Vec<u64>,
    latency: Option<hdrhistogram::Histogram<u64>>,
}

struct Measure<'a> {
    api: (Arc<AtomicU64>, Arc<AtomicU64>),
    nats_pid: Option<u32>,
    sidecars: &'a [SidecarProcess],
    app: &'a App,
}

impl Measure<'_> {
    fn cpu(&self) -> (Option<Duration>, Duration) {
        let nats = self.nats_pid.map(cpu_time);
        let sidecars = self.sidecars.iter().map(|s| cpu_time(s.0.id())).sum();
        (nats, sidecars)
    }

    /// Measures `window` (whatever load runs meanwhile is the caller's).
    async fn phase(
        &self,
        name: &'static str,
        window: Duration,
        latency: bool,
    ) -> Result<Phase, BenchError> {
        if latency && let Ok(mut h) = self.app.latency.lock() {
            h.reset();
        }
        let (nats0, side0) = self.cpu();
        let api0 = self.api.0.load(Ordering::Relaxed);
        let pulls0 = self.api.1.load(Ordering::Relaxed);
        let got0 = self.app.count();
        let started = Instant::now();
        // Progress, once a second.
        let reporter = {
            let app_count = self.app.received_counter();
            tokio::spawn(async move {
                let mut last = app_count.load(Ordering::Relaxed);
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let now = app_count.load(Ordering::Relaxed);
                    eprintln!(
                        "  {name}: {:>4.0}s/{:.0}s  {:>8} deliveries/s",
                        started.elapsed().as_secs_f64(),
                        window.as_secs_f64(),
                        now - last
                    );
                    last = now;
                }
            })
        };
        tokio::time::sleep(window).await;
        reporter.abort();
        let elapsed = started.elapsed();
        let (nats1, side1) = self.cpu();
        let api = self.api.0.load(Ordering::Relaxed).saturating_sub(api0);
        let pulls = self.api.1.load(Ordering::Relaxed).saturating_sub(pulls0);
        let mut rss_kib: Vec<u64> = self
            .sidecars
            .iter()
            .map(|s| memory_kib(s.0.id()).0)
            .collect();
        rss_kib.sort_unstable();
        Ok(Phase {
            name,
            window: elapsed,
            nats_cpu: nats1.zip(nats0).map(|(a, b)| a.saturating_sub(b)),
            sidecars_cpu: side1.saturating_sub(side0),
            api_requests: api,
            pulls,
            delivered: self.app.count().saturating_sub(got0),
            rss_kib,
            latency: latency.then(|| {
                self.app
                    .latency
                    .lock()
                    .map(|h| h.clone())
                    .unwrap_or_else(|_| crate::new_hist())
            }),
        })
    }
}

/// Publishes at `rate` events/s in total, round robin over `types`, each event carrying when it
/// was due (so a stall is not hidden), until aborted.
async fn publish_at(
    js: jetstream::Context,
    types: Arc<Vec<String>>,
    rate: u64,
    epoch: Instant,
    run: String,
    counter: Arc<AtomicU64>,
) {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = Instant::now();
    let mut acks = tokio::task::JoinSet::new();
    loop {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let due = start + period.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let ty = &types[(n % types.len() as u64) as usize];
        let sent = due.duration_since(epoch).as_nanos().to_string();
        let ev = Event {
            id: format!("{run}-{n}"),
            source: SOURCE.into(),
            ty: ty.clone(),
            datacontenttype: Some("application/json".into()),
            attributes: vec![(SENT_HEADER.trim_start_matches("ce-").to_owned(), sent)],
            data: bytes::Bytes::from_static(b"{\"fan\":true}"),
        };
        let msg = PublishMessage::build()
            .headers(herald_jetstream::publish::header_map(&wire::message(
                &ev,
                &TraceContext::default(),
            )))
            .payload(ev.data.clone());
        match js.send_publish(event_subject(SOURCE, ty), msg).await {
            Ok(ack) => {
                acks.spawn(ack.into_future());
            }
            Err(e) => eprintln!("publish failed: {e}"),
        }
        while acks.try_join_next().is_some() {}
    }
}

/// Publishes at `rate` events/s in total through the publish APIs at `apis` (worker k takes
/// events k, k + P, …, each on one keep-alive connection), round robin over `types`, each event
/// carrying when it was due; refused requests are counted in `errors`. Until aborted.
async fn publish_through(
    apis: Vec<std::net::SocketAddr>,
    types: Arc<Vec<String>>,
    rate: u64,
    epoch: Instant,
    run: String,
    errors: Arc<AtomicU64>,
) {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = Instant::now();
    let workers = apis.len() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for (k, addr) in apis.into_iter().enumerate() {
        let (types, run, errors) = (types.clone(), run.clone(), errors.clone());
        tasks.spawn(async move {
            let Ok(mut conn) = crate::Target::Binary(addr).connect().await else {
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut n = k as u64;
            loop {
                let due = start + period.mul_f64(n as f64);
                tokio::time::sleep_until(due.into()).await;
                let ty = &types[(n % types.len() as u64) as usize];
                let sent = due.duration_since(epoch).as_nanos().to_string();
                let req = http::Request::post("/publish")
                    .header(http::header::HOST, "127.0.0.1")
                    .header("ce-specversion", "1.0")
                    .header("ce-id", format!("{run}-{n}"))
                    .header("ce-source", SOURCE)
                    .header("ce-type", ty.as_str())
                    .header(SENT_HEADER, sent)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                        b"{\"fan\":true}",
                    )));
                let ok = match (&mut conn, req) {
                    (crate::Conn::Http(send, _), Ok(req)) => match send.ready().await {
                        Ok(()) => send
                            .send_request(req)
                            .await
                            .is_ok_and(|r| r.status() == http::StatusCode::NO_CONTENT),
                        Err(_) => false,
                    },
                    _ => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                n += workers;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

pub async fn run(args: FanoutArgs, env: &dyn Env) -> Result<(), BenchError> {
    let s = Settings::resolve(&args, env)?;
    let (embedded, url, js) = crate::bench_nats(&s.nats_url, &s.nats_server_bin).await?;
    // The configuration bucket the controller keeps in a cluster, which sidecars follow.
    {
        use herald_core::broker::ConfigStore as _;
        herald_jetstream::JetStream::new(
            js.client().clone(),
            Duration::from_secs(5),
            crate::STREAM,
        )
        .ensure_bucket(herald_core::defaults::BUCKET, 1)
        .await
        .map_err(|e| BenchError::Runtime(format!("the configuration bucket: {e}")))?;
    }
    let epoch = Instant::now();
    let app = App::start(epoch).await?;
    let dir = tempfile::tempdir().map_err(|e| BenchError::Runtime(e.to_string()))?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    eprintln!(
        "herald bench fanout: {} sidecars × {} subscriptions, idle {:?}, then {} events/s for {:?} after {:?} ({}), NATS {url}",
        s.sidecars,
        s.subscriptions,
        s.idle,
        s.rate,
        s.duration,
        s.warmup,
        if s.publishers > 0 {
            format!("through {} sidecars", s.publishers)
        } else {
            "raw async-nats".to_owned()
        }
    );
    let mut sidecars = Vec::new();
    let mut apis = Vec::new();
    let mut types = Vec::new();
    let started = Instant::now();
    for i in 0..s.sidecars {
        let mut yaml = String::new();
        for j in 0..s.subscriptions {
            let t = ty(i, j);
            yaml.push_str(&format!(
                "- type: {t}\n  source: {SOURCE}\n  maxInFlight: 16\n"
            ));
            types.push(t);
        }
        let app_id = format!("fan{i}-{}", &run[..8]);
        let (sidecar, api) = start_sidecar(&url, &app, &app_id, &yaml, dir.path()).await?;
        sidecars.push(sidecar);
        apis.push(api);
        eprint!("\r  started {}/{} sidecars", i + 1, s.sidecars);
    }
    eprintln!(" in {:.1?}", started.elapsed());
    let measure = Measure {
        api: spy(&url).await?,
        nats_pid: embedded.as_ref().map(|n| n.pid()),
        sidecars: &sidecars,
        app: &app,
    };
    tokio::time::sleep(s.warmup).await;
    let mut phases = vec![measure.phase("idle", s.idle, false).await?];
    if s.rate > 0 {
        let counter = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let types = Arc::new(types);
        let publisher = if s.publishers > 0 {
            apis.truncate(s.publishers);
            tokio::spawn(publish_through(
                apis,
                types,
                s.rate,
                epoch,
                run.clone(),
                refused.clone(),
            ))
        } else {
            tokio::spawn(publish_at(
                js.clone(),
                types,
                s.rate,
                epoch,
                run.clone(),
                counter.clone(),
            ))
        };
        tokio::time::sleep(s.warmup).await;
        phases.push(measure.phase("loaded", s.duration, true).await?);
        publisher.abort();
        let refused = refused.load(Ordering::Relaxed);
        if refused > 0 {
            eprintln!("  {refused} publishes through the sidecars were refused or failed");
        }
    }
    drop(sidecars);
    let _ = js.delete_stream(crate::STREAM).await;
    print_table(&s, &phases);
    Ok(())
}

fn print_table(s: &Settings, phases: &[Phase]) {
    let subs = (s.sidecars * s.subscriptions) as f64;
    println!();
    println!(
        "{} sidecars × {} subscriptions ({} consumers)",
        s.sidecars, s.subscriptions, subs
    );
    println!(
        "| phase | window | nats-server CPU | sidecars CPU (all) | JetStream API req/s (pulls) | API req/min per subscription | delivered/s | latency p50 / p99 / max | sidecar RSS median / max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for p in phases {
        let secs = p.window.as_secs_f64();
        let pct = |d: Duration| format!("{:.2} %", d.as_secs_f64() / secs * 100.0);
        let lat = p.latency.as_ref().map_or("—".to_owned(), |h| {
            format!(
                "{} / {} / {}",
                fmt_ns(h.value_at_quantile(0.5)),
                fmt_ns(h.value_at_quantile(0.99)),
                fmt_ns(h.max())
            )
        });
        let rss = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
        println!(
            "| {} | {:.1} s | {} | {} | {:.1} ({:.1}) | {:.2} | {:.0} | {} | {} / {} |",
            p.name,
            secs,
            p.nats_cpu.map_or("— (not started here)".to_owned(), pct),
            pct(p.sidecars_cpu),
            p.api_requests as f64 / secs,
            p.pulls as f64 / secs,
            p.api_requests as f64 / secs * 60.0 / subs,
            p.delivered as f64 / secs,
            lat,
            rss(p.rss_kib.get(p.rss_kib.len() / 2).copied().unwrap_or(0)),
            rss(p.rss_kib.last().copied().unwrap_or(0)),
        );
    }
}
