//! `herald bench slow-clients`: what clients that never finish a request cost the sidecar, and
//! that it cuts them off. A `herald sidecar` process (this binary) is started with
//! `--header-read-timeout`; then `--clients` connections each send half a request head and stop.
//! Measured, for `--waves` waves of them one after the other: the sidecar's RSS idle, with the slow
//! clients connected, and after they were cut off; how long the last one took to be closed; and
//! the latency of ordinary publishes made meanwhile on a connection of their own. Later waves
//! show whether the memory the first left behind (the allocator keeps freed memory for reuse) is
//! reused rather than added to.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::BenchError;
use crate::{STREAM, SidecarProcess, bench_nats, free_addr, memory_kib, wait_ready};
use herald_core::settings::{ConfigError, Env, Resolver, in_range, parse_count};
use herald_jetstream::parse_nats_url;

#[derive(Debug, clap::Args, Default)]
pub struct SlowArgs {
    /// NATS server to use [default: start a throwaway nats-server]
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Slow clients, each holding one connection with half a request head [default: 1000]
    #[arg(long)]
    pub clients: Option<String>,
    /// The sidecar's --header-read-timeout [default: 30s, the sidecar's default]
    #[arg(long)]
    pub timeout: Option<String>,
    /// Waves of slow clients, one after the other [default: 3]
    #[arg(long)]
    pub waves: Option<String>,
    /// Time between the last cut-off and reading the RSS [default: 2s]
    #[arg(long)]
    pub settle: Option<String>,
    /// Publishes made while the slow clients hang [default: 200]
    #[arg(long)]
    pub publishes: Option<String>,
    /// nats-server binary to start when no --nats-url is given [default: nats-server]
    #[arg(long)]
    pub nats_server_bin: Option<String>,
}

struct Settings {
    nats_url: Option<String>,
    clients: usize,
    timeout: Duration,
    waves: usize,
    settle: Duration,
    publishes: usize,
    nats_server_bin: String,
}

impl Settings {
    fn resolve(a: &SlowArgs, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut r = Resolver::new(env);
        let s = Settings {
            nats_url: r.get("nats-url", &a.nats_url, parse_nats_url),
            clients: r
                .get("clients", &a.clients, |v| parse_count(v, 1, 100_000))
                .unwrap_or(1000),
            timeout: r
                .get(
                    "timeout",
                    &a.timeout,
                    in_range(herald_core::limits::READ_TIMEOUT_RANGE),
                )
                .unwrap_or(herald_core::limits::DEFAULT_HEADER_READ_TIMEOUT),
            waves: r
                .get("waves", &a.waves, |v| parse_count(v, 1, 100))
                .unwrap_or(3),
            settle: r
                .get(
                    "settle",
                    &a.settle,
                    in_range(herald_core::limits::BENCH_DURATION),
                )
                .unwrap_or(Duration::from_secs(2)),
            publishes: r
                .get("publishes", &a.publishes, |v| parse_count(v, 1, 100_000))
                .unwrap_or(200),
            nats_server_bin: r
                .get("nats-server-bin", &a.nats_server_bin, |v| Ok(v.to_owned()))
                .unwrap_or_else(|| "nats-server".into()),
        };
        r.finish()?;
        Ok(s)
    }
}

/// Raises the open-files limit to its hard limit: the slow clients and the sidecar (which
/// inherits it) each need one descriptor per connection.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

