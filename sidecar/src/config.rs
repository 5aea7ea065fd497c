//! Command line and configuration. Every flag can also come from `HERALD_<FLAG>` (upper case, `-`
//! to `_`); a flag wins over its variable. The environment is read through [`Env`] so tests pass a
//! map instead of mutating the process environment. Every setting is parsed before failing, and
//! all problems are reported together on one line (exit status 64).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::defaults::Defaults;
use crate::filter::TypeFilter;
use crate::limits::{self, DurationRange};
use crate::streams::{DLQ_STREAM, EVENTS_STREAM};
use crate::subscribe::{self, PodConfig};

/// Parses the command line of `herald` or `herald-injector`. On `--help` or `--version` it
/// prints and returns `Err(0)`; on misuse it prints the error and returns `Err(64)`.
pub fn parse_command_line<C: Parser>() -> Result<C, u8> {
    C::try_parse().map_err(|e| {
        let _ = e.print();
        match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
            _ => 64,
        }
    })
}

/// Where environment variables come from.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

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
    List(crate::deadletter::DeadletterArgs),
    /// Publish the selected dead letters again, for the subscription that failed them only.
    Replay(crate::deadletter::DeadletterArgs),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Publish through the sidecar and directly with async-nats in one run, and compare.
    Publish(crate::bench::BenchArgs),
    /// Delivery throughput (sidecar vs raw async-nats consumers) and publish-to-app latency.
    Deliver(crate::bench::deliver::DeliverArgs),
    /// Memory and service of a sidecar holding connections that never finish a request.
    SlowClients(crate::bench::slow::SlowArgs),
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
#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// NATS server(s), comma-separated [default: nats://127.0.0.1:4222; dev: start its own]
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Publish API address [default: 127.0.0.1:8250]
    #[arg(long)]
    pub listen: Option<String>,
    /// Health and metrics address [default: 0.0.0.0:9250; dev: 127.0.0.1:9250]
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// The workload's identity: default `source`, consumer names, metrics [dev default: dev]
    #[arg(long)]
    pub app_id: Option<String>,
    /// Events stream [default: HERALD]
    #[arg(long)]
    pub stream: Option<String>,
    /// Dead-letter stream [default: HERALD_DLQ]
    #[arg(long)]
    pub dlq_stream: Option<String>,
    /// Largest accepted request body, e.g. 1MiB, 512KiB, 65536 [default: 1MiB]
    #[arg(long)]
    pub max_body_bytes: Option<String>,
    /// How long to wait for JetStream's ack before answering 504, e.g. 5s, 500ms [default: 5s]
    #[arg(long)]
    pub publish_timeout: Option<String>,
    /// Events the async buffer holds (herald-durability: async) [default: 10000]
    #[arg(long)]
    pub async_buffer: Option<String>,
    /// Time to finish in-flight work after SIGTERM [default: 20s]
    #[arg(long)]
    pub shutdown_grace: Option<String>,
    /// Time a client has to send a request head; also how long a keep-alive connection may
    /// idle (both listeners) [default: 30s]
    #[arg(long)]
    pub header_read_timeout: Option<String>,
    /// Time a client has to send a request body once its head arrived (408 after it) [default: 30s]
    #[arg(long)]
    pub body_read_timeout: Option<String>,
    /// Open connections of the publish API; more are closed at once [default: 1024]
    #[arg(long)]
    pub max_connections: Option<String>,
    /// Open connections of the admin API; more are closed at once [default: 128]
    #[arg(long)]
    pub admin_max_connections: Option<String>,
    /// Bytes the async buffer holds (herald-durability: async), besides its count [default: 64MiB]
    #[arg(long)]
    pub async_buffer_bytes: Option<String>,
    /// Comma-separated type filters this app may publish (others get 403) [default: any]
    #[arg(long)]
    pub publish_allow: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long)]
    pub log_format: Option<String>,
    /// nats-server binary `dev` starts [default: nats-server from PATH]
    #[arg(long)]
    pub nats_server_bin: Option<String>,
    /// NATS credentials file (user JWT and NKey seed, as `nsc` writes it) [default: none]
    #[arg(long)]
    pub nats_creds: Option<String>,
    /// Port the app receives deliveries on (herald.dev/app-port)
    #[arg(long)]
    pub app_port: Option<String>,
    /// Comma-separated type filters to subscribe to (herald.dev/subscribe)
    #[arg(long)]
    pub subscribe: Option<String>,
    /// HTTP path deliveries go to (herald.dev/path) [default: /]
    #[arg(long)]
    pub path: Option<String>,
    /// CESQL condition events must meet to be delivered, for every subscription (herald.dev/filter)
    #[arg(long)]
    pub filter: Option<String>,
    /// Deliveries in flight per subscription, across replicas (herald.dev/max-in-flight) [default: 10]
    #[arg(long)]
    pub max_in_flight: Option<String>,
    /// The pod's annotations as the downward API writes them [default in sidecar: /etc/herald/podinfo/annotations]
    #[arg(long)]
    pub annotations_file: Option<String>,
    /// The workload's namespace (part of consumer names) [default: default]
    #[arg(long)]
    pub namespace: Option<String>,
    /// Delivery attempts per event, local and redelivered, before it is dead-lettered [default: 10]
    #[arg(long)]
    pub max_attempts: Option<String>,
    /// Timeout of one delivery attempt [default: 30s]
    #[arg(long)]
    pub attempt_timeout: Option<String>,
    /// First broker redelivery delay after the local retries; doubles up to 5m [default: 5s]
    #[arg(long)]
    pub redelivery_delay: Option<String>,
}

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
        let timeout = r.get("timeout", &self.timeout, in_range(limits::WAIT_TIMEOUT));
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Sidecar,
    Dev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The resolved settings of `sidecar` and `dev`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub mode: RunMode,
    /// `None` in dev mode: start an embedded nats-server.
    pub nats_url: Option<String>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub app_id: String,
    pub stream: String,
    pub dlq_stream: String,
    pub max_body_bytes: u64,
    pub publish_timeout: Duration,
    pub async_buffer: usize,
    pub async_buffer_bytes: u64,
    pub shutdown_grace: Duration,
    /// Limits of both listeners.
    pub listeners: ListenerLimits,
    pub publish_allow: Vec<TypeFilter>,
    pub log_format: LogFormat,
    pub nats_server_bin: String,
    /// A NATS credentials file, checked readable at start.
    pub nats_creds: Option<String>,
    pub namespace: String,
    /// Subscriptions and the app port, from the annotations file and the flags.
    pub pod: PodConfig,
    /// Where `pod` came from, to read it again when the annotations file changes.
    pub pod_source: PodSource,
}

