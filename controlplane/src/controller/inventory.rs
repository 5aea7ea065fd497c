//! What the cluster subscribes to and which pods missed their sidecar, worked out from listed
//! objects alone (no I/O), so the controller's two safety rules are unit-tested:
//!
//! - a consumer is in use while **any** workload template or pod subscribes to its
//!   `namespace/app-id/filter`: a Deployment scaled to zero, or a CronJob between runs, keeps
//!   its consumer (and its backlog);
//! - a pod missed its sidecar when it asks for one (the webhook's own rule), has none, and is
//!   neither finished nor being deleted.
//!
//! App ids follow [`crate::webhook::appid`]: a template's is its `herald.dev/app-id` or the workload's
//! name; a running pod's is the `HERALD_APP_ID` the webhook gave its sidecar, which is exactly
//! what named its consumers.

use std::collections::{BTreeMap, BTreeSet};

use herald_core::consumer::Subscriber;
use herald_core::contract::{self as subscribe, APP_ID};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::webhook::mutate::{SIDECAR_NAME, asks_for_sidecar};

/// Everything the controller lists, cluster wide.
#[derive(Debug, Default, Clone)]
pub struct Workloads {
    pub deployments: Vec<Deployment>,
    pub statefulsets: Vec<StatefulSet>,
    pub daemonsets: Vec<DaemonSet>,
    pub cronjobs: Vec<CronJob>,
    pub jobs: Vec<Job>,
    pub pods: Vec<Pod>,
    /// herald's Subscription resources.
    pub subscriptions: Vec<super::subscription::Subscription>,
    /// Kyma's Subscription resources (none when their CRD is not installed).
    pub kyma: Vec<super::kyma::Subscription>,
    /// Services (selector and ports), for sinks served by sidecars.
    pub services: Vec<k8s_openapi::api::core::v1::Service>,
}

/// A pod that asked for the sidecar and runs without it.
#[derive(Debug, Clone, PartialEq)]
pub struct MissedPod {
    pub namespace: String,
    pub pod: String,
    /// What to restart: the Deployment (through its ReplicaSet), the controlling owner, or the
    /// pod itself when it has none.
    pub owner: ObjectReference,
}

impl MissedPod {
    /// The fix, as a command where there is one.
    pub fn advice(&self) -> String {
        let ns = &self.namespace;
        let name = self.owner.name.as_deref().unwrap_or_default();
        match self.owner.kind.as_deref().unwrap_or_default() {
            kind @ ("Deployment" | "StatefulSet" | "DaemonSet") => format!(
                "restart the workload so its pods are created again through the webhook: kubectl rollout restart {}/{name} -n {ns}",
                kind.to_lowercase()
            ),
            "Pod" => format!(
                "delete and recreate the pod now that the webhook is up: kubectl delete pod {name} -n {ns}, then apply it again"
            ),
            _ => format!(
                "delete pod {} -n {ns} so its owner creates it again through the webhook",
                self.pod
            ),
        }
    }
}

/// The result of [`take`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Inventory {
    /// Consumer descriptions (`namespace/app-id/filter`) something still subscribes to.
    pub subscribed: BTreeSet<String>,
    /// `namespace/app-id/` of workloads whose annotations do not parse: what they subscribe to
    /// is unknown, so every consumer under that prefix counts as in use.
    pub unknown: BTreeSet<String>,
    pub missed: Vec<MissedPod>,
    /// `namespace/app-id` of every running pod with the herald sidecar: who can serve a
    /// Subscription resource.
    pub serving: BTreeSet<String>,
    /// `namespace/service/port` → the app whose sidecars can serve a sink there: every running
    /// pod the Service selects has the sidecar with that app id and `herald.dev/app-port` equal
    /// to the port's (numeric) target port.
    pub sink_apps: BTreeMap<String, String>,
}

impl Inventory {
    /// Whether some workload or pod subscribes, or may subscribe, to the consumer described.
    pub fn in_use(&self, description: &str) -> bool {
        self.subscribed.contains(description)
            || self
                .unknown
                .iter()
                .any(|p| description.starts_with(p.as_str()))
    }
}

