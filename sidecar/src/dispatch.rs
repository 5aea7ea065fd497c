//! `herald dispatch`: the central dispatcher, which delivers the subscriptions of
//! `Subscription` resources (herald's and Kyma's) whose target is a sink URL — a Service with no
//! herald sidecar — over the cluster network. The chart runs it beside the controller in each
//! control-plane replica; the replicas share each consumer, so an event goes to one of them.
//!
//! It is the sidecar's delivery engine ([`crate::deliver`], [`crate::config::live`]) with another
//! source of subscriptions: the controller's list under the bucket key
//! [`herald_core::sinks::SINKS_KEY`], followed live; each resource subscribes as its own
//! subscriber (`<namespace>/sink:<name>`), its metrics labelled `namespace/name/filter`. Retry
//! classes, the attempt budget, backoff, dead letters, max in flight and the drain are the
//! sidecar's. A sink that is down keeps its events until it returns or the budget ends.
//!
//! Sinks are resolved through the cluster's DNS; `--resolve HOST:PORT:ADDRESS` (comma-separated,
//! as curl's option) connects a sink's `HOST:PORT` to `ADDRESS` instead, for tests and local runs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use herald_core::broker::{Broker, ConfigStore};
use herald_core::consumer::Subscriber;
use herald_core::contract::PodConfig;
use herald_core::defaults::Defaults;
use herald_core::delivery::{Destination, Target};
use herald_core::limits;
use herald_core::settings::{
    ConfigError, Env, Resolver, in_range, parse_addr, parse_creds, parse_stream_name,
};
use herald_core::sinks::{self, SINKS_KEY};
use herald_jetstream::{JetStream, NatsConfig, parse_nats_url};
use herald_runtime::admin::Admin as AdminApi;
use herald_runtime::http_server::{self, HttpMetrics, Limits, Listener, Server};
use herald_runtime::logging::{self, LogFormat, parse_log_format};
use herald_runtime::ports::PortsFile;
use herald_runtime::shutdown::Shutdown;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::config::live::{Shared, Subscriptions};
use crate::deliver::Deliverer;
use crate::deliver::attempt::AppClient;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::serve::AppError;

#[derive(Debug, Args, Default, Clone)]
pub struct DispatchArgs {
    /// NATS server(s), comma-separated [default: nats://127.0.0.1:4222]
    #[arg(long)]
    pub nats_url: Option<String>,
    /// NATS credentials file (user JWT and NKey seed) [default: none]
    #[arg(long)]
    pub nats_creds: Option<String>,
    /// Events stream [default: HERALD]
    #[arg(long)]
    pub stream: Option<String>,
    /// Health and metrics address [default: 0.0.0.0:9251]
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Once listening, write the bound address here as JSON (for port 0) [default: none]
    #[arg(long)]
    pub ports_file: Option<String>,
    /// Connect sinks elsewhere: HOST:PORT:ADDRESS, comma-separated [default: none]
    #[arg(long)]
    pub resolve: Option<String>,
    /// Time to finish deliveries in flight after SIGTERM [default: 20s]
    #[arg(long)]
    pub shutdown_grace: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long)]
    pub log_format: Option<String>,
}

/// `herald dispatch`'s settings, checked.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub nats_url: String,
    pub nats_creds: Option<String>,
    pub stream: String,
    pub admin_listen: SocketAddr,
    pub ports_file: Option<std::path::PathBuf>,
    pub resolve: HashMap<(String, u16), IpAddr>,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
}

/// `--resolve`'s value: `HOST:PORT:ADDRESS` items, comma-separated (an IPv6 address in
/// brackets).
pub fn parse_resolve(v: &str) -> Result<HashMap<(String, u16), IpAddr>, String> {
    let mut out = HashMap::new();
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let rule = || {
            format!(
                "{item:?} must be HOST:PORT:ADDRESS, e.g. fn.shop.svc.cluster.local:80:127.0.0.1"
            )
        };
        let (host, rest) = item.split_once(':').ok_or_else(rule)?;
        let (port, addr) = rest.split_once(':').ok_or_else(rule)?;
        let port: u16 = port.parse().map_err(|_| rule())?;
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| rule())?;
        if host.is_empty() {
            return Err(rule());
        }
        out.insert((host.to_owned(), port), addr);
    }
    Ok(out)
}

