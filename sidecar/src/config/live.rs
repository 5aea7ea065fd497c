//! The live configuration: one delivery task per subscription, started, updated and stopped as the
//! pod's annotations or the cluster's delivery defaults ([`super::defaults`]) change, without a
//! restart.
//!
//! The annotations file is watched with [`herald_runtime::watch`] (the kubelet's `..data` swap
//! included, the sidecar's own reads ignored). A change is applied only when the file parses and
//! validates; otherwise the running configuration stays and the error is logged and counted.
//!
//! Applying a configuration compares subscriptions by filter (the consumer's identity): a new one
//! starts a task, a removed one stops pulling and lets its deliveries in flight finish, a changed
//! one gets the new settings for its next deliveries while those in flight keep the settings they
//! started with. The publish allowlist is swapped at once. The app id is fixed at start (it names
//! the consumers).
//!
//! Subscriptions that `Subscription` resources give the app arrive through the configuration
//! bucket ([`super::defaults::follow_resources`]) and are merged after the annotations' own: on
//! the same filter the annotation wins (the controller reports the clash on the resource). They
//! need `herald.dev/app-port` like any subscription. A value that does not parse is logged and the
//! last good one stays.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use herald_core::contract::{PodConfig, Subscription};
use herald_core::defaults::Defaults;
use herald_core::delivery::Target;
use herald_core::filter::TypeFilter;
use herald_runtime::shutdown::Shutdown;
use herald_runtime::watch::{SETTLE, watch_file};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::config::PodSource;
use crate::deliver::Deliverer;
use crate::metrics::{Metrics, ReloadLabels, ReloadResult};
use crate::readiness::Readiness;

/// What the rest of the sidecar reads of the live configuration, swapped on every reload: the
/// publish allowlist (the publish API) and the shutdown window (the process wiring).
#[derive(Clone)]
pub struct Shared {
    pub publish_allow: Arc<ArcSwap<Vec<TypeFilter>>>,
    /// `herald.dev/shutdown-window` in milliseconds; `u64::MAX` while not set.
    shutdown_window: Arc<AtomicU64>,
}

impl Shared {
    pub fn new(pod: &PodConfig) -> Self {
        let shared = Shared {
            publish_allow: Arc::new(ArcSwap::from_pointee(Vec::new())),
            shutdown_window: Arc::new(AtomicU64::new(u64::MAX)),
        };
        shared.set(pod);
        shared
    }

