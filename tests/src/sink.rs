//! A real HTTP app that receives deliveries: records every request, answers from a script, can
//! be slow, tracks its peak concurrency, and can be stopped and started again on the same port.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    /// Answers to give, in order: (status, Retry-After); afterwards 204.
    script: Mutex<VecDeque<(u16, Option<u64>)>>,
    /// A status for every request (after the script), instead of 204.
    always: Mutex<Option<u16>>,
    delay: Mutex<Duration>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

pub struct Sink {
    pub port: u16,
    ip: std::net::IpAddr,
    state: Arc<State>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Sink {
    /// Starts on a port the kernel picks (binding port 0 leaves no window for another process
    /// to take it first).
    pub async fn start() -> Self {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// [`Sink::start`] on `ip` (where pods of a test cluster reach the host, say).
    pub async fn start_on(ip: std::net::IpAddr) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind the sink");
        let port = listener.local_addr().expect("sink address").port();
        let mut s = Sink {
            port,
            ip,
            state: Arc::default(),
            server: None,
        };
        s.serve(listener);
        s
    }

    /// Listens again on the sink's port (after [`Sink::down`]).
    pub async fn up(&mut self) {
        let listener = TcpListener::bind((self.ip, self.port))
            .await
            .expect("bind the sink port");
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let state = self.state.clone();
        self.server = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }));
    }

    /// Stops listening and drops every open connection (the app is down).
    pub fn down(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }

    pub fn script(&self, answers: &[(u16, Option<u64>)]) {
        self.state
            .script
            .lock()
            .unwrap()
            .extend(answers.iter().copied());
    }

    pub fn always(&self, status: u16) {
        *self.state.always.lock().unwrap() = Some(status);
    }

    pub fn delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn peak_concurrency(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests arrived (at most `limit`).
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let until = Instant::now() + limit;
        loop {
            let r = self.received();
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < until,
                "the sink got {} of {n} requests within {limit:?}",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.down();
    }
}

async fn handle(
    state: Arc<State>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak.fetch_max(now, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    state.received.lock().unwrap().push(Received {
        at: Instant::now(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    });
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let scripted = state.script.lock().unwrap().pop_front();
    let (status, retry_after) =
        scripted.unwrap_or_else(|| (state.always.lock().unwrap().unwrap_or(204), None));
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut resp = http::Response::new(Full::new(Bytes::new()));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(s) = retry_after {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(s));
    }
    Ok(resp)
}
