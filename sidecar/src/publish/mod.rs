//! The publish path: the API on `--listen` (loopback) — routing, body limits, content modes,
//! durability, and the one place ("rescue") where a [`PublishError`] becomes an HTTP response:
//! JSON `{"status","error","attribute"?}` on the CloudEvents routes, Kyma's shapes on the legacy
//! route. Events are decoded by [`herald_core::event`] and stored through the broker seam
//! ([`Store`]); [`buffer`] is the async durability mode, [`error`] the path's error kinds.

pub mod buffer;
pub mod error;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::body::Body;
use serde::Serialize;

use herald_core::broker::Store;
use herald_core::event::{self, Event, EventBuilder, EventError, TraceContext};
use herald_core::filter::TypeFilter;
use herald_core::legacy::{self, LegacyError, LegacyOk};
use herald_core::wire;
use herald_runtime::http_server::HttpResponse;
use herald_runtime::shutdown::Shutdown;

use crate::metrics::{Durability, Metrics, RequestLabels, Route, RouteLabels, StoredLabels};
use buffer::AsyncBuffer;
pub use error::PublishError;

/// The request header (or `?durability=` query parameter) that selects the durability mode.
pub const DURABILITY_HEADER: &str = "herald-durability";

/// A request body the API reads: hyper's on the server.
pub trait RequestBody: Body<Data = Bytes, Error: std::fmt::Display> + Send + Unpin {}
impl<B: Body<Data = Bytes, Error: std::fmt::Display> + Send + Unpin> RequestBody for B {}

/// Settings of the publish API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Default `source` of `/events/{type}`.
    pub app_id: String,
    pub max_body_bytes: u64,
    /// How long a client has to send the body once the head arrived.
    pub body_read_timeout: std::time::Duration,
    /// Types this app may publish; empty means any. Swapped by a reload of the annotations.
    pub publish_allow: Arc<arc_swap::ArcSwap<Vec<TypeFilter>>>,
}

pub struct Api {
    cfg: ApiConfig,
    store: Arc<dyn Store>,
    buffer: AsyncBuffer,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Async,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: u16,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    attribute: Option<&'a str>,
}

/// One failed entry of a batch.
#[derive(Serialize)]
struct Failed {
    index: usize,
    id: Option<String>,
    status: u16,
    error: String,
}

