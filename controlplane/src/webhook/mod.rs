//! The admission webhook: `POST /mutate` over HTTPS reads the AdmissionReview, looks up what the
//! pod needs from the cluster (only for pods that ask for the sidecar, [`lookups`]), decides with
//! the pure [`mutate`] (its app id from [`appid`]), answers with [`review`], and counts and logs
//! the outcome. [`tls`]: the certificate, reloaded when its files change.
//!
//! HTTP-level errors (wrong path, method, content type, a body that is too large, too slow or not
//! an AdmissionReview) are answered with their status and a one-line reason; the apiserver then
//! applies the webhook's `failurePolicy`. Everything about the pod itself is answered `200` with
//! an AdmissionReview.
//!
//! Any pod can reach the webhook, so besides the listener's limits ([`crate::limits`]) at most
//! [`MAX_CONCURRENT_ADMISSIONS`] requests are read and decided at once, which bounds the memory
//! their bodies can take.

pub mod appid;
pub mod lookups;
pub mod metrics;
pub mod mutate;
pub mod review;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Request;
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::AdmissionRequest;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::limits::{MAX_ADMISSION_BODY_BYTES, MAX_CONCURRENT_ADMISSIONS, TLS_HANDSHAKE_TIMEOUT};
use herald_runtime::admin::text;
use herald_runtime::http_server::{self, HttpResponse, Server};
use herald_runtime::shutdown::Shutdown;
use lookups::Cluster;
use metrics::{AdmissionLabels, Lookup, Metrics, NotInjectedLabels, Outcome};
use mutate::{Context, Decision, InjectorConfig, NotInjected, wants_injection};
use tls::Certificates;
use tokio::sync::Semaphore;

/// Where the apiserver sends AdmissionReviews (the chart's MutatingWebhookConfiguration says
/// the same; a test checks it).
pub const MUTATE_PATH: &str = "/mutate";

pub struct Webhook {
    pub config: InjectorConfig,
    pub cluster: Cluster,
    pub metrics: Arc<Metrics>,
    /// How long a client has to send the body once its head arrived.
    pub body_read_timeout: Duration,
    /// Slots for admissions being read and decided.
    pub admissions: Arc<Semaphore>,
}

impl Webhook {
    pub fn new(
        config: InjectorConfig,
        cluster: Cluster,
        metrics: Arc<Metrics>,
        body_read_timeout: Duration,
    ) -> Self {
        Webhook {
            config,
            cluster,
            metrics,
            body_read_timeout,
            admissions: Arc::new(Semaphore::new(MAX_CONCURRENT_ADMISSIONS)),
        }
    }
}

