//! The NATS connection: one per process, reconnecting forever (with jittered backoff, so a fleet
//! of sidecars does not reconnect in lockstep after a NATS restart), started in the background
//! so a process comes up even while NATS is down; and a one-shot connection for commands that run
//! and exit.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions};
use rand::Rng as _;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Comma-separated server URLs.
    pub url: String,
    /// Client name shown by the server (`herald-<app id>`, `herald-controller`).
    pub name: String,
    /// A NATS credentials file (user JWT and NKey seed).
    pub creds: Option<String>,
}

/// What happened to the connection, for the process's logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    Connected,
    Disconnected,
    /// Closed for good (after a drain).
    Closed,
}

/// Why a connection could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("`{url}` is not a NATS URL: {reason}")]
    Url { url: String, reason: String },
    #[error("--nats-creds={path:?}: {reason}")]
    Credentials { path: String, reason: String },
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
}

/// `--nats-url`: one or more comma-separated NATS URLs.
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

/// Backoff between reconnect attempts: 0, then doubling from 100 ms up to 5 s, with ±20% jitter.
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let base = 100u64.saturating_mul(1 << (attempts - 2).min(6)).min(5_000);
    let jitter = rand::rng().random_range(0.8..1.2);
    Duration::from_millis((base as f64 * jitter) as u64)
}

fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
    url.split(',')
        .map(|u| {
            u.trim()
                .parse()
                .map_err(|e: std::io::Error| ConnectError::Url {
                    url: u.trim().to_owned(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

async fn options(creds: Option<&str>) -> Result<ConnectOptions, ConnectError> {
    match creds {
        // Read once: a rotated credentials file takes effect when the process restarts.
        Some(path) => ConnectOptions::new()
            .credentials_file(path)
            .await
            .map_err(|e| ConnectError::Credentials {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        None => Ok(ConnectOptions::new()),
    }
}

/// Connects in the background: returns at once, even when NATS is down, and keeps reconnecting.
/// `on_event` hears every connect, disconnect and the final close.
pub async fn connect(
    cfg: &NatsConfig,
    on_event: impl Fn(ConnectionEvent) + Send + Sync + 'static,
) -> Result<Client, ConnectError> {
    let servers = servers(&cfg.url)?;
    let on_event = Arc::new(on_event);
    options(cfg.creds.as_deref())
        .await?
        .name(&cfg.name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let on_event = on_event.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connected");
                        on_event(ConnectionEvent::Connected);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected; reconnecting");
                        on_event(ConnectionEvent::Disconnected);
                    }
                    async_nats::Event::Closed => {
                        tracing::debug!("NATS connection closed");
                        on_event(ConnectionEvent::Closed);
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        })
        .connect(servers)
        .await
        .map_err(|e| ConnectError::Connect {
            url: cfg.url.clone(),
            reason: e.to_string(),
        })
}

/// One connection for a command that runs and exits (`herald stream info`, `herald deadletter`):
/// it fails at once instead of reconnecting forever. The error names the URL.
pub async fn connect_once(url: &str, creds: Option<&str>) -> Result<Client, ConnectError> {
    options(creds)
        .await?
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| ConnectError::Connect {
            url: url.to_owned(),
            reason: e.to_string(),
        })
}
