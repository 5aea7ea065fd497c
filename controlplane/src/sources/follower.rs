//! Runs one `KubernetesSource` on the leader: for each resource it names, a list then a watch
//! in the source's namespace, made with a client that impersonates the source's ServiceAccount
//! (`system:serviceaccount:<namespace>:<name>`; the apiserver adds its groups), so the source
//! reads nothing that account could not read with kubectl. A `403` is `Ready=False`, reason
//! `Forbidden`, with the apiserver's own message (it names the verb, the resource and the
//! account), tried again every 30 s.
//!
//! What was sent is kept in a checkpoint (bucket [`super::BUCKET`], key `ks.<uid>`, written at
//! most once a second): per resource, the objects' uids with the name and resourceVersion last
//! sent, and the resourceVersion to resume the watch from. A new leader resumes from it: the
//! changes after it are replayed with the same ids (derived from uid and resourceVersion) and
//! the stream's duplicate window drops those already stored. When the watch has expired (`410
//! Gone`), a relist is compared with the checkpoint and only the differences are sent (several
//! updates of an object meanwhile become one). The first start of a source lists without
//! sending: a source reports changes from when it is Ready.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use herald_core::broker::StoreError;
use kube::api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope, pinned_kind};
use kube::{Resource as _, ResourceExt as _};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use super::kubernetes::{
    Change, Checked, Ident, Known, KubernetesSource, KubernetesSourceStatus, Listed, Mode, Op,
};
use super::metrics::{SourceKind, SourceResult};
use super::{BUCKET, Ctx, patch_status, publish, ready};
use crate::limits::sources::{MAX_CHECKPOINT_BYTES, MAX_OBJECTS};

/// Objects per page of a list.
const PAGE: u32 = 500;
/// A watch request lasts at most this long, then it is made again from where it was.
const WATCH_SECONDS: u32 = 290;
/// How often a source refused by the apiserver tries again (a RoleBinding may be added).
const FORBIDDEN_RETRY: Duration = Duration::from_secs(30);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// The checkpoint is written at most this often.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The stored form: one [`Known`] per resource of the spec.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    resources: Vec<Known>,
}

/// How one resource's watch is doing.
#[derive(Debug, Clone, PartialEq)]
enum Health {
    Starting,
    Watching,
    Forbidden(String),
    TooMany(String),
    Failing(String),
}

/// Why a list or watch ended.
enum Stop {
    /// The resourceVersion is too old: relist.
    Expired,
    Forbidden(String),
    TooMany(String),
    Failed(String),
}

fn stop_of(e: kube::Error) -> Stop {
    match e {
        kube::Error::Api(s) if s.code == 410 => Stop::Expired,
        kube::Error::Api(s) if s.code == 403 => Stop::Forbidden(s.message),
        other => Stop::Failed(other.to_string()),
    }
}

/// Deletes the checkpoint of a deleted source.
pub fn forget(ctx: Ctx, uid: String) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let key = format!("ks.{uid}");
        if let Err(e) = ctx.broker.delete(BUCKET, &key).await {
            tracing::warn!(%key, error = %e, "cannot delete the checkpoint of a deleted KubernetesSource");
        }
    })
}

/// Deletes the checkpoints of sources that are gone (deleted while no leader ran): `live` are the
/// uids a full list found.
pub fn sweep(
    ctx: Ctx,
    live: std::collections::HashSet<String>,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let keys = match ctx.broker.keys(BUCKET, "ks").await {
            Ok(k) => k,
            // No bucket yet: nothing kept.
            Err(_) => return,
        };
        for key in keys {
            let Some(uid) = key.strip_prefix("ks.") else {
                continue;
            };
            if !live.contains(uid) {
                tracing::info!(%key, "deleting the checkpoint of a KubernetesSource that no longer exists");
                forget(ctx.clone(), uid.to_owned()).await;
            }
        }
    })
}

/// One watched resource, resolved.
struct Watched {
    index: usize,
    api: Api<DynamicObject>,
    resource: ApiResource,
    selector: String,
    namespace: String,
}

struct Shared {
    ctx: Ctx,
    source_uid: String,
    apiserver: String,
    mode: Mode,
    extensions: Vec<(String, String)>,
    state: Mutex<Vec<Known>>,
    dirty: Notify,
    health: mpsc::UnboundedSender<(usize, Health)>,
}