/// What a client of a listener may do: see [`crate::limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// Open connections of the publish API (or the webhook, in the injector).
    pub max_connections: usize,
    pub admin_max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout: limits::DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: limits::DEFAULT_BODY_READ_TIMEOUT,
            max_connections: limits::DEFAULT_PUBLISH_MAX_CONNECTIONS,
            admin_max_connections: limits::DEFAULT_ADMIN_MAX_CONNECTIONS,
        }
    }
}

/// The flags of [`ListenerLimits`], shared by `herald` and `herald-injector`.
pub struct ListenerArgs<'a> {
    pub header_read_timeout: &'a Option<String>,
    pub body_read_timeout: &'a Option<String>,
    pub max_connections: (&'static str, &'a Option<String>, usize),
    pub admin_max_connections: &'a Option<String>,
}

impl ListenerLimits {
    /// Reads the listener flags, each checked against its range.
    pub fn resolve(r: &mut Resolver<'_>, args: ListenerArgs<'_>) -> ListenerLimits {
        let (lo, hi) = limits::MAX_CONNECTIONS_RANGE;
        let d = ListenerLimits::default();
        let (flag, cli, default) = args.max_connections;
        ListenerLimits {
            header_read_timeout: r
                .get(
                    "header-read-timeout",
                    args.header_read_timeout,
                    in_range(limits::READ_TIMEOUT_RANGE),
                )
                .unwrap_or(d.header_read_timeout),
            body_read_timeout: r
                .get(
                    "body-read-timeout",
                    args.body_read_timeout,
                    in_range(limits::READ_TIMEOUT_RANGE),
                )
                .unwrap_or(d.body_read_timeout),
            max_connections: r
                .get(flag, cli, |v| parse_count(v, lo, hi))
                .unwrap_or(default),
            admin_max_connections: r
                .get("admin-max-connections", args.admin_max_connections, |v| {
                    parse_count(v, lo, hi)
                })
                .unwrap_or(d.admin_max_connections),
        }
    }
}

