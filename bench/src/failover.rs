//! `herald bench failover`: a JetStream cluster loses a leader while events flow through herald.
//!
//! The run owns everything it kills: `--nodes` nats-servers on loopback joined by routes
//! ([`natsd::NatsCluster`]), the bench stream with `--replicas` replicas, one subscriber sidecar
//! and one publisher sidecar (this binary, `herald sidecar`) given every node's URL, and an app
//! in this process that records each delivery's `ce-id`. Events are published at `--rate`
//! events/s through the publisher's HTTP API (binary mode, 16 keep-alive connections, open
//! loop). Then, for each victim of `--kill` in turn — the stream's leader, the subscriber's
//! consumer's leader — after `--steady` of normal traffic the node leading it is SIGKILLed, kept
//! down for `--down`, restarted on its ports and store, and awaited until its replicas are
//! current again. After a last `--steady`, publishing stops and the run waits up to `--drain` for
//! every acknowledged event to arrive.
//!
//! Per kill it prints when publishes were taken again (the first 204 for a request sent after the
//! kill), when deliveries resumed (the first delivery of an event published after the kill), the
//! slowest publish answer and the refusals; in total the acknowledged, refused, delivered and
//! duplicated events and the acknowledged events never delivered — which must be zero: the run
//! fails if not.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use herald_core::broker::{Admin as _, ConfigStore as _};
use herald_core::policy::StreamPolicy;
use herald_core::settings::{ConfigError, Env, Resolver, parse_count};
use herald_jetstream::JetStream;
use herald_jetstream::natsd::{self, NatsCluster};

use crate::deliver::{App, start_sidecar};
use crate::{BenchError, Conn, SOURCE, STREAM, TYPE, Target, fmt_ns};

/// Publishing connections: enough that one stalled answer does not stall the rate.
const WORKERS: u64 = 16;
/// A publish answer later than this counts as refused (the sidecar's own timeout is shorter).
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
const VICTIMS: [&str; 2] = ["stream", "consumer"];

#[derive(Debug, clap::Args, Default)]
pub struct FailoverArgs {
    /// nats-servers in the cluster (3 to 5) [default: 3]
    #[arg(long)]
    pub nodes: Option<String>,
    /// Replicas of the bench stream and its consumer (1 to --nodes) [default: 3]
    #[arg(long)]
    pub replicas: Option<String>,
    /// Comma-separated leaders to kill, one after the other: stream, consumer [default: both]
    #[arg(long)]
    pub kill: Option<String>,
    /// Events per second published through the publisher sidecar [default: 200]
    #[arg(long)]
    pub rate: Option<String>,
    /// Normal traffic before each kill and after the last [default: 10s]
    #[arg(long)]
    pub steady: Option<String>,
    /// How long a killed node stays down [default: 10s]
    #[arg(long)]
    pub down: Option<String>,
    /// How long to wait at the end for every acknowledged event to be delivered [default: 60s]
    #[arg(long)]
    pub drain: Option<String>,
    /// nats-server binary [default: nats-server]
    #[arg(long)]
    pub nats_server_bin: Option<String>,
}

struct Settings {
    nodes: usize,
    replicas: usize,
    kill: Vec<String>,
    rate: u64,
    steady: Duration,
    down: Duration,
    drain: Duration,
    nats_server_bin: String,
}

impl Settings {
    fn resolve(a: &FailoverArgs, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut r = Resolver::new(env);
        let range = herald_core::settings::in_range(herald_core::limits::BENCH_DURATION);
        let s = Settings {
            nodes: r
                .get("nodes", &a.nodes, |v| parse_count(v, 3, 5))
                .unwrap_or(3),
            replicas: r
                .get("replicas", &a.replicas, |v| parse_count(v, 1, 5))
                .unwrap_or(3),
            kill: r
                .get("kill", &a.kill, |v| crate::parse_scenarios(v, &VICTIMS))
                .unwrap_or_else(|| VICTIMS.map(String::from).to_vec()),
            rate: r
                .get("rate", &a.rate, |v| parse_count(v, 1, 100_000))
                .unwrap_or(200) as u64,
            steady: r
                .get("steady", &a.steady, &range)
                .unwrap_or(Duration::from_secs(10)),
            down: r
                .get("down", &a.down, &range)
                .unwrap_or(Duration::from_secs(10)),
            drain: r
                .get("drain", &a.drain, &range)
                .unwrap_or(Duration::from_secs(60)),
            nats_server_bin: r
                .get("nats-server-bin", &a.nats_server_bin, |v| Ok(v.to_owned()))
                .unwrap_or_else(|| "nats-server".into()),
        };
        r.finish()?;
        if s.replicas > s.nodes {
            return Err(ConfigError(vec![format!(
                "--replicas={}: at most --nodes ({})",
                s.replicas, s.nodes
            )]));
        }
        Ok(s)
    }
}

