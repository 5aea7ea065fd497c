//! Process wiring: turns a parsed command line into running parts, and maps failures to exit
//! codes (64 bad configuration, 69 nats-server missing, 1 anything else at run time). This is the
//! one place of the sidecar that picks a broker (JetStream); everything it wires speaks the
//! broker traits of [`herald_core::broker`].
//!

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::broker::{Admin, Broker, ConfigStore};
use herald_core::consumer::Subscriber;
use herald_core::defaults::Defaults;
use herald_core::policy::StreamPolicy;
use herald_jetstream::natsd::{self, NatsServer, NatsServerOptions, NatsdError};
use herald_jetstream::{ConnectionEvent, JetStream, NatsConfig};
use herald_runtime::admin::Admin as AdminApi;
use herald_runtime::http_server::{self, HttpMetrics, Limits, Listener, Server};
use herald_runtime::logging;
use herald_runtime::ports::PortsFile;
use herald_runtime::shutdown::Shutdown;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::config::live::{Shared, Subscriptions};
use crate::config::{self, ConfigError, RunMode, ServeConfig};
use crate::deliver::Deliverer;
use crate::metrics::{self, ConnectionLabels, Metrics};
use crate::publish::buffer::AsyncBuffer;
use crate::publish::{Api, ApiConfig};
use crate::readiness::Readiness;

pub mod window;

/// How long a starting sidecar waits for the cluster's delivery defaults.
const DEFAULTS_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    NatsServer(#[from] NatsdError),
    #[error("cannot start the app `{program}`: {source}")]
    AppStart {
        program: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Runtime(String),
}

impl AppError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) => 64,
            AppError::NatsServer(NatsdError::NotFound(_)) => 69,
            // As shells report a command that is missing or not executable.
            AppError::AppStart { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                127
            }
            AppError::AppStart { .. } => 126,
            _ => 1,
        }
    }
}

impl From<herald_bench::BenchError> for AppError {
    fn from(e: herald_bench::BenchError) -> Self {
        match e {
            herald_bench::BenchError::Config(c) => AppError::Config(c),
            herald_bench::BenchError::NatsServer(n) => AppError::NatsServer(n),
            herald_bench::BenchError::Runtime(r) => AppError::Runtime(r),
        }
    }
}

/// The shutdown window of a sidecar whose annotations and flags do not set one.
pub const DEFAULT_SHUTDOWN_WINDOW: Duration = Duration::from_secs(10);
/// The least time publishes in flight get once the publish API closes: a JetStream ack within
/// the default publish timeout. The window is cut short to leave it within the grace period.
const PUBLISH_DRAIN: Duration = Duration::from_secs(5);

/// The stop signals of a serving sidecar.
struct Stops {
    signals: Shutdown,
    app_done: Shutdown,
    shutdown: Shutdown,
    publish_stop: Shutdown,
}

/// From a signal or `POST /shutdown` to the drain and the closing of the publish API.
///
/// - `herald run`: a signal goes to the app first (`run_app`), which may still publish while it
///   stops; the drain and the publish API follow its exit. `POST /shutdown` stops the app too.
/// - `herald dev`: everything stops at once.
/// - `herald sidecar`: the drain begins at once; the publish API stays up for the shutdown
///   window, which ends early when the app is gone or says it is done ([`window`]).
async fn stop_sequence(
    stops: Stops,
    mode: RunMode,
    with_app: bool,
    shared: Shared,
    grace: Duration,
) {
    let Stops {
        signals,
        app_done,
        shutdown,
        publish_stop,
    } = stops;
    if with_app {
        // `run_app` turns a signal into the app's SIGTERM and triggers `shutdown` once the app
        // has exited.
        tokio::select! {
            _ = app_done.wait() => shutdown.trigger(),
            _ = shutdown.wait() => {}
        }
        shutdown.wait().await;
        publish_stop.trigger();
        return;
    }
    let by_signal = tokio::select! {
        _ = signals.wait() => true,
        _ = app_done.wait() => false,
    };
    shutdown.trigger();
    let configured = shared.shutdown_window().unwrap_or(match mode {
        RunMode::Sidecar => DEFAULT_SHUTDOWN_WINDOW,
        RunMode::Dev => Duration::ZERO,
    });
    let limit = grace.saturating_sub(grace.min(PUBLISH_DRAIN));
    let window = configured.min(limit);
    if by_signal && !window.is_zero() {
        if window < configured {
            tracing::warn!(
                ?configured,
                ?window,
                ?grace,
                "the shutdown window is cut to leave time for publishes in flight within --shutdown-grace"
            );
        }
        let started = std::time::Instant::now();
        tracing::info!(
            ?window,
            "draining; the publish API stays up until the app is gone"
        );
        let end = window::wait(window, &app_done).await;
        tracing::info!(after = ?started.elapsed(), "closing the publish API: {}", end.describe());
    }
    publish_stop.trigger();
}