    fn set(&self, pod: &PodConfig) {
        self.publish_allow
            .store(Arc::new(pod.publish_allow.clone()));
        let ms = pod.shutdown_window.map_or(u64::MAX, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1)
        });
        self.shutdown_window.store(ms, Ordering::Relaxed);
    }

    /// `herald.dev/shutdown-window` as currently configured.
    pub fn shutdown_window(&self) -> Option<Duration> {
        match self.shutdown_window.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

struct Running {
    live: watch::Sender<Arc<Target>>,
    stop: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

/// The running subscriptions of the pod.
pub struct Subscriptions {
    deliverer: Arc<Deliverer>,
    readiness: Arc<Readiness>,
    shutdown: Shutdown,
    grace: Duration,
    shared: Shared,
    metrics: Arc<Metrics>,
    running: HashMap<String, Running>,
    /// Removed subscriptions still finishing their deliveries.
    stopping: JoinSet<()>,
    /// The app's resource subscriptions as last read from the bucket, and what they parsed to.
    resource_text: Option<Bytes>,
    resources: Vec<Subscription>,
    /// Filters served for resources (not shadowed by an annotation): their facts are reported.
    from_resources: std::collections::HashSet<String>,
    /// Subscriptions of resources with a sink whose Service selects this app's pods, delivered
    /// here as their resource's subscriber (its app id with each), and the engine of each.
    adopted: Vec<(String, Subscription)>,
    engines: HashMap<String, Arc<Deliverer>>,
}

impl Subscriptions {
    pub fn new(
        deliverer: Arc<Deliverer>,
        readiness: Arc<Readiness>,
        shutdown: Shutdown,
        grace: Duration,
        shared: Shared,
        metrics: Arc<Metrics>,
    ) -> Self {
        Subscriptions {
            deliverer,
            readiness,
            shutdown,
            grace,
            shared,
            metrics,
            running: HashMap::new(),
            stopping: JoinSet::new(),
            resource_text: None,
            resources: Vec::new(),
            from_resources: std::collections::HashSet::new(),
            adopted: Vec::new(),
            engines: HashMap::new(),
        }
    }

    /// `pod` with the resource subscriptions whose filter the annotations do not list.
    fn merged(&mut self, mut pod: PodConfig) -> PodConfig {
        let own: std::collections::HashSet<String> = pod
            .subscriptions
            .iter()
            .map(|s| s.filter.to_string())
            .collect();
        let added: Vec<Subscription> = self
            .resources
            .iter()
            .filter(|s| !own.contains(&s.filter.to_string()))
            .cloned()
            .collect();
        self.from_resources = added.iter().map(|s| s.filter.to_string()).collect();
        pod.subscriptions.extend(added);
        pod
    }

    /// Parses the resource subscriptions over the cluster defaults; a value that does not parse
    /// keeps the last good ones. Says whether those delivered for sinks changed (they are not
    /// part of the pod's configuration, so a reload does not see them).
    fn parse_resources(&mut self, cluster: &Defaults) -> bool {
        let before = self.adopted.clone();
        self.parse_resources_into(cluster);
        self.adopted != before
    }

    fn parse_resources_into(&mut self, cluster: &Defaults) {
        let parsed = match &self.resource_text {
            None => Ok(herald_core::sinks::AppValue::default()),
            Some(bytes) => std::str::from_utf8(bytes)
                .map_err(|e| vec![format!("not UTF-8: {e}")])
                .and_then(|text| herald_core::sinks::parse_app_value(text, cluster)),
        };
        match parsed {
            Ok(value) => {
                self.resources = value.own;
                self.adopted = value.adopted;
            }
            Err(rules) => tracing::error!(
                errors = %rules.join("; "),
                "the app's resource subscriptions in the configuration bucket are invalid; the last good ones stay"
            ),
        }
    }

    /// Makes the running subscriptions match `pod`.
    pub fn apply(&mut self, pod: &PodConfig) {
        self.shared.set(pod);
        let mut wanted: HashMap<String, (Arc<Deliverer>, Target)> = match pod.app_port {
            Some(app_port) => pod
                .subscriptions
                .iter()
                .map(|sub| {
                    let target = Target {
                        sub: sub.clone(),
                        dest: herald_core::delivery::Destination::App(app_port),
                        reported: self.from_resources.contains(&sub.filter.to_string()),
                    };
                    (sub.filter.to_string(), (self.deliverer.clone(), target))
                })
                .collect(),
            None => HashMap::new(),
        };
        if let Some(app_port) = pod.app_port {
            let mut engines = HashMap::new();
            for (who, sub) in &self.adopted {
                let engine = self.engines.get(who).cloned().unwrap_or_else(|| {
                    self.deliverer
                        .as_subscriber(herald_core::consumer::Subscriber {
                            namespace: self.deliverer.namespace().to_owned(),
                            app_id: who.clone(),
                        })
                });
                let target = Target {
                    sub: sub.clone(),
                    dest: herald_core::delivery::Destination::App(app_port),
                    reported: true,
                };
                // Keyed apart from the app's own filters: another subscriber, another consumer.
                wanted.insert(format!("{who}/{}", sub.filter), (engine.clone(), target));
                engines.insert(who.clone(), engine);
            }
            self.engines = engines;
        }
        self.apply_targets(wanted);
    }

    /// Makes the running subscriptions match `wanted` (key → the engine of its subscriber and
    /// the target): the dispatcher's entry point, where subscriptions belong to many
    /// subscribers. A key keeps its engine for life: a subscriber is part of the key.
    pub fn apply_targets(&mut self, wanted: HashMap<String, (Arc<Deliverer>, Target)>) {
        let removed: Vec<String> = self
            .running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in removed {
            if let Some(r) = self.running.remove(&key) {
                tracing::info!(subscription = %key, "unsubscribed; deliveries in flight finish");
                r.stop.trigger();
                self.retire(r);
            }
        }
        for (key, (deliverer, target)) in wanted {
            match self.running.get(&key) {
                Some(r) => {
                    let changed = r.live.send_if_modified(|current| {
                        let changed = **current != target;
                        if changed {
                            *current = Arc::new(target.clone());
                        }
                        changed
                    });
                    if changed {
                        tracing::info!(subscription = %key, "subscription settings changed");
                    }
                }
                None => {
                    let (live, rx) = watch::channel(Arc::new(target));
                    let stop = self.shutdown.child();
                    self.readiness.expect_consumers(1);
                    let readiness = self.readiness.clone();
                    // Every log line of the subscription's task and its deliveries says which one.
                    let span = tracing::info_span!("subscription", subscription = %key);
                    let task = tokio::spawn(
                        deliverer
                            .run(rx, stop.clone(), self.grace, move || {
                                readiness.consumer_bound()
                            })
                            .instrument(span),
                    );
                    self.running.insert(key, Running { live, stop, task });
                }
            }
        }
        while self.stopping.try_join_next().is_some() {}
    }

    /// Follows changes of the annotations file and of the cluster's delivery defaults until
    /// shutdown, then waits for every subscription to drain.
    pub async fn run(
        mut self,
        source: PodSource,
        mut current: PodConfig,
        mut cluster: watch::Receiver<Option<Defaults>>,
        mut resources: watch::Receiver<Option<Option<Bytes>>>,
    ) {
        // A default file that does not exist (the sidecar run by hand, without the injector) is
        // not watched; one named explicitly is.
        let watched = source
            .file
            .as_ref()
            .filter(|(path, explicit)| *explicit || Path::new(path).exists());
        let (_watcher, mut changes) = match watched.map(|(p, _)| watch_file(p)) {
            Some(Ok((w, rx))) => (Some(w), Some(rx)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot watch the annotations file; changes need a restart");
                (None, None)
            }
            None => (None, None),
        };
        loop {
            tokio::select! {
                Some(()) = recv(&mut changes) => {
                    tokio::time::sleep(SETTLE).await;
                    if let Some(rx) = changes.as_mut() {
                        while rx.try_recv().is_ok() {}
                    }
                    let defaults = cluster.borrow().unwrap_or_default();
                    current = self.reload(&source, current, &defaults);
                }
                Ok(()) = cluster.changed() => {
                    let defaults = cluster.borrow_and_update().unwrap_or_default();
                    let adopted = self.parse_resources(&defaults);
                    current = self.reload(&source, current, &defaults);
                    if adopted {
                        self.apply(&current);
                    }
                }
                Ok(()) = resources.changed() => {
                    let Some(text) = resources.borrow_and_update().clone() else {
                        continue;
                    };
                    if text == self.resource_text {
                        continue;
                    }
                    self.resource_text = text;
                    let defaults = cluster.borrow().unwrap_or_default();
                    let adopted = self.parse_resources(&defaults);
                    current = self.reload(&source, current, &defaults);
                    if adopted {
                        self.apply(&current);
                    }
                }
                _ = self.shutdown.wait() => break,
            }
        }
        self.stop_all().await;
    }

    /// Stops every subscription and waits until their deliveries in flight are done.
    pub async fn stop_all(mut self) {
        let all: Vec<Running> = self.running.drain().map(|(_, r)| r).collect();
        for r in all {
            self.retire(r);
        }
        while self.stopping.join_next().await.is_some() {}
    }

    /// Keeps a stopped subscription's task (and its settings channel, which it reads until it
    /// ends) until its deliveries have finished.
    fn retire(&mut self, r: Running) {
        self.stopping.spawn(async move {
            let _ = r.task.await;
            drop(r.live);
        });
    }

    fn reload(&mut self, source: &PodSource, current: PodConfig, cluster: &Defaults) -> PodConfig {
        let result = match source.load_with(cluster).map(|pod| self.merged(pod)) {
            Ok(pod) if pod == current => ReloadResult::Unchanged,
            Ok(pod) => {
                if pod.app_id != current.app_id {
                    tracing::warn!("herald.dev/app-id changed; it applies at the next restart");
                }
                self.apply(&pod);
                tracing::info!(
                    subscriptions = pod.subscriptions.len(),
                    "configuration reloaded (annotations, resource subscriptions or cluster delivery defaults)"
                );
                self.count(ReloadResult::Applied);
                return pod;
            }
            Err(e) => {
                tracing::error!(error = %e, "the annotations changed but are invalid; the running configuration stays");
                ReloadResult::Rejected
            }
        };
        self.count(result);
        current
    }

    fn count(&self, result: ReloadResult) {
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }
}

async fn recv(rx: &mut Option<mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herald_core::broker::Admin as _;
    use herald_core::consumer::Subscriber;
    use herald_core::contract::{self, APP_PORT, MAX_IN_FLIGHT, PUBLISH_ALLOW, SUBSCRIBE};
    use herald_core::policy::StreamPolicy;
    use herald_membroker::MemBroker;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::config::{RunMode, ServeArgs, ServeConfig};

    const STREAM: &str = "HERALD";

    fn who() -> Subscriber {
        Subscriber {
            namespace: "shop".into(),
            app_id: "orders".into(),
        }
    }

    struct Harness {
        broker: MemBroker,
        shared: Shared,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    }

    async fn harness() -> (Harness, Subscriptions) {
        let broker = MemBroker::new();
        broker
            .ensure_stream(&StreamPolicy::dev_events(STREAM))
            .await
            .unwrap();
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let dyn_broker: Arc<dyn herald_core::broker::Broker> = Arc::new(broker.clone());
        let deliverer = Deliverer::new(dyn_broker.clone(), STREAM, who(), metrics.clone());
        let shared = Shared::new(&PodConfig::default());
        let shutdown = Shutdown::new();
        let subs = Subscriptions::new(
            deliverer,
            Readiness::new(dyn_broker, STREAM),
            shutdown.clone(),
            Duration::from_secs(1),
            shared.clone(),
            metrics.clone(),
        );
        let h = Harness {
            broker,
            shared,
            metrics,
            shutdown,
        };
        (h, subs)
    }

    fn pod(pairs: &[(&str, &str)]) -> PodConfig {
        let annotations: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        contract::parse(&annotations).unwrap()
    }

    impl Harness {
        /// The consumer of `filter`: its settings, and whether a pull request is open on it.
        fn consumer(&self, filter: &str) -> Option<(usize, bool)> {
            let name = who().consumer_name(&TypeFilter::parse(filter).unwrap());
            let spec = self.broker.consumer_spec(STREAM, &name)?;
            let state = self.broker.consumer_state(STREAM, &name)?;
            Some((spec.max_ack_pending, state.waiting > 0))
        }

        fn reloads(&self, result: ReloadResult) -> u64 {
            self.metrics
                .config_reloads
                .get_or_create(&ReloadLabels { result })
                .get()
        }
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never happened: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn subscriptions_start_change_and_stop_with_the_configuration() {
        let (h, mut subs) = harness().await;
        subs.apply(&pod(&[
            (APP_PORT, "8080"),
            (SUBSCRIBE, "order.>,invoice.>"),
            (MAX_IN_FLIGHT, "5"),
        ]));
        until("both consumers pulling", || {
            h.consumer("order.>") == Some((5, true)) && h.consumer("invoice.>") == Some((5, true))
        })
        .await;

        // One removed, the other changed, an allowlist set.
        subs.apply(&pod(&[
            (APP_PORT, "8080"),
            (SUBSCRIBE, "order.>"),
            (MAX_IN_FLIGHT, "7"),
            (PUBLISH_ALLOW, "order.>"),
            (contract::SHUTDOWN_WINDOW, "3s"),
        ]));
        assert_eq!(h.shared.publish_allow.load().len(), 1);
        assert_eq!(h.shared.shutdown_window(), Some(Duration::from_secs(3)));
        until("the changed consumer updated", || {
            h.consumer("order.>") == Some((7, true))
        })
        .await;
        // The removed one stops pulling; its consumer stays for the controller to collect.
        until("the removed consumer idle", || {
            h.consumer("invoice.>") == Some((5, false))
        })
        .await;
        assert_eq!(subs.running.len(), 1);

        // Nothing subscribed any more.
        subs.apply(&pod(&[]));
        assert!(subs.running.is_empty());
        until("every consumer idle", || {
            h.consumer("order.>") == Some((7, false))
        })
        .await;
        h.shutdown.trigger();
    }

    #[tokio::test(start_paused = true)]
    async fn cluster_defaults_reload_what_the_pod_does_not_set() {
        let (h, mut subs) = harness().await;
        let args = ServeArgs {
            app_port: Some("8080".into()),
            subscribe: Some("order.>".into()),
            ..Default::default()
        };
        let env = std::collections::HashMap::<String, String>::new();
        let source = ServeConfig::resolve(RunMode::Dev, &args, &env)
            .unwrap()
            .pod_source;
        let initial = source.load_with(&Defaults::default()).unwrap();
        let (tx, rx) = watch::channel(None);
        let (_resources_tx, resources) = watch::channel(None);
        subs.apply(&initial);
        let running = tokio::spawn(subs.run(source, initial, rx, resources));
        until("bound with the built-in default", || {
            h.consumer("order.>") == Some((Defaults::default().max_in_flight, true))
        })
        .await;

        let tuned = Defaults {
            max_in_flight: 3,
            ..Defaults::default()
        };
        tx.send_replace(Some(tuned));
        until("the new default applied", || {
            h.consumer("order.>") == Some((3, true))
        })
        .await;
        assert_eq!(h.reloads(ReloadResult::Applied), 1);
        tx.send_replace(Some(tuned));
        until("an unchanged reload counted", || {
            h.reloads(ReloadResult::Unchanged) == 1
        })
        .await;

        // Shutdown stops every subscription and waits for them.
        h.shutdown.trigger();
        running.await.unwrap();
        assert_eq!(h.consumer("order.>"), Some((3, false)));
    }

    #[tokio::test(start_paused = true)]
    async fn resource_subscriptions_join_and_leave_and_the_annotation_wins_a_clash() {
        let (h, mut subs) = harness().await;
        let args = ServeArgs {
            app_port: Some("8080".into()),
            subscribe: Some("order.>".into()),
            ..Default::default()
        };
        let env = std::collections::HashMap::<String, String>::new();
        let source = ServeConfig::resolve(RunMode::Dev, &args, &env)
            .unwrap()
            .pod_source;
        let initial = source.load_with(&Defaults::default()).unwrap();
        let (_defaults_tx, cluster) = watch::channel(Some(Defaults::default()));
        let (tx, resources) = watch::channel(None);
        subs.apply(&initial);
        let running = tokio::spawn(subs.run(source, initial, cluster, resources));
        let default = Defaults::default().max_in_flight;
        until("the annotation's subscription", || {
            h.consumer("order.>") == Some((default, true))
        })
        .await;

        // A resource on the same filter (other settings) and one on a filter of its own.
        tx.send_replace(Some(Some(Bytes::from_static(
            br#"[{"type": "order.>", "maxInFlight": 3}, {"type": "payment.>", "maxInFlight": 4}]"#,
        ))));
        until("the resource's own filter subscribed", || {
            h.consumer("payment.>") == Some((4, true))
        })
        .await;
        assert_eq!(
            h.consumer("order.>"),
            Some((default, true)),
            "the annotation wins"
        );

        // One delivered for a resource with a sink whose Service selects this app's pods: its
        // own consumer, as the resource's subscriber, not the app's.
        tx.send_replace(Some(Some(Bytes::from_static(
            br#"[{"type": "order.>", "maxInFlight": 3}, {"type": "payment.>", "maxInFlight": 4},
                 {"type": "refund.v1", "as": "sink:refunds", "path": "/in", "maxInFlight": 2}]"#,
        ))));
        let sink_who = Subscriber {
            namespace: "shop".into(),
            app_id: "sink:refunds".into(),
        };
        let refunds = sink_who.consumer_name(&TypeFilter::parse("refund.v1").unwrap());
        until("the sink's subscription delivered here", || {
            h.broker
                .consumer_state(STREAM, &refunds)
                .is_some_and(|s| s.waiting > 0)
        })
        .await;
        assert_eq!(h.consumer("refund.v1"), None, "not as the app");

        // Invalid: the last good ones stay.
        tx.send_replace(Some(Some(Bytes::from_static(br#"[{"type": ""}]"#))));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.consumer("payment.>"), Some((4, true)));

        // Gone: its subscriptions stop; the annotation's stays.
        tx.send_replace(Some(None));
        until("the resource's subscription stopped", || {
            h.consumer("payment.>") == Some((4, false))
        })
        .await;
        until("the sink's subscription stopped", || {
            h.broker
                .consumer_state(STREAM, &refunds)
                .is_some_and(|s| s.waiting == 0)
        })
        .await;
        assert_eq!(h.consumer("order.>"), Some((default, true)));
        h.shutdown.trigger();
        running.await.unwrap();
    }
}
