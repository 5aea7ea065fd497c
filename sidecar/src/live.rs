//! The live configuration: one delivery task per subscription, started, updated and stopped as the
//! pod's annotations or the cluster's delivery defaults ([`crate::defaults`]) change, without a
//! restart.
//!
//! The kubelet rewrites the downward API file with an atomic symlink swap (a new timestamped
//! directory, then `..data` is renamed over), so the watch is on the file's directory and reacts to
//! changes of the file itself or of `..data`; reads (access events) and other names are ignored, so
//! the sidecar's own reads never trigger a reload. A change is applied only when the file parses and
//! validates; otherwise the running configuration stays and the error is logged and counted.
//!
//! Applying a configuration compares subscriptions by filter (the consumer's identity): a new one
//! starts a task, a removed one stops pulling and lets its deliveries in flight finish, a changed
//! one gets the new settings for its next deliveries while those in flight keep the settings they
//! started with. The publish allowlist is swapped at once. The app id is fixed at start (it names
//! the consumers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::admin::Readiness;
use crate::config::PodSource;
use crate::defaults::Defaults;
use crate::deliver::{Deliverer, Target};
use crate::filter::TypeFilter;
use crate::metrics::{Metrics, ReloadLabels, ReloadResult};
use crate::shutdown::Shutdown;
use crate::subscribe::PodConfig;

/// Name the kubelet's atomic writer gives the symlink to the current version of the files.
const KUBELET_DATA_LINK: &str = "..data";
/// Changes are gathered this long before the file is read, so one kubelet swap (several events)
/// is one reload.
pub const SETTLE: Duration = Duration::from_millis(100);

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
    publish_allow: Arc<ArcSwap<Vec<TypeFilter>>>,
    metrics: Arc<Metrics>,
    running: HashMap<String, Running>,
    /// Removed subscriptions still finishing their deliveries.
    stopping: JoinSet<()>,
}

impl Subscriptions {
    pub fn new(
        deliverer: Arc<Deliverer>,
        readiness: Arc<Readiness>,
        shutdown: Shutdown,
        grace: Duration,
        publish_allow: Arc<ArcSwap<Vec<TypeFilter>>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Subscriptions {
            deliverer,
            readiness,
            shutdown,
            grace,
            publish_allow,
            metrics,
            running: HashMap::new(),
            stopping: JoinSet::new(),
        }
    }

    /// Makes the running subscriptions match `pod`.
    pub fn apply(&mut self, pod: &PodConfig) {
        self.publish_allow
            .store(Arc::new(pod.publish_allow.clone()));
        let wanted: HashMap<String, Target> = match pod.app_port {
            Some(app_port) => pod
                .subscriptions
                .iter()
                .map(|sub| {
                    let target = Target {
                        sub: sub.clone(),
                        app_port,
                    };
                    (sub.filter.to_string(), target)
                })
                .collect(),
            None => HashMap::new(),
        };
        let removed: Vec<String> = self
            .running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in removed {
            if let Some(r) = self.running.remove(&key) {
                tracing::info!(filter = %key, "unsubscribed; deliveries in flight finish");
                r.stop.trigger();
                self.retire(r);
            }
        }
        for (key, target) in wanted {
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
                        tracing::info!(filter = %key, "subscription settings changed");
                    }
                }
                None => {
                    let (live, rx) = watch::channel(Arc::new(target));
                    let stop = self.shutdown.child();
                    self.readiness.expect_consumers(1);
                    let readiness = self.readiness.clone();
                    let task = tokio::spawn(self.deliverer.clone().run(
                        rx,
                        stop.clone(),
                        self.grace,
                        move || readiness.consumer_bound(),
                    ));
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
                    current = self.reload(&source, current, &defaults);
                }
                _ = self.shutdown.wait() => break,
            }
        }
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
        let result = match source.load_with(cluster) {
            Ok(pod) if pod == current => ReloadResult::Unchanged,
            Ok(pod) => {
                if pod.app_id != current.app_id {
                    tracing::warn!("herald.dev/app-id changed; it applies at the next restart");
                }
                self.apply(&pod);
                tracing::info!(
                    subscriptions = pod.subscriptions.len(),
                    "configuration reloaded (annotations or cluster delivery defaults)"
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

/// Watches the directory of `file` and signals changes of the file or of the kubelet's `..data`
/// link. The watcher stops when dropped.
pub fn watch_file(
    file: &str,
) -> Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>), notify::Error> {
    watch_files(&[PathBuf::from(file)])
}

/// [`watch_file`] for several files (the injector's certificate and key), in one or more
/// directories.
pub fn watch_files(
    files: &[PathBuf],
) -> Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>), notify::Error> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut names: Vec<std::ffi::OsString> = vec![KUBELET_DATA_LINK.into()];
    for path in files {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
        names.extend(path.file_name().map(|n| n.to_owned()));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        // Reading the file (ours included) raises access events; only changes matter.
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        let relevant = ev
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)));
        if relevant {
            let _ = tx.send(());
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok((watcher, rx))
}