/// Default path of the downward API annotations file in the pod.
pub const ANNOTATIONS_FILE: &str = "/etc/herald/podinfo/annotations";

/// Bad configuration: every problem, each naming its setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

/// Reads one setting from its flag or its variable and parses it, collecting errors.
pub struct Resolver<'a> {
    env: &'a dyn Env,
    errors: Vec<String>,
}

impl<'a> Resolver<'a> {
    pub fn new(env: &'a dyn Env) -> Self {
        Resolver {
            env,
            errors: Vec::new(),
        }
    }

    /// The raw value and where it came from (for the error message).
    fn raw(&self, flag: &str, cli: &Option<String>) -> Option<(String, String)> {
        match cli {
            Some(v) => Some((v.clone(), format!("--{flag}"))),
            None => self.var(flag),
        }
    }

    fn var(&self, flag: &str) -> Option<(String, String)> {
        let var = format!("HERALD_{}", flag.to_ascii_uppercase().replace('-', "_"));
        self.env.var(&var).map(|v| (v, var))
    }

    /// [`Resolver::get`] for a setting renamed from `old` (whose flag clap takes as an alias):
    /// the old variable is read when neither the flag nor the new variable is set.
    pub fn get_renamed<T>(
        &mut self,
        flag: &str,
        old: &str,
        cli: &Option<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (value, origin) = self.raw(flag, cli).or_else(|| self.var(old))?;
        match parse(value.trim()) {
            Ok(v) => Some(v),
            Err(problem) => {
                self.errors.push(format!("{origin}={value:?}: {problem}"));
                None
            }
        }
    }

    pub fn get<T>(
        &mut self,
        flag: &str,
        cli: &Option<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (value, origin) = self.raw(flag, cli)?;
        match parse(value.trim()) {
            Ok(v) => Some(v),
            Err(problem) => {
                self.errors.push(format!("{origin}={value:?}: {problem}"));
                None
            }
        }
    }

    pub fn fail(&mut self, problem: String) {
        self.errors.push(problem);
    }

    pub fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.errors))
        }
    }
}

