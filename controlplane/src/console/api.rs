//! The console's JSON API under `/api/v1` (docs/CONSOLE.md): every route authenticates the caller
//! (a bearer token, or a session cookie whose writes carry the session's `X-Herald-Csrf`) and
//! authorises what it touches with a SubjectAccessReview before it reads or changes anything, with
//! the control plane's own identity.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::deadletter::{self, DeadLetter, Selection};
use herald_core::defaults::Defaults;
use herald_runtime::http_server::HttpResponse;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::Console;
use super::assets;
use super::auth::{Access, AuthError, User};
use crate::controller::crd::EventStream;
use crate::controller::routing;
use crate::controller::subscription::{Subscription, SubscriptionSpec};
use crate::limits::console::{
    MAX_BODY_BYTES, MAX_DEADLETTER_SCAN, MAX_REPLAY, MAX_SHOWN_DATA_BYTES, SESSION_LIFETIME,
};

/// The session cookie.
pub const COOKIE: &str = "herald_console";
/// The header that carries a session's CSRF token on writes.
pub const CSRF_HEADER: &str = "x-herald-csrf";
/// Who the console's writes are recorded as (`managedFields`).
const FIELD_MANAGER: &str = "herald-console";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(
        "a write signed in with a session needs the session's CSRF token in the X-Herald-Csrf header"
    )]
    Csrf,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the request body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("a request body must be JSON, sent with `Content-Type: application/json`")]
    MediaType,
    #[error("{method} is not allowed on {path}")]
    Method { method: Method, path: String },
    #[error("{0}")]
    Kube(kube::Error),
    #[error("{0}")]
    Broker(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth(AuthError::Unauthenticated(_)) => StatusCode::UNAUTHORIZED,
            ApiError::Auth(AuthError::Forbidden { .. }) | ApiError::Csrf => StatusCode::FORBIDDEN,
            ApiError::Auth(AuthError::Unavailable(_)) | ApiError::Broker(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Method { .. } => StatusCode::METHOD_NOT_ALLOWED,
            // The apiserver's own answer (409 conflict, 422 schema, 404) passes through.
            ApiError::Kube(kube::Error::Api(s)) => {
                StatusCode::from_u16(s.code).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            ApiError::Kube(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        ApiError::Kube(e)
    }
}

/// A successful answer.
struct Reply {
    status: StatusCode,
    body: Value,
    cookie: Option<String>,
}

fn ok(body: Value) -> Result<Reply, ApiError> {
    Ok(Reply {
        status: StatusCode::OK,
        body,
        cookie: None,
    })
}

/// Serves one request: an embedded asset, or the API.
pub async fn handle(console: Arc<Console>, req: Request<Incoming>) -> HttpResponse {
    let path = req.uri().path().to_owned();
    if req.method() == Method::GET
        && let Some((content_type, body)) = assets::asset(&path)
    {
        return assets::serve(content_type, body);
    }
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return assets::status(StatusCode::NOT_FOUND);
    };
    let is_get = req.method() == Method::GET;
    let if_none_match = req.headers().get(header::IF_NONE_MATCH).cloned();
    match route(&console, req, rest).await {
        Ok(reply) => {
            let body = Bytes::from(reply.body.to_string());
            let etag = is_get.then(|| etag(&body));
            if let (Some(tag), Some(seen)) = (&etag, &if_none_match)
                && seen.as_bytes() == tag.as_bytes()
            {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r.headers_mut().insert(
                    header::ETAG,
                    HeaderValue::from_str(tag).unwrap_or(HeaderValue::from_static("\"\"")),
                );
                return assets::secure(r);
            }
            let mut r = json_response(reply.status, body);
            if let Some(tag) = etag
                && let Ok(v) = HeaderValue::from_str(&tag)
            {
                r.headers_mut().insert(header::ETAG, v);
            }
            if let Some(cookie) = reply.cookie
                && let Ok(v) = HeaderValue::from_str(&cookie)
            {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            let status = e.status();
            if status.is_server_error() {
                tracing::warn!(%path, error = %e, "console request failed");
            }
            let body = json!({"error": e.to_string(), "code": status.as_u16()});
            json_response(status, Bytes::from(body.to_string()))
        }
    }
}

fn etag(body: &[u8]) -> String {
    let d = Sha256::digest(body);
    let hex: String = d.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

fn json_response(status: StatusCode, body: Bytes) -> HttpResponse {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    assets::secure(r)
}

/// The signed-in user, and whether a write may proceed (its CSRF token checked, or a bearer
/// token, which a browser never sends on its own).
struct Caller {
    user: User,
    may_write: bool,
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

async fn caller(console: &Console, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                AuthError::Unauthenticated(
                    "the Authorization header must be `Bearer <token>`".into(),
                )
            })?;
        let user = console.auth.authenticate(token).await?;
        return Ok(Caller {
            user,
            may_write: true,
        });
    }
    let Some(session) = cookie(headers, COOKIE) else {
        return Err(AuthError::Unauthenticated(
            "sign in with a Kubernetes token (`kubectl create token <service-account>`), or send `Authorization: Bearer <token>`".into(),
        )
        .into());
    };
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    let (token, csrf_ok) = console.auth.session(&session, csrf)?;
    let user = console.auth.authenticate(&token).await?;
    Ok(Caller {
        user,
        may_write: csrf_ok,
    })
}

impl Caller {
    fn write(&self) -> Result<(), ApiError> {
        if self.may_write {
            Ok(())
        } else {
            Err(ApiError::Csrf)
        }
    }
}

/// A request's JSON body. It must say `Content-Type: application/json`: a page of another site
/// cannot send that without a CORS preflight, which the console never grants, so no other site can
/// make a browser sign in or write here (forms can only send `text/plain` and the like).
async fn body(console: &Console, req: Request<Incoming>) -> Result<Value, ApiError> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Err(ApiError::MediaType);
    }
    let collected = tokio::time::timeout(
        console.body_timeout,
        Limited::new(req.into_body(), MAX_BODY_BYTES).collect(),
    )
    .await
    .map_err(|_| {
        ApiError::BadRequest(format!(
            "the request body did not arrive within {:?}",
            console.body_timeout
        ))
    })?
    .map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            ApiError::TooLarge
        } else {
            ApiError::BadRequest(format!("the request body could not be read: {e}"))
        }
    })?
    .to_bytes();
    if collected.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&collected)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))
}