impl DispatchConfig {
    pub fn resolve(args: &DispatchArgs, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut r = Resolver::new(env);
        let nats_url = r.get("nats-url", &args.nats_url, parse_nats_url);
        let nats_creds = r.get("nats-creds", &args.nats_creds, parse_creds);
        let stream = r.get("stream", &args.stream, parse_stream_name);
        let admin_listen = r.get("admin-listen", &args.admin_listen, parse_addr);
        let ports_file = r.get("ports-file", &args.ports_file, |v| Ok(v.into()));
        let resolve = r.get("resolve", &args.resolve, parse_resolve);
        let shutdown_grace = r.get(
            "shutdown-grace",
            &args.shutdown_grace,
            in_range(limits::SHUTDOWN_GRACE),
        );
        let log_format = r.get("log-format", &args.log_format, parse_log_format);
        r.finish()?;
        Ok(DispatchConfig {
            nats_url: nats_url.unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            nats_creds,
            stream: stream.unwrap_or_else(|| herald_core::policy::EVENTS_STREAM.into()),
            admin_listen: admin_listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 9251))),
            ports_file,
            resolve: resolve.unwrap_or_default(),
            shutdown_grace: shutdown_grace.unwrap_or(Duration::from_secs(20)),
            log_format: log_format.unwrap_or(LogFormat::Text),
        })
    }
}

/// The running sink subscriptions, as the bucket's value asks.
struct Sinks {
    subs: Subscriptions,
    broker: Arc<dyn Broker>,
    stream: String,
    metrics: Arc<Metrics>,
    client: Arc<AppClient>,
    board: Arc<crate::deliver::board::StatusBoard>,
    /// One engine per resource: its subscriber and its metric labels.
    engines: HashMap<(sinks::Kind, String, String), Arc<Deliverer>>,
}

impl Sinks {
    fn apply(&mut self, value: Option<&Bytes>, cluster: &Defaults) {
        let targets = match value.map(|v| sinks::parse(v, cluster)) {
            None => Vec::new(),
            Some(Ok((ok, bad))) => {
                for problem in bad {
                    tracing::error!(%problem, "a sink subscription in the bucket is invalid; not served");
                }
                ok
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "the sink subscriptions in the bucket are invalid; the running ones stay");
                return;
            }
        };
        let mut wanted = HashMap::new();
        let mut engines = HashMap::new();
        for t in targets {
            let key = (t.kind, t.namespace.clone(), t.name.clone());
            let who = sinks::subscriber(t.kind, &t.namespace, &t.name);
            let engine = self.engines.get(&key).cloned().unwrap_or_else(|| {
                Deliverer::for_resource(
                    self.broker.clone(),
                    &self.stream,
                    who.clone(),
                    self.metrics.clone(),
                    self.client.clone(),
                    // Metrics say `namespace/name/filter` (Kyma's resources `kyma:name`).
                    &match t.kind {
                        sinks::Kind::Herald => format!("{}/{}", t.namespace, t.name),
                        sinks::Kind::Kyma => format!("{}/kyma:{}", t.namespace, t.name),
                    },
                )
                .with_board(self.board.clone())
            });
            for sub in t.subscriptions {
                let target = Target {
                    sub,
                    dest: Destination::Sink(t.url.clone()),
                    reported: true,
                };
                wanted.insert(who.describe(&target.sub.filter), (engine.clone(), target));
            }
            engines.insert(key, engine);
        }
        self.engines = engines;
        tracing::info!(subscriptions = wanted.len(), "sink subscriptions");
        self.subs.apply_targets(wanted);
    }
}

