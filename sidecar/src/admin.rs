//! The admin API on `--admin-listen`: `/healthz` (the process serves), `/readyz` (NATS connected
//! and the events stream exists, else `503` with the reason), `/metrics` (OpenMetrics text).
//! Read only, so it may listen on all interfaces for the kubelet and Prometheus.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::Full;
use hyper::Request;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;

use crate::broker::Broker;
use crate::http_server::HttpResponse;
use crate::shutdown::Shutdown;
use crate::streams;

/// Whether the sidecar can serve publishes, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyState {
    pub ready: bool,
    pub reason: String,
}

/// Readiness, refreshed by [`Readiness::monitor`] and read by `/readyz`.
pub struct Readiness {
    state: ArcSwap<ReadyState>,
    /// Subscriptions whose consumer is not bound yet.
    unbound: std::sync::atomic::AtomicUsize,
    broker: Broker,
    stream: String,
}

impl Readiness {
    pub fn new(broker: Broker, stream: &str) -> Arc<Self> {
        Arc::new(Readiness {
            state: ArcSwap::from_pointee(ReadyState {
                ready: false,
                reason: "starting".into(),
            }),
            unbound: std::sync::atomic::AtomicUsize::new(0),
            broker,
            stream: stream.to_owned(),
        })
    }

    pub fn current(&self) -> ReadyState {
        // The connection state is read live: a lost connection must not wait for the next poll.
        if !self.broker.is_connected() {
            return ReadyState {
                ready: false,
                reason: "NATS is not connected".into(),
            };
        }
        let unbound = self.unbound.load(std::sync::atomic::Ordering::Relaxed);
        let state = self.state.load();
        if state.ready && unbound > 0 {
            return ReadyState {
                ready: false,
                reason: format!("binding {unbound} subscription consumer(s)"),
            };
        }
        state.as_ref().clone()
    }

    /// Readiness waits for this many more consumers to be bound.
    pub fn expect_consumers(&self, n: usize) {
        self.unbound
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// One expected consumer is bound.
    pub fn consumer_bound(&self) {
        self.unbound
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn probe(&self) -> ReadyState {
        if !self.broker.is_connected() {
            return ReadyState {
                ready: false,
                reason: "NATS is not connected".into(),
            };
        }
        match self.broker.jetstream().get_stream(&self.stream).await {
            Ok(_) => ReadyState {
                ready: true,
                reason: "ready".into(),
            },
            Err(e) if streams::is_not_found(&e) => ReadyState {
                ready: false,
                reason: format!(
                    "stream `{}` does not exist (herald's controller, or `herald dev`, creates it)",
                    self.stream
                ),
            },
            Err(e) => ReadyState {
                ready: false,
                reason: format!("cannot check stream `{}`: {e}", self.stream),
            },
        }
    }

    /// Re-checks every second (every 250 ms while not ready) and logs each change.
    pub async fn monitor(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            let next = self.probe().await;
            let prev = self.state.load();
            if **prev != next {
                if next.ready {
                    tracing::info!("ready");
                } else {
                    tracing::warn!(reason = %next.reason, "not ready");
                }
                self.state.store(Arc::new(next.clone()));
            }
            let wait = if next.ready {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(250)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => {
                    self.state.store(Arc::new(ReadyState { ready: false, reason: "shutting down".into() }));
                    return;
                }
            }
        }
    }

    /// Resolves once ready (or never, if it never gets there).
    pub async fn wait_ready(&self) {
        while !self.current().ready {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What `/readyz` reports; the injector has its own.
pub trait Ready: Send + Sync {
    fn current(&self) -> ReadyState;
}

impl Ready for Readiness {
    fn current(&self) -> ReadyState {
        Readiness::current(self)
    }
}

pub struct Admin {
    pub registry: Registry,
    pub readiness: Arc<dyn Ready>,
}

impl Admin {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> HttpResponse {
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain; charset=utf-8"),
            "/readyz" => {
                let s = self.readiness.current();
                let status = if s.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(
                    status,
                    format!("{}\n", s.reason),
                    "text/plain; charset=utf-8",
                )
            }
            "/metrics" => {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
                    Ok(()) => text(
                        StatusCode::OK,
                        out,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                    Err(e) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("encoding metrics failed: {e}\n"),
                        "text/plain",
                    ),
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz or /metrics\n".into(),
                "text/plain",
            ),
        }
    }
}

/// A response with a text body.
pub fn text(status: StatusCode, body: String, ct: &'static str) -> HttpResponse {
    let mut r = HttpResponse::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    r
}

/// One `GET path` on an admin API: whether it answered 2xx; `None` when it cannot be reached.
pub async fn get_ok(admin: std::net::SocketAddr, path: &str) -> Option<bool> {
    let stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(header::HOST, "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .ok()?;
    Some(send.send_request(req).await.ok()?.status().is_success())
}

/// `herald wait`: polls `/healthz` every 100 ms until it answers 200, or fails after `timeout`.
pub async fn wait_healthy(admin: std::net::SocketAddr, timeout: Duration) -> Result<(), String> {
    let until = tokio::time::Instant::now()
        .checked_add(timeout)
        .unwrap_or_else(tokio::time::Instant::now);
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(1), get_ok(admin, "/healthz"));
        if let Ok(Some(true)) = attempt.await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= until {
            return Err(format!(
                "the sidecar did not answer http://{admin}/healthz within {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