impl Api {
    pub fn new(
        cfg: ApiConfig,
        store: Arc<dyn Store>,
        buffer: AsyncBuffer,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Self {
        Api {
            cfg,
            store,
            buffer,
            metrics,
            shutdown,
        }
    }

    /// Answers one request. Generic over the body so unit tests can send any body (a slow one
    /// included) without a socket; the server passes hyper's.
    pub async fn handle<B: RequestBody>(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<B>,
    ) -> HttpResponse {
        let start = Instant::now();
        let (route, resp) = self.route(peer, req).await;
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                route,
                status: resp.status().as_u16(),
            })
            .inc();
        self.metrics
            .request_duration
            .get_or_create(&RouteLabels { route })
            .observe(start.elapsed().as_secs_f64());
        resp
    }

    async fn route<B: RequestBody>(
        &self,
        peer: SocketAddr,
        req: Request<B>,
    ) -> (Route, HttpResponse) {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let route = match segments.as_slice() {
            ["publish"] => Route::Publish,
            ["events", ty] if !ty.is_empty() => Route::Events,
            [app, "v1", "events"] if !app.is_empty() => Route::Legacy,
            ["shutdown"] => Route::Other,
            _ => {
                return (
                    Route::Other,
                    error_response(
                        StatusCode::NOT_FOUND,
                        format!("no such endpoint: {path}"),
                        None,
                        None,
                    ),
                );
            }
        };
        if req.method() != Method::POST {
            let mut r = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes POST"),
                None,
                None,
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
            return (route, r);
        }
        let resp = match (route, segments.as_slice()) {
            (Route::Publish, _) => self.publish(req).await.unwrap_or_else(rescue),
            (Route::Events, [_, ty]) => self.raw(ty, req).await.unwrap_or_else(rescue),
            (Route::Legacy, [app, ..]) => self.legacy(app, req).await.unwrap_or_else(legacy_rescue),
            _ => self.shutdown_request(peer),
        };
        (route, resp)
    }

    /// `POST /shutdown`: lets a Job's app end its sidecar. Loopback peers only, even if `--listen`
    /// was widened.
    fn shutdown_request(&self, peer: SocketAddr) -> HttpResponse {
        if !peer.ip().is_loopback() {
            return error_response(
                StatusCode::FORBIDDEN,
                "shutdown is only accepted from loopback".into(),
                None,
                None,
            );
        }
        tracing::info!("shutdown requested over the publish API");
        self.shutdown.trigger();
        empty(StatusCode::ACCEPTED)
    }

    /// `POST /publish`: binary, structured or batch mode.
    async fn publish<B: RequestBody>(&self, req: Request<B>) -> Result<HttpResponse, PublishError> {
        let (parts, body) = req.into_parts();
        let mode = durability(&parts.headers, parts.uri.query())?;
        let trace = TraceContext::from_headers(&parts.headers);
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = event::media_essence(ct);
        match essence.as_str() {
            "application/cloudevents+json" => {
                let body = self.read_body(&parts.headers, body).await?;
                let ev = event::from_structured(&body, &body)?;
                self.store_one(ev, trace, mode).await
            }
            "application/cloudevents-batch+json" => {
                let body = self.read_body(&parts.headers, body).await?;
                let items = event::from_batch(&body).map_err(|e| match e {
                    EventError::BatchTooLarge(n) => PublishError::TooManyEvents(n),
                    e => e.into(),
                })?;
                self.store_batch(items, trace, mode).await
            }
            e if e.starts_with("application/cloudevents") => {
                Err(PublishError::UnsupportedMediaType(ct.to_owned()))
            }
            _ => {
                if !parts.headers.contains_key("ce-specversion") {
                    return Err(EventError::Attribute {
                        attribute: "specversion".into(),
                        rule: "required: send a ce-specversion header (binary mode) or Content-Type application/cloudevents+json (structured mode)".into(),
                    }
                    .into());
                }
                let body = self.read_body(&parts.headers, body).await?;
                let ev = event::from_binary(&parts.headers, body)?;
                self.store_one(ev, trace, mode).await
            }
        }
    }

    /// `POST /events/{type}`: the body is the data; `id`, `source`, `time` and `specversion` are
    /// filled in unless given as `ce-*` headers (a retrying app sends `ce-id` to be deduplicated).
    async fn raw<B: RequestBody>(
        &self,
        ty: &str,
        req: Request<B>,
    ) -> Result<HttpResponse, PublishError> {
        let (parts, body) = req.into_parts();
        let mode = durability(&parts.headers, parts.uri.query())?;
        let ty = percent_encoding::percent_decode_str(ty)
            .decode_utf8()
            .map_err(|_| EventError::Attribute {
                attribute: "type".into(),
                rule: "the path segment is not UTF-8".into(),
            })?
            .into_owned();
        let mut b = EventBuilder::new();
        event::read_binary_headers(&mut b, &parts.headers)?;
        if parts.headers.contains_key("ce-type") {
            return Err(EventError::Attribute {
                attribute: "type".into(),
                rule: "given in the path of /events/{type}; do not also send ce-type".into(),
            }
            .into());
        }
        b.set("type", ty)?;
        b.set_default("specversion", || "1.0".into())?;
        b.set_default("id", || uuid::Uuid::new_v4().to_string())?;
        b.set_default("source", || self.cfg.app_id.clone())?;
        b.set_default("time", || {
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        })?;
        let body = self.read_body(&parts.headers, body).await?;
        let ev = b.finish(body)?;
        self.store_one(ev, TraceContext::from_headers(&parts.headers), mode)
            .await
    }

    /// `POST /{application}/v1/events`: Kyma's legacy API.
    async fn legacy<B: RequestBody>(
        &self,
        app: &str,
        req: Request<B>,
    ) -> Result<HttpResponse, LegacyError> {
        let (parts, body) = req.into_parts();
        let app = percent_encoding::percent_decode_str(app)
            .decode_utf8()
            .map_err(|_| {
                LegacyError::other(400, "application name in the path is not UTF-8".into())
            })?;
        let body = self
            .read_body(&parts.headers, body)
            .await
            .map_err(|e| match e {
                PublishError::TooLarge { .. } => LegacyError::too_large(e.to_string()),
                PublishError::SlowBody(_) => LegacyError::other(408, e.to_string()),
                e => LegacyError::bad_payload(e.to_string()),
            })?;
        let ev = legacy::to_event(&app, &body)?;
        let id = ev.id.clone();
        self.store_one(ev, TraceContext::from_headers(&parts.headers), Mode::Sync)
            .await
            .map_err(|e| LegacyError::other(e.status().as_u16(), e.to_string()))?;
        Ok(json_response(
            StatusCode::OK,
            &LegacyOk {
                event_id: id,
                status: String::new(),
                reason: String::new(),
            },
        ))
    }

    /// Reads the body up to the limit, within the body read timeout (`408` after it). Past the
    /// limit nothing more is kept: the rest is read and discarded (up to [`DISCARD_LIMIT`] times
    /// the limit, for at most [`DISCARD_TIME`]) so the client, still writing, receives its `413`
    /// instead of a broken pipe.
    async fn read_body<B: RequestBody>(
        &self,
        headers: &HeaderMap,
        body: B,
    ) -> Result<Bytes, PublishError> {
        let timeout = self.cfg.body_read_timeout;
        tokio::time::timeout(timeout, self.read_body_now(headers, body))
            .await
            .unwrap_or(Err(PublishError::SlowBody(timeout)))
    }

    async fn read_body_now<B: RequestBody>(
        &self,
        headers: &HeaderMap,
        mut body: B,
    ) -> Result<Bytes, PublishError> {
        let limit = self.cfg.max_body_bytes;
        let too_large = || PublishError::TooLarge {
            what: "the request body",
            limit,
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            discard(body, limit).await;
            return Err(too_large());
        }
        // Most bodies arrive in one frame: keep that buffer as it is, copy only when there are more.
        let mut first: Option<Bytes> = None;
        let mut rest = BytesMut::new();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| PublishError::BadRequest {
                name: "body",
                rule: format!("could not be read: {e}"),
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            len = len.saturating_add(data.len() as u64);
            if len > limit {
                drop((first, rest));
                discard(body, limit).await;
                return Err(too_large());
            }
            match first.take() {
                None if rest.is_empty() => first = Some(data),
                None => rest.extend_from_slice(&data),
                Some(f) => {
                    // `declared` is at most the limit here; reserving it saves the copies.
                    rest.reserve(usize::try_from(declared.unwrap_or(len)).unwrap_or(0));
                    rest.extend_from_slice(&f);
                    rest.extend_from_slice(&data);
                }
            }
        }
        Ok(first.unwrap_or_else(|| rest.freeze()))
    }

    fn check_allowed(&self, ev: &Event) -> Result<(), PublishError> {
        let allow = self.cfg.publish_allow.load();
        if allow.is_empty() || allow.iter().any(|f| f.matches(&ev.source, &ev.ty)) {
            Ok(())
        } else {
            Err(PublishError::Forbidden {
                ty: ev.ty.clone(),
                origin: ev.source.clone(),
            })
        }
    }

    async fn store_one(
        &self,
        ev: Event,
        trace: TraceContext,
        mode: Mode,
    ) -> Result<HttpResponse, PublishError> {
        self.check_allowed(&ev)?;
        match mode {
            Mode::Sync => {
                self.store
                    .send(wire::message(&ev, &trace))
                    .await?
                    .stored()
                    .await?;
                self.stored(1);
                Ok(empty(StatusCode::NO_CONTENT))
            }
            Mode::Async => {
                self.buffer.try_enqueue(ev, trace)?;
                Ok(empty(StatusCode::ACCEPTED))
            }
        }
    }

    /// Stores every valid event of a batch; acks are awaited after all are sent, so a batch costs
    /// about one round trip rather than one per event.
    async fn store_batch(
        &self,
        items: Vec<Result<Event, EventError>>,
        trace: TraceContext,
        mode: Mode,
    ) -> Result<HttpResponse, PublishError> {
        let mut failed: Vec<Failed> = Vec::new();
        let mut fail = |index: usize, id: Option<String>, e: PublishError| {
            failed.push(Failed {
                index,
                id,
                status: e.status().as_u16(),
                error: e.to_string(),
            });
        };
        let mut pending = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let ev = match item
                .map_err(PublishError::from)
                .and_then(|ev| self.check_allowed(&ev).map(|()| ev))
            {
                Ok(ev) => ev,
                Err(e) => {
                    fail(index, None, e);
                    continue;
                }
            };
            let id = ev.id.clone();
            match mode {
                Mode::Sync => match self.store.send(wire::message(&ev, &trace)).await {
                    Ok(ack) => pending.push((index, id, ack)),
                    Err(e) => fail(index, Some(id), e.into()),
                },
                Mode::Async => {
                    if let Err(e) = self.buffer.try_enqueue(ev, trace.clone()) {
                        fail(index, Some(id), e);
                    }
                }
            }
        }
        let mut stored = 0;
        for (index, id, ack) in pending {
            match ack.stored().await {
                Ok(()) => stored += 1,
                Err(e) => fail(index, Some(id), e.into()),
            }
        }
        self.stored(stored);
        if failed.is_empty() {
            return Ok(empty(if mode == Mode::Sync {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::ACCEPTED
            }));
        }
        failed.sort_by_key(|f| f.index);
        // The batch answers with the highest status among its failures (documented in docs/API.md).
        let status = failed.iter().map(|f| f.status).max().unwrap_or(500);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Ok(json_response(
            status,
            &serde_json::json!({ "failed": failed }),
        ))
    }

    fn stored(&self, n: u64) {
        if n > 0 {
            self.metrics
                .events_stored
                .get_or_create(&StoredLabels {
                    durability: Durability::Sync,
                })
                .inc_by(n);
        }
    }
}