/// A namespace or resource name from the path: a DNS-1123 subdomain, so it is safe in the
/// apiserver's URLs.
fn name_segment<'a>(what: &str, v: &'a str) -> Result<&'a str, ApiError> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(v)
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} {v:?} is not a valid Kubernetes name (lower-case letters, digits, '-' and '.', at most 253, starting and ending alphanumeric)"
        )))
    }
}

async fn route(console: &Console, req: Request<Incoming>, rest: &str) -> Result<Reply, ApiError> {
    let method = req.method().clone();
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let not_allowed = || ApiError::Method {
        method: method.clone(),
        path: format!("/api/v1/{rest}"),
    };
    // Sign-in is the one route without a caller.
    if segments == ["session"] && method == Method::POST {
        let b = body(console, req).await?;
        let token = b.get("token").and_then(Value::as_str).ok_or_else(|| {
            ApiError::BadRequest("the body must be {\"token\": \"<token>\"}".into())
        })?;
        let (id, csrf, user) = console.auth.sign_in(token.trim()).await?;
        return Ok(Reply {
            status: StatusCode::OK,
            body: json!({"user": user, "csrf": csrf}),
            cookie: Some(format!(
                "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                SESSION_LIFETIME.as_secs()
            )),
        });
    }
    let headers = req.headers().clone();
    let query = query_param(req.uri().query().unwrap_or(""), "q");
    let who = caller(console, &headers).await?;
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["session"]) => {
            let csrf = cookie(&headers, COOKIE).and_then(|id| console.auth.csrf(&id));
            ok(json!({"user": who.user, "csrf": csrf}))
        }
        (Method::DELETE, ["session"]) => {
            if let Some(id) = cookie(&headers, COOKIE) {
                console.auth.sign_out(&id);
            }
            Ok(Reply {
                status: StatusCode::OK,
                body: json!({}),
                cookie: Some(format!(
                    "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
                )),
            })
        }
        (Method::GET, ["whoami"]) => ok(json!({"user": who.user})),
        (Method::POST, ["cesql"]) => {
            let b = body(console, req).await?;
            let expr = b.get("expression").and_then(Value::as_str).ok_or_else(|| {
                ApiError::BadRequest("the body must be {\"expression\": \"<CESQL>\"}".into())
            })?;
            ok(check_cesql(expr))
        }
        (Method::GET, ["namespaces"]) => namespaces(console, &who.user).await,
        (Method::GET, ["sources"]) => sources(console, &who.user).await,
        (Method::GET, ["defaults"]) => defaults(console).await,
        (Method::GET, ["eventstreams"]) => eventstreams(console, &who.user).await,
        (Method::GET, ["catalog"]) => {
            console.auth.require(&who.user, &stream_readers()).await?;
            ok(console.catalog.view(&query, chrono::Utc::now()))
        }
        (Method::GET, ["topology"]) => {
            console.auth.require(&who.user, &stream_readers()).await?;
            let cached = console
                .topology
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|(at, _)| at.elapsed() < super::TOPOLOGY_TTL)
                .map(|(_, v)| v.clone());
            match cached {
                Some(v) => ok(v),
                None => {
                    let v = topology(console).await?;
                    *console.topology.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((std::time::Instant::now(), v.clone()));
                    ok(v)
                }
            }
        }
        (m, ["namespaces", ns, "subscriptions"]) => {
            let ns = name_segment("namespace", ns)?;
            match m {
                Method::GET => list_subscriptions(console, &who.user, ns).await,
                Method::POST => {
                    who.write()?;
                    let b = body(console, req).await?;
                    create_subscription(console, &who.user, ns, b).await
                }
                _ => Err(not_allowed()),
            }
        }
        (m, ["namespaces", ns, "subscriptions", name]) => {
            let ns = name_segment("namespace", ns)?;
            let name = name_segment("name", name)?;
            match m {
                Method::GET => get_subscription(console, &who.user, ns, name).await,
                Method::PUT => {
                    who.write()?;
                    let b = body(console, req).await?;
                    update_subscription(console, &who.user, ns, name, b).await
                }
                Method::DELETE => {
                    who.write()?;
                    delete_subscription(console, &who.user, ns, name).await
                }
                _ => Err(not_allowed()),
            }
        }
        (Method::GET, ["namespaces", ns, "workloads"]) => {
            let ns = name_segment("namespace", ns)?;
            workloads(console, &who.user, ns).await
        }
        (Method::GET, ["namespaces", ns, "subscriptions", name, "deadletters"]) => {
            let (ns, name) = (name_segment("namespace", ns)?, name_segment("name", name)?);
            list_deadletters(console, &who.user, ns, name).await
        }
        (
            Method::POST,
            [
                "namespaces",
                ns,
                "subscriptions",
                name,
                "deadletters",
                "replay",
            ],
        ) => {
            let (ns, name) = (name_segment("namespace", ns)?, name_segment("name", name)?);
            who.write()?;
            let b = body(console, req).await?;
            replay_deadletters(console, &who.user, ns, name, b).await
        }
        (Method::GET, ["namespaces", ns, "subscriptions", name, "deadletters", seq]) => {
            let (ns, name) = (name_segment("namespace", ns)?, name_segment("name", name)?);
            let seq: u64 = seq.parse().map_err(|_| {
                ApiError::BadRequest(format!("{seq:?} is not a dead-letter sequence number"))
            })?;
            get_deadletter(console, &who.user, ns, name, seq).await
        }
        _ => Err(ApiError::NotFound(format!(
            "no route {method} /api/v1/{rest} (docs/CONSOLE.md lists them)"
        ))),
    }
}

