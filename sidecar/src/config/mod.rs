//! Configuration: the command line (every flag can also come from `HERALD_<FLAG>`; a flag wins
//! over its variable), the pod's annotations (the downward API file, with the flags laid over it:
//! [`PodSource`]), and keeping them live: [`live`] applies changes of the file and of the cluster's
//! delivery defaults ([`defaults`]) without a restart. Settings are read through
//! [`herald_core::settings`], so every problem is reported together on one line (exit 64).

pub mod defaults;
pub mod live;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use herald_core::contract::{self as subscribe, PodConfig};
use herald_core::defaults::Defaults;
use herald_core::filter::TypeFilter;
use herald_core::limits;
use herald_core::policy::{DLQ_STREAM, EVENTS_STREAM};
pub use herald_core::settings::{ConfigError, Env, ProcessEnv, Resolver};
use herald_core::settings::{
    in_range, parse_addr, parse_bytes, parse_count, parse_creds, parse_name, parse_stream_name,
    read_capped,
};
use herald_jetstream::parse_nats_url;
use herald_runtime::listeners::{ListenerArgs, ListenerLimits};
use herald_runtime::logging::{LogFormat, parse_log_format};

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
    /// Once listening, write the bound addresses here as JSON (for port 0) [default: none]
    #[arg(long)]
    pub ports_file: Option<String>,
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
    /// After SIGTERM, how long the publish API stays up while the app may still publish; it ends
    /// early once nothing else in the pod holds a socket (herald.dev/shutdown-window)
    /// [default: 10s in sidecar, 0 in dev]
    #[arg(long)]
    pub shutdown_window: Option<String>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Sidecar,
    Dev,
}

/// The resolved settings of `sidecar` and `dev`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub mode: RunMode,
    /// `None` in dev mode: start an embedded nats-server.
    pub nats_url: Option<String>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Where to write the bound addresses ([`herald_runtime::ports`]).
    pub ports_file: Option<std::path::PathBuf>,
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

/// Default path of the downward API annotations file in the pod.
pub const ANNOTATIONS_FILE: &str = "/etc/herald/podinfo/annotations";

impl ServeConfig {
    pub fn resolve(mode: RunMode, args: &ServeArgs, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut r = Resolver::new(env);
        let nats_url = r.get("nats-url", &args.nats_url, parse_nats_url);
        let listen = r.get("listen", &args.listen, parse_addr);
        let admin_listen = r.get("admin-listen", &args.admin_listen, parse_addr);
        let ports_file = r.get("ports-file", &args.ports_file, |v| {
            Ok(std::path::PathBuf::from(v))
        });
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
        let log_format = r.get("log-format", &args.log_format, parse_log_format);
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
            ports_file,
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
            (
                "shutdown-window",
                subscribe::SHUTDOWN_WINDOW,
                &args.shutdown_window,
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
            match read_capped(path, limits::MAX_ANNOTATIONS_FILE_BYTES) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
}
