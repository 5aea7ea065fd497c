//! The workloads and the EventStream as the controller sees them: kube-rs reflectors (a list,
//! then a watch that resumes from its resourceVersion and re-lists only when it must), so a pass
//! reads memory instead of listing the cluster, and any change wakes the controller.
//!
//! The stores keep only what [`super::inventory`] reads: an object's metadata, a workload's pod
//! template metadata, a pod's container names with their `HERALD_APP_ID`, and its phase. Managed
//! fields, container specs and statuses are dropped as they arrive, which is most of an object's
//! size.

use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod, PodSpec, PodStatus, PodTemplateSpec, Service, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::crd::EventStream;
use super::inventory::Workloads;
use super::subscription::Subscription;

/// Objects per page of a watcher's list.
const PAGE: u32 = 500;

/// The reflectors of one leadership term; dropped (and their watches ended) when it ends.
pub struct Watched {
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
    daemonsets: Store<DaemonSet>,
    cronjobs: Store<CronJob>,
    jobs: Store<Job>,
    pods: Store<Pod>,
    services: Store<Service>,
    event_streams: Store<EventStream>,
    /// `None` when the Subscription CRD is not installed.
    subscriptions: Option<Store<Subscription>>,
    /// Kyma's; `None` when its CRD is not installed.
    kyma: Option<Store<super::kyma::Subscription>>,
    /// Woken by every watch event (and every re-list).
    pub changed: Arc<Notify>,
    _tasks: JoinSet<()>,
}

fn meta_only(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
}

/// A workload's pod template, reduced to its metadata (annotations and labels).
fn template_only(t: &mut PodTemplateSpec) {
    if let Some(m) = t.metadata.as_mut() {
        meta_only(m);
    }
    t.spec = None;
}

fn strip_pod(p: &mut Pod) {
    meta_only(&mut p.metadata);
    let keep = |cs: &mut Vec<Container>| {
        for c in cs.iter_mut() {
            let env: Option<Vec<EnvVar>> = c.env.take().map(|e| {
                e.into_iter()
                    .filter(|v| v.name == "HERALD_APP_ID")
                    .collect()
            });
            *c = Container {
                name: std::mem::take(&mut c.name),
                env,
                ..Default::default()
            };
        }
    };
    if let Some(spec) = p.spec.as_mut() {
        let mut containers = std::mem::take(&mut spec.containers);
        let mut init = spec.init_containers.take();
        keep(&mut containers);
        if let Some(i) = init.as_mut() {
            keep(i);
        }
        *spec = PodSpec {
            containers,
            init_containers: init,
            ..Default::default()
        };
    }
    if let Some(status) = p.status.as_mut() {
        *status = PodStatus {
            phase: status.phase.take(),
            ..Default::default()
        };
    }
}

fn strip_job_spec(s: &mut JobSpec) {
    template_only(&mut s.template);
}