pub async fn run(cfg: DispatchConfig) -> Result<u8, AppError> {
    logging::init(cfg.log_format);
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let http_metrics = HttpMetrics::new(registry.sub_registry_with_prefix("herald"));
    let nats = NatsConfig {
        url: cfg.nats_url.clone(),
        name: "herald-dispatcher".into(),
        creds: cfg.nats_creds.clone(),
    };
    let on_event = {
        let metrics = metrics.clone();
        move |event: herald_jetstream::ConnectionEvent| match event {
            herald_jetstream::ConnectionEvent::Connected => {
                metrics.nats_connected.set(1);
            }
            herald_jetstream::ConnectionEvent::Disconnected => {
                metrics.nats_connected.set(0);
            }
            herald_jetstream::ConnectionEvent::Closed => {}
        }
    };
    let client = herald_jetstream::connect(&nats, on_event)
        .await
        .map_err(|e| {
            AppError::Config(ConfigError(vec![format!(
                "--nats-url={:?}: {e}",
                cfg.nats_url
            )]))
        })?;
    let jetstream = JetStream::new(client, Duration::from_secs(5), &cfg.stream);
    let broker: Arc<dyn Broker> = Arc::new(jetstream.clone());
    let config_store: Arc<dyn ConfigStore> = Arc::new(jetstream.clone());
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin_listen)
        .await
        .map_err(|e| {
            AppError::Config(ConfigError(vec![format!(
                "--admin-listen={}: cannot listen: {e}",
                cfg.admin_listen
            )]))
        })?;
    let admin_addr = admin_listener.local_addr().unwrap_or(cfg.admin_listen);
    let _ports_file = match &cfg.ports_file {
        Some(path) => Some(
            PortsFile::write(path, &[("admin", admin_addr)]).map_err(|e| {
                AppError::Config(ConfigError(vec![format!(
                    "--ports-file={}: cannot write: {e}",
                    path.display()
                )]))
            })?,
        ),
        None => None,
    };
    let shutdown = Shutdown::new();
    shutdown
        .listen_for_signals()
        .map_err(|e| AppError::Runtime(format!("cannot watch signals: {e}")))?;
    let readiness = Readiness::new(broker.clone(), &cfg.stream);
    tokio::spawn(
        readiness
            .clone()
            .monitor(shutdown.clone())
            .instrument(tracing::info_span!("readiness")),
    );
    // The engine `Subscriptions` holds for annotation subscriptions; the dispatcher has none.
    let unused = Deliverer::new(
        broker.clone(),
        &cfg.stream,
        Subscriber {
            namespace: String::new(),
            app_id: "herald-dispatcher".into(),
        },
        metrics.clone(),
    );
    let mut sinks = Sinks {
        subs: Subscriptions::new(
            unused,
            readiness.clone(),
            shutdown.clone(),
            cfg.shutdown_grace,
            Shared::new(&PodConfig::default()),
            metrics.clone(),
        ),
        broker: broker.clone(),
        stream: cfg.stream.clone(),
        metrics: metrics.clone(),
        client: Arc::new(AppClient::with_resolve(cfg.resolve.clone())),
        board: crate::deliver::board::StatusBoard::new(),
        engines: HashMap::new(),
    };
    tokio::spawn(
        sinks
            .board
            .clone()
            .run(config_store.clone(), shutdown.clone()),
    );
    let (defaults_tx, mut cluster) = watch::channel(None);
    tokio::spawn(
        crate::config::defaults::follow(config_store.clone(), defaults_tx, shutdown.clone())
            .instrument(tracing::info_span!("cluster_defaults")),
    );
    let (sinks_tx, mut value) = watch::channel(None);
    tokio::spawn(
        crate::config::defaults::follow_resources(
            config_store,
            SINKS_KEY.into(),
            sinks_tx,
            shutdown.clone(),
        )
        .instrument(tracing::info_span!("sink_subscriptions")),
    );
    let admin = Arc::new(AdminApi {
        registry,
        readiness: readiness.clone(),
    });
    let admin_stop = Shutdown::new();
    let admin_task = tokio::spawn(http_server::serve(
        Server {
            listener: Listener::Admin,
            limits: Limits {
                max_connections: limits::DEFAULT_ADMIN_MAX_CONNECTIONS,
                header_read_timeout: Duration::from_secs(5),
            },
            metrics: http_metrics,
        },
        admin_listener,
        admin_stop.clone(),
        Duration::from_secs(1),
        move |_peer, req| admin.clone().handle(req),
    ));
    tracing::info!(admin_listen = %admin_addr, nats_url = %cfg.nats_url, stream = %cfg.stream, resolve = cfg.resolve.len(), "herald dispatcher serving");
    loop {
        tokio::select! {
            Ok(()) = cluster.changed() => {}
            Ok(()) = value.changed() => {}
            _ = shutdown.wait() => break,
        }
        let defaults = cluster.borrow_and_update().unwrap_or_default();
        let current = value.borrow_and_update().clone();
        // Nothing known yet (the first answer of the bucket is on its way).
        let Some(current) = current else { continue };
        sinks.apply(current.as_ref(), &defaults);
    }
    sinks.subs.stop_all().await;
    jetstream.close(Duration::from_secs(2)).await;
    admin_stop.trigger();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_takes_curl_s_form_and_names_what_is_wrong() {
        let m = parse_resolve("fn.shop.svc.cluster.local:80:127.0.0.1, b:8080:[::1]").unwrap();
        assert_eq!(
            m[&("fn.shop.svc.cluster.local".to_owned(), 80)],
            IpAddr::from([127, 0, 0, 1])
        );
        assert!(m[&("b".to_owned(), 8080)].is_ipv6());
        for bad in [
            "fn:80",
            "fn:x:127.0.0.1",
            ":80:127.0.0.1",
            "fn:80:not-an-ip",
        ] {
            let e = parse_resolve(bad).unwrap_err();
            assert!(e.contains("HOST:PORT:ADDRESS"), "{bad}: {e}");
        }
    }
}