/// How much of an oversized body is read and thrown away, as a multiple of the limit.
const DISCARD_LIMIT: u64 = 16;
/// How long discarding an oversized body may take.
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(5);

async fn discard<B: RequestBody>(mut body: B, limit: u64) {
    let cap = limit.saturating_mul(DISCARD_LIMIT);
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > cap {
                break;
            }
        }
    })
    .await;
}

fn durability(headers: &HeaderMap, query: Option<&str>) -> Result<Mode, PublishError> {
    let from_query = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("durability=")));
    let value = match headers.get(DURABILITY_HEADER) {
        Some(v) => v.to_str().unwrap_or("<not ASCII>"),
        None => from_query.unwrap_or("sync"),
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "sync" => Ok(Mode::Sync),
        "async" => Ok(Mode::Async),
        _ => {
            let shown: String = value.chars().take(80).collect();
            Err(PublishError::BadRequest {
                name: DURABILITY_HEADER,
                rule: format!("must be `sync` or `async`, not `{shown}`"),
            })
        }
    }
}

/// Maps a publish error to the CloudEvents routes' response.
fn rescue(err: PublishError) -> HttpResponse {
    let status = err.status();
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), error = %err, "publish failed");
    } else {
        tracing::debug!(status = status.as_u16(), error = %err, "publish refused");
    }
    error_response(status, err.to_string(), err.attribute(), err.retry_after())
}

fn legacy_rescue(err: LegacyError) -> HttpResponse {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, &err);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

fn error_response(
    status: StatusCode,
    error: String,
    attribute: Option<&str>,
    retry_after: Option<u32>,
) -> HttpResponse {
    let mut r = json_response(
        status,
        &ErrorBody {
            status: status.as_u16(),
            error,
            attribute,
        },
    );
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(s));
    }
    r
}

pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> HttpResponse {
    // Serialising these plain structs cannot fail.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = HttpResponse::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn empty(status: StatusCode) -> HttpResponse {
    let mut r = HttpResponse::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}