impl ServeConfig {
    pub fn resolve(mode: RunMode, args: &ServeArgs, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut r = Resolver::new(env);
        let nats_url = r.get("nats-url", &args.nats_url, parse_nats_url);
        let listen = r.get("listen", &args.listen, parse_addr);
        let admin_listen = r.get("admin-listen", &args.admin_listen, parse_addr);
        let app_id = r.get("app-id", &args.app_id, |v| {
            parse_name(v, limits::MAX_APP_ID_BYTES)
        });
        let stream = r.get("stream", &args.stream, parse_stream_name);
        let dlq_stream = r.get("dlq-stream", &args.dlq_stream, parse_stream_name);
        let max_body_bytes = r.get("max-body-bytes", &args.max_body_bytes, parse_bytes);
        let publish_timeout = r.get(
            "publish-timeout",
            &args.publish_timeout,
            in_range(limits::PUBLISH_TIMEOUT),
        );
        let async_buffer = r.get("async-buffer", &args.async_buffer, |v| {
            let (lo, hi) = limits::ASYNC_BUFFER_RANGE;
            parse_count(v, lo, hi)
        });
        let async_buffer_bytes = r.get("async-buffer-bytes", &args.async_buffer_bytes, parse_bytes);
        let shutdown_grace = r.get(
            "shutdown-grace",
            &args.shutdown_grace,
            in_range(limits::SHUTDOWN_GRACE),
        );
        let listeners = ListenerLimits::resolve(
            &mut r,
            ListenerArgs {
                header_read_timeout: &args.header_read_timeout,
                body_read_timeout: &args.body_read_timeout,
                max_connections: (
                    "max-connections",
                    &args.max_connections,
                    limits::DEFAULT_PUBLISH_MAX_CONNECTIONS,
                ),
                admin_max_connections: &args.admin_max_connections,
            },
        );
        let log_format = r.get("log-format", &args.log_format, |v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("must be `text` or `json`".into()),
        });
        let nats_server_bin = r.get("nats-server-bin", &args.nats_server_bin, |v| {
            Ok(v.to_owned())
        });
        let nats_creds = r.get("nats-creds", &args.nats_creds, parse_creds);
        let namespace = r
            .get("namespace", &args.namespace, |v| {
                parse_name(v, limits::MAX_NAMESPACE_BYTES)
            })
            .unwrap_or_else(|| "default".into());
        let pod_source = PodSource::resolve(&mut r, mode, args);
        let pod = match pod_source.load() {
            Ok(p) => Some(p),
            Err(e) => {
                e.0.into_iter().for_each(|e| r.fail(e));
                None
            }
        };
        let app_id = app_id.or_else(|| pod.as_ref().and_then(|p| p.app_id.clone()));
        let app_id = match (app_id, mode) {
            (Some(a), _) => a,
            (None, RunMode::Dev) => "dev".to_owned(),
            (None, RunMode::Sidecar) => {
                r.fail(
                    "--app-id (HERALD_APP_ID): required in sidecar mode (the injector sets it)"
                        .into(),
                );
                String::new()
            }
        };
        let default_admin = match mode {
            RunMode::Sidecar => "0.0.0.0:9250",
            RunMode::Dev => "127.0.0.1:9250",
        };
        let nats_url = match mode {
            RunMode::Sidecar => Some(nats_url.unwrap_or_else(|| "nats://127.0.0.1:4222".into())),
            RunMode::Dev => nats_url,
        };
        r.finish()?;
        Ok(ServeConfig {
            mode,
            nats_url,
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8250))),
            admin_listen: admin_listen.unwrap_or_else(|| {
                default_admin
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9250)))
            }),
            app_id,
            stream: stream.unwrap_or_else(|| EVENTS_STREAM.into()),
            dlq_stream: dlq_stream.unwrap_or_else(|| DLQ_STREAM.into()),
            max_body_bytes: max_body_bytes.unwrap_or(1 << 20),
            publish_timeout: publish_timeout.unwrap_or(Duration::from_secs(5)),
            async_buffer: async_buffer.unwrap_or(10_000),
            async_buffer_bytes: async_buffer_bytes.unwrap_or(limits::DEFAULT_ASYNC_BUFFER_BYTES),
            shutdown_grace: shutdown_grace.unwrap_or(Duration::from_secs(20)),
            listeners,
            publish_allow: pod
                .as_ref()
                .map(|p| p.publish_allow.clone())
                .unwrap_or_default(),
            log_format: log_format.unwrap_or(LogFormat::Text),
            nats_server_bin: nats_server_bin.unwrap_or_else(|| "nats-server".into()),
            nats_creds,
            namespace,
            pod: pod.unwrap_or_default(),
            pod_source,
        })
    }
}