/// A CESQL expression checked by the parser the sidecars and the controller use.
pub fn check_cesql(expr: &str) -> Value {
    match herald_cesql::Expression::parse(expr) {
        Ok(_) => json!({"valid": true}),
        Err(e) => json!({"valid": false, "column": e.column, "message": e.message}),
    }
}

/// The delivery settings a trigger gets when it sets none: the cluster's (the EventStream's
/// `delivery`, as the controller publishes them to the sidecars), else herald's built-in ones.
async fn defaults(console: &Console) -> Result<Reply, ApiError> {
    use herald_core::defaults as d;
    let stored = console
        .broker
        .get(d::BUCKET, d::DELIVERY_KEY)
        .await
        .ok()
        .flatten()
        .and_then(|b| Defaults::from_json(&b).ok());
    let from = if stored.is_some() {
        "cluster"
    } else {
        "built-in"
    };
    let v = stored.unwrap_or_default();
    ok(json!({
        "from": from,
        "maxAttempts": v.max_attempts,
        "localAttempts": d::LOCAL_ATTEMPTS,
        "backoff": format!("{}ms", v.local_backoff.as_millis()),
        "redeliveryDelay": format!("{}s", d::REDELIVERY_DELAY.as_secs()),
        "maxRedeliveryDelay": format!("{}s", d::MAX_REDELIVERY_DELAY.as_secs()),
        "maxInFlight": v.max_in_flight,
        "timeout": format!("{}s", v.attempt_timeout.as_secs()),
        "deadLetter": true,
        "start": "new",
    }))
}

