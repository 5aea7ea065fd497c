//! The console: a web UI and its JSON API (`/api/v1`, docs/CONSOLE.md) on a listener of its own
//! (`--console-listen`, off unless set), reached with `kubectl port-forward`.
//!
//! - [`auth`]: bearer tokens (TokenReview), authorisation of every read and action
//!   (SubjectAccessReview), browser sessions and their CSRF token.
//! - [`api`]: the routes: sign-in, Subscriptions (triggers) per namespace, CESQL checks, dead
//!   letters with replay, EventStreams, the catalog and the topology.
//! - [`catalog`]: every (source, type) seen in the event stream, from a tail of it.
//! - [`assets`]: the page, its script and its style, embedded in the binary (no CDN, nothing
//!   downloaded at run time).
//!
//! Every response carries the security headers ([`assets::secure`]): a Content-Security-Policy
//! without inline scripts, frame denial, no sniffing, no referrer. Every `GET` of the API answers
//! with an `ETag`, and `304` to `If-None-Match`, so the page polls cheaply for live updates.

pub mod api;
pub mod assets;
pub mod auth;
pub mod catalog;

use std::sync::Arc;
use std::time::Duration;

use herald_core::broker::Broker;
use herald_runtime::http_server::{self, HttpMetrics, Limits, Listener, Server};
use herald_runtime::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::limits::console::MAX_CONNECTIONS;

/// How long a computed topology is shown before it is computed again.
pub const TOPOLOGY_TTL: Duration = Duration::from_secs(2);

/// What the console works with.
pub struct Console {
    pub kube: kube::Client,
    pub broker: Arc<dyn Broker>,
    pub auth: auth::Auth,
    /// The event stream and the dead-letter stream.
    pub stream: String,
    pub dlq_stream: String,
    pub catalog: Arc<catalog::Catalog>,
    /// The last topology and when it was computed: every open page asks every 3 s, and it costs
    /// a request to JetStream per subscriber, so it is computed at most every [`TOPOLOGY_TTL`].
    pub topology: std::sync::Mutex<Option<(std::time::Instant, serde_json::Value)>>,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
}

impl Console {
    pub fn new(
        kube: kube::Client,
        broker: Arc<dyn Broker>,
        (stream, dlq_stream): (String, String),
        body_timeout: Duration,
    ) -> Self {
        Console {
            auth: auth::Auth::new(kube.clone()),
            kube,
            broker,
            stream,
            dlq_stream,
            catalog: Arc::default(),
            topology: std::sync::Mutex::new(None),
            body_timeout,
        }
    }
}

/// Serves the console on `listener` until `stop`, and follows the event stream for the catalog
/// meanwhile.
pub async fn serve(
    console: Arc<Console>,
    listener: TcpListener,
    metrics: Arc<HttpMetrics>,
    header_read_timeout: Duration,
    stop: Shutdown,
) {
    let server = Server {
        listener: Listener::Console,
        limits: Limits {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout,
        },
        metrics,
    };
    let follow = tokio::spawn(catalog::follow(
        console.catalog.clone(),
        console.broker.clone(),
        console.stream.clone(),
        stop.clone(),
    ));
    http_server::serve(
        server,
        listener,
        stop,
        Duration::from_secs(2),
        move |_peer, req| api::handle(console.clone(), req),
    )
    .await;
    let _ = follow.await;
}
