//! Wiring of `herald-controlplane`: configuration, the admin and webhook listeners, native
//! sidecar detection, certificate reload, the controller with its broker (JetStream), the
//! console sharing that broker, and the drain on SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_core::broker::Broker;
use herald_core::settings::{ConfigError, Env};
use herald_jetstream::{JetStream, NatsConfig};
use herald_runtime::admin::{Admin, Ready, ReadyState};
use herald_runtime::http_server::{self, HttpMetrics, Limits, Listener, Server};
use herald_runtime::listeners::ListenerLimits;
use herald_runtime::logging;
use herald_runtime::ports::PortsFile;
use herald_runtime::shutdown::Shutdown;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::config::{Cli, Command, Config, ControllerSettings, NativeSidecar, WebhookConfig};
use crate::console::{self, Console};
use crate::controller::metrics::ControllerMetrics;
use crate::controller::{self, ControllerConfig, LeaseConfig};
use crate::webhook::lookups::Cluster;
use crate::webhook::metrics::{Lookup, Metrics};
use crate::webhook::tls::{Certificates, TlsError};
use crate::webhook::{self, Webhook};

/// Kubernetes API lookups made while answering an admission request give up after this long; the
/// apiserver waits 10 s for the whole answer by default.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// After SIGTERM the webhook keeps serving, unready, this long: the apiserver learns that the
/// endpoint is gone only after the endpoints controller and kube-proxy have caught up.
const UNREADY_DELAY: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("webhook certificate: {0}")]
    Tls(#[from] TlsError),
    #[error(
        "the Kubernetes API client cannot be configured (in a pod it uses the service account): {0}"
    )]
    Kube(String),
    #[error("cannot listen on {flag}={addr}: {source}")]
    Listen {
        flag: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Runtime(String),
}

impl ControlPlaneError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ControlPlaneError::Config(_) | ControlPlaneError::Tls(_) => 64,
            _ => 1,
        }
    }
}

/// `/readyz` of the injector: ready once the webhook serves, unready again when draining.
#[derive(Default)]
struct Readiness {
    ready: AtomicBool,
}

impl Ready for Readiness {
    fn current(&self) -> ReadyState {
        if self.ready.load(Ordering::Relaxed) {
            ReadyState {
                ready: true,
                reason: "ready".into(),
            }
        } else {
            ReadyState {
                ready: false,
                reason: "starting or shutting down".into(),
            }
        }
    }
}