/// One publish request: when it was sent and answered (since the epoch), and whether with 204.
struct Outcome {
    id: String,
    sent: Duration,
    answered: Duration,
    ok: bool,
}

/// One kill: which node led what, and when it went down, came back and caught up.
struct Round {
    victim: String,
    node: String,
    killed: Duration,
    restarted: Duration,
    rejoined: Option<Duration>,
}

fn runtime(e: impl std::fmt::Display) -> BenchError {
    BenchError::Runtime(e.to_string())
}

pub async fn run(args: FailoverArgs, env: &dyn Env) -> Result<(), BenchError> {
    let s = Settings::resolve(&args, env)?;
    let bin = natsd::find_binary(&s.nats_server_bin)?;
    let nodes = s.nodes;
    let mut cluster = tokio::task::spawn_blocking(move || NatsCluster::start(&bin, nodes))
        .await
        .map_err(runtime)??;
    let urls = cluster.urls();
    eprintln!(
        "herald bench failover: {} nats-servers, R{} stream, {} events/s through a sidecar, kill {} ({:?} steady, {:?} down)",
        s.nodes,
        s.replicas,
        s.rate,
        s.kill.join(" then "),
        s.steady,
        s.down
    );
    let servers = cluster
        .nodes
        .iter()
        .map(|n| n.url().parse::<async_nats::ServerAddr>().map_err(runtime))
        .collect::<Result<Vec<_>, _>>()?;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(runtime)?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client);
    setup(&js, s.replicas).await?;

    let epoch = Instant::now();
    let app = App::start_recording(epoch).await?;
    let dir = tempfile::tempdir().map_err(runtime)?;
    let subscription = format!("- type: {TYPE}\n  source: {SOURCE}\n  maxInFlight: 64\n");
    let (_subscriber, _) =
        start_sidecar(&urls, &app, "failover-sub", &subscription, dir.path()).await?;
    let (_publisher, api) = start_sidecar(&urls, &app, "failover-pub", "", dir.path()).await?;

    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let publisher = tokio::spawn(publish(api, s.rate, epoch, outcomes.clone()));
    let mut rounds = Vec::new();
    for victim in &s.kill {
        tokio::time::sleep(s.steady).await;
        let node = leader(&js, victim).await?;
        // One node can lead both; then the kill measures both elections at once.
        let other = if victim == "stream" {
            "consumer"
        } else {
            "stream"
        };
        let also = leader(&js, other).await.ok().filter(|n| *n == node);
        let index = cluster.index_of(&node).ok_or_else(|| {
            runtime(format!(
                "the {victim} leader {node} is not one of the nodes"
            ))
        })?;
        let killed = epoch.elapsed();
        cluster.nodes[index].kill();
        eprintln!(
            "  {:>6.1} s  SIGKILL {node}, the {victim} leader{}",
            killed.as_secs_f64(),
            if also.is_some() {
                format!(" (and the {other} leader)")
            } else {
                String::new()
            }
        );
        tokio::time::sleep(s.down).await;
        let restarted = epoch.elapsed();
        let node_ref = &mut cluster.nodes[index];
        tokio::task::block_in_place(|| node_ref.restart())?;
        eprintln!("  {:>6.1} s  {node} restarted", restarted.as_secs_f64());
        let rejoined = rejoin(&js, s.replicas).await.map(|()| epoch.elapsed());
        match rejoined {
            Some(t) => eprintln!("  {:>6.1} s  replicas current again", t.as_secs_f64()),
            None => eprintln!("  replicas not current 60 s after the restart; going on"),
        }
        rounds.push(Round {
            victim: victim.clone(),
            node: match also {
                Some(_) => format!("{node} (led the {other} too)"),
                None => node,
            },
            killed,
            restarted,
            rejoined,
        });
    }
    tokio::time::sleep(s.steady).await;
    publisher.abort();
    let stopped = epoch.elapsed();
    // Requests in flight when the publisher stopped have no outcome; they are neither counted
    // as acknowledged nor as refused.
    let outcomes = std::mem::take(&mut *outcomes.lock().map_err(runtime)?);
    let acked: HashMap<&str, Duration> = outcomes
        .iter()
        .filter(|o| o.ok)
        .map(|o| (o.id.as_str(), o.sent))
        .collect();
    eprintln!(
        "  {:>6.1} s  publishing stopped; waiting up to {:?} for {} acknowledged events",
        stopped.as_secs_f64(),
        s.drain,
        acked.len()
    );
    let until = Instant::now() + s.drain;
    loop {
        let missing = undelivered(&app, &acked)?;
        if missing == 0 || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let arrivals = app
        .arrivals
        .as_ref()
        .map(|a| a.lock().map(|a| a.clone()).unwrap_or_default())
        .unwrap_or_default();
    let report = Report::new(&rounds, &outcomes, &acked, &arrivals, stopped);
    report.print(&s);
    match report.undelivered {
        0 => Ok(()),
        n => Err(runtime(format!(
            "{n} acknowledged events were not delivered within {:?} (first: {:?})",
            s.drain, report.first_undelivered
        ))),
    }
}