impl Webhook {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> HttpResponse {
        let started = Instant::now();
        if req.uri().path() != MUTATE_PATH {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: the webhook is POST /mutate",
            );
        }
        if req.method() != Method::POST {
            let mut r = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use POST",
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
            return r;
        }
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(herald_core::event::media_essence)
            .is_some_and(|m| m == "application/json");
        if !json {
            return self.bad(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json (an admission.k8s.io/v1 AdmissionReview)"
                    .into(),
            );
        }
        // The slot is held while the body is read and the pod decided; waiting for one counts
        // against the body timeout, which the client's own timeout (the apiserver's 10 s) beats.
        let timeout = self.body_read_timeout;
        let read = async {
            let slot = self.admissions.clone().acquire_owned().await;
            let body = Limited::new(req.into_body(), MAX_ADMISSION_BODY_BYTES)
                .collect()
                .await;
            (slot, body)
        };
        let (_slot, body) = match tokio::time::timeout(timeout, read).await {
            Ok(r) => r,
            Err(_) => {
                return self.bad(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body did not arrive within {timeout:?}"),
                );
            }
        };
        let body = match body {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return self.bad(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the body is over {MAX_ADMISSION_BODY_BYTES} bytes (the apiserver never sends more)"
                    ),
                );
            }
            Err(e) => {
                return self.bad(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body failed: {e}"),
                );
            }
        };
        let request = match review::parse(&body) {
            Ok(r) => r,
            Err(e) => return self.bad(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let decision = self.decide(&request).await;
        let (answer, decision) = review::respond(&request, decision);
        self.record(&request, &decision);
        self.metrics
            .admission_seconds
            .observe(started.elapsed().as_secs_f64());
        match serde_json::to_vec(&answer) {
            Ok(bytes) => {
                let mut r = HttpResponse::new(Full::new(Bytes::from(bytes)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("encoding the answer failed: {e}"),
            ),
        }
    }

    /// The lookups, then the pure decision.
    async fn decide(&self, req: &AdmissionRequest<Pod>) -> Decision {
        let Some(pod) = &req.object else {
            return Decision::CannotInject(
                NotInjected::Malformed,
                "the request carries no pod".into(),
            );
        };
        if !wants_injection(pod) {
            return Decision::Skip;
        }
        let namespace = req
            .namespace
            .as_deref()
            .or(pod.metadata.namespace.as_deref())
            .unwrap_or("default");
        let mut ctx = Context::default();
        // Without the namespace's defaults the sidecar could run with a looser configuration
        // (no publish allowlist), so the pod is admitted without it and reported instead.
        match self.cluster.namespace_annotations(namespace).await {
            Ok(a) => ctx.namespace_annotations = a,
            Err(e) => {
                self.metrics.lookup_failed(Lookup::Namespace);
                return Decision::CannotInject(
                    NotInjected::NamespaceLookup,
                    format!("cannot read namespace {namespace}: {e}"),
                );
            }
        }
        if let Some(job) = appid::controlling_job(&pod.metadata) {
            // Without the CronJob the app id falls back to the Job name, and the pod is warned.
            match self.cluster.cronjob_of(namespace, job).await {
                Ok(c) => ctx.cronjob = c,
                Err(e) => {
                    self.metrics.lookup_failed(Lookup::CronJob);
                    tracing::warn!(%namespace, %job, error = %e, "cannot look up the Job's CronJob; the app id comes from the Job");
                }
            }
        }
        mutate::mutate(pod, &ctx, &self.config)
    }

    fn record(&self, req: &AdmissionRequest<Pod>, decision: &Decision) {
        let dry_run = req.dry_run;
        let namespace = req.namespace.as_deref().unwrap_or("");
        let pod = req
            .object
            .as_ref()
            .and_then(|p| {
                p.metadata
                    .name
                    .clone()
                    .or_else(|| p.metadata.generate_name.clone())
            })
            .unwrap_or_default();
        let outcome = match decision {
            Decision::Skip => Outcome::Skipped,
            Decision::AlreadyInjected => Outcome::AlreadyInjected,
            Decision::Inject(i) => {
                if !dry_run {
                    self.metrics.injections.inc();
                }
                tracing::info!(%namespace, %pod, app_id = %i.app_id.id, origin = ?i.app_id.origin, native = self.config.native_sidecar, dry_run, uid = %req.uid, "injected");
                Outcome::Injected
            }
            Decision::Deny(message) => {
                tracing::info!(%namespace, %pod, dry_run, %message, "denied");
                Outcome::Denied
            }
            Decision::CannotInject(reason, message) => {
                if !dry_run {
                    self.metrics
                        .not_injected
                        .get_or_create(&NotInjectedLabels { reason: *reason })
                        .inc();
                }
                tracing::warn!(%namespace, %pod, dry_run, ?reason, %message, "the pod asked for the herald sidecar but is admitted without it");
                Outcome::NotInjected
            }
        };
        self.metrics
            .admissions
            .get_or_create(&AdmissionLabels { outcome, dry_run })
            .inc();
    }

    fn bad(&self, status: StatusCode, reason: String) -> HttpResponse {
        tracing::warn!(status = status.as_u16(), %reason, "bad admission request");
        self.metrics
            .admissions
            .get_or_create(&AdmissionLabels {
                outcome: Outcome::BadRequest,
                dry_run: false,
            })
            .inc();
        plain(status, &reason)
    }
}

fn plain(status: StatusCode, reason: &str) -> HttpResponse {
    text(status, format!("{reason}\n"), "text/plain; charset=utf-8")
}

/// Serves the webhook over TLS on `listener` until `shutdown`, then drains within `grace`.
pub async fn serve(
    server: Server,
    listener: TcpListener,
    certs: Arc<Certificates>,
    webhook: Arc<Webhook>,
    shutdown: Shutdown,
    grace: Duration,
) -> Result<(), tls::TlsError> {
    let acceptor = TlsAcceptor::from(certs.server_config()?);
    let handshake = move |stream: TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                )),
            }
        }
    };
    let handler = move |_peer: SocketAddr, req| webhook.clone().handle(req);
    http_server::serve_with(server, listener, shutdown, grace, handshake, handler).await;
    Ok(())
}
