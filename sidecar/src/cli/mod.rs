//! The command line: what `herald` takes ([`Cli`]), and running a command ([`run`]). Serving
//! (`sidecar`, `dev`, `run`) is [`crate::serve`]'s; the commands that inspect rather than serve
//! are here: `herald stream info` ([`streams`]) and `herald deadletter list|replay`
//! ([`deadletter`]); `herald wait` asks a sidecar's admin API; `herald bench` is `herald-bench`'s.

pub mod deadletter;
pub mod streams;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use herald_core::settings::{ConfigError, Env, Resolver, in_range, parse_addr, parse_creds};
use herald_jetstream::parse_nats_url;
use herald_runtime::logging::{self, LogFormat};

use crate::config::{RunMode, ServeArgs, ServeConfig};
use crate::serve::{self, AppError};

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "CloudEvents pub/sub for every pod: the herald sidecar and local CLI"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The in-pod sidecar: publish API and admin API; expects the streams to exist.
    Sidecar(ServeArgs),
    /// The central dispatcher: delivers Subscription resources' events to sinks (Services
    /// without the sidecar); run by the control plane.
    Dispatch(crate::dispatch::DispatchArgs),
    /// Local development: like `sidecar`, plus stream creation, and its own nats-server when no
    /// --nats-url is given.
    Dev(ServeArgs),
    /// `dev` plus your app: starts CMD once the sidecar is ready, with HERALD_URL set; both stop
    /// together, and the exit status is the app's.
    Run(RunArgs),
    /// Inspect JetStream streams.
    Stream {
        #[command(subcommand)]
        command: StreamCommand,
    },
    /// Inspect and replay dead letters.
    Deadletter {
        #[command(subcommand)]
        command: DeadletterCommand,
    },
    /// Wait until the sidecar serves its admin API (`/healthz`): the postStart hook that holds
    /// the app back on clusters without native sidecars.
    Wait(WaitArgs),
    /// Measure throughput and latency.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Messages, bytes and consumers of every stream (like `nats stream ls`).
    Info(ConnArgs),
}

#[derive(Debug, Subcommand)]
pub enum DeadletterCommand {
    /// List dead letters (filter with --app, --type, --since, --seq).
    List(deadletter::DeadletterArgs),
    /// Publish the selected dead letters again, for the subscription that failed them only.
    Replay(deadletter::DeadletterArgs),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Publish through the sidecar and directly with async-nats in one run, and compare.
    Publish(herald_bench::BenchArgs),
    /// Delivery throughput (sidecar vs raw async-nats consumers) and publish-to-app latency.
    Deliver(herald_bench::deliver::DeliverArgs),
    /// Many sidecars × many subscriptions: idle and loaded cost (CPU, JetStream API requests,
    /// memory), delivery rate and latency.
    Fanout(herald_bench::fanout::FanoutArgs),
    /// A JetStream cluster of its own loses a leader under load: resume times, refusals, and
    /// whether every acknowledged event was delivered.
    Failover(herald_bench::failover::FailoverArgs),
    /// Memory and service of a sidecar holding connections that never finish a request.
    SlowClients(herald_bench::slow::SlowArgs),
}

#[derive(Debug, Args, Default)]
pub struct ConnArgs {
    /// NATS server(s), comma-separated [default: nats://127.0.0.1:4222]
    #[arg(long)]
    pub nats_url: Option<String>,
    /// NATS credentials file (user JWT and NKey seed) [default: none]
    #[arg(long)]
    pub nats_creds: Option<String>,
}

/// Flags of `sidecar` and `dev`. Values stay strings here and are parsed in [`ServeConfig::resolve`],
/// so the environment and the flags go through the same parser and error messages.
/// `herald wait`.
#[derive(Debug, Args, Default)]
pub struct WaitArgs {
    /// The sidecar's admin address; an unspecified IP (0.0.0.0) means loopback [default: 127.0.0.1:9250]
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Give up (exit 1) after this long [default: 60s]
    #[arg(long)]
    pub timeout: Option<String>,
}

impl WaitArgs {
    /// Where to ask, and for how long.
    pub fn resolve(&self, env: &dyn Env) -> Result<(SocketAddr, Duration), ConfigError> {
        let mut r = Resolver::new(env);
        let addr = r.get("admin-listen", &self.admin_listen, parse_addr);
        let timeout = r.get(
            "timeout",
            &self.timeout,
            in_range(herald_core::limits::WAIT_TIMEOUT),
        );
        r.finish()?;
        let mut addr = addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9250)));
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok((addr, timeout.unwrap_or(Duration::from_secs(60))))
    }
}

/// `herald run [flags] -- CMD ARGS`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// The app and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Resolves `--nats-url` and `--nats-creds` for the commands that only connect.
pub fn resolve_conn(
    args: &ConnArgs,
    env: &dyn Env,
) -> Result<(String, Option<String>), ConfigError> {
    let mut r = Resolver::new(env);
    let url = r.get("nats-url", &args.nats_url, parse_nats_url);
    let creds = r.get("nats-creds", &args.nats_creds, parse_creds);
    r.finish()?;
    Ok((url.unwrap_or_else(|| "nats://127.0.0.1:4222".into()), creds))
}

/// Runs one command; `Ok` carries the exit status (the app's, for `herald run`).
pub async fn run(cli: Cli, env: &dyn Env) -> Result<u8, AppError> {
    match cli.command {
        Command::Dispatch(args) => {
            crate::dispatch::run(crate::dispatch::DispatchConfig::resolve(&args, env)?).await
        }
        Command::Sidecar(args) => {
            serve::serve(ServeConfig::resolve(RunMode::Sidecar, &args, env)?, None).await
        }
        Command::Dev(args) => {
            serve::serve(ServeConfig::resolve(RunMode::Dev, &args, env)?, None).await
        }
        Command::Run(args) => {
            let cfg = ServeConfig::resolve(RunMode::Dev, &args.serve, env)?;
            serve::serve(cfg, Some(args.command)).await
        }
        Command::Stream {
            command: StreamCommand::Info(args),
        } => {
            logging::init(LogFormat::Text);
            let (url, creds) = resolve_conn(&args, env)?;
            streams::info(&url, creds.as_deref()).await?;
            Ok(0)
        }
        Command::Deadletter { command } => {
            logging::init(LogFormat::Text);
            deadletter::run(command, env).await?;
            Ok(0)
        }
        Command::Wait(args) => {
            let (admin, timeout) = args.resolve(env)?;
            herald_runtime::admin::wait_healthy(admin, timeout)
                .await
                .map_err(AppError::Runtime)?;
            Ok(0)
        }
        Command::Bench { command } => {
            logging::init(LogFormat::Text);
            match command {
                BenchCommand::Publish(args) => herald_bench::run(args, env).await?,
                BenchCommand::Deliver(args) => herald_bench::deliver::run(args, env).await?,
                BenchCommand::Fanout(args) => herald_bench::fanout::run(args, env).await?,
                BenchCommand::Failover(args) => herald_bench::failover::run(args, env).await?,
                BenchCommand::SlowClients(args) => herald_bench::slow::run(args, env).await?,
            }
            Ok(0)
        }
    }
}