/// Namespaces whose Subscriptions the user may list: all of them when they may list
/// Subscriptions cluster-wide, else each one asked for.
async fn namespaces(console: &Console, user: &User) -> Result<Reply, ApiError> {
    let all = Api::<Namespace>::all(console.kube.clone())
        .list_metadata(&ListParams::default())
        .await?;
    let names: Vec<String> = all
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let cluster_wide = Access {
        namespace: None,
        ..Access::subscriptions("list", "", None)
    };
    let visible = if console.auth.allowed(user, &cluster_wide).await? {
        names
    } else {
        let mut visible = Vec::new();
        for ns in names {
            if console
                .auth
                .allowed(user, &Access::subscriptions("list", &ns, None))
                .await?
            {
                visible.push(ns);
            }
        }
        visible
    };
    ok(json!({"namespaces": visible}))
}

/// The internal publishers, EventSchedules and KubernetesSources (docs/SOURCES.md), that the
/// user may list: cluster wide, or in their namespace.
async fn sources(console: &Console, user: &User) -> Result<Reply, ApiError> {
    use crate::sources::kubernetes::KubernetesSource;
    use crate::sources::schedule::EventSchedule;
    let mut visible = Visible::default();
    let mut items = Vec::new();
    let schedules = match Api::<EventSchedule>::all(console.kube.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        // The CRD is not installed: there are none.
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    for s in schedules {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        if !visible.may(console, user, "eventschedules", &ns).await? {
            continue;
        }
        let name = s.metadata.name.clone().unwrap_or_default();
        let status = s.status.clone().unwrap_or_default();
        let source = s.spec.source.clone().unwrap_or_else(|| {
            format!("/apis/herald.dev/v1alpha1/namespaces/{ns}/eventschedules/{name}")
        });
        items.push(json!({
            "kind": "EventSchedule", "namespace": ns, "name": name,
            "source": source, "types": [s.spec.type_],
            "schedule": s.spec.schedule, "timeZone": s.spec.time_zone,
            "suspend": s.spec.suspend.unwrap_or(false),
            "ready": ready_of(&status.conditions),
            "lastScheduleTime": status.last_schedule_time,
            "nextScheduleTime": status.next_schedule_time,
            "lastEventId": status.last_event_id,
        }));
    }
    let kubernetes = match Api::<KubernetesSource>::all(console.kube.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    for s in kubernetes {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        if !visible.may(console, user, "kubernetessources", &ns).await? {
            continue;
        }
        let mode = match s.spec.mode.as_deref() {
            Some("Resource" | "resource") => "resource",
            _ => "ref",
        };
        let types =
            ["add", "update", "delete"].map(|op| format!("dev.knative.apiserver.{mode}.{op}"));
        let status = s.status.clone().unwrap_or_default();
        let watched: Vec<String> = s
            .spec
            .resources
            .iter()
            .map(|r| format!("{} {}", r.api_version, r.kind))
            .collect();
        items.push(json!({
            "kind": "KubernetesSource", "namespace": ns,
            "name": s.metadata.name.clone().unwrap_or_default(),
            // Knative's: the apiserver's URL as the control plane reaches it.
            "source": null,
            "types": types,
            "serviceAccountName": s.spec.service_account_name,
            "resources": watched,
            "ready": ready_of(&status.conditions),
        }));
    }
    ok(json!({ "items": items }))
}

fn ready_of(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Value {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| json!({"status": c.status, "reason": c.reason, "message": c.message}))
        .unwrap_or(Value::Null)
}

/// What one listing of sources may show the user, decided once per kind and namespace.
#[derive(Default)]
struct Visible(std::collections::HashMap<(&'static str, String), bool>);

impl Visible {
    async fn may(
        &mut self,
        console: &Console,
        user: &User,
        resource: &'static str,
        ns: &str,
    ) -> Result<bool, ApiError> {
        let access = |namespace: Option<String>| Access {
            verb: "list",
            group: "herald.dev",
            resource,
            namespace,
            name: None,
        };
        for key in [String::new(), ns.to_owned()] {
            if let Some(known) = self.0.get(&(resource, key.clone())) {
                if *known || !key.is_empty() {
                    return Ok(*known);
                }
                continue;
            }
            let namespace = (!key.is_empty()).then(|| key.clone());
            let allowed = console.auth.allowed(user, &access(namespace)).await?;
            self.0.insert((resource, key.clone()), allowed);
            if allowed || !key.is_empty() {
                return Ok(allowed);
            }
        }
        Ok(false)
    }
}

/// A resource as the API shows it: without `managedFields`.
fn shown(mut s: Subscription) -> Value {
    s.metadata.managed_fields = None;
    serde_json::to_value(&s).unwrap_or(Value::Null)
}

async fn list_subscriptions(console: &Console, user: &User, ns: &str) -> Result<Reply, ApiError> {
    console
        .auth
        .require(user, &Access::subscriptions("list", ns, None))
        .await?;
    let list = Api::<Subscription>::namespaced(console.kube.clone(), ns)
        .list(&ListParams::default())
        .await?;
    let items: Vec<Value> = list.items.into_iter().map(shown).collect();
    ok(json!({"namespace": ns, "items": items}))
}

async fn get_subscription(
    console: &Console,
    user: &User,
    ns: &str,
    name: &str,
) -> Result<Reply, ApiError> {
    console
        .auth
        .require(user, &Access::subscriptions("get", ns, Some(name)))
        .await?;
    let s = Api::<Subscription>::namespaced(console.kube.clone(), ns)
        .get(name)
        .await?;
    ok(shown(s))
}

/// The spec from a request body, checked as the controller would check it.
fn spec_of(b: &Value, ns: &str, name: &str) -> Result<Subscription, ApiError> {
    let spec_value = b
        .get("spec")
        .cloned()
        .ok_or_else(|| ApiError::BadRequest("the body must hold a `spec`".into()))?;
    let spec: SubscriptionSpec =
        serde_json::from_value(spec_value).map_err(|e| ApiError::Invalid(format!("spec: {e}")))?;
    let mut s = Subscription::new(name, spec);
    s.metadata.namespace = Some(ns.to_owned());
    routing::check(&s, &Defaults::default()).map_err(ApiError::Invalid)?;
    Ok(s)
}

async fn create_subscription(
    console: &Console,
    user: &User,
    ns: &str,
    b: Value,
) -> Result<Reply, ApiError> {
    let name = b
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest("the body must hold `metadata.name`".into()))?;
    let name = name_segment("metadata.name", name)?;
    console
        .auth
        .require(user, &Access::subscriptions("create", ns, None))
        .await?;
    let s = spec_of(&b, ns, name)?;
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let created = Api::<Subscription>::namespaced(console.kube.clone(), ns)
        .create(&pp, &s)
        .await?;
    tracing::info!(user = %user.name, namespace = %ns, %name, "console: Subscription created");
    Ok(Reply {
        status: StatusCode::CREATED,
        body: shown(created),
        cookie: None,
    })
}

async fn update_subscription(
    console: &Console,
    user: &User,
    ns: &str,
    name: &str,
    b: Value,
) -> Result<Reply, ApiError> {
    console
        .auth
        .require(user, &Access::subscriptions("update", ns, Some(name)))
        .await?;
    let wanted = spec_of(&b, ns, name)?;
    let api = Api::<Subscription>::namespaced(console.kube.clone(), ns);
    let mut current = api.get(name).await?;
    // With the resourceVersion the page read, an edit made meanwhile is a 409, not overwritten.
    if let Some(rv) = b
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        current.metadata.resource_version = Some(rv.to_owned());
    }
    current.spec = wanted.spec;
    current.metadata.managed_fields = None;
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let replaced = api.replace(name, &pp, &current).await?;
    tracing::info!(user = %user.name, namespace = %ns, %name, "console: Subscription updated");
    ok(shown(replaced))
}

async fn delete_subscription(
    console: &Console,
    user: &User,
    ns: &str,
    name: &str,
) -> Result<Reply, ApiError> {
    console
        .auth
        .require(user, &Access::subscriptions("delete", ns, Some(name)))
        .await?;
    Api::<Subscription>::namespaced(console.kube.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await?;
    tracing::info!(user = %user.name, namespace = %ns, %name, "console: Subscription deleted");
    ok(json!({}))
}

/// The consumers a Subscription's dead letters come from (its status says).
async fn consumers_of(console: &Console, ns: &str, name: &str) -> Result<Vec<String>, ApiError> {
    let s = Api::<Subscription>::namespaced(console.kube.clone(), ns)
        .get(name)
        .await?;
    Ok(s.status.map(|s| s.consumers).unwrap_or_default())
}

/// A trigger's dead letters (those of its consumers; `seqs` narrows them), newest first, at most
/// [`MAX_DEADLETTER_SCAN`] read; an empty, complete listing while it has no consumer.
async fn deadletters_of(
    console: &Console,
    ns: &str,
    name: &str,
    seqs: Option<Vec<u64>>,
) -> Result<deadletter::Listing, ApiError> {
    let consumers = consumers_of(console, ns, name).await?;
    if consumers.is_empty() {
        return Ok(deadletter::Listing {
            complete: true,
            ..deadletter::Listing::default()
        });
    }
    let sel = Selection {
        consumers: Some(consumers),
        seqs,
        ..Selection::default()
    };
    deadletter::list(
        console.broker.as_ref(),
        &console.dlq_stream,
        &sel,
        Some(MAX_DEADLETTER_SCAN),
    )
    .await
    .map_err(|e| ApiError::Broker(e.to_string()))
}

fn summary(d: &DeadLetter) -> Value {
    json!({
        "seq": d.seq,
        "time": d.message.time.to_rfc3339(),
        "ageSeconds": d.age.as_secs(),
        "type": d.ty,
        "source": d.source,
        "id": d.id,
        "status": d.status,
        "attempts": d.attempts,
        "reason": d.reason,
        "subscriber": d.subscriber,
        "consumer": d.consumer,
    })
}

async fn list_deadletters(
    console: &Console,
    user: &User,
    ns: &str,
    name: &str,
) -> Result<Reply, ApiError> {
    console
        .auth
        .require(user, &Access::subscriptions("get", ns, Some(name)))
        .await?;
    let listing = deadletters_of(console, ns, name, None).await?;
    let items: Vec<Value> = listing.found.iter().map(summary).collect();
    ok(json!({"items": items, "scanned": listing.scanned, "complete": listing.complete}))
}

async fn get_deadletter(
    console: &Console,
    user: &User,
    ns: &str,
    name: &str,
    seq: u64,
) -> Result<Reply, ApiError> {
    console
        .auth
        .require(user, &Access::subscriptions("get", ns, Some(name)))
        .await?;
    let consumers = consumers_of(console, ns, name).await?;
    let missing = || ApiError::NotFound(format!("no dead letter {seq} of {ns}/{name}"));
    let m = console
        .broker
        .message(&console.dlq_stream, seq)
        .await
        .map_err(|e| ApiError::Broker(e.to_string()))?
        .ok_or_else(missing)?;
    let d = DeadLetter::from_stored(m, chrono::Utc::now());
    if !consumers.contains(&d.consumer) {
        return Err(missing());
    }
    let headers: Vec<Value> = d
        .message
        .headers
        .iter()
        .map(|(k, v)| json!([k, v]))
        .collect();
    let payload = &d.message.payload;
    let data = super::catalog::shown_data(payload, MAX_SHOWN_DATA_BYTES);
    let mut out = summary(&d);
    out["headers"] = Value::Array(headers);
    out["data"] = data;
    out["dataBytes"] = json!(payload.len());
    out["truncated"] = json!(payload.len() > MAX_SHOWN_DATA_BYTES);
    ok(out)
}

async fn replay_deadletters(
    console: &Console,
    user: &User,
    ns: &str,
    name: &str,
    b: Value,
) -> Result<Reply, ApiError> {
    console
        .auth
        .require(user, &Access::subscriptions("update", ns, Some(name)))
        .await?;
    let all = b.get("all").and_then(Value::as_bool) == Some(true);
    let seqs: Option<Vec<u64>> = match b.get("seqs") {
        None => None,
        Some(v) => Some(
            v.as_array()
                .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
                .ok_or_else(|| {
                    ApiError::BadRequest("`seqs` must be a list of sequence numbers".into())
                })?,
        ),
    };
    if !all && seqs.as_ref().is_none_or(Vec::is_empty) {
        return Err(ApiError::BadRequest(
            "say which dead letters: {\"seqs\": [4, 7]} or {\"all\": true}".into(),
        ));
    }
    if seqs.as_ref().is_some_and(|s| s.len() > MAX_REPLAY) {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_REPLAY} dead letters per request"
        )));
    }
    let listing = deadletters_of(console, ns, name, seqs).await?;
    let mut found = listing.found;
    let more = found.len() > MAX_REPLAY || !listing.complete;
    found.truncate(MAX_REPLAY);
    // Oldest first, as they failed.
    found.reverse();
    let (mut replayed, mut failed) = (Vec::new(), Vec::new());
    for d in &found {
        match deadletter::replay(console.broker.as_ref(), d).await {
            Ok(()) => {
                // Deleted only once the replay is stored: nothing acknowledged is lost.
                if let Err(e) = console
                    .broker
                    .delete_message(&console.dlq_stream, d.seq)
                    .await
                {
                    tracing::warn!(seq = d.seq, error = %e, "console: replayed, but the dead letter could not be deleted");
                }
                replayed.push(d.seq);
            }
            Err(e) => failed.push(json!({"seq": d.seq, "error": e.to_string()})),
        }
    }
    tracing::info!(user = %user.name, namespace = %ns, %name, replayed = replayed.len(), failed = failed.len(), "console: dead letters replayed");
    ok(json!({"replayed": replayed, "failed": failed, "more": more}))
}