/// Where the pod configuration comes from: the annotations file, with the flags laid over it as
/// if they were annotations, and the delivery flags laid over every subscription. Kept after start
/// so a changed file is read the same way (hot reload).
#[derive(Debug, Clone, Default)]
pub struct PodSource {
    /// The annotations file, if any, and whether it was named explicitly (a missing default file
    /// is fine: the sidecar run by hand, without the injector).
    pub file: Option<(String, bool)>,
    /// `(annotation, value, origin)` from flags or variables; errors name the origin.
    overlay: Vec<(&'static str, String, String)>,
    max_attempts: Option<u32>,
    attempt_timeout: Option<Duration>,
    redelivery_delay: Option<Duration>,
}

impl PodSource {
    fn resolve(r: &mut Resolver<'_>, mode: RunMode, args: &ServeArgs) -> PodSource {
        let explicit = r.get("annotations-file", &args.annotations_file, |v| {
            Ok(v.to_owned())
        });
        let file = match (explicit, mode) {
            (Some(f), _) => Some((f, true)),
            (None, RunMode::Sidecar) => Some((ANNOTATIONS_FILE.to_owned(), false)),
            (None, _) => None,
        };
        let mut overlay = Vec::new();
        for (flag, key, cli) in [
            ("app-port", subscribe::APP_PORT, &args.app_port),
            ("subscribe", subscribe::SUBSCRIBE, &args.subscribe),
            ("path", subscribe::PATH, &args.path),
            ("filter", subscribe::FILTER, &args.filter),
            (
                "max-in-flight",
                subscribe::MAX_IN_FLIGHT,
                &args.max_in_flight,
            ),
            (
                "publish-allow",
                subscribe::PUBLISH_ALLOW,
                &args.publish_allow,
            ),
        ] {
            if let Some((value, origin)) = r.raw(flag, cli) {
                overlay.push((key, value, origin));
            }
        }
        PodSource {
            file,
            overlay,
            max_attempts: r
                .get("max-attempts", &args.max_attempts, |v| {
                    let (lo, hi) = limits::MAX_ATTEMPTS_RANGE;
                    parse_count(v, lo as usize, hi as usize)
                })
                .and_then(|n| u32::try_from(n).ok()),
            attempt_timeout: r.get(
                "attempt-timeout",
                &args.attempt_timeout,
                in_range(limits::DELIVERY_DURATION),
            ),
            redelivery_delay: r.get(
                "redelivery-delay",
                &args.redelivery_delay,
                in_range(limits::DELIVERY_DURATION),
            ),
        }
    }

    /// Reads the annotations file (if any) and validates everything with the annotation contract.
    pub fn load(&self) -> Result<PodConfig, ConfigError> {
        self.load_with(&Defaults::default())
    }

    /// [`PodSource::load`] over the cluster's delivery defaults (annotations and flags win).
    pub fn load_with(&self, cluster: &Defaults) -> Result<PodConfig, ConfigError> {
        let mut errors = Vec::new();
        let mut annotations = std::collections::BTreeMap::new();
        if let Some((path, explicit)) = &self.file {
            match read_capped(path, crate::limits::MAX_ANNOTATIONS_FILE_BYTES) {
                Ok(text) => match subscribe::parse_downward_api(&text) {
                    Ok(a) => annotations = a,
                    Err(e) => errors.push(format!("--annotations-file={path:?}: {e}")),
                },
                Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("--annotations-file={path:?}: cannot read: {e}")),
            }
        }
        for (key, value, _) in &self.overlay {
            annotations.insert((*key).to_owned(), value.clone());
        }
        match subscribe::parse_with(&annotations, cluster) {
            Ok(mut pod) if errors.is_empty() => {
                for sub in &mut pod.subscriptions {
                    if let Some(n) = self.max_attempts {
                        sub.retry.max_attempts = n;
                    }
                    if let Some(d) = self.attempt_timeout {
                        sub.attempt_timeout = d;
                    }
                    if let Some(d) = self.redelivery_delay {
                        sub.retry.redelivery_delay = d;
                    }
                }
                Ok(pod)
            }
            Ok(_) => Err(ConfigError(errors)),
            Err(bad) => {
                for e in bad.0 {
                    match self.overlay.iter().find(|(k, _, _)| *k == e.key) {
                        Some((_, _, origin)) => errors.push(format!("{origin}: {}", e.rule)),
                        None => errors.push(format!("annotation {e}")),
                    }
                }
                Err(ConfigError(errors))
            }
        }
    }
}

/// Reads a text file of at most `max` bytes (the error says so past it).
fn read_capped(path: &str, max: u64) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(text)
}

/// A NATS credentials file, read now so a missing or unreadable Secret mount is a configuration
/// error with the path, not a connect error later.
pub fn parse_creds(v: &str) -> Result<String, String> {
    match read_capped(v, 64 << 10) {
        Ok(text) if text.contains("-----BEGIN NATS USER JWT-----") => Ok(v.to_owned()),
        Ok(_) => Err("is not a NATS credentials file (no user JWT block)".into()),
        Err(e) => Err(format!("cannot read: {e}")),
    }
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

pub fn parse_nats_url(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err("must name at least one server".into());
    }
    for u in v.split(',') {
        u.trim()
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| format!("`{}` is not a NATS URL: {e}", u.trim()))?;
    }
    Ok(v.to_owned())
}

