//! The stream controller: one replica at a time (a Lease, through kube-lease-manager) runs a
//! pass every period, and soon after anything it watches changes:
//!
//! 1. the `EventStream` (default `default`, [`crd`]): both streams reconciled ([`reconcile`]),
//!    the status subresource patched when it changed, an Event when storage use crosses the
//!    warning percent either way, and the delivery defaults written to the `HERALD_CONFIG`
//!    key-value bucket the sidecars watch;
//! 2. the workloads (Deployments, StatefulSets, DaemonSets, CronJobs, Jobs and pods, cluster
//!    wide, judged by [`inventory`]): pods that asked for the sidecar and run without it
//!    are counted and reported on their owner, and herald consumers nothing subscribes to any more
//!    are deleted once they have been orphans for the grace period;
//! 3. herald's and Kyma's `Subscription` resources ([`subscription`], [`kyma`]): decided by
//!    [`routing`] (pure), acted on by [`resources`]: their consumers created at once, each app's
//!    entries written to its key of the bucket and the sink subscriptions to the dispatcher's,
//!    statuses patched; a deleted resource's consumers deleted at once.
//!
//! Beside the passes, from the end of a term's first pass to the end of the term, the leader
//! runs the internal sources ([`crate::sources`]: EventSchedules and KubernetesSources).
//!
//! The broker is reached through its seam ([`herald_core::broker`]); Kubernetes Events are
//! published with kube-rs's [`Recorder`] (events.k8s.io, repeats folded into a series).
//!
//! The leader reads the cluster through reflectors ([`watch`]): one list per kind when its term
//! starts, then watches, so a pass costs the apiserver nothing but the writes it makes, and any
//! change (an EventStream edit, a pod without its sidecar) starts a pass within
//! [`CHANGE_DELAY`], at most one per [`MIN_GAP`]. The period (default 15 s) remains for what
//! only NATS can tell (storage use) and as a safety net. [`Controller::pass`] without reflectors
//! lists instead (one-off passes, tests). Every step is idempotent; nothing here panics or exits
//! on a failed step; it is logged, counted as a failed pass, and tried again after
//! [`RETRY_FIRST`], doubling with each failed pass up to the period.
//!
//! Deletion is conservative: a consumer is only herald's when its name is the hash of its
//! description; it is in use while any workload template or pod subscribes to it, or while
//! any client is waiting on a pull from it; and a listing that fails stops the orphan check
//! for that pass. The grace period starts again on every new leader.

pub mod crd;
pub mod inventory;
pub mod kyma;
pub mod metrics;
pub mod reconcile;
pub mod resources;
pub mod routing;
pub mod subscription;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::broker::Broker;
use herald_core::consumer::consumer_name_of;
use herald_core::defaults::{BUCKET, DELIVERY_KEY};
use herald_runtime::shutdown::Shutdown;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;

use crd::{EventStream, EventStreamStatus};
use inventory::{Inventory, Workloads};
use metrics::{ControllerMetrics, PassLabels, PassResult};

