//! One delivery attempt: the stored event as an HTTP request to the app
//! ([`herald_core::delivery::request`]), within the subscription's attempt timeout, and the
//! answer classified ([`herald_core::delivery::classify`]). [`Endpoint`] is where attempts go:
//! the app over HTTP ([`AppClient`]) in the sidecar, a script in the engine's unit tests.

use std::time::Duration;

use bytes::Bytes;
use herald_core::broker::{BoxFuture, Leased};
use std::collections::HashMap;
use std::net::IpAddr;

use herald_core::delivery::{Destination, Outcome, Target, classify, request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use rand::Rng as _;

/// Where delivery attempts go.
pub trait Endpoint: Send + Sync {
    /// Delivers the event once; what the answer (or its absence) means.
    fn send<'a>(
        &'a self,
        target: &'a Target,
        event: &'a dyn Leased,
        attempt: u32,
    ) -> BoxFuture<'a, Outcome>;
}

/// The HTTP client deliveries go through. Connections to the app (or a sink) are reused; the
/// pool keeps as many as deliveries are in flight.
pub struct AppClient {
    http: Client<HttpConnector, Full<Bytes>>,
    /// `--resolve` of the dispatcher: a sink's `host:port` connected to another address (its
    /// Host header stays), as curl's option does.
    resolve: HashMap<(String, u16), IpAddr>,
}

impl Default for AppClient {
    fn default() -> Self {
        Self::with_resolve(HashMap::new())
    }
}

impl Endpoint for AppClient {
    fn send<'a>(
        &'a self,
        target: &'a Target,
        event: &'a dyn Leased,
        attempt: u32,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(self.post(target, event, attempt))
    }
}

impl AppClient {
    pub fn with_resolve(resolve: HashMap<(String, u16), IpAddr>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        AppClient {
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            resolve,
        }
    }

    /// POSTs the event to the app; what its answer (or its absence) means.
    pub async fn post(&self, target: &Target, event: &dyn Leased, attempt: u32) -> Outcome {
        let sub = &target.sub;
        let req = match request(target, event.headers(), event.payload(), attempt) {
            Ok(mut r) => {
                if let Destination::Sink(sink) = &target.dest
                    && let Some(addr) = self.resolve.get(&(sink.host.clone(), sink.port))
                {
                    let to = std::net::SocketAddr::new(*addr, sink.port);
                    if let Ok(uri) = format!("http://{to}{}", sink.path).parse() {
                        *r.uri_mut() = uri;
                    }
                }
                r.map(Full::new)
            }
            Err(e) => {
                return Outcome::Permanent {
                    status: 0,
                    reason: format!("the stored event cannot be sent over HTTP: {e}"),
                };
            }
        };
        match tokio::time::timeout(sub.attempt_timeout, self.http.request(req)).await {
            Err(_) => Outcome::Retry {
                status: None,
                retry_after: None,
                reason: format!("no answer within {:?}", sub.attempt_timeout),
            },
            Ok(Err(e)) => Outcome::Retry {
                status: None,
                retry_after: None,
                reason: match &target.dest {
                    Destination::App(_) => format!("cannot reach the app: {e}"),
                    Destination::Sink(s) => format!("cannot reach sink {}: {e}", s.authority()),
                },
            },
            Ok(Ok(resp)) => {
                let outcome =
                    classify(resp.status(), resp.headers().get(http::header::RETRY_AFTER));
                // Read the (small) answer so the connection can be reused.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), resp.into_body().collect()).await;
                outcome
            }
        }
    }
}

/// `d` ±20 %, so a fleet of sidecars retrying the same app does not retry in lockstep. Computed
/// in seconds so that no duration can make it panic (`mul_f64` does on overflow).
pub fn jitter(d: Duration) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * rand::rng().random_range(0.8..1.2)).unwrap_or(d)
}
