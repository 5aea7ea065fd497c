//! The accept loop every listener shares: HTTP/1.1 with keep-alive, `TCP_NODELAY` (a publish is one
//! small request and one small response; Nagle would add tens of milliseconds), and graceful
//! shutdown: on the drain signal stop accepting, let in-flight requests finish, close idle
//! connections, and give up after the grace period. The injector serves HTTPS through the same
//! loop ([`serve_with`] and a TLS handshake).
//!
//! Every listener is bounded the same way ([`Limits`]), because any client may be hostile or just
//! slow: at most `max_connections` open connections (more are closed as soon as they are
//! accepted, and counted), a request head of at most [`MAX_REQUEST_HEAD_BYTES`] and
//! [`MAX_REQUEST_HEADERS`] headers (`431` past either), and a head that must arrive within
//! `header_read_timeout` of the connection being accepted or of the previous response (hyper
//! closes the connection otherwise, so the same timeout ends idle keep-alive connections). The
//! handshake of [`serve_with`] runs inside the header timeout too. Request bodies are read by the
//! handlers, each within its own body timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use crate::shutdown::Shutdown;
use herald_core::limits::{MAX_REQUEST_HEAD_BYTES, MAX_REQUEST_HEADERS};

pub type HttpResponse = Response<Full<Bytes>>;

/// Which listener: a metric label and a log field.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Listener {
    Publish,
    Admin,
    Webhook,
    Console,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Publish => "publish",
            Listener::Admin => "admin",
            Listener::Webhook => "webhook",
            Listener::Console => "console",
        }
    }
}

crate::snake_case_labels!(Listener);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Listener,
}

/// What the listeners count; registered once per process.
#[derive(Default)]
pub struct HttpMetrics {
    pub open: Family<ListenerLabels, Gauge>,
    pub refused: Family<ListenerLabels, Counter>,
    pub header_timeouts: Family<ListenerLabels, Counter>,
}

impl HttpMetrics {
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let m = HttpMetrics::default();
        registry.register(
            "http_connections",
            "Open connections, by listener",
            m.open.clone(),
        );
        registry.register(
            "http_connections_refused",
            "Connections closed at once because the listener had its maximum open",
            m.refused.clone(),
        );
        registry.register(
            "http_header_timeouts",
            "Connections closed because no complete request head arrived in time (slow or idle clients)",
            m.header_timeouts.clone(),
        );
        Arc::new(m)
    }
}

/// What one client may do; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// A listener's identity, limits and metrics.
#[derive(Clone)]
pub struct Server {
    pub listener: Listener,
    pub limits: Limits,
    pub metrics: Arc<HttpMetrics>,
}

/// Serves `handler` on `listener` until `shutdown`, then drains within `grace`.
pub async fn serve<H, F>(
    server: Server,
    listener: TcpListener,
    shutdown: Shutdown,
    grace: Duration,
    handler: H,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    serve_with(server, listener, shutdown, grace, plain, handler).await
}

async fn plain(stream: TcpStream) -> io::Result<TcpStream> {
    Ok(stream)
}

/// Logs a refused connection at most this often (a flood would otherwise flood the log too).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// [`serve`] with a handshake on each accepted connection (TLS in the injector). The handshake
/// runs in the connection's own task, so a slow or hostile client never holds up the accept loop,
/// and within the header read timeout.
pub async fn serve_with<A, AF, S, H, F>(
    server: Server,
    listener: TcpListener,
    shutdown: Shutdown,
    grace: Duration,
    handshake: A,
    handler: H,
) where
    A: Fn(TcpStream) -> AF + Clone + Send + Sync + 'static,
    AF: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let name = server.listener.as_str();
    let labels = ListenerLabels {
        listener: server.listener,
    };
    let open = server.metrics.open.get_or_create(&labels).clone();
    let refused = server.metrics.refused.get_or_create(&labels).clone();
    let timeouts = server
        .metrics
        .header_timeouts
        .get_or_create(&labels)
        .clone();
    let slots = Arc::new(Semaphore::new(server.limits.max_connections));
    let header_timeout = server.limits.header_read_timeout;
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .max_headers(MAX_REQUEST_HEADERS);
    let started = Instant::now();
    // Milliseconds since `started` of the last refusal logged, plus one (0: none yet).
    let last_refusal_log = AtomicU64::new(0);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Closing at once costs nothing; keeping it would let one client hold the
                    // memory the limit is there to bound.
                    drop(stream);
                    refused.inc();
                    let now = started.elapsed().as_millis() as u64 + 1;
                    let last = last_refusal_log.load(Ordering::Relaxed);
                    if last == 0 || now.saturating_sub(last) >= REFUSAL_LOG_EVERY.as_millis() as u64 {
                        last_refusal_log.store(now, Ordering::Relaxed);
                        tracing::warn!(listener = name, max_connections = server.limits.max_connections, %peer,
                            "connection refused: the listener has its maximum of connections open (counted in herald_http_connections_refused_total)");
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let svc = service_fn(move |req| {
                    let fut = handler(peer, req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let handshake = handshake(stream);
                let watcher = graceful.watcher();
                let http = http.clone();
                let (open, timeouts) = (open.clone(), timeouts.clone());
                open.inc();
                tokio::spawn(
                    async move {
                        let _slot = slot;
                        let stream = match tokio::time::timeout(header_timeout, handshake).await {
                            Ok(Ok(s)) => Some(s),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "handshake failed");
                                None
                            }
                            Err(_) => {
                                timeouts.inc();
                                tracing::debug!("handshake timed out");
                                None
                            }
                        };
                        if let Some(stream) = stream {
                            let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), svc));
                            if let Err(e) = conn.await {
                                if e.is_timeout() {
                                    timeouts.inc();
                                }
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        }
                        open.dec();
                    }
                    .instrument(tracing::debug_span!("conn", listener = name, %peer)),
                );
            }
            _ = shutdown.wait() => break,
        }
    }
    drop(listener);
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::debug!(listener = name, "all connections closed"),
        Err(_) => tracing::warn!(
            listener = name,
            ?grace,
            "grace period over with requests still open"
        ),
    }
}