/// `herald sidecar`, `dev` and `run`: serve until SIGTERM, SIGINT or `POST /shutdown` (or, with
/// an app, until it exits), then drain. Returns the exit status: the app's, else 0.
pub async fn serve(cfg: ServeConfig, app: Option<Vec<String>>) -> Result<u8, AppError> {
    logging::init(cfg.log_format);
    let mut embedded: Option<NatsServer> = None;
    let url = match &cfg.nats_url {
        Some(u) => u.clone(),
        None => {
            let bin = natsd::find_binary(&cfg.nats_server_bin)?;
            let opts = NatsServerOptions {
                bin,
                port: None,
                store_dir: None,
                config: None,
            };
            let server = tokio::task::spawn_blocking(move || NatsServer::start(&opts))
                .await
                .map_err(|e| AppError::Runtime(e.to_string()))??;
            let url = server.url().to_owned();
            tracing::info!(nats_url = %url, store = %server.store_dir().display(), "started embedded nats-server");
            embedded = Some(server);
            url
        }
    };

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let http_metrics = HttpMetrics::new(registry.sub_registry_with_prefix("herald"));
    let nats = NatsConfig {
        url: url.clone(),
        name: format!("herald-{}", cfg.app_id),
        creds: cfg.nats_creds.clone(),
    };
    let on_event = {
        let metrics = metrics.clone();
        move |event: ConnectionEvent| {
            let event = match event {
                ConnectionEvent::Connected => {
                    metrics.nats_connected.set(1);
                    metrics::ConnectionEvent::Connected
                }
                ConnectionEvent::Disconnected => {
                    metrics.nats_connected.set(0);
                    metrics::ConnectionEvent::Disconnected
                }
                ConnectionEvent::Closed => return,
            };
            metrics
                .nats_connection_events
                .get_or_create(&ConnectionLabels { event })
                .inc();
        }
    };
    let client = herald_jetstream::connect(&nats, on_event)
        .await
        .map_err(|e| AppError::Config(ConfigError(vec![format!("--nats-url={url:?}: {e}")])))?;
    let jetstream = JetStream::new(client, cfg.publish_timeout, &cfg.stream);
    let broker: Arc<dyn Broker> = Arc::new(jetstream.clone());

    if cfg.mode == RunMode::Dev {
        create_streams(&jetstream, &cfg).await?;
    }

    let bind = |flag: &str, addr| {
        let flag = flag.to_owned();
        async move {
            TcpListener::bind(addr).await.map_err(|e| {
                AppError::Config(ConfigError(vec![format!(
                    "--{flag}={addr}: cannot listen: {e}"
                )]))
            })
        }
    };
    let listener = bind("listen", cfg.listen).await?;
    let admin_listener = bind("admin-listen", cfg.admin_listen).await?;
    // The bound addresses: with port 0 the system picked them.
    let publish_addr = listener.local_addr().unwrap_or(cfg.listen);
    let admin_addr = admin_listener.local_addr().unwrap_or(cfg.admin_listen);
    let _ports_file = match &cfg.ports_file {
        Some(path) => Some(
            PortsFile::write(path, &[("publish", publish_addr), ("admin", admin_addr)]).map_err(
                |e| {
                    AppError::Config(ConfigError(vec![format!(
                        "--ports-file={}: cannot write: {e}",
                        path.display()
                    )]))
                },
            )?,
        ),
        None => None,
    };

    // The drain (deliveries stop, readiness turns 503, the async buffer flushes) begins at
    // `shutdown`; the publish API closes at `publish_stop`, which may come later (the window).
    let shutdown = Shutdown::new();
    let publish_stop = Shutdown::new();
    // SIGTERM and SIGINT; `POST /shutdown` is the app saying it is done.
    let signals = Shutdown::new();
    let app_done = Shutdown::new();
    signals
        .listen_for_signals()
        .map_err(|e| AppError::Runtime(format!("cannot watch signals: {e}")))?;
    let shared = Shared::new(&cfg.pod);
    let grace = cfg.shutdown_grace;
    tokio::spawn(
        stop_sequence(
            Stops {
                signals: signals.clone(),
                app_done: app_done.clone(),
                shutdown: shutdown.clone(),
                publish_stop: publish_stop.clone(),
            },
            cfg.mode,
            app.is_some(),
            shared.clone(),
            grace,
        )
        .instrument(tracing::info_span!("shutdown")),
    );
    let (buffer, drainer) = AsyncBuffer::start(
        broker.clone(),
        cfg.async_buffer,
        cfg.async_buffer_bytes,
        metrics.clone(),
    );
    let api_cfg = ApiConfig {
        app_id: cfg.app_id.clone(),
        max_body_bytes: cfg.max_body_bytes,
        body_read_timeout: cfg.listeners.body_read_timeout,
        publish_allow: shared.publish_allow.clone(),
    };
    let readiness = Readiness::new(broker.clone(), &cfg.stream);
    let api = Arc::new(Api::new(
        api_cfg,
        readiness.watch(),
        buffer,
        metrics.clone(),
        app_done.clone(),
    ));
    tokio::spawn(
        readiness
            .clone()
            .monitor(shutdown.clone())
            .instrument(tracing::info_span!("readiness")),
    );
    // The delivery facts of resource subscriptions, for their status.
    let board = crate::deliver::board::StatusBoard::new();
    let config_store: Arc<dyn ConfigStore> = Arc::new(jetstream.clone());
    tokio::spawn(board.clone().run(config_store.clone(), shutdown.clone()));
    let deliverer = Deliverer::new(
        broker.clone(),
        &cfg.stream,
        Subscriber {
            namespace: cfg.namespace.clone(),
            app_id: cfg.app_id.clone(),
        },
        metrics.clone(),
    )
    .with_board(board);
    let mut subscriptions = Subscriptions::new(
        deliverer,
        readiness.clone(),
        shutdown.clone(),
        cfg.shutdown_grace,
        shared,
        metrics.clone(),
    );
    // The cluster's delivery defaults: waited for briefly, so a sidecar starts with them rather
    // than switching a moment later; without them (no controller, NATS down) the built-in ones.
    let (defaults_tx, mut cluster) = tokio::sync::watch::channel(None);
    tokio::spawn(
        config::defaults::follow(config_store.clone(), defaults_tx, shutdown.clone())
            .instrument(tracing::info_span!("cluster_defaults")),
    );
    let _ = tokio::time::timeout(DEFAULTS_WAIT, cluster.wait_for(Option::is_some)).await;
    let defaults = cluster.borrow_and_update().unwrap_or_default();
    let pod = if defaults == Defaults::default() {
        cfg.pod.clone()
    } else {
        // Valid at start, so valid now: only the defaults differ.
        cfg.pod_source
            .load_with(&defaults)
            .unwrap_or_else(|_| cfg.pod.clone())
    };
    subscriptions.apply(&pod);
    // The app's resource subscriptions: they arrive (and change) while it runs.
    let (resources_tx, resources) = tokio::sync::watch::channel(None);
    tokio::spawn(
        config::defaults::follow_resources(
            config_store.clone(),
            herald_core::defaults::subscriptions_key(&cfg.namespace, &cfg.app_id),
            resources_tx,
            shutdown.clone(),
        )
        .instrument(tracing::info_span!("resource_subscriptions")),
    );
    let deliveries =
        tokio::spawn(subscriptions.run(cfg.pod_source.clone(), pod, cluster, resources));
    let admin = Arc::new(AdminApi {
        registry,
        readiness: readiness.clone(),
    });

    let server = |listener, max_connections| Server {
        listener,
        limits: Limits {
            max_connections,
            header_read_timeout: cfg.listeners.header_read_timeout,
        },
        metrics: http_metrics.clone(),
    };
    // The admin server outlives the drain, so probes and metrics stay answerable during it.
    let admin_stop = Shutdown::new();
    let admin_task = tokio::spawn(http_server::serve(
        server(Listener::Admin, cfg.listeners.admin_max_connections),
        admin_listener,
        admin_stop.clone(),
        Duration::from_secs(1),
        move |_peer, req| admin.clone().handle(req),
    ));
    tracing::info!(
        listen = %publish_addr, admin_listen = %admin_addr, app_id = %cfg.app_id, nats_url = %url, stream = %cfg.stream,
        "herald {} serving", if cfg.mode == RunMode::Dev { "dev" } else { "sidecar" }
    );

    let app_task = app.map(|command| {
        tokio::spawn(
            run_app(
                command,
                format!("http://{publish_addr}"),
                readiness.clone(),
                signals.clone(),
                shutdown.clone(),
                grace,
            )
            .instrument(tracing::info_span!("app")),
        )
    });
    // What is in flight when the publish API closes gets what the window left of the grace
    // period: at least PUBLISH_DRAIN (the window is bounded so).
    http_server::serve(
        server(Listener::Publish, cfg.listeners.max_connections),
        listener,
        publish_stop,
        grace.min(PUBLISH_DRAIN),
        move |peer, req| api.clone().handle(peer, req),
    )
    .await;
    // The async buffer gets what is left of the one grace period.
    let spent = shutdown
        .triggered_at()
        .map_or(Duration::ZERO, |t| t.elapsed());
    drainer.drain(grace.saturating_sub(spent)).await;
    // Deliveries drain on the same signal and bound themselves by the grace period.
    let _ = tokio::time::timeout(grace + Duration::from_secs(1), deliveries).await;
    // Close the connection before an embedded server goes, so the client does not start
    // reconnecting to it.
    jetstream.close(Duration::from_secs(2)).await;
    admin_stop.trigger();
    let _ = admin_task.await;
    if let Some(mut server) = embedded {
        let _ = tokio::task::spawn_blocking(move || server.stop()).await;
    }
    let status = match app_task {
        Some(t) => t.await.map_err(|e| AppError::Runtime(e.to_string()))??,
        None => 0,
    };
    tracing::info!("stopped");
    Ok(status)
}