/// Who writes the Events and patches the status.
pub const COMPONENT: &str = "herald-controller";
/// NATS calls outside [`reconcile`] wait at most this long.
const NATS_TIMEOUT: Duration = Duration::from_secs(10);
/// Objects per list call.
const PAGE: u32 = 500;
/// How long after a watched change a pass starts, so a burst (a rollout) is one pass.
const CHANGE_DELAY: Duration = Duration::from_secs(1);
/// The least time between two passes started by changes: pod churn must not turn into NATS
/// requests every second.
const MIN_GAP: Duration = Duration::from_secs(5);
/// The first wait after a pass with errors; it doubles with each failed pass, up to the period.
const RETRY_FIRST: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Name of the `EventStream` that holds the policy.
    pub event_stream: String,
    pub stream: String,
    pub dlq_stream: String,
    /// Time between passes.
    pub period: Duration,
    /// How long a consumer stays an orphan before it is deleted.
    pub orphan_grace: Duration,
    pub lease: LeaseConfig,
    /// EventSchedules and KubernetesSources, run by the leader ([`crate::sources`]).
    pub sources: crate::sources::SourcesConfig,
}

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica (its pod name).
    pub identity: String,
    /// How long a lease holds without renewal: the longest a dead leader blocks the others.
    pub duration: Duration,
    /// How long before expiry the holder renews.
    pub grace: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: String, identity: String) -> Self {
        LeaseConfig {
            namespace,
            name: "herald-controller".into(),
            identity,
            duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("leader election (Lease {namespace}/{name}): {source}")]
    Lease {
        namespace: String,
        name: String,
        source: kube_lease_manager::LeaseManagerError,
    },
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PassReport {
    /// The EventStream's status was patched.
    pub status_patched: bool,
    /// Reasons of the Kubernetes Events created.
    pub events: Vec<String>,
    /// Descriptions of the consumers deleted as orphans.
    pub orphans_deleted: Vec<String>,
    /// Descriptions of the orphans still in their grace period.
    pub orphans_waiting: Vec<String>,
    pub missed_injections: usize,
    /// The delivery defaults were written to the bucket.
    pub defaults_written: bool,
    /// Steps that failed, each with its reason.
    pub errors: Vec<String>,
}

/// The controller's state across passes within one leadership term.
pub struct Controller {
    kube: kube::Client,
    broker: Arc<dyn Broker>,
    cfg: ControllerConfig,
    metrics: Arc<ControllerMetrics>,
    /// Publishes Kubernetes Events. Events about the cluster-scoped EventStream go where
    /// Kubernetes puts those of other cluster-scoped objects (namespace `default`, as Nodes');
    /// `kubectl describe eventstream` finds them there.
    recorder: Recorder,
    /// Orphan consumers by name: description and when first seen orphaned.
    orphans: HashMap<String, (String, Instant)>,
    /// Owners already told about a missed injection (uid, else namespace/kind/name).
    reported: HashSet<String>,
    /// What was last written to the bucket.
    defaults_written: Option<Vec<u8>>,
    /// The leader's reflectors; without them a pass lists.
    watched: Option<Arc<watch::Watched>>,
    /// The Subscription resources' step.
    resources: resources::ResourceState,
    /// The EventStream's replicas, which the configuration bucket gets too.
    replicas: usize,
}

impl Controller {
    pub fn new(
        kube: kube::Client,
        broker: Arc<dyn Broker>,
        cfg: ControllerConfig,
        metrics: Arc<ControllerMetrics>,
    ) -> Self {
        let recorder = Recorder::new(
            kube.clone(),
            Reporter {
                controller: format!("herald.dev/{COMPONENT}"),
                instance: Some(cfg.lease.identity.clone()),
            },
        );
        Controller {
            kube,
            broker,
            recorder,
            cfg,
            metrics,
            orphans: HashMap::new(),
            reported: HashSet::new(),
            defaults_written: None,
            watched: None,
            resources: resources::ResourceState::default(),
            replicas: 1,
        }
    }

    /// One pass; see the module documentation.
    pub async fn pass(&mut self) -> PassReport {
        let started = Instant::now();
        let mut report = PassReport::default();
        let stream_ref = self.event_stream(&mut report).await;
        match self.list().await {
            Ok(w) => {
                let inv = inventory::take(&w);
                self.missed_injections(&inv, &mut report).await;
                let cluster = self
                    .defaults_written
                    .as_deref()
                    .and_then(|v| herald_core::defaults::Defaults::from_json(v).ok())
                    .unwrap_or_default();
                let inputs: Vec<routing::Input> = w
                    .subscriptions
                    .iter()
                    .cloned()
                    .map(routing::Input::herald)
                    .chain(w.kyma.iter().map(kyma::input))
                    .collect();
                let routing = routing::route(&inputs, &inv, &cluster);
                let consumers = self.list_consumers(&mut report).await;
                let (held, released) = self
                    .resources(&w, &routing, consumers.as_deref(), &mut report)
                    .await;
                if let Some(consumers) = consumers {
                    self.orphans(&inv, &held, &released, consumers, stream_ref.as_ref(), &mut report)
                        .await;
                }
            }
            Err(e) => report.errors.push(format!(
                "listing workloads failed, so orphan consumers and missed injections were not checked: {e}"
            )),
        }
        let result = if report.errors.is_empty() {
            PassResult::Ok
        } else {
            for e in &report.errors {
                tracing::warn!(error = %e, "controller pass step failed; retrying with backoff");
            }
            PassResult::Error
        };
        self.metrics
            .passes
            .get_or_create(&PassLabels { result })
            .inc();
        self.metrics
            .pass_seconds
            .observe(started.elapsed().as_secs_f64());
        report
    }

    /// Step 1; returns a reference to the EventStream for Events about it.
    async fn event_stream(&mut self, report: &mut PassReport) -> Option<ObjectReference> {
        let api: Api<EventStream> = Api::all(self.kube.clone());
        let name = &self.cfg.event_stream;
        let found = match &self.watched {
            Some(w) => Ok(w.event_stream()),
            None => api.get_opt(name).await,
        };
        let es = match found {
            Ok(Some(es)) => es,
            Ok(None) => {
                report.errors.push(format!(
                    "EventStream {name:?} does not exist: the streams keep their current configuration (create it, e.g. with the Helm chart)"
                ));
                return None;
            }
            Err(e) => {
                report
                    .errors
                    .push(format!("cannot read EventStream {name:?}: {e}"));
                return None;
            }
        };
        let reference = es.object_ref(&());
        self.replicas = usize::from(es.spec.replicas.clamp(1, 5));
        let previous = es.status.clone().unwrap_or_default();
        let r = reconcile::streams(
            self.broker.as_ref(),
            &es.spec,
            es.metadata.generation,
            &previous,
            (&self.cfg.stream, &self.cfg.dlq_stream),
            now(),
        )
        .await;
        if let Some(e) = &r.status.last_error {
            report.errors.push(format!("EventStream {name:?}: {e}"));
        }
        self.metrics.set_storage_used(r.used_ratio);
        if r.status != previous {
            match api
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(status_patch(&r.status)),
                )
                .await
            {
                Ok(_) => report.status_patched = true,
                Err(e) => report.errors.push(format!(
                    "cannot patch the status of EventStream {name:?}: {e}"
                )),
            }
        }
        if let Some(full) = r.storage_warning_changed {
            let message = r
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == reconcile::STORAGE_NEARLY_FULL)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            let (kind, reason, message) = if full {
                tracing::warn!(%message, "storage nearly full");
                (
                    EventType::Warning,
                    "StorageNearlyFull",
                    format!(
                        "{message}: raise maxBytes, shorten maxAge, or find the subscriber that does not keep up (events of an interest stream stay until every consumer has them)"
                    ),
                )
            } else {
                tracing::info!(%message, "storage back below the warning");
                (EventType::Normal, "StorageBelowWarning", message)
            };
            self.event(&reference, kind, reason, message, report).await;
        }
        // Only a spec that reached the streams reaches the sidecars.
        if r.ensured.is_some() {
            self.write_defaults(&es, report).await;
        }
        Some(reference)
    }

    /// Writes the delivery defaults when they changed (or were never written by this leader).
    async fn write_defaults(&mut self, es: &EventStream, report: &mut PassReport) {
        let Ok(value) = serde_json::to_vec(&es.spec.delivery) else {
            return;
        };
        if self.defaults_written.as_ref() == Some(&value) {
            return;
        }
        let write = async {
            // As replicated as the events: a server lost must not take the sidecars' settings.
            self.broker.ensure_bucket(BUCKET, self.replicas).await?;
            self.broker
                .put(BUCKET, DELIVERY_KEY, value.clone().into())
                .await
        };
        match tokio::time::timeout(NATS_TIMEOUT, write).await {
            Ok(Ok(_)) => {
                tracing::info!(defaults = %String::from_utf8_lossy(&value), "delivery defaults published to the sidecars");
                self.defaults_written = Some(value);
                report.defaults_written = true;
            }
            Ok(Err(e)) => report.errors.push(format!(
                "cannot write the delivery defaults to bucket {BUCKET}: {e}"
            )),
            Err(_) => report.errors.push(format!(
                "cannot write the delivery defaults to bucket {BUCKET}: NATS did not answer"
            )),
        }
    }

    async fn list(&self) -> Result<Workloads, kube::Error> {
        if let Some(w) = &self.watched {
            return Ok(w.workloads());
        }
        let c = &self.kube;
        Ok(Workloads {
            deployments: list_all(Api::<Deployment>::all(c.clone())).await?,
            statefulsets: list_all(Api::<StatefulSet>::all(c.clone())).await?,
            daemonsets: list_all(Api::<DaemonSet>::all(c.clone())).await?,
            cronjobs: list_all(Api::<CronJob>::all(c.clone())).await?,
            jobs: list_all(Api::<Job>::all(c.clone())).await?,
            pods: list_all(Api::<Pod>::all(c.clone())).await?,
            subscriptions: match list_all(Api::<subscription::Subscription>::all(c.clone())).await {
                Ok(s) => s,
                // The CRD is not installed (Helm does not upgrade CRDs): there are none.
                Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
                Err(e) => return Err(e),
            },
            services: list_all(Api::<k8s_openapi::api::core::v1::Service>::all(c.clone())).await?,
            kyma: match list_all(Api::<kyma::Subscription>::all(c.clone())).await {
                Ok(s) => s,
                // Not installed, or not granted (the chart grants it with the CRD).
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => Vec::new(),
                Err(e) => return Err(e),
            },
        })
    }

    /// Counts the missed injections and reports each owner once per leadership term (again
    /// after it was fixed and broke anew).
    async fn missed_injections(&mut self, inv: &Inventory, report: &mut PassReport) {
        report.missed_injections = inv.missed.len();
        self.metrics.missed_injections.set(inv.missed.len() as i64);
        let mut current = HashSet::new();
        for m in &inv.missed {
            let o = &m.owner;
            let key = o.uid.clone().unwrap_or_else(|| {
                format!(
                    "{}/{}/{}",
                    m.namespace,
                    o.kind.as_deref().unwrap_or_default(),
                    o.name.as_deref().unwrap_or_default()
                )
            });
            current.insert(key.clone());
            if self.reported.contains(&key) {
                continue;
            }
            let message = format!(
                "pod {} asked for the herald sidecar (herald.dev/inject) but runs without it: the webhook was not reachable when the pod was created (failurePolicy Ignore). Fix: {}",
                m.pod,
                m.advice()
            );
            tracing::warn!(namespace = %m.namespace, pod = %m.pod, owner = ?o.name, "pod runs without the herald sidecar");
            if self
                .event(o, EventType::Warning, "SidecarMissing", message, report)
                .await
            {
                self.reported.insert(key);
            }
        }
        self.reported.retain(|k| current.contains(k));
    }

    /// The consumers of the events stream; `None` (and the error reported) when NATS cannot
    /// say, which skips every step that needs them.
    async fn list_consumers(
        &self,
        report: &mut PassReport,
    ) -> Option<Vec<herald_core::broker::ConsumerState>> {
        let consumers = self.broker.consumers(&self.cfg.stream);
        match tokio::time::timeout(NATS_TIMEOUT, consumers).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                report.errors.push(format!(
                    "cannot list the consumers of stream {}: {e}",
                    self.cfg.stream
                ));
                None
            }
            Err(_) => {
                report.errors.push(format!(
                    "cannot list the consumers of stream {}: NATS did not answer",
                    self.cfg.stream
                ));
                None
            }
        }
    }

    /// Deletes herald's consumers nothing subscribes to: after the grace period, or at once
    /// when a Subscription resource let go of them (`released`) and nothing else holds them.
    async fn orphans(
        &mut self,
        inv: &Inventory,
        held: &std::collections::BTreeSet<String>,
        released: &std::collections::BTreeSet<String>,
        consumers: Vec<herald_core::broker::ConsumerState>,
        stream_ref: Option<&ObjectReference>,
        report: &mut PassReport,
    ) {
        let now = Instant::now();
        let mut waiting = HashMap::new();
        for info in consumers {
            let Some(description) = info.description.clone() else {
                continue;
            };
            let herald_made = info.name == consumer_name_of(&description);
            let subscribed = inv.in_use(&description) || held.contains(&description);
            // A resource's sidecars may still pull for a moment after it let go.
            let let_go = released.contains(&description);
            if !herald_made || subscribed || (info.waiting > 0 && !let_go) {
                continue;
            }
            let since = self.orphans.get(&info.name).map_or(now, |(_, t)| *t);
            if !let_go && now.duration_since(since) < self.cfg.orphan_grace {
                report.orphans_waiting.push(description.clone());
                waiting.insert(info.name.clone(), (description, since));
                continue;
            }
            let delete = self.broker.delete_consumer(&self.cfg.stream, &info.name);
            match tokio::time::timeout(NATS_TIMEOUT, delete).await {
                Ok(Ok(_)) => {
                    let why = if let_go {
                        "the Subscription resource that held it was deleted or no longer lists its type".to_owned()
                    } else {
                        format!(
                            "no workload has subscribed to it for {}s",
                            self.cfg.orphan_grace.as_secs()
                        )
                    };
                    let message = format!(
                        "deleted consumer {} ({description}) of stream {}: {why}; {} events were still pending for it",
                        info.name, self.cfg.stream, info.pending
                    );
                    tracing::info!(consumer = %info.name, %description, pending = info.pending, "orphan consumer deleted");
                    self.metrics.orphans_deleted.inc();
                    report.orphans_deleted.push(description);
                    if let Some(r) = stream_ref {
                        self.event(
                            r,
                            EventType::Normal,
                            "OrphanConsumerDeleted",
                            message,
                            report,
                        )
                        .await;
                    }
                }
                Ok(Err(e)) => {
                    report.errors.push(format!(
                        "cannot delete orphan consumer {} ({description}): {e}",
                        info.name
                    ));
                    waiting.insert(info.name.clone(), (description, since));
                }
                Err(_) => {
                    report.errors.push(format!(
                        "cannot delete orphan consumer {} ({description}): NATS did not answer",
                        info.name
                    ));
                    waiting.insert(info.name.clone(), (description, since));
                }
            }
        }
        self.metrics.orphan_consumers.set(waiting.len() as i64);
        self.orphans = waiting;
    }

    /// Publishes an Event about `regarding` (in its namespace; `default` for a cluster-scoped
    /// object); true when it was published.
    async fn event(
        &self,
        regarding: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: String,
        report: &mut PassReport,
    ) -> bool {
        let event = Event {
            type_: kind,
            reason: reason.to_owned(),
            // The apiserver refuses notes over 1 KiB; stay under it.
            note: Some(truncate(message, 1024)),
            action: reason.to_owned(),
            secondary: None,
        };
        match self.recorder.publish(&event, regarding).await {
            Ok(()) => {
                report.events.push(reason.to_owned());
                true
            }
            Err(e) => {
                let namespace = regarding.namespace.as_deref().unwrap_or("default");
                report.errors.push(format!(
                    "cannot create Event {reason} in namespace {namespace}: {e}"
                ));
                false
            }
        }
    }
}