pub async fn run(ctx: Ctx, src: KubernetesSource) {
    let namespace = src.namespace().unwrap_or_default();
    let name = src.name_any();
    let uid = src.meta().uid.clone().unwrap_or_default();
    let generation = src.meta().generation;
    let api: Api<KubernetesSource> = Api::namespaced(ctx.kube.clone(), &namespace);
    let mut status = src.status.clone().unwrap_or_default();
    let reporter = Reporter {
        api,
        name: name.clone(),
        generation,
    };
    macro_rules! report {
        ($ok:expr, $reason:expr, $message:expr) => {
            reporter.report(&mut status, $ok, $reason, $message).await
        };
    }

    let checked = match Checked::new(&src.spec) {
        Ok(c) => c,
        Err(e) => {
            report!(false, "InvalidSpec", &e.to_string());
            return futures::future::pending().await;
        }
    };
    let Some(mut config) = ctx.cfg.kube.clone() else {
        report!(
            false,
            "NotServed",
            "this control plane has no client configuration to impersonate with"
        );
        return futures::future::pending().await;
    };
    let apiserver = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    let account = format!(
        "system:serviceaccount:{namespace}:{}",
        src.spec.service_account_name
    );
    // The apiserver adds a ServiceAccount's groups when none are given.
    config.auth_info.impersonate = Some(account.clone());
    config.auth_info.impersonate_groups = None;
    let client = match kube::Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            report!(
                false,
                "Failing",
                &format!("cannot make a client impersonating {account}: {e}")
            );
            return futures::future::pending().await;
        }
    };

    // Resolve every resource before watching any: a spec error is reported whole.
    let mut watched = Vec::new();
    for (i, r) in src.spec.resources.iter().enumerate() {
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &r.kind);
        let resource = loop {
            match pinned_kind(&ctx.kube, &gvk).await {
                Ok((ar, caps)) if caps.scope == Scope::Namespaced => break ar,
                Ok(_) => {
                    report!(
                        false,
                        "InvalidSpec",
                        &format!(
                            "spec.resources[{i}]: {} {} is cluster-scoped; a KubernetesSource watches objects of its own namespace",
                            r.api_version, r.kind
                        )
                    );
                    return futures::future::pending().await;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    report!(
                        false,
                        "UnknownKind",
                        &format!(
                            "spec.resources[{i}]: the apiserver serves no kind {} in {} (is its CRD installed?); tried again every 30s",
                            r.kind, r.api_version
                        )
                    );
                    tokio::time::sleep(FORBIDDEN_RETRY).await;
                }
                Err(e) => {
                    report!(
                        false,
                        "Failing",
                        &format!("spec.resources[{i}]: discovery failed: {e}; retrying")
                    );
                    tokio::time::sleep(RETRY_MAX).await;
                }
            }
        };
        watched.push(Watched {
            index: i,
            api: Api::namespaced_with(client.clone(), &namespace, &resource),
            resource,
            selector: checked.selectors[i].clone(),
            namespace: namespace.clone(),
        });
    }

    // The checkpoint: what was sent before, by any leader.
    let key = format!("ks.{uid}");
    let stored = loop {
        let get = async {
            ctx.broker
                .ensure_bucket(BUCKET, ctx.cfg.replicas.max(1))
                .await?;
            ctx.broker.get(BUCKET, &key).await
        };
        match get.await {
            Ok(v) => break v,
            Err(e) => {
                report!(
                    false,
                    "Failing",
                    &format!("cannot read the checkpoint from bucket {BUCKET}: {e}; retrying")
                );
                tokio::time::sleep(RETRY_MAX).await;
            }
        }
    };
    let previous: Checkpoint = stored
        .and_then(|b| match serde_json::from_slice(&b) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(%namespace, %name, error = %e, "the checkpoint is not readable: starting afresh");
                None
            }
        })
        .unwrap_or_default();
    let state: Vec<Known> = src
        .spec
        .resources
        .iter()
        .zip(&checked.selectors)
        .map(|(r, sel)| {
            let key = Known::key_of(r, sel);
            previous
                .resources
                .iter()
                .find(|k| k.key == key)
                .cloned()
                .unwrap_or(Known {
                    key,
                    ..Default::default()
                })
        })
        .collect();

    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        source_uid: uid.clone(),
        apiserver,
        mode: checked.mode,
        extensions: checked.extensions.clone(),
        state: Mutex::new(state),
        dirty: Notify::new(),
        health: health_tx,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for w in watched {
        tasks.spawn(follow(shared.clone(), w));
    }
    tasks.spawn(checkpoints(shared.clone(), key));
    let mut health = vec![Health::Starting; src.spec.resources.len()];
    while let Some((i, h)) = health_rx.recv().await {
        if let Some(slot) = health.get_mut(i) {
            *slot = h;
        }
        let worst = health
            .iter()
            .enumerate()
            .find(|(_, h)| **h != Health::Watching);
        match worst {
            None => {
                let what: Vec<String> = src
                    .spec
                    .resources
                    .iter()
                    .map(|r| format!("{} {}", r.api_version, r.kind))
                    .collect();
                report!(
                    true,
                    "Watching",
                    &format!("watching {} as {account}", what.join(", "))
                );
            }
            Some((_, Health::Starting)) => {}
            Some((i, Health::Forbidden(m))) => {
                report!(false, "Forbidden", &format!("spec.resources[{i}]: {m}"));
            }
            Some((i, Health::TooMany(m))) => {
                report!(
                    false,
                    "TooManyObjects",
                    &format!("spec.resources[{i}]: {m}")
                );
            }
            Some((i, Health::Failing(m))) => {
                report!(false, "Failing", &format!("spec.resources[{i}]: {m}"));
            }
            Some((_, Health::Watching)) => {}
        }
    }
}

