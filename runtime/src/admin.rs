//! The admin API every herald process serves: `/healthz` (the process serves), `/readyz` (what
//! [`Ready`] says), `/metrics` (OpenMetrics text). Read only, so it may listen on all interfaces
//! for the kubelet and Prometheus. Also the client side `herald wait` uses.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::Full;
use hyper::Request;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;

use crate::http_server::HttpResponse;

/// Whether a process can serve, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyState {
    pub ready: bool,
    pub reason: String,
}

/// What `/readyz` reports.
pub trait Ready: Send + Sync {
    fn current(&self) -> ReadyState;
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

/// `herald wait`: polls `/healthz` every 20 ms until it answers 200, or fails after `timeout`.
/// It gates the app's start (a postStart hook), so a short poll is start-up time saved; a refused
/// connection on loopback costs microseconds.
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
