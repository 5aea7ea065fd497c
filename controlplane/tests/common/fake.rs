//! A scripted Kubernetes API with state, for single controller passes: the EventStream and its
//! status subresource, cluster-wide lists of workloads and pods (one of which can be made to
//! fail, which a real apiserver cannot be made to do on demand), and Events. Leader election and
//! watches run against a real kube-apiserver (tests/apiserver.rs).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::{ApiRequest, MockApi, not_found, status};

#[derive(Default)]
pub struct State {
    pub event_stream: Option<Value>,
    /// List path (`/api/v1/pods`, `/apis/apps/v1/deployments`, …) to items.
    pub lists: BTreeMap<String, Vec<Value>>,
    /// List paths that answer 500.
    pub failing: Vec<String>,
    pub events: Vec<Value>,
    pub status_patches: usize,
    version: u64,
}

/// Shared state; each [`FakeCluster::client`] is one replica's connection to it.
#[derive(Clone, Default)]
pub struct FakeCluster {
    pub state: Arc<Mutex<State>>,
}

pub const EVENT_STREAM: &str = "/apis/herald.dev/v1alpha1/eventstreams/default";
pub const PODS: &str = "/api/v1/pods";
pub const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
pub const CRONJOBS: &str = "/apis/batch/v1/cronjobs";

impl FakeCluster {
    pub fn new() -> Self {
        let fake = FakeCluster::default();
        {
            let mut s = fake.state.lock().unwrap();
            for list in [
                PODS,
                DEPLOYMENTS,
                "/apis/apps/v1/statefulsets",
                "/apis/apps/v1/daemonsets",
                CRONJOBS,
                "/apis/batch/v1/jobs",
                "/apis/herald.dev/v1alpha1/subscriptions",
                "/api/v1/services",
            ] {
                s.lists.insert(list.into(), Vec::new());
            }
        }
        fake
    }

    /// Sets the EventStream `default` with `spec` (YAML) at `generation`, keeping its status.
    pub fn set_spec(&self, spec_yaml: &str, generation: i64) {
        let spec: Value = yaml_serde::from_str(spec_yaml).unwrap();
        let mut s = self.state.lock().unwrap();
        let status = s
            .event_stream
            .as_ref()
            .and_then(|e| e.get("status").cloned());
        let mut es = json!({
            "apiVersion": "herald.dev/v1alpha1",
            "kind": "EventStream",
            "metadata": {"name": "default", "uid": "es-uid-1", "generation": generation, "resourceVersion": "1"},
            "spec": spec,
        });
        if let Some(status) = status {
            es["status"] = status;
        }
        s.event_stream = Some(es);
    }

    pub fn status(&self) -> Value {
        let s = self.state.lock().unwrap();
        s.event_stream
            .as_ref()
            .and_then(|e| e.get("status").cloned())
            .unwrap_or(Value::Null)
    }

    /// The status condition `type_` as (status, reason, message).
    pub fn condition(&self, type_: &str) -> (String, String, String) {
        let status = self.status();
        let c = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
            .clone();
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
        (s("status"), s("reason"), s("message"))
    }

    pub fn put(&self, list: &str, items: Vec<Value>) {
        self.state.lock().unwrap().lists.insert(list.into(), items);
    }

    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    /// One replica's client.
    pub fn client(&self) -> MockApi {
        let state = self.state.clone();
        MockApi::with_requests(Duration::ZERO, move |r| {
            handle(&mut state.lock().unwrap(), r)
        })
    }
}

fn handle(s: &mut State, r: &ApiRequest) -> (u16, Value) {
    let path = r.path_only().to_owned();
    s.version += 1;
    let version = s.version.to_string();
    match (r.method.as_str(), path.as_str()) {
        ("GET", EVENT_STREAM) => match &s.event_stream {
            Some(es) => (200, es.clone()),
            None => not_found(&path),
        },
        ("PATCH", p) if p == format!("{EVENT_STREAM}/status") => {
            let Some(es) = s.event_stream.as_mut() else {
                return not_found(&path);
            };
            assert_eq!(r.content_type, "application/merge-patch+json");
            let mut patch = r.json();
            merge(es, &mut patch);
            s.status_patches += 1;
            (200, es.clone())
        }
        ("GET", p) if s.lists.contains_key(p) => {
            if s.failing.iter().any(|f| f == p) {
                return status(500, "InternalError", "etcd is on fire");
            }
            (
                200,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version}, "items": s.lists[p]}),
            )
        }
        // kube-rs's Recorder: events.k8s.io/v1, a repeat patched into a series.
        ("POST", p)
            if p.starts_with("/apis/events.k8s.io/v1/namespaces/") && p.ends_with("/events") =>
        {
            let mut event = r.json();
            if event["metadata"]["name"].is_null() {
                event["metadata"]["name"] = json!(format!("event-{version}"));
            }
            // As the apiserver does: the object takes the namespace of its path.
            let namespace = p.split('/').nth(5).unwrap_or_default();
            event["metadata"]["namespace"] = json!(namespace);
            s.events.push(event.clone());
            (201, event)
        }
        ("PATCH", p) if p.starts_with("/apis/events.k8s.io/v1/namespaces/") => {
            let name = p.rsplit('/').next().unwrap_or_default();
            let mut patch = r.json();
            match s.events.iter_mut().find(|e| e["metadata"]["name"] == name) {
                Some(e) => {
                    merge(e, &mut patch);
                    (200, e.clone())
                }
                None => not_found(p),
            }
        }
        _ => not_found(&path),
    }
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &mut Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p.iter_mut() {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.take(),
    }
}