/// What runs in a namespace, as far as the user may list it: the pods with the sidecar (their app
/// ids are what a trigger can target), the pods that asked for it and run without it (missed
/// injections), and the Services a sink can name.
async fn workloads(console: &Console, user: &User, ns: &str) -> Result<Reply, ApiError> {
    use crate::controller::inventory::{running, sidecar_app_id};
    use crate::webhook::mutate::asks_for_sidecar;
    use k8s_openapi::api::core::v1::{Pod, Service};
    let core = |verb, resource| Access {
        verb,
        group: "",
        resource,
        namespace: Some(ns.to_owned()),
        name: None,
    };
    let (mut sidecars, mut missed, mut apps) =
        (Vec::new(), Vec::new(), std::collections::BTreeSet::new());
    let pods_allowed = console.auth.allowed(user, &core("list", "pods")).await?;
    if pods_allowed {
        let pods = Api::<Pod>::namespaced(console.kube.clone(), ns)
            .list(&ListParams::default())
            .await?;
        for pod in pods.items.iter().filter(|p| running(p)) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            match sidecar_app_id(pod) {
                Some(app) => {
                    if !app.is_empty() {
                        apps.insert(app.to_owned());
                    }
                    sidecars.push(json!({"pod": name, "app": app, "phase": phase}));
                }
                None if asks_for_sidecar(&pod.metadata) => missed.push(json!({"pod": name})),
                None => {}
            }
        }
    }
    let services_allowed = console
        .auth
        .allowed(user, &core("list", "services"))
        .await?;
    let mut services = Vec::new();
    if services_allowed {
        let list = Api::<Service>::namespaced(console.kube.clone(), ns)
            .list(&ListParams::default())
            .await?;
        for svc in list.items {
            let name = svc.metadata.name.unwrap_or_default();
            let ports: Vec<i32> = svc
                .spec
                .and_then(|s| s.ports)
                .unwrap_or_default()
                .iter()
                .map(|p| p.port)
                .collect();
            let url = match ports.as_slice() {
                [80] | [] => format!("http://{name}.{ns}.svc.cluster.local"),
                [p, ..] => format!("http://{name}.{ns}.svc.cluster.local:{p}"),
            };
            services.push(json!({"name": name, "ports": ports, "url": url}));
        }
    }
    if !pods_allowed && !services_allowed {
        return Err(AuthError::Forbidden {
            user: user.name.clone(),
            what: format!("list pods or services in namespace {ns:?}"),
        }
        .into());
    }
    ok(json!({
        "namespace": ns,
        "apps": apps,
        "sidecars": sidecars,
        "missedInjections": missed,
        "services": services,
        "podsListed": pods_allowed,
        "servicesListed": services_allowed,
    }))
}