/// Works out the inventory of `w`.
pub fn take(w: &Workloads) -> Inventory {
    let mut inv = Inventory::default();
    let mut template = |meta: &ObjectMeta, t: Option<&PodTemplateSpec>| {
        if let (Some(ns), Some(name), Some(t)) = (&meta.namespace, &meta.name, t) {
            let tmeta = t.metadata.clone().unwrap_or_default();
            let app_id = tmeta
                .annotations
                .as_ref()
                .and_then(|a| a.get(APP_ID))
                .map_or(name.as_str(), |a| a.trim());
            subscriptions(&mut inv, ns, app_id, &tmeta);
        }
    };
    for d in &w.deployments {
        template(&d.metadata, d.spec.as_ref().map(|s| &s.template));
    }
    for s in &w.statefulsets {
        template(&s.metadata, s.spec.as_ref().map(|s| &s.template));
    }
    for d in &w.daemonsets {
        template(&d.metadata, d.spec.as_ref().map(|s| &s.template));
    }
    for c in &w.cronjobs {
        let t = c
            .spec
            .as_ref()
            .and_then(|s| s.job_template.spec.as_ref())
            .map(|s| &s.template);
        template(&c.metadata, t);
    }
    // A CronJob's Jobs share the CronJob's app id, which its template already gave.
    for j in w
        .jobs
        .iter()
        .filter(|j| owner_kind(&j.metadata) != Some("CronJob"))
    {
        template(&j.metadata, j.spec.as_ref().map(|s| &s.template));
    }
    for pod in &w.pods {
        let meta = &pod.metadata;
        let Some(ns) = meta.namespace.as_deref() else {
            continue;
        };
        match sidecar_app_id(pod) {
            Some(app_id) => {
                if running(pod) && !app_id.is_empty() {
                    inv.serving.insert(format!("{ns}/{app_id}"));
                }
                subscriptions(&mut inv, ns, app_id, meta)
            }
            None if asks_for_sidecar(meta) && running(pod) => inv.missed.push(MissedPod {
                namespace: ns.to_owned(),
                pod: meta.name.clone().unwrap_or_default(),
                owner: owner(pod, &w.deployments),
            }),
            None => {}
        }
    }
    inv.sink_apps = sink_apps(w);
    inv
}

/// See [`Inventory::sink_apps`].
fn sink_apps(w: &Workloads) -> BTreeMap<String, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut out = BTreeMap::new();
    for svc in &w.services {
        let (Some(ns), Some(name), Some(spec)) =
            (&svc.metadata.namespace, &svc.metadata.name, &svc.spec)
        else {
            continue;
        };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let selected: Vec<&Pod> = w
            .pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()) && running(p))
            .filter(|p| {
                let labels = p.metadata.labels.as_ref();
                selector
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .collect();
        // Every selected pod: the same app id with the sidecar, the same app port.
        let mut served: Option<(&str, u16)> = None;
        let mut all = !selected.is_empty();
        for p in &selected {
            let app = sidecar_app_id(p).filter(|a| !a.is_empty());
            let port = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(subscribe::APP_PORT))
                .and_then(|v| v.trim().parse::<u16>().ok());
            match (app, port, served) {
                (Some(a), Some(p), None) => served = Some((a, p)),
                (Some(a), Some(p), Some((sa, sp))) if a == sa && p == sp => {}
                _ => all = false,
            }
        }
        let Some((app, app_port)) = served.filter(|_| all) else {
            continue;
        };
        for port in spec.ports.iter().flatten() {
            let target = match &port.target_port {
                None => Some(port.port),
                Some(IntOrString::Int(n)) => Some(*n),
                // A named port would need the containers' ports, which the controller does not
                // keep: the dispatcher serves it.
                Some(IntOrString::String(_)) => None,
            };
            if target == Some(i32::from(app_port)) {
                out.insert(format!("{ns}/{name}/{}", port.port), app.to_owned());
            }
        }
    }
    out
}

/// Adds the descriptions of what `meta`'s annotations subscribe to. Annotations that do not
/// parse (a typo in a template, a bad `kubectl annotate` on a pod whose sidecar kept its last
/// good configuration) protect everything of their app id instead.
fn subscriptions(inv: &mut Inventory, ns: &str, app_id: &str, meta: &ObjectMeta) {
    if !asks_for_sidecar(meta) {
        return;
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    let Ok(config) = subscribe::parse(&annotations) else {
        inv.unknown.insert(format!("{ns}/{app_id}/"));
        return;
    };
    let who = Subscriber {
        namespace: ns.to_owned(),
        app_id: app_id.to_owned(),
    };
    inv.subscribed
        .extend(config.subscriptions.iter().map(|s| who.describe(&s.filter)));
}

/// The app id the webhook gave the pod's sidecar, if it has one.
pub fn sidecar_app_id(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    let sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == SIDECAR_NAME)?;
    sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "HERALD_APP_ID")
        .and_then(|e| e.value.as_deref())
        // A sidecar without the variable still counts as injected: the consumers it made are
        // covered by its workload's template.
        .or(Some(""))
}