/// `herald run`'s app: started once the sidecar is ready, with `HERALD_URL`; its exit drains the
/// sidecar, and a signal (or `POST /shutdown`) sends it SIGTERM, then SIGKILL after `grace`.
/// Returns its exit status (128 + the signal number if a signal ended it).
async fn run_app(
    command: Vec<String>,
    herald_url: String,
    readiness: Arc<Readiness>,
    signals: Shutdown,
    shutdown: Shutdown,
    grace: Duration,
) -> Result<u8, AppError> {
    let ready = tokio::select! {
        _ = readiness.wait_ready() => true,
        _ = signals.wait() => false,
        _ = shutdown.wait() => false,
    };
    if !ready {
        shutdown.trigger();
        return Ok(0);
    }
    let (program, args) = command.split_first().ok_or_else(|| {
        AppError::Config(ConfigError(vec![
            "the app command after `--` is empty".into(),
        ]))
    })?;
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env("HERALD_URL", &herald_url)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            shutdown.trigger();
            return Err(AppError::AppStart {
                program: program.clone(),
                source: e,
            });
        }
    };
    tracing::info!(pid = child.id(), %herald_url, "started the app: {}", command.join(" "));
    let status = tokio::select! {
        s = child.wait() => s,
        _ = async { tokio::select! { _ = signals.wait() => {}, _ = shutdown.wait() => {} } } => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    tracing::warn!(?grace, "the app did not stop within the grace period; killing it");
                    let _ = child.kill().await;
                    child.wait().await
                }
            }
        }
    };
    shutdown.trigger();
    let status = status.map_err(|e| AppError::Runtime(format!("waiting for the app: {e}")))?;
    use std::os::unix::process::ExitStatusExt as _;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    tracing::info!(code, "the app exited");
    Ok(u8::try_from(code).unwrap_or(1))
}

/// Creates or updates both streams (dev mode) once NATS is reachable.
async fn create_streams(jetstream: &JetStream, cfg: &ServeConfig) -> Result<(), AppError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !jetstream.is_connected() {
        if Instant::now() > deadline {
            return Err(AppError::Runtime(format!(
                "cannot reach NATS at {:?} to create the streams",
                cfg.nats_url
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for policy in [
        StreamPolicy::dev_events(&cfg.stream),
        StreamPolicy::dead_letters(&cfg.dlq_stream),
    ] {
        let outcome = jetstream
            .ensure_stream(&policy)
            .await
            .map_err(|e| AppError::Runtime(e.to_string()))?;
        tracing::info!(stream = %policy.name, ?outcome, "stream ready");
    }
    Ok(())
}