/// What reading the streams' contents (the catalog, the topology, EventStreams) takes: listing
/// EventStreams, the cluster-scoped resource that owns them.
fn stream_readers() -> Access {
    Access {
        verb: "list",
        group: "herald.dev",
        resource: "eventstreams",
        namespace: None,
        name: None,
    }
}

/// One query parameter, percent-decoded (empty when absent).
fn query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default()
}

/// Who publishes what to whom: sources → types (from the catalog, with their rates) → subscribers
/// (the event stream's consumers, by `namespace/app`, with what they have pending and how many
/// dead letters they left).
async fn topology(console: &Console) -> Result<Value, ApiError> {
    use herald_core::subject::{event_subject, subject_matches};
    use std::collections::BTreeMap;
    let now = chrono::Utc::now();
    let pairs = console.catalog.rates(now);
    let consumers = console
        .broker
        .consumers(&console.stream)
        .await
        .map_err(|e| ApiError::Broker(e.to_string()))?;
    let mut publishers: BTreeMap<String, f64> = BTreeMap::new();
    let mut types: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    let mut edges = Vec::new();
    for (source, ty, rate, count) in &pairs {
        *publishers.entry(source.clone()).or_default() += rate;
        let t = types.entry(ty.clone()).or_default();
        t.0 += rate;
        t.1 += count;
        edges.push(
            json!({"from": format!("source:{source}"), "to": format!("type:{ty}"), "rate": rate}),
        );
    }
    // Subscribers: one node per namespace/app, one edge per type its consumers take.
    let mut subscribers: BTreeMap<String, (u64, u64, Vec<String>)> = BTreeMap::new();
    let mut delivers: BTreeMap<(String, String), (f64, u64)> = BTreeMap::new();
    for c in &consumers {
        let Some(desc) = c.description.as_deref() else {
            continue;
        };
        let mut parts = desc.splitn(3, '/');
        let (Some(ns), Some(app)) = (parts.next(), parts.next()) else {
            continue;
        };
        let id = format!("{ns}/{app}");
        let s = subscribers.entry(id.clone()).or_default();
        s.0 += c.pending;
        s.1 += c.ack_pending as u64;
        s.2.push(c.name.clone());
        let mut matched = false;
        for (source, ty, rate, _) in &pairs {
            if subject_matches(&c.filter_subject, &event_subject(source, ty)) {
                matched = true;
                let d = delivers.entry((ty.clone(), id.clone())).or_default();
                d.0 += rate;
                d.1 += c.pending;
            }
        }
        if !matched {
            // Nothing seen for it in the window: it still shows, under what it asks for.
            let wanted = c
                .filter_subject
                .strip_prefix("herald.")
                .and_then(|rest| rest.split_once('.'))
                .map(|(_, ty)| ty.to_owned())
                .unwrap_or_else(|| c.filter_subject.clone());
            types.entry(wanted.clone()).or_default();
            let d = delivers.entry((wanted, id.clone())).or_default();
            d.1 += c.pending;
        }
    }
    for ((ty, id), (rate, pending)) in &delivers {
        edges.push(json!({"from": format!("type:{ty}"), "to": format!("subscriber:{id}"), "rate": rate, "pending": pending}));
    }
    let mut subscriber_nodes = Vec::new();
    for (id, (pending, ack_pending, consumer_names)) in &subscribers {
        let (ns, app) = id.split_once('/').unwrap_or((id.as_str(), ""));
        let filter = format!(
            "{}.{}.{}.>",
            herald_core::delivery::DLQ_PREFIX,
            herald_core::subject::encode_token(ns),
            herald_core::subject::encode_token(app)
        );
        let dead = console
            .broker
            .count(&console.dlq_stream, &filter)
            .await
            .ok();
        subscriber_nodes.push(json!({
            "id": format!("subscriber:{id}"), "namespace": ns, "app": app,
            "pending": pending, "ackPending": ack_pending, "deadLetters": dead,
            "consumers": consumer_names,
        }));
    }
    Ok(json!({
        "publishers": publishers.iter().map(|(s, r)| json!({"id": format!("source:{s}"), "name": s, "rate": r})).collect::<Vec<_>>(),
        "types": types.iter().map(|(t, (r, n))| json!({"id": format!("type:{t}"), "name": t, "rate": r, "count": n})).collect::<Vec<_>>(),
        "subscribers": subscriber_nodes,
        "edges": edges,
    }))
}