pub fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| "must be an IP address and port, such as 127.0.0.1:8250".into())
}

/// An app id or a namespace: non-empty, no whitespace or control characters, at most `max`
/// bytes.
pub fn parse_name(v: &str, max: usize) -> Result<String, String> {
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("must be non-empty, without whitespace".into())
    } else if v.len() > max {
        Err(format!("is {} bytes long; the limit is {max}", v.len()))
    } else {
        Ok(v.to_owned())
    }
}

/// A stream name as the sidecar and the controller both accept it.
pub fn parse_stream_name(v: &str) -> Result<String, String> {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(v.to_owned())
    } else {
        Err("a stream name is letters, digits, `_` and `-`".into())
    }
}

pub fn parse_count(v: &str, min: usize, max: usize) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from {min} to {max}")),
    }
}

/// `500ms`, `5s`, `2m`, `1h`, `7d`, or plain seconds. Callers check the range that applies
/// ([`in_range`]): this only refuses what is not a duration or does not fit one.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let err = || "must be a duration such as 500ms, 5s, 2m, 1h or 7d".to_string();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

/// A parser of durations within `range`: the error names the range.
pub fn in_range(range: DurationRange) -> impl Fn(&str) -> Result<Duration, String> {
    move |v| parse_duration(v).and_then(|d| range.check(d))
}

pub fn parse_positive_duration(v: &str) -> Result<Duration, String> {
    match parse_duration(v)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

/// `1048576`, `512KiB`, `1MiB` (also `KB`/`MB` as powers of 1000).
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let err = || "must be a size such as 1048576, 512KiB or 1MiB".to_string();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(err()),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err("must be more than zero and fit in 64 bits".into()),
        Some(b) => Ok(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flag_wins_over_variable_and_defaults_fill_the_rest() {
        let args = ServeArgs {
            listen: Some("127.0.0.1:7000".into()),
            ..Default::default()
        };
        let e = env(&[
            ("HERALD_LISTEN", "127.0.0.1:1"),
            ("HERALD_APP_ID", "orders"),
            ("HERALD_PUBLISH_TIMEOUT", "250ms"),
        ]);
        let c = ServeConfig::resolve(RunMode::Sidecar, &args, &e).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.app_id, "orders");
        assert_eq!(c.publish_timeout, Duration::from_millis(250));
        assert_eq!(c.nats_url.as_deref(), Some("nats://127.0.0.1:4222"));
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9250");
        assert_eq!(c.max_body_bytes, 1 << 20);
        let d = ServeConfig::resolve(RunMode::Dev, &ServeArgs::default(), &env(&[])).unwrap();
        assert_eq!(
            (d.nats_url, d.app_id.as_str(), d.admin_listen.to_string()),
            (None, "dev", "127.0.0.1:9250".into())
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_setting() {
        let args = ServeArgs {
            max_body_bytes: Some("lots".into()),
            ..Default::default()
        };
        let e = env(&[
            ("HERALD_LISTEN", "localhost"),
            ("HERALD_PUBLISH_ALLOW", "a..b"),
        ]);
        let err = ServeConfig::resolve(RunMode::Sidecar, &args, &e).unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'));
        for needle in [
            "--max-body-bytes",
            "HERALD_LISTEN",
            "HERALD_PUBLISH_ALLOW",
            "--app-id",
        ] {
            assert!(line.contains(needle), "{needle} missing from: {line}");
        }
        assert_eq!(err.0.len(), 4);
    }

    #[test]
    fn units() {
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert!(parse_bytes("0").is_err());
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("9000000000000000000000s").is_err());
        let timeout = in_range(limits::DELIVERY_DURATION);
        assert_eq!(
            timeout("9000000000000000000s"),
            Err("must be from 1ms to 24h".into())
        );
        assert_eq!(timeout("0s"), Err("must be from 1ms to 24h".into()));
        assert_eq!(timeout("24h"), Ok(Duration::from_secs(86_400)));
    }
}