pub async fn run(args: SlowArgs, env: &dyn Env) -> Result<(), BenchError> {
    let s = Settings::resolve(&args, env)?;
    let nofile = raise_nofile();
    if nofile != 0 && (nofile as usize) < s.clients + 64 {
        return Err(BenchError::Runtime(format!(
            "{} clients need as many open files; the limit is {nofile} (ulimit -n)",
            s.clients
        )));
    }
    let (_embedded, url, js) = bench_nats(&s.nats_url, &s.nats_server_bin).await?;
    let (listen, admin) = (free_addr()?, free_addr()?);
    let exe = std::env::current_exe().map_err(|e| BenchError::Runtime(e.to_string()))?;
    let timeout = format!("{}ms", s.timeout.as_millis());
    let child = std::process::Command::new(exe)
        .args(["sidecar", "--app-id", "bench", "--nats-url", &url])
        .args(["--stream", STREAM, "--header-read-timeout", &timeout])
        .args(["--max-connections", &(s.clients + 16).to_string()])
        .args(["--listen", &listen.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .env("HERALD_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Runtime(format!("cannot start the sidecar: {e}")))?;
    let sidecar = SidecarProcess(child);
    wait_ready(admin).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = sidecar.0.id();
    let (idle, _) = memory_kib(pid);
    eprintln!(
        "herald bench slow-clients: {} clients, header read timeout {:?}, NATS {url}",
        s.clients, s.timeout
    );

    // Later waves show whether what the first left behind is reused.
    let mut waves = Vec::new();
    for wave in 1..=s.waves {
        let opened = Instant::now();
        let mut slow = Vec::with_capacity(s.clients);
        for i in 0..s.clients {
            let mut c = TcpStream::connect(listen)
                .await
                .map_err(|e| BenchError::Runtime(format!("wave {wave}, slow client {i}: {e}")))?;
            c.write_all(b"POST /publish HTTP/1.1\r\nHost: bench\r\nce-specversion: 1")
                .await
                .map_err(|e| BenchError::Runtime(format!("wave {wave}, slow client {i}: {e}")))?;
            slow.push(c);
        }
        let open_for = opened.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (with_slow, _) = memory_kib(pid);
        let waiting = tokio::spawn(async move {
            let closed = slow.into_iter().map(|mut c| async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
            futures::future::join_all(closed).await;
            opened.elapsed()
        });
        let (latency, errors) = publishes(listen, s.publishes).await;
        let cut_off = waiting
            .await
            .map_err(|e| BenchError::Runtime(e.to_string()))?;
        tokio::time::sleep(s.settle).await;
        let (after, _) = memory_kib(pid);
        waves.push(Wave {
            open_for,
            with_slow,
            cut_off,
            latency,
            errors,
            after,
        });
    }
    let (_, peak) = memory_kib(pid);
    drop(sidecar);
    let _ = js.delete_stream(STREAM).await;

    let mib = |k: u64| k as f64 / 1024.0;
    println!();
    println!(
        "{} slow clients per wave, header read timeout {:?}; sidecar RSS idle {:.1} MiB",
        s.clients,
        s.timeout,
        mib(idle)
    );
    println!(
        "{:<6} {:>10} {:>14} {:>12} {:>22} {:>14} {:>14}",
        "wave",
        "opened in",
        "RSS with them",
        "cut off in",
        "publishes meanwhile",
        "p50 / max",
        "RSS after"
    );
    for (i, w) in waves.iter().enumerate() {
        println!(
            "{:<6} {:>10.2?} {:>10.1} MiB {:>12.2?} {:>13} ok {:>4} bad {:>5.0} / {:>5.0} µs {:>10.1} MiB",
            i + 1,
            w.open_for,
            mib(w.with_slow),
            w.cut_off,
            s.publishes - w.errors,
            w.errors,
            w.latency.value_at_quantile(0.5) as f64 / 1000.0,
            w.latency.max() as f64 / 1000.0,
            mib(w.after)
        );
    }
    if let Some(first) = waves.first() {
        println!(
            "per connection: {:.1} KiB; peak RSS {:.1} MiB",
            first.with_slow.saturating_sub(idle) as f64 / s.clients as f64,
            mib(peak)
        );
    }
    Ok(())
}

struct Wave {
    open_for: Duration,
    with_slow: u64,
    cut_off: Duration,
    latency: Histogram<u64>,
    errors: usize,
    after: u64,
}

/// `n` binary-mode publishes on one keep-alive connection: their latency and failures.
async fn publishes(listen: SocketAddr, n: usize) -> (Histogram<u64>, usize) {
    let mut hist = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 is valid"));
    let mut errors = 0;
    let Ok(stream) = TcpStream::connect(listen).await else {
        return (hist, n);
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Full<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await
    else {
        return (hist, n);
    };
    tokio::spawn(conn);
    for i in 0..n {
        let req = http::Request::post("/publish")
            .header("host", "bench")
            .header("ce-specversion", "1.0")
            .header("ce-id", format!("slow-bench-{i}"))
            .header("ce-source", crate::SOURCE)
            .header("ce-type", crate::TYPE)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")));
        let Ok(req) = req else {
            errors += 1;
            continue;
        };
        let started = Instant::now();
        match send.send_request(req).await {
            Ok(r) if r.status() == 204 => {
                let _ = hist.record(started.elapsed().as_nanos() as u64);
            }
            _ => errors += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (hist, errors)
}