/// Neither finished nor on its way out.
pub fn running(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

fn owner_kind(meta: &ObjectMeta) -> Option<&str> {
    controller(meta).map(|o| o.kind.as_str())
}

fn controller(
    meta: &ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    owners.iter().find(|o| o.controller == Some(true))
}

/// The object to report a missed injection on: a ReplicaSet's Deployment when it is listed
/// (matched by the `pod-template-hash` the ReplicaSet name ends with), else the controlling
/// owner, else the pod.
fn owner(pod: &Pod, deployments: &[Deployment]) -> ObjectReference {
    let meta = &pod.metadata;
    let ns = meta.namespace.clone();
    let Some(o) = controller(meta) else {
        return ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: meta.name.clone(),
            namespace: ns,
            uid: meta.uid.clone(),
            ..Default::default()
        };
    };
    if o.kind == "ReplicaSet" {
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        let stem = hash.and_then(|h| o.name.strip_suffix(h.as_str()));
        let stem = stem.map(|s| s.trim_end_matches('-'));
        if let Some(d) = deployments.iter().find(|d| {
            d.metadata.namespace == ns && stem.is_some() && d.metadata.name.as_deref() == stem
        }) {
            return ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: d.metadata.name.clone(),
                namespace: ns,
                uid: d.metadata.uid.clone(),
                ..Default::default()
            };
        }
    }
    ObjectReference {
        api_version: Some(o.api_version.clone()),
        kind: Some(o.kind.clone()),
        name: Some(o.name.clone()),
        namespace: ns,
        uid: Some(o.uid.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn deployment(ns: &str, name: &str, annotations: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
            "spec": {"selector": {}, "replicas": 0, "template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [{"name": "app"}]}}}
        }))
        .unwrap()
    }

    fn subscriber(annotations: serde_json::Value) -> serde_json::Value {
        let mut a = json!({"herald.dev/inject": "true", "herald.dev/app-port": "8080"});
        a.as_object_mut()
            .unwrap()
            .extend(annotations.as_object().unwrap().clone());
        a
    }

    #[test]
    fn templates_subscribe_even_with_no_pods() {
        let w = Workloads {
            deployments: vec![
                deployment(
                    "shop",
                    "payments",
                    subscriber(json!({"herald.dev/subscribe": "order.created.v1, order.paid.v1"})),
                ),
                // Opted out, and one that only publishes.
                deployment(
                    "shop",
                    "quiet",
                    json!({"herald.dev/inject": "false", "herald.dev/subscribe": "a.b.v1"}),
                ),
                deployment("shop", "publisher", json!({"herald.dev/inject": "true"})),
                // Broken: what it subscribes to is unknown.
                deployment(
                    "shop",
                    "typo",
                    subscriber(json!({"herald.dev/subscribe": "order..v1"})),
                ),
                deployment(
                    "shop",
                    "renamed",
                    subscriber(json!({"herald.dev/app-id": "billing", "herald.dev/subscribe": "x.y.v1"})),
                ),
            ],
            cronjobs: vec![
                serde_json::from_value(json!({
                    "metadata": {"name": "nightly", "namespace": "ops"},
                    "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {
                        "metadata": {"annotations": subscriber(json!({"herald.dev/subscribe": "report.due.v1"}))},
                        "spec": {"containers": []}}}}}
                }))
                .unwrap(),
            ],
            ..Default::default()
        };
        let inv = take(&w);
        let got: Vec<_> = inv.subscribed.iter().map(String::as_str).collect();
        assert_eq!(
            got,
            [
                "ops/nightly/report.due.v1",
                "shop/billing/x.y.v1",
                "shop/payments/order.created.v1",
                "shop/payments/order.paid.v1"
            ]
        );
        assert!(inv.missed.is_empty());
        assert!(inv.in_use("shop/payments/order.paid.v1"));
        assert!(!inv.in_use("shop/payments/order.shipped.v1"));
        assert!(inv.in_use("shop/typo/anything.v1"));
        assert!(!inv.in_use("shop/typos/anything.v1"));
    }

    #[test]
    fn pods_with_the_sidecar_subscribe_under_their_app_id() {
        let w = Workloads {
            pods: vec![pod(json!({
                "metadata": {"name": "p-1", "namespace": "shop",
                    "annotations": subscriber(json!({"herald.dev/subscribe": "order.created.v1"}))},
                "spec": {"containers": [{"name": "app"}],
                    "initContainers": [{"name": "herald", "env": [{"name": "HERALD_APP_ID", "value": "legacy"}]}]}
            }))],
            ..Default::default()
        };
        let inv = take(&w);
        assert_eq!(
            inv.subscribed.into_iter().collect::<Vec<_>>(),
            ["shop/legacy/order.created.v1"]
        );
    }

    #[test]
    fn a_service_whose_pods_all_run_the_sidecar_on_its_target_port_is_served_by_them() {
        let sidecar_pod = |name: &str, app: &str, port: &str| {
            pod(json!({
                "metadata": {"name": name, "namespace": "shop", "labels": {"app": "refunds"},
                    "annotations": {"herald.dev/inject": "true", "herald.dev/app-port": port}},
                "spec": {"containers": [{"name": "app"},
                    {"name": "herald", "env": [{"name": "HERALD_APP_ID", "value": app}]}]}
            }))
        };
        let service = |target: serde_json::Value| -> k8s_openapi::api::core::v1::Service {
            serde_json::from_value(json!({
                "metadata": {"name": "refunds", "namespace": "shop"},
                "spec": {"selector": {"app": "refunds"},
                    "ports": [{"port": 80, "targetPort": target}, {"port": 9090}]}
            }))
            .unwrap()
        };
        let mut w = Workloads {
            pods: vec![
                sidecar_pod("r-1", "refunds", "8080"),
                sidecar_pod("r-2", "refunds", "8080"),
            ],
            services: vec![service(json!(8080))],
            ..Default::default()
        };
        let inv = take(&w);
        assert_eq!(
            inv.sink_apps.into_iter().collect::<Vec<_>>(),
            [("shop/refunds/80".to_owned(), "refunds".to_owned())]
        );
        // A named target port, a pod without the sidecar, or two app ids: the dispatcher's.
        w.services = vec![service(json!("http"))];
        assert!(take(&w).sink_apps.is_empty());
        w.services = vec![service(json!(8080))];
        w.pods.push(pod(json!({
            "metadata": {"name": "r-3", "namespace": "shop", "labels": {"app": "refunds"}},
            "spec": {"containers": [{"name": "app"}]}
        })));
        assert!(take(&w).sink_apps.is_empty());
        w.pods.pop();
        w.pods.push(sidecar_pod("r-3", "other", "8080"));
        assert!(take(&w).sink_apps.is_empty());
    }

    #[test]
    fn missed_injections_name_the_workload_to_restart() {
        let annotations = subscriber(json!({"herald.dev/subscribe": "order.created.v1"}));
        let w = Workloads {
            deployments: vec![deployment("shop", "payments", annotations.clone())],
            pods: vec![
                // Through its ReplicaSet to the Deployment.
                pod(json!({
                    "metadata": {"name": "payments-7d9f-abcde", "namespace": "shop", "annotations": annotations,
                        "labels": {"pod-template-hash": "7d9f"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "payments-7d9f", "uid": "rs-1", "controller": true}]},
                    "spec": {"containers": [{"name": "app"}]},
                    "status": {"phase": "Running"}
                })),
                // A bare pod.
                pod(json!({
                    "metadata": {"name": "debug", "namespace": "shop", "uid": "pod-9", "annotations": {"herald.dev/inject": "true"}},
                    "spec": {"containers": [{"name": "app"}]},
                    "status": {"phase": "Pending"}
                })),
                // Finished, being deleted, opted out, injected: none of them is missed.
                pod(json!({
                    "metadata": {"name": "done", "namespace": "shop", "annotations": {"herald.dev/inject": "true"}},
                    "spec": {"containers": [{"name": "app"}]}, "status": {"phase": "Succeeded"}
                })),
                pod(json!({
                    "metadata": {"name": "going", "namespace": "shop", "deletionTimestamp": "2026-01-01T00:00:00Z",
                        "annotations": {"herald.dev/inject": "true"}},
                    "spec": {"containers": [{"name": "app"}]}
                })),
                pod(json!({
                    "metadata": {"name": "off", "namespace": "shop", "annotations": {"herald.dev/inject": "false"}},
                    "spec": {"containers": [{"name": "app"}]}
                })),
                pod(json!({
                    "metadata": {"name": "fine", "namespace": "shop", "annotations": {"herald.dev/inject": "true"}},
                    "spec": {"containers": [{"name": "app"}, {"name": "herald"}]}
                })),
            ],
            ..Default::default()
        };
        let inv = take(&w);
        assert_eq!(inv.missed.len(), 2, "{:?}", inv.missed);
        let deploy = &inv.missed[0];
        assert_eq!(deploy.owner.kind.as_deref(), Some("Deployment"));
        assert_eq!(deploy.owner.uid.as_deref(), Some("uid-payments"));
        assert!(
            deploy
                .advice()
                .contains("kubectl rollout restart deployment/payments -n shop"),
            "{}",
            deploy.advice()
        );
        let bare = &inv.missed[1];
        assert_eq!(bare.owner.kind.as_deref(), Some("Pod"));
        assert_eq!(bare.owner.uid.as_deref(), Some("pod-9"));
        assert!(bare.advice().contains("kubectl delete pod debug -n shop"));
    }
}
