//! Internal events: CloudEvents the control plane publishes itself, into the same stream as the
//! apps' events, delivered like any other (annotations, Subscriptions, filters, dead letters).
//! docs/SOURCES.md is the user's guide.
//!
//! - [`schedule`]: the `EventSchedule` resource and its pure decisions (the cron plan, which
//!   tick is due, the tick's event); [`scheduler`] runs one schedule.
//! - [`kubernetes`]: the `KubernetesSource` resource and its pure decisions (what was sent, what a
//!   watch event or a relist means, Knative's event); [`follower`] runs one source with an
//!   impersonating client and its checkpoint in the `HERALD_SOURCES` bucket.
//! - [`metrics`]: what they measure (registered with the controller's metrics).
//!
//! They run on the controller's leader only ([`run`], started and stopped with its term): a
//! supervisor watches both kinds and keeps one task per resource, restarted when its spec
//! (generation) changes and stopped when it is deleted. Exactly-once and no-gap guarantees come
//! from the ids (derived, never random), the stream's duplicate window, the schedule's status
//! and the source's checkpoint, not from the leader election alone: two leaders for a moment
//! publish the same ids.

pub mod follower;
pub mod kubernetes;
pub mod metrics;
pub mod schedule;
pub mod scheduler;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use herald_core::broker::{Broker, StoreError};
use herald_core::event::{Event, TraceContext};
use herald_core::wire::message;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::{AbortHandle, JoinSet};

use kubernetes::KubernetesSource;
use metrics::SourceMetrics;
use schedule::EventSchedule;

/// The bucket holding each KubernetesSource's checkpoint (key `ks.<uid>`).
pub const BUCKET: &str = "HERALD_SOURCES";
/// A publish waits at most this long for the stream's acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the sources need beyond the controller's client and broker.
#[derive(Debug, Clone, Default)]
pub struct SourcesConfig {
    /// The control plane's own client configuration, from which the impersonating clients of
    /// KubernetesSources are made; `None`: KubernetesSources are reported `NotServed`.
    pub kube: Option<kube::Config>,
    /// Replicas of the checkpoint bucket (the EventStream's).
    pub replicas: usize,
}

/// A spec value that breaks a rule: what `Ready=False` (reason `InvalidSpec`) says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {value:?} {rule}")]
pub struct SpecError {
    pub field: String,
    pub value: String,
    pub rule: String,
}

impl SpecError {
    pub fn new(field: &str, value: &str, rule: &str) -> Self {
        // A hostile value is shown, never in full.
        let value: String = value.chars().take(120).collect();
        SpecError {
            field: field.to_owned(),
            value,
            rule: rule.to_owned(),
        }
    }
}

/// What a source task shares: the clients and where to report.
#[derive(Clone)]
pub struct Ctx {
    pub kube: kube::Client,
    pub broker: Arc<dyn Broker>,
    pub cfg: SourcesConfig,
    pub metrics: Arc<SourceMetrics>,
    pub recorder: Recorder,
}

/// Stores one event; `Ok` once the stream holds it (or already held it: same id).
pub async fn publish(broker: &dyn Broker, ev: &Event) -> Result<(), StoreError> {
    let msg = message(ev, &TraceContext::default());
    let stored = async { broker.send(msg).await?.stored().await };
    match tokio::time::timeout(PUBLISH_TIMEOUT, stored).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout(PUBLISH_TIMEOUT)),
    }
}

/// The `Ready` condition, keeping its transition time while status and reason stay.
pub fn ready(
    previous: &[Condition],
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let transition = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status && c.reason == reason)
        .map_or_else(now, |c| c.last_transition_time.clone());
    let mut message: String = message.chars().take(1000).collect();
    if message.is_empty() {
        message.push_str(reason);
    }
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: transition,
        observed_generation: generation,
    }
}

/// Merge-patches the status subresource; cleared fields are sent as `null`.
pub async fn patch_status<K, S>(
    api: &Api<K>,
    name: &str,
    status: &S,
    nullable: &[&str],
) -> Result<(), kube::Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let mut value = serde_json::to_value(status).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(map) = value.as_object_mut() {
        for key in nullable {
            map.entry(*key).or_insert(serde_json::Value::Null);
        }
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": value })),
    )
    .await
    .map(|_| ())
}

pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Runs every EventSchedule and KubernetesSource until the returned future is dropped (the
/// leader's term ends): their tasks end with it.
pub async fn run(
    kube: kube::Client,
    broker: Arc<dyn Broker>,
    cfg: SourcesConfig,
    metrics: Arc<SourceMetrics>,
    reporter: Reporter,
) {
    let recorder = Recorder::new(kube.clone(), reporter);
    let ctx = Ctx {
        kube: kube.clone(),
        broker,
        cfg,
        metrics,
        recorder,
    };
    let schedules = installed::<EventSchedule>(&kube).await;
    let sources = installed::<KubernetesSource>(&kube).await;
    let a = async {
        if schedules {
            supervise::<EventSchedule, _, _>(ctx.clone(), scheduler::run, Hooks::default()).await
        }
    };
    let b = async {
        if sources {
            let hooks = Hooks {
                deleted: Some(follower::forget),
                listed: Some(follower::sweep),
            };
            supervise::<KubernetesSource, _, _>(ctx.clone(), follower::run, hooks).await
        }
    };
    futures::join!(a, b);
}

/// Whether a CRD is served (Helm installs CRDs only with a release, never on an upgrade).
async fn installed<K>(kube: &kube::Client) -> bool
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(kube.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::warn!(
                kind = %K::kind(&()),
                "the CRD is not installed, so these resources are not served: kubectl apply -f charts/herald/crds/ (Helm does not upgrade CRDs)"
            );
            false
        }
        _ => true,
    }
}

type Hook<T> = fn(Ctx, T) -> futures::future::BoxFuture<'static, ()>;

/// What happens beside a resource's task.
#[derive(Default)]
struct Hooks {
    /// A resource was deleted (its uid).
    deleted: Option<Hook<String>>,
    /// A (re)list found these uids: whatever is kept for others can go.
    listed: Option<Hook<std::collections::HashSet<String>>>,
}

/// One task per resource of kind `K`, by uid: started when it appears, restarted when its
/// generation changes (a status write does not change it), stopped when it is deleted.
async fn supervise<K, F, Fut>(ctx: Ctx, task: F, hooks: Hooks)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: Fn(Ctx, K) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let api: Api<K> = Api::all(ctx.kube.clone());
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut set = JoinSet::new();
    let mut running: HashMap<String, (Option<i64>, AbortHandle)> = HashMap::new();
    // Uids seen during a (re)list: what is not among them was deleted meanwhile.
    let mut listing: Option<std::collections::HashSet<String>> = None;
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            // Reap finished tasks so the set does not grow.
            Some(_) = set.join_next(), if !set.is_empty() => continue,
        };
        let Some(ev) = ev else { return };
        let mut apply = |obj: K, running: &mut HashMap<String, (Option<i64>, AbortHandle)>| {
            let Some(uid) = obj.meta().uid.clone() else {
                return;
            };
            let generation = obj.meta().generation;
            if obj.meta().deletion_timestamp.is_some() {
                return;
            }
            if let Some((g, handle)) = running.get(&uid) {
                if *g == generation && !handle.is_finished() {
                    return;
                }
                handle.abort();
            }
            tracing::info!(kind = %K::kind(&()), namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any(), ?generation, "source starting");
            let handle = set.spawn(task(ctx.clone(), obj));
            running.insert(uid, (generation, handle));
        };
        match ev {
            Ok(watcher::Event::Init) => listing = Some(Default::default()),
            Ok(watcher::Event::InitApply(obj)) => {
                if let (Some(l), Some(uid)) = (listing.as_mut(), obj.meta().uid.clone()) {
                    l.insert(uid);
                }
                apply(obj, &mut running);
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(l) = listing.take() {
                    let gone: Vec<String> = running
                        .keys()
                        .filter(|u| !l.contains(*u))
                        .cloned()
                        .collect();
                    for uid in gone {
                        stop(&mut running, &uid, &ctx, hooks.deleted);
                    }
                    if let Some(f) = hooks.listed {
                        tokio::spawn(f(ctx.clone(), l));
                    }
                }
            }
            Ok(watcher::Event::Apply(obj)) => {
                if obj.meta().deletion_timestamp.is_some() {
                    if let Some(uid) = obj.meta().uid.clone() {
                        stop(&mut running, &uid, &ctx, hooks.deleted);
                    }
                } else {
                    apply(obj, &mut running);
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                if let Some(uid) = obj.meta().uid.clone() {
                    stop(&mut running, &uid, &ctx, hooks.deleted);
                }
            }
            Err(e) => {
                tracing::warn!(kind = %K::kind(&()), error = %e, "watching sources failed; retrying with backoff");
            }
        }
    }
}

fn stop(
    running: &mut HashMap<String, (Option<i64>, AbortHandle)>,
    uid: &str,
    ctx: &Ctx,
    deleted: Option<Hook<String>>,
) {
    if let Some((_, handle)) = running.remove(uid) {
        handle.abort();
    }
    if let Some(f) = deleted {
        tokio::spawn(f(ctx.clone(), uid.to_owned()));
    }
}