impl Watched {
    /// Starts the reflectors (their watches run until this is dropped).
    pub fn start(kube: &kube::Client, event_stream: &str, subscriptions: bool, kyma: bool) -> Self {
        let changed = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let cfg = || watcher::Config::default().page_size(PAGE);
        let deployments = reflect(
            Api::all(kube.clone()),
            cfg(),
            |d: &mut Deployment| {
                meta_only(&mut d.metadata);
                d.status = None;
                if let Some(s) = d.spec.as_mut() {
                    template_only(&mut s.template);
                }
            },
            &changed,
            &mut tasks,
        );
        let statefulsets = reflect(
            Api::all(kube.clone()),
            cfg(),
            |d: &mut StatefulSet| {
                meta_only(&mut d.metadata);
                d.status = None;
                if let Some(s) = d.spec.as_mut() {
                    template_only(&mut s.template);
                    s.volume_claim_templates = None;
                }
            },
            &changed,
            &mut tasks,
        );
        let daemonsets = reflect(
            Api::all(kube.clone()),
            cfg(),
            |d: &mut DaemonSet| {
                meta_only(&mut d.metadata);
                d.status = None;
                if let Some(s) = d.spec.as_mut() {
                    template_only(&mut s.template);
                }
            },
            &changed,
            &mut tasks,
        );
        let cronjobs = reflect(
            Api::all(kube.clone()),
            cfg(),
            |c: &mut CronJob| {
                meta_only(&mut c.metadata);
                c.status = None;
                if let Some(s) = c.spec.as_mut().and_then(|s| s.job_template.spec.as_mut()) {
                    strip_job_spec(s);
                }
            },
            &changed,
            &mut tasks,
        );
        let jobs = reflect(
            Api::all(kube.clone()),
            cfg(),
            |j: &mut Job| {
                meta_only(&mut j.metadata);
                j.status = None;
                if let Some(s) = j.spec.as_mut() {
                    strip_job_spec(s);
                }
            },
            &changed,
            &mut tasks,
        );
        let pods = reflect(
            Api::all(kube.clone()),
            cfg(),
            strip_pod,
            &changed,
            &mut tasks,
        );
        // Services: their selector and ports (sinks whose pods run the sidecar).
        let services = reflect(
            Api::all(kube.clone()),
            cfg(),
            |s: &mut Service| {
                meta_only(&mut s.metadata);
                s.metadata.annotations = None;
                s.status = None;
                if let Some(spec) = s.spec.as_mut() {
                    *spec = ServiceSpec {
                        selector: spec.selector.take(),
                        ports: spec.ports.take(),
                        ..Default::default()
                    };
                }
            },
            &changed,
            &mut tasks,
        );
        let event_streams = reflect(
            Api::all(kube.clone()),
            watcher::Config::default().fields(&format!("metadata.name={event_stream}")),
            |e: &mut EventStream| meta_only(&mut e.metadata),
            &changed,
            &mut tasks,
        );
        let subscriptions = subscriptions.then(|| {
            reflect(
                Api::all(kube.clone()),
                cfg(),
                |s: &mut Subscription| meta_only(&mut s.metadata),
                &changed,
                &mut tasks,
            )
        });
        let kyma = kyma.then(|| {
            reflect(
                Api::all(kube.clone()),
                cfg(),
                |s: &mut super::kyma::Subscription| meta_only(&mut s.metadata),
                &changed,
                &mut tasks,
            )
        });
        Watched {
            subscriptions,
            kyma,
            deployments,
            statefulsets,
            daemonsets,
            cronjobs,
            jobs,
            pods,
            services,
            event_streams,
            changed,
            _tasks: tasks,
        }
    }

    /// Resolves once every store holds its first complete list.
    pub async fn ready(&self) {
        let _ = futures::join!(
            self.deployments.wait_until_ready(),
            self.statefulsets.wait_until_ready(),
            self.daemonsets.wait_until_ready(),
            self.cronjobs.wait_until_ready(),
            self.jobs.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.services.wait_until_ready(),
            self.event_streams.wait_until_ready(),
            async {
                if let Some(s) = &self.subscriptions {
                    let _ = s.wait_until_ready().await;
                }
            },
            async {
                if let Some(s) = &self.kyma {
                    let _ = s.wait_until_ready().await;
                }
            },
        );
    }

    /// The workloads as the stores hold them now.
    pub fn workloads(&self) -> Workloads {
        fn all<K>(s: &Store<K>) -> Vec<K>
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            s.state().iter().map(|k| K::clone(k)).collect()
        }
        Workloads {
            deployments: all(&self.deployments),
            statefulsets: all(&self.statefulsets),
            daemonsets: all(&self.daemonsets),
            cronjobs: all(&self.cronjobs),
            jobs: all(&self.jobs),
            pods: all(&self.pods),
            services: all(&self.services),
            subscriptions: self.subscriptions.as_ref().map(all).unwrap_or_default(),
            kyma: self.kyma.as_ref().map(all).unwrap_or_default(),
        }
    }

    /// The EventStream, if it exists.
    pub fn event_stream(&self) -> Option<EventStream> {
        self.event_streams
            .state()
            .first()
            .map(|e| EventStream::clone(e))
    }
}

/// A reflector over `api`, each object passed through `strip` before it is stored; every event
/// notifies `changed`. A failing watch backs off (kube-rs's default) and resumes.
fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    strip: fn(&mut K),
    changed: &Arc<Notify>,
    tasks: &mut JoinSet<()>,
) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let changed = changed.clone();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    tasks.spawn(async move {
        let mut events = std::pin::pin!(
            watcher(api, cfg)
                .default_backoff()
                .modify(strip)
                .reflect(writer)
        );
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(%kind, error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}