/// Writes the source's `Ready` condition when it changes.
struct Reporter {
    api: Api<KubernetesSource>,
    name: String,
    generation: Option<i64>,
}

impl Reporter {
    async fn report(
        &self,
        status: &mut KubernetesSourceStatus,
        ok: bool,
        reason: &str,
        message: &str,
    ) {
        let next = KubernetesSourceStatus {
            conditions: vec![ready(
                &status.conditions,
                ok,
                reason,
                message,
                self.generation,
            )],
            observed_generation: self.generation,
        };
        if *status == next {
            return;
        }
        tracing::info!(name = %self.name, ok, %reason, %message, "KubernetesSource status");
        match patch_status(&self.api, &self.name, &next, &["observedGeneration"]).await {
            Ok(()) => *status = next,
            Err(e) => {
                tracing::warn!(name = %self.name, error = %e, "cannot patch the KubernetesSource status")
            }
        }
    }
}

/// Lists and watches one resource until the task is stopped.
async fn follow(shared: Arc<Shared>, w: Watched) {
    let mut retry = RETRY_FIRST;
    loop {
        let rv = shared
            .state
            .lock()
            .map(|s| s.get(w.index).map(|k| k.resource_version.clone()))
            .ok()
            .flatten()
            .unwrap_or_default();
        let step = if rv.is_empty() {
            list(&shared, &w, false).await
        } else {
            watch(&shared, &w, &rv).await
        };
        let health = match step {
            Ok(()) => {
                retry = RETRY_FIRST;
                continue;
            }
            Err(Stop::Expired) => match list(&shared, &w, true).await {
                Ok(()) => continue,
                Err(Stop::Expired) => Health::Failing("the list expired".into()),
                Err(Stop::Forbidden(m)) => Health::Forbidden(m),
                Err(Stop::TooMany(m)) => Health::TooMany(m),
                Err(Stop::Failed(m)) => Health::Failing(m),
            },
            Err(Stop::Forbidden(m)) => Health::Forbidden(m),
            Err(Stop::TooMany(m)) => Health::TooMany(m),
            Err(Stop::Failed(m)) => Health::Failing(m),
        };
        let wait = match &health {
            Health::Forbidden(_) => FORBIDDEN_RETRY,
            // Only a change of spec (a selector) helps: the task is restarted then.
            Health::TooMany(_) => {
                let _ = shared.health.send((w.index, health));
                return futures::future::pending().await;
            }
            _ => {
                let r = retry;
                retry = (retry * 2).min(RETRY_MAX);
                r
            }
        };
        tracing::warn!(resource = %w.resource.kind, namespace = %w.namespace, ?health, "KubernetesSource cannot watch; trying again");
        let _ = shared.health.send((w.index, health));
        tokio::time::sleep(wait).await;
    }
}