/// What both binaries (`herald-controlplane`, and `herald-injector` of earlier releases) run:
/// parse, run on a multi-threaded runtime, exit with the status the error says.
pub fn entry() -> std::process::ExitCode {
    use std::process::ExitCode;
    let cli: Cli = match herald_runtime::cli::parse_command_line() {
        Ok(cli) => cli,
        Err(status) => return ExitCode::from(status),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-controlplane: cannot start the async runtime: {e}");
            return ExitCode::from(71);
        }
    };
    match runtime.block_on(main(cli, &herald_core::settings::ProcessEnv)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-controlplane: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

pub async fn main(cli: Cli, env: &dyn Env) -> Result<(), ControlPlaneError> {
    match cli.command {
        Some(Command::Crd { which }) => {
            let yaml = match which.as_str() {
                "subscriptions" => crate::controller::subscription::crd_yaml(),
                "kyma-subscriptions" => crate::controller::kyma::crd_yaml(),
                "eventschedules" => crate::sources::schedule::crd_yaml(),
                "kubernetessources" => crate::sources::kubernetes::crd_yaml(),
                _ => crate::controller::crd::crd_yaml(),
            }
            .map_err(|e| ControlPlaneError::Runtime(format!("cannot write the CRD: {e}")))?;
            print!("{yaml}");
            Ok(())
        }
        None => run(Config::resolve(&cli.serve, env)?).await,
    }
}

/// Serves until SIGTERM or SIGINT, then drains.
pub async fn run(cfg: Config) -> Result<(), ControlPlaneError> {
    logging::init(cfg.log_format);
    // Only ring is compiled in; installing it makes that explicit for every rustls user
    // (the webhook server and the kube client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let http_metrics = HttpMetrics::new(registry.sub_registry_with_prefix("herald_injector"));
    let controller_metrics = cfg
        .controller
        .is_some()
        .then(|| Arc::new(ControllerMetrics::new(&mut registry)));
    let shutdown = Shutdown::new();
    shutdown
        .listen_for_signals()
        .map_err(|e| ControlPlaneError::Runtime(format!("cannot watch signals: {e}")))?;
    let readiness = Arc::new(Readiness::default());
    let admin_listener = bind("--admin-listen", cfg.admin_listen).await?;
    let admin = Arc::new(Admin {
        registry,
        readiness: readiness.clone(),
    });
    let admin_stop = Shutdown::new();
    let admin_addr = admin_listener.local_addr().unwrap_or(cfg.admin_listen);
    tracing::info!(addr = %admin_addr, "admin API listening");
    let admin_task = tokio::spawn(http_server::serve(
        Server {
            listener: Listener::Admin,
            limits: Limits {
                max_connections: cfg.listeners.admin_max_connections,
                header_read_timeout: cfg.listeners.header_read_timeout,
            },
            metrics: http_metrics.clone(),
        },
        admin_listener,
        admin_stop.clone(),
        Duration::from_secs(1),
        move |_peer, req| admin.clone().handle(req),
    ));

    // Files that cannot be read are configuration errors (exit 64), found before the Kubernetes
    // client is needed.
    let certs = match &cfg.webhook {
        Some(w) => Some(Certificates::load(&w.cert_file, &w.key_file)?),
        None => None,
    };
    let nats_options = match &cfg.controller {
        Some(c) => Some(nats_config(c)?),
        None => None,
    };
    // The configuration is kept: KubernetesSources make impersonating clients from it.
    let kube_config = kube::Config::infer()
        .await
        .map_err(|e| ControlPlaneError::Kube(e.to_string()))?;
    let kube = kube::Client::try_from(kube_config.clone())
        .map_err(|e| ControlPlaneError::Kube(e.to_string()))?;
    let mut listening = vec![("admin", admin_addr)];
    let console_stop = Shutdown::new();
    let mut console_task = None;
    let controller_task = match (cfg.controller, nats_options, controller_metrics) {
        (Some(c), Some(nats), Some(m)) => {
            let broker = connect_broker(&c, nats).await?;
            if let Some(addr) = cfg.console_listen {
                let listener = bind("--console-listen", addr).await?;
                let bound = listener.local_addr().unwrap_or(addr);
                tracing::info!(addr = %bound, "console listening (HTTP; sign in with a Kubernetes token)");
                listening.push(("console", bound));
                let console = Arc::new(Console::new(
                    kube.clone(),
                    broker.clone(),
                    (c.stream.clone(), c.dlq_stream.clone()),
                    cfg.listeners.body_read_timeout,
                ));
                console_task = Some(tokio::spawn(console::serve(
                    console,
                    listener,
                    http_metrics.clone(),
                    cfg.listeners.header_read_timeout,
                    console_stop.clone(),
                )));
            }
            Some(start_controller(
                c,
                broker,
                kube.clone(),
                kube_config,
                m,
                &shutdown,
            ))
        }
        _ => None,
    };
    let webhook_stop = Shutdown::new();
    let webhook_task = match cfg.webhook.zip(certs) {
        Some((w, certs)) => Some(
            start_webhook(
                w,
                certs,
                kube,
                (metrics.clone(), http_metrics),
                &shutdown,
                &webhook_stop,
                (cfg.shutdown_grace, cfg.listeners),
            )
            .await?,
        ),
        None => None,
    };
    let webhook_task = webhook_task.map(|(task, addr)| {
        listening.push(("webhook", addr));
        task
    });
    let _ports_file = match &cfg.ports_file {
        Some(path) => Some(PortsFile::write(path, &listening).map_err(|e| {
            ControlPlaneError::Config(ConfigError(vec![format!(
                "--ports-file={}: cannot write: {e}",
                path.display()
            )]))
        })?),
        None => None,
    };
    readiness.ready.store(true, Ordering::Relaxed);
    tracing::info!("ready");

    shutdown.wait().await;
    readiness.ready.store(false, Ordering::Relaxed);
    if let Some(task) = webhook_task {
        tokio::time::sleep(UNREADY_DELAY.min(cfg.shutdown_grace)).await;
        webhook_stop.trigger();
        let _ = task.await;
    }
    if let Some(task) = controller_task {
        let _ = task.await;
    }
    if let Some(task) = console_task {
        console_stop.trigger();
        let _ = task.await;
    }
    admin_stop.trigger();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

async fn start_webhook(
    w: WebhookConfig,
    certs: Arc<Certificates>,
    client: kube::Client,
    (metrics, http_metrics): (Arc<Metrics>, Arc<HttpMetrics>),
    shutdown: &Shutdown,
    stop: &Shutdown,
    (grace, limits): (Duration, ListenerLimits),
) -> Result<(tokio::task::JoinHandle<()>, std::net::SocketAddr), ControlPlaneError> {
    let namespace = client.default_namespace().to_owned();
    let cluster = Cluster::new(client, LOOKUP_TIMEOUT);
    let native = match w.native_sidecar {
        NativeSidecar::Always => true,
        NativeSidecar::Never => false,
        NativeSidecar::Auto => detect_native(&cluster, &namespace, &w, &metrics).await,
    };
    metrics.native_sidecar.set(i64::from(native));
    let mut config = w.injector;
    config.native_sidecar = native;
    let listener = bind("--webhook-listen", w.listen).await?;
    let addr = listener.local_addr().unwrap_or(w.listen);
    tracing::info!(%addr, native_sidecar = native, image = %config.sidecar_image, "webhook listening (HTTPS)");
    let webhook = Arc::new(Webhook::new(
        config,
        cluster,
        metrics.clone(),
        limits.body_read_timeout,
    ));
    let server = Server {
        listener: Listener::Webhook,
        limits: Limits {
            max_connections: limits.max_connections,
            header_read_timeout: limits.header_read_timeout,
        },
        metrics: http_metrics,
    };
    // Checked here so a configuration error stops the start, not the server task.
    certs.server_config()?;
    tokio::spawn(
        certs
            .clone()
            .watch(metrics, shutdown.clone())
            .instrument(tracing::info_span!("certificates")),
    );
    let stop = stop.clone();
    let task = tokio::spawn(
        async move {
            if let Err(e) = webhook::serve(server, listener, certs, webhook, stop, grace).await {
                tracing::error!(error = %e, "the webhook stopped");
            }
        }
        .instrument(tracing::info_span!("webhook")),
    );
    Ok((task, addr))
}

/// The controller's NATS settings, with its credentials file read: one that does not load is a
/// configuration error (exit 64), found before the Kubernetes client is needed.
fn nats_config(c: &ControllerSettings) -> Result<NatsConfig, ControlPlaneError> {
    let creds = match &c.nats_creds {
        None => None,
        Some(path) => {
            let path = path.display().to_string();
            herald_core::settings::parse_creds(&path).map_err(|e| {
                ControlPlaneError::Config(ConfigError(vec![format!(
                    "--nats-creds={path:?} (HERALD_NATS_CREDS): cannot be read as a NATS credentials file: {e}"
                )]))
            })?;
            Some(path)
        }
    };
    Ok(NatsConfig {
        url: c.nats_url.clone(),
        name: "herald-controller".into(),
        creds,
    })
}

/// Connects to NATS (in the background: an outage delays passes, not the start); the controller
/// and the console share the connection.
async fn connect_broker(
    c: &ControllerSettings,
    nats: NatsConfig,
) -> Result<Arc<dyn Broker>, ControlPlaneError> {
    let client = herald_jetstream::connect(&nats, |_| {})
        .await
        .map_err(|e| ControlPlaneError::Runtime(format!("NATS: {e}")))?;
    // JetStream requests of the controller are bounded by its own timeouts too.
    Ok(Arc::new(JetStream::new(
        client,
        Duration::from_secs(10),
        &c.stream,
    )))
}

/// Runs the controller whenever this replica holds the lease. A failed leader election (RBAC, an
/// unreachable apiserver) is retried, so the webhook on this replica keeps serving.
fn start_controller(
    c: ControllerSettings,
    broker: Arc<dyn Broker>,
    kube: kube::Client,
    kube_config: kube::Config,
    metrics: Arc<ControllerMetrics>,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<()> {
    let cfg = ControllerConfig {
        event_stream: c.event_stream,
        stream: c.stream,
        dlq_stream: c.dlq_stream,
        period: c.period,
        orphan_grace: c.orphan_grace,
        lease: LeaseConfig::new(kube.default_namespace().to_owned(), c.identity),
        sources: crate::sources::SourcesConfig {
            kube: Some(kube_config),
            replicas: 1,
        },
    };
    tracing::info!(event_stream = %cfg.event_stream, period = ?cfg.period, orphan_grace = ?cfg.orphan_grace, lease = %format!("{}/{}", cfg.lease.namespace, cfg.lease.name), "controller starting; it runs while this replica holds the lease");
    let shutdown = shutdown.clone();
    let span = tracing::info_span!("controller", identity = %cfg.lease.identity);
    tokio::spawn(
        async move {
            while !shutdown.is_triggered() {
                let run = controller::lead(
                    kube.clone(),
                    broker.clone(),
                    cfg.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                );
                match run.await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "the controller cannot run; retrying in 10s");
                        tokio::select! {
                            _ = shutdown.wait() => break,
                            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                        }
                    }
                }
            }
        }
        .instrument(span),
    )
}

/// `--native-sidecar=auto`: three tries a few seconds apart; when the apiserver cannot be asked,
/// plain containers, which work on every cluster (with a `postStart` wait for ordering).
async fn detect_native(
    cluster: &Cluster,
    namespace: &str,
    w: &WebhookConfig,
    metrics: &Metrics,
) -> bool {
    for attempt in 1..=3 {
        match cluster
            .supports_native_sidecars(namespace, &w.injector.sidecar_image)
            .await
        {
            Ok(native) => {
                tracing::info!(native, %namespace, "native sidecar support detected with a dry-run probe pod");
                return native;
            }
            Err(e) => {
                metrics.lookup_failed(Lookup::NativeSidecarProbe);
                tracing::warn!(attempt, %namespace, error = %e, "the native sidecar probe failed");
            }
        }
        if attempt < 3 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    tracing::warn!(
        "native sidecar support unknown: injecting plain containers (set --native-sidecar=true or false to decide)"
    );
    false
}

async fn bind(
    flag: &'static str,
    addr: std::net::SocketAddr,
) -> Result<TcpListener, ControlPlaneError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ControlPlaneError::Listen { flag, addr, source })
}