async fn eventstreams(console: &Console, user: &User) -> Result<Reply, ApiError> {
    console.auth.require(user, &stream_readers()).await?;
    let list = Api::<EventStream>::all(console.kube.clone())
        .list(&ListParams::default())
        .await?;
    let items: Vec<Value> = list
        .items
        .into_iter()
        .map(|mut e| {
            e.metadata.managed_fields = None;
            serde_json::to_value(&e).unwrap_or(Value::Null)
        })
        .collect();
    let streams = match console.broker.streams().await {
        Ok(s) => s
            .into_iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "messages": s.messages,
                    "bytes": s.bytes,
                    "maxBytes": s.max_bytes,
                    "consumers": s.consumers,
                })
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "console: stream states could not be read");
            Vec::new()
        }
    };
    ok(json!({"items": items, "streams": streams}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cesql_errors_name_the_column() {
        assert_eq!(check_cesql("type = 'a'"), json!({"valid": true}));
        let bad = check_cesql("type = 'a' AND");
        assert_eq!(bad["valid"], json!(false));
        let column = herald_cesql::Expression::parse("type = 'a' AND")
            .unwrap_err()
            .column;
        assert_eq!(bad["column"], json!(column));
        assert!(bad["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    #[test]
    fn names_in_paths_are_dns_subdomains() {
        assert!(name_segment("name", "orders-paid").is_ok());
        for bad in ["", "Orders", "a/b", "..", "-a", "a%2Fb", &"a".repeat(254)] {
            assert!(name_segment("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; herald_console=abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