/// Lists every object. The first time (`compare` false) it only records them; after an expired
/// watch it sends what differs from what was sent.
async fn list(shared: &Shared, w: &Watched, compare: bool) -> Result<(), Stop> {
    let mut params = ListParams::default().limit(PAGE);
    if !w.selector.is_empty() {
        params = params.labels(&w.selector);
    }
    let mut items = Vec::new();
    let resource_version = loop {
        let page = w.api.list(&params).await.map_err(stop_of)?;
        items.extend(page.items);
        if items.len() > MAX_OBJECTS {
            return Err(Stop::TooMany(format!(
                "more than {MAX_OBJECTS} objects match; narrow the source with a label selector"
            )));
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break page.metadata.resource_version.unwrap_or_default(),
        }
    };
    let _ = shared.health.send((w.index, Health::Watching));
    if compare {
        let known = shared
            .state
            .lock()
            .ok()
            .and_then(|s| s.get(w.index).cloned())
            .unwrap_or_default();
        for (op, listed) in known.relist(&items) {
            let (ident, object) = match listed {
                Listed::Object(o) => match Ident::of(o) {
                    Some(i) => (i, Some(o)),
                    None => continue,
                },
                Listed::Gone(i) => (i, None),
            };
            send(shared, w, op, ident, object, Instant::now()).await;
        }
    } else if let Ok(mut s) = shared.state.lock()
        && let Some(k) = s.get_mut(w.index)
    {
        k.objects.clear();
        for o in &items {
            if let Some(i) = Ident::of(o) {
                k.record(Op::Add, &i);
            }
        }
    }
    if let Ok(mut s) = shared.state.lock()
        && let Some(k) = s.get_mut(w.index)
    {
        k.resource_version = resource_version;
    }
    shared.dirty.notify_one();
    Ok(())
}

/// Watches from `rv` until the apiserver ends the request; each change is sent before the next
/// is read.
async fn watch(shared: &Shared, w: &Watched, rv: &str) -> Result<(), Stop> {
    let mut params = WatchParams::default().timeout(WATCH_SECONDS);
    if !w.selector.is_empty() {
        params = params.labels(&w.selector);
    }
    let stream = w.api.watch(&params, rv).await.map_err(stop_of)?;
    let mut stream = std::pin::pin!(stream);
    let mut healthy = false;
    loop {
        let ev = match stream.try_next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(()),
            Err(e) => return Err(Stop::Failed(format!("the watch broke: {e}"))),
        };
        let received = Instant::now();
        tracing::debug!(resource = %w.resource.kind, event = ?ev, "watch event");
        if !healthy {
            healthy = true;
            let _ = shared.health.send((w.index, Health::Watching));
        }
        let (op, object) = match ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                let Some(ident) = Ident::of(&o) else { continue };
                let op = shared
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.get(w.index).map(|k| k.applied(&ident)))
                    .flatten();
                match op {
                    Some(op) => (op, o),
                    None => {
                        set_rv(shared, w, ident.resource_version);
                        continue;
                    }
                }
            }
            WatchEvent::Deleted(o) => (Op::Delete, o),
            WatchEvent::Bookmark(b) => {
                set_rv(shared, w, b.metadata.resource_version);
                continue;
            }
            WatchEvent::Error(s) if s.code == 410 => return Err(Stop::Expired),
            WatchEvent::Error(s) if s.code == 403 => return Err(Stop::Forbidden(s.message)),
            WatchEvent::Error(s) => return Err(Stop::Failed(s.message)),
        };
        let Some(ident) = Ident::of(&object) else {
            continue;
        };
        let rv = ident.resource_version.clone();
        send(shared, w, op, ident, Some(&object), received).await;
        set_rv(shared, w, rv);
    }
}

fn set_rv(shared: &Shared, w: &Watched, rv: String) {
    if let Ok(mut s) = shared.state.lock()
        && let Some(k) = s.get_mut(w.index)
    {
        k.resource_version = rv;
    }
    shared.dirty.notify_one();
}