/// The bench stream (R`replicas`) and the configuration bucket, once the cluster has elected
/// its meta leader.
async fn setup(js: &jetstream::Context, replicas: usize) -> Result<(), BenchError> {
    let broker = JetStream::new(js.client().clone(), Duration::from_secs(5), STREAM);
    let policy = StreamPolicy {
        replicas,
        ..crate::bench_stream()
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let r = async {
            broker.ensure_stream(&policy).await.map_err(runtime)?;
            broker
                .ensure_bucket(herald_core::defaults::BUCKET, replicas)
                .await
                .map_err(runtime)
        }
        .await;
        match r {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= until => {
                return Err(runtime(format!("the cluster took no stream in 30 s: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The server name leading the stream or the subscriber's consumer (the stream's only one).
async fn leader(js: &jetstream::Context, victim: &str) -> Result<String, BenchError> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let found = async {
            let mut stream = js.get_stream(STREAM).await.ok()?;
            let cluster = if victim == "stream" {
                stream.info().await.ok()?.cluster.clone()
            } else {
                let name = stream.consumer_names().next().await?.ok()?;
                stream.consumer_info(&name).await.ok()?.cluster.clone()
            };
            cluster?.leader
        }
        .await;
        match found {
            Some(name) => return Ok(name),
            None if Instant::now() >= until => {
                return Err(runtime(format!("no {victim} leader after 30 s")));
            }
            None => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Waits (up to 60 s) until the stream has a leader and every other replica is current.
async fn rejoin(js: &jetstream::Context, replicas: usize) -> Option<()> {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let current = async {
            let info = js.get_stream(STREAM).await.ok()?.info().await.ok()?.clone();
            let c = info.cluster?;
            Some(
                c.leader.is_some()
                    && c.replicas.len() + 1 >= replicas
                    && c.replicas.iter().all(|r| r.current),
            )
        }
        .await;
        if current == Some(true) {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// Acknowledged events not yet delivered.
fn undelivered(app: &App, acked: &HashMap<&str, Duration>) -> Result<usize, BenchError> {
    let Some(arrivals) = &app.arrivals else {
        return Ok(acked.len());
    };
    let arrivals = arrivals.lock().map_err(runtime)?;
    let got: HashSet<&str> = arrivals.iter().map(|(_, id)| id.as_str()).collect();
    Ok(acked.keys().filter(|id| !got.contains(**id)).count())
}

/// Publishes `fo-<n>` at `rate` events/s over [`WORKERS`] keep-alive connections (worker k
/// sends events k, k + W, …, each when due), recording every answer. Until aborted.
async fn publish(api: SocketAddr, rate: u64, epoch: Instant, out: Arc<Mutex<Vec<Outcome>>>) {
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..WORKERS {
        let out = out.clone();
        tasks.spawn(async move {
            let mut conn = None;
            let mut n = k;
            loop {
                tokio::time::sleep_until((start + period.mul_f64(n as f64)).into()).await;
                let id = format!("fo-{n}");
                n += WORKERS;
                let sent = epoch.elapsed();
                if conn.is_none() {
                    conn = Target::Binary(api).connect().await.ok();
                }
                let ok = match &mut conn {
                    Some(Conn::Http(send, _)) => {
                        let req = http::Request::post("/publish")
                            .header(http::header::HOST, "127.0.0.1")
                            .header("ce-specversion", "1.0")
                            .header("ce-id", id.as_str())
                            .header("ce-source", SOURCE)
                            .header("ce-type", TYPE)
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")));
                        let answer = async {
                            send.ready().await.ok()?;
                            send.send_request(req.ok()?).await.ok()
                        };
                        match tokio::time::timeout(ANSWER_LIMIT, answer).await {
                            Ok(Some(r)) => r.status() == http::StatusCode::NO_CONTENT,
                            // A connection that failed is made again for the next event.
                            _ => {
                                conn = None;
                                false
                            }
                        }
                    }
                    _ => false,
                };
                if let Ok(mut out) = out.lock() {
                    out.push(Outcome {
                        id,
                        sent,
                        answered: epoch.elapsed(),
                        ok,
                    });
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// What one kill did to publishing and delivery.
struct RoundReport {
    victim: String,
    node: String,
    publish_resumed: Option<Duration>,
    delivery_resumed: Option<Duration>,
    slowest_answer: Duration,
    refused: usize,
    down: Duration,
    rejoined: Option<Duration>,
}

struct Report {
    rounds: Vec<RoundReport>,
    acknowledged: usize,
    refused: usize,
    deliveries: usize,
    distinct: usize,
    refused_yet_delivered: usize,
    undelivered: usize,
    first_undelivered: Option<String>,
}

impl Report {
    fn new(
        rounds: &[Round],
        outcomes: &[Outcome],
        acked: &HashMap<&str, Duration>,
        arrivals: &[(Duration, String)],
        stopped: Duration,
    ) -> Report {
        let mut reports = Vec::new();
        for (i, r) in rounds.iter().enumerate() {
            // A round lasts from its kill to the next one (or the end of publishing).
            let end = rounds.get(i + 1).map_or(stopped, |n| n.killed);
            let window = |t: Duration| t >= r.killed && t < end;
            let publish_resumed = outcomes
                .iter()
                .filter(|o| o.ok && o.sent >= r.killed)
                .map(|o| o.answered)
                .min()
                .map(|t| t.saturating_sub(r.killed));
            let delivery_resumed = arrivals
                .iter()
                .filter(|(_, id)| acked.get(id.as_str()).is_some_and(|sent| *sent >= r.killed))
                .map(|(t, _)| *t)
                .min()
                .map(|t| t.saturating_sub(r.killed));
            let in_round = outcomes.iter().filter(|o| window(o.sent));
            reports.push(RoundReport {
                victim: r.victim.clone(),
                node: r.node.clone(),
                publish_resumed,
                delivery_resumed,
                slowest_answer: in_round
                    .clone()
                    .map(|o| o.answered.saturating_sub(o.sent))
                    .max()
                    .unwrap_or_default(),
                refused: in_round.filter(|o| !o.ok).count(),
                down: r.restarted.saturating_sub(r.killed),
                rejoined: r.rejoined.map(|t| t.saturating_sub(r.restarted)),
            });
        }
        let got: HashSet<&str> = arrivals.iter().map(|(_, id)| id.as_str()).collect();
        let mut missing: Vec<&str> = acked
            .keys()
            .copied()
            .filter(|id| !got.contains(id))
            .collect();
        missing.sort_unstable();
        Report {
            rounds: reports,
            acknowledged: acked.len(),
            refused: outcomes.iter().filter(|o| !o.ok).count(),
            deliveries: arrivals.len(),
            distinct: got.len(),
            refused_yet_delivered: outcomes
                .iter()
                .filter(|o| !o.ok && got.contains(o.id.as_str()))
                .count(),
            undelivered: missing.len(),
            first_undelivered: missing.first().map(|s| (*s).to_owned()),
        }
    }

    fn print(&self, s: &Settings) {
        let secs = |d: Option<Duration>| {
            d.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
        };
        println!();
        println!(
            "{} nats-servers, R{} stream, {} events/s through a sidecar",
            s.nodes, s.replicas, s.rate
        );
        println!(
            "| killed | node | publishes taken again after | deliveries resumed after | slowest publish answer | refused | down | replicas current after restart |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for r in &self.rounds {
            println!(
                "| {} leader | {} | {} | {} | {} | {} | {:.0} s | {} |",
                r.victim,
                r.node,
                secs(r.publish_resumed),
                secs(r.delivery_resumed),
                fmt_ns(r.slowest_answer.as_nanos() as u64),
                r.refused,
                r.down.as_secs_f64(),
                secs(r.rejoined)
            );
        }
        println!();
        println!(
            "| acknowledged (204) | refused | deliveries | distinct delivered | duplicates | refused yet delivered | acknowledged, never delivered |"
        );
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            self.acknowledged,
            self.refused,
            self.deliveries,
            self.distinct,
            self.deliveries - self.distinct,
            self.refused_yet_delivered,
            self.undelivered
        );
    }
}
