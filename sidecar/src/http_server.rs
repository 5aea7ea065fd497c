//! The accept loop both listeners share: HTTP/1.1 with keep-alive, `TCP_NODELAY` (a publish is one
//! small request and one small response; Nagle would add tens of milliseconds), and graceful
//! shutdown: on the drain signal stop accepting, let in-flight requests finish, close idle
//! connections, and give up after the grace period. The injector serves HTTPS through the same
//! loop ([`serve_with`] and a TLS handshake).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;

use crate::shutdown::Shutdown;

pub type HttpResponse = Response<Full<Bytes>>;

/// Serves `handler` on `listener` until `shutdown`, then drains within `grace`.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    shutdown: Shutdown,
    grace: Duration,
    handler: H,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    serve_with(name, listener, shutdown, grace, plain, handler).await
}

async fn plain(stream: TcpStream) -> io::Result<TcpStream> {
    Ok(stream)
}

/// [`serve`] with a handshake on each accepted connection (TLS in the injector). The handshake
/// runs in the connection's own task, so a slow or hostile client never holds up the accept loop.
pub async fn serve_with<A, AF, S, H, F>(
    name: &'static str,
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
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(server = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
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
                tokio::spawn(
                    async move {
                        let stream = match handshake.await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(error = %e, "handshake failed");
                                return;
                            }
                        };
                        let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), svc));
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    }
                    .instrument(tracing::debug_span!("conn", server = name, %peer)),
                );
            }
            _ = shutdown.wait() => break,
        }
    }
    drop(listener);
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::debug!(server = name, "all connections closed"),
        Err(_) => tracing::warn!(
            server = name,
            ?grace,
            "grace period over with requests still open"
        ),
    }
}