/// Publishes one change, retrying until the stream holds it (nothing after it is read meanwhile:
/// no gap), then records it.
async fn send(
    shared: &Shared,
    w: &Watched,
    op: Op,
    ident: Ident,
    object: Option<&DynamicObject>,
    received: Instant,
) {
    let change = Change {
        op,
        api_version: &w.resource.api_version,
        kind: &w.resource.kind,
        plural: &w.resource.plural,
        namespace: &w.namespace,
        ident,
        object,
    };
    let metrics = &shared.ctx.metrics;
    let mut mode = shared.mode;
    let mut retry = RETRY_FIRST;
    loop {
        let time = super::schedule::rfc3339(chrono::Utc::now());
        let ev = match change.event(
            &shared.source_uid,
            &shared.apiserver,
            mode,
            &shared.extensions,
            &time,
        ) {
            Ok(ev) => ev,
            Err(e) => {
                // The attributes come from the apiserver (names are DNS names) and a checked
                // spec; an object that still breaks a rule is skipped, loudly.
                tracing::error!(kind = %change.kind, name = %change.ident.name, error = %e, "the change cannot be made an event; skipped");
                metrics.event(SourceKind::KubernetesSource, SourceResult::Failed);
                break;
            }
        };
        match publish(shared.ctx.broker.as_ref(), &ev).await {
            Ok(()) => {
                tracing::debug!(kind = %change.kind, name = %change.ident.name, op = change.op.as_str(), id = %ev.id, "change published");
                metrics.event(SourceKind::KubernetesSource, SourceResult::Published);
                metrics.delay(
                    SourceKind::KubernetesSource,
                    received.elapsed().as_secs_f64(),
                );
                break;
            }
            // An object too large for the stream is sent as a reference instead.
            Err(StoreError::TooLarge { limit }) if mode == Mode::Resource => {
                tracing::warn!(kind = %change.kind, name = %change.ident.name, limit, "the object is larger than the stream takes: sent as a reference");
                mode = Mode::Reference;
            }
            Err(e) => {
                metrics.event(SourceKind::KubernetesSource, SourceResult::Failed);
                let _ = shared.health.send((
                    w.index,
                    Health::Failing(format!("an event was not stored ({e}); retrying")),
                ));
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                if retry == RETRY_MAX {
                    tracing::warn!(kind = %change.kind, name = %change.ident.name, error = %e, "KubernetesSource event still not stored");
                }
                continue;
            }
        }
    }
    if retry != RETRY_FIRST {
        let _ = shared.health.send((w.index, Health::Watching));
    }
    if let Ok(mut s) = shared.state.lock()
        && let Some(k) = s.get_mut(w.index)
    {
        k.record(op, &change.ident);
    }
    shared.dirty.notify_one();
}

/// Writes the checkpoint after changes, at most once per [`CHECKPOINT_EVERY`].
async fn checkpoints(shared: Arc<Shared>, key: String) {
    let mut last: Option<Vec<u8>> = None;
    loop {
        shared.dirty.notified().await;
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        let value = match shared.state.lock() {
            Ok(s) => serde_json::to_vec(&CheckpointRef { resources: &s }).unwrap_or_default(),
            Err(_) => continue,
        };
        if last.as_ref() == Some(&value) {
            continue;
        }
        if value.len() > MAX_CHECKPOINT_BYTES {
            for i in 0..shared.state.lock().map(|s| s.len()).unwrap_or(0) {
                let _ = shared.health.send((
                    i,
                    Health::TooMany(format!(
                        "the objects watched take a {} byte checkpoint, over the limit of {MAX_CHECKPOINT_BYTES}; narrow the source with a label selector",
                        value.len()
                    )),
                ));
            }
            continue;
        }
        match shared
            .ctx
            .broker
            .put(BUCKET, &key, value.clone().into())
            .await
        {
            Ok(()) => last = Some(value),
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot write the KubernetesSource checkpoint; retrying");
                shared.dirty.notify_one();
            }
        }
    }
}

#[derive(Serialize)]
struct CheckpointRef<'a> {
    resources: &'a [Known],
}