/// The status as a merge patch: cleared optional fields are sent as `null`, or the apiserver
/// would keep their old values.
fn status_patch(status: &EventStreamStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(map) = value.as_object_mut() {
        for key in ["observedGeneration", "percentUsed", "lastError"] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    json!({ "status": value })
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Every object of a kind, page by page.
async fn list_all<K>(api: Api<K>) -> Result<Vec<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        out.extend(page.items);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Whether the Subscription CRD is installed. Helm installs the chart's CRDs only with the
/// release, never on an upgrade, so a cluster upgraded from a herald without it lacks it until
/// `kubectl apply -f charts/herald/crds/`; the controller then runs without resources rather
/// than waiting for a watch that cannot start.
async fn subscriptions_installed(kube: &kube::Client) -> bool {
    let api: Api<subscription::Subscription> = Api::all(kube.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::warn!(
                "the Subscription CRD (subscriptions.herald.dev) is not installed: Subscription resources are not served; install it with kubectl apply -f charts/herald/crds/ (Helm does not upgrade CRDs)"
            );
            false
        }
        // Anything else is the watch's to retry.
        _ => true,
    }
}

/// Whether Kyma's Subscription CRD is installed (the chart's `kyma.subscriptions`); without it
/// there is nothing of Kyma's to serve, which is the usual case.
async fn kyma_installed(kube: &kube::Client) -> bool {
    let api: Api<kyma::Subscription> = Api::all(kube.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {
            tracing::info!(reason = %e.message, "Kyma's Subscriptions are not served (the chart's kyma.subscriptions installs their CRD and grants them)");
            false
        }
        _ => true,
    }
}

/// Runs the controller while this replica holds the lease, until `shutdown`; then releases
/// the lease so another replica takes over at once instead of after its expiry.
pub async fn lead(
    kube: kube::Client,
    broker: Arc<dyn Broker>,
    cfg: ControllerConfig,
    metrics: Arc<ControllerMetrics>,
    shutdown: Shutdown,
) -> Result<(), ControllerError> {
    let lease = cfg.lease.clone();
    let manager = LeaseManagerBuilder::new(kube.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration.as_secs().max(2))
        .with_grace(lease.grace.as_secs().max(1))
        .build()
        .await
        .map_err(|source| ControllerError::Lease {
            namespace: lease.namespace.clone(),
            name: lease.name.clone(),
            source,
        })?;
    let (mut leader, task) = manager.watch().await;
    let period = cfg.period;
    let mut controller = Controller::new(kube, broker, cfg, metrics.clone());
    'terms: loop {
        if !*leader.borrow_and_update() {
            tokio::select! {
                _ = shutdown.wait() => break 'terms,
                changed = leader.changed() => if changed.is_err() { break 'terms },
            }
            continue;
        }
        tracing::info!(identity = %lease.identity, lease = %lease.name, "leading: the controller runs on this replica");
        metrics.leader.set(1);
        // A new term starts its grace periods and reports afresh, from watches of its own.
        controller.orphans.clear();
        controller.reported.clear();
        controller.defaults_written = None;
        controller.resources = resources::ResourceState::default();
        let subscriptions = subscriptions_installed(&controller.kube).await;
        let kyma = kyma_installed(&controller.kube).await;
        let watched = Arc::new(watch::Watched::start(
            &controller.kube,
            &controller.cfg.event_stream,
            subscriptions,
            kyma,
        ));
        let listed = tokio::select! {
            _ = shutdown.wait() => false,
            _ = leader.changed() => false,
            _ = watched.ready() => true,
        };
        controller.watched = listed.then(|| watched.clone());
        // After a failed pass the next one comes sooner than the period (NATS restarting, the
        // apiserver briefly refusing): RETRY_FIRST, doubling up to the period.
        let mut retry = RETRY_FIRST;
        // The internal sources start after the first pass (the streams exist, the replicas are
        // known) and end with the term: dropping the handle's task aborts every source task.
        let mut sources: Option<AbortOnDrop> = None;
        loop {
            // The term ended (or the process is stopping) before the stores were listed.
            if !listed {
                break;
            }
            // A pass is cut short when the lease is lost, so two replicas never act at once.
            let pass = tokio::select! {
                _ = shutdown.wait() => None,
                _ = leader.changed() => None,
                report = controller.pass() => Some(report),
            };
            let Some(report) = pass else { break };
            let last_pass = Instant::now();
            if sources.is_none() {
                let cfg = crate::sources::SourcesConfig {
                    replicas: controller.replicas,
                    ..controller.cfg.sources.clone()
                };
                sources = Some(AbortOnDrop(tokio::spawn(crate::sources::run(
                    controller.kube.clone(),
                    controller.broker.clone(),
                    cfg,
                    metrics.sources.clone(),
                    Reporter {
                        controller: format!("herald.dev/{COMPONENT}"),
                        instance: Some(lease.identity.clone()),
                    },
                ))));
            }
            tracing::debug!(?report, "controller pass");
            let next = if report.errors.is_empty() {
                retry = RETRY_FIRST;
                period
            } else {
                let wait = retry.min(period);
                retry = retry.saturating_mul(2);
                wait
            };
            let woken = tokio::select! {
                _ = shutdown.wait() => break,
                _ = leader.changed() => break,
                _ = tokio::time::sleep(next) => false,
                _ = watched.changed.notified() => true,
            };
            if woken {
                // Let a burst of changes settle, and keep passes MIN_GAP apart.
                let wait = CHANGE_DELAY.max(MIN_GAP.saturating_sub(last_pass.elapsed()));
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = leader.changed() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        drop(sources);
        controller.watched = None;
        drop(watched);
        metrics.leader.set(0);
        // The lease manager's task holds the sender until we drop the receiver; if it is gone
        // anyway, nobody renews the lease, so stop rather than act without one.
        if shutdown.is_triggered() || leader.has_changed().is_err() {
            break;
        }
        tracing::info!(identity = %lease.identity, "lease lost: the controller stops on this replica");
    }
    metrics.leader.set(0);
    // Closing the channel makes the manager release the lease.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => tracing::info!("controller lease released"),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "the controller lease could not be released; it expires by itself")
        }
        _ => tracing::warn!("the controller lease was not released in time; it expires by itself"),
    }
    Ok(())
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cfg", &self.cfg)
            .field("orphans", &self.orphans.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleared_status_fields_are_sent_as_null() {
        let patch = status_patch(&EventStreamStatus::default());
        assert_eq!(patch["status"]["lastError"], serde_json::Value::Null);
        assert!(
            patch["status"]
                .as_object()
                .unwrap()
                .contains_key("lastError")
        );
        assert_eq!(patch["status"]["messages"], 0);
    }

    #[test]
    fn event_messages_are_cut_on_a_char_boundary() {
        let s = truncate("é".repeat(600), 1024);
        assert!(s.len() <= 1024 && s.ends_with("..."));
        assert_eq!(truncate("short".into(), 1024), "short");
    }
}
