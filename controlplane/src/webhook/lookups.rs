//! What the webhook asks the Kubernetes API, kept thin: a Job's CronJob, a namespace's
//! `herald.dev/*` annotations, and whether the apiserver keeps native sidecars.
//!
//! Every lookup has a short timeout (the apiserver waits for the webhook, 10 s by default) and its
//! answers are cached: a CronJob's Jobs and a namespace's pods are admitted in bursts, and one
//! lookup each is enough. The tests run this module against a scripted API server.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, Namespace, Pod, PodSecurityContext, PodSpec, SeccompProfile,
    SecurityContext,
};
use kube::api::{Api, ObjectMeta, PostParams};

/// A lookup that failed; the webhook decides what that means for the pod.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Api(#[from] kube::Error),
}

/// How long a cached answer is used. A namespace's defaults therefore reach new pods within
/// this time of being changed; a Job's owner never changes.
const NAMESPACE_TTL: Duration = Duration::from_secs(30);
const JOB_TTL: Duration = Duration::from_secs(600);
/// Entries kept per cache; past it, expired entries are dropped, then everything.
const CACHE_CAPACITY: usize = 4096;

pub struct Cluster {
    client: kube::Client,
    timeout: Duration,
    cronjobs: TtlCache<(String, String), Option<String>>,
    namespaces: TtlCache<String, BTreeMap<String, String>>,
}

impl Cluster {
    pub fn new(client: kube::Client, timeout: Duration) -> Self {
        Cluster {
            client,
            timeout,
            cronjobs: TtlCache::new(JOB_TTL),
            namespaces: TtlCache::new(NAMESPACE_TTL),
        }
    }

    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LookupError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(LookupError::Timeout(self.timeout)),
        }
    }

    /// The CronJob controlling Job `namespace/job`, if any. A Job that is gone (`None`) is
    /// cached too: the pod then takes its app id from the Job name.
    pub async fn cronjob_of(
        &self,
        namespace: &str,
        job: &str,
    ) -> Result<Option<String>, LookupError> {
        let key = (namespace.to_owned(), job.to_owned());
        if let Some(hit) = self.cronjobs.get(&key) {
            return Ok(hit);
        }
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let found = self.bounded(jobs.get_opt(job)).await?;
        let cronjob = found.and_then(|j| {
            let owners = j.metadata.owner_references.unwrap_or_default();
            owners
                .into_iter()
                .find(|o| o.kind == "CronJob" && o.controller == Some(true))
                .map(|o| o.name)
        });
        self.cronjobs.put(key, cronjob.clone());
        Ok(cronjob)
    }

    /// The namespace's `herald.dev/*` annotations (a missing namespace has none).
    pub async fn namespace_annotations(
        &self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, LookupError> {
        if let Some(hit) = self.namespaces.get(&namespace.to_owned()) {
            return Ok(hit);
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        let found = self.bounded(api.get_opt(namespace)).await?;
        let annotations: BTreeMap<String, String> = found
            .and_then(|n| n.metadata.annotations)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with("herald.dev/"))
            .collect();
        self.namespaces
            .put(namespace.to_owned(), annotations.clone());
        Ok(annotations)
    }

    /// Whether the apiserver keeps `restartPolicy: Always` on an init container: a server-side
    /// dry run creates a probe pod in `namespace` and reads the field back. An apiserver without
    /// native sidecars drops it silently (v1.28 without the `SidecarContainers` gate) or refuses
    /// it as invalid; both mean no.
    pub async fn supports_native_sidecars(
        &self,
        namespace: &str,
        image: &str,
    ) -> Result<bool, LookupError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = PostParams {
            dry_run: true,
            field_manager: Some("herald-controlplane".into()),
        };
        match self.bounded(pods.create(&params, &probe_pod(image))).await {
            Ok(created) => Ok(created
                .spec
                .and_then(|s| s.init_containers)
                .and_then(|c| c.into_iter().next())
                .and_then(|c| c.restart_policy)
                .as_deref()
                == Some("Always")),
            Err(LookupError::Api(kube::Error::Api(status))) if status.code == 422 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The dry-run probe: never stored, never scheduled. It satisfies the `restricted` Pod Security
/// standard so a namespace enforcing it does not refuse the probe for unrelated reasons.
pub fn probe_pod(image: &str) -> Pod {
    let container = |name: &str, restart: Option<&str>| Container {
        name: name.into(),
        image: Some(image.into()),
        restart_policy: restart.map(Into::into),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some("herald-native-sidecar-probe-".into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "herald".to_owned(),
            )])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            init_containers: Some(vec![container("sidecar", Some("Always"))]),
            containers: vec![container("main", None)],
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A small map whose entries expire; enough for a few thousand namespaces and Jobs without a
/// cache library.
struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), value));
    }
}
