//! What the `Subscription` resources ask for, decided from the resources and the inventory alone
//! (pure, like [`super::inventory`]): per app, the entries its sidecars get through the
//! configuration bucket; the consumers to keep; and each resource's verdict for its status.
//!
//! Rules, in the order they are checked:
//! - a spec the contract refuses is `InvalidSpec`, with the entry, field and rule;
//! - a filter the app's annotations already subscribe to is `Conflict`: the annotation wins;
//! - a filter an older resource (by creation time, then name) of the app already has is
//!   `Conflict`: the older one wins, so the outcome does not depend on the order of a listing;
//! - an app whose resource entries would pass the per-pod limits of the contract refuses the
//!   resource that would cross them (`InvalidSpec`, naming the limit);
//! - otherwise the resource is applied: its consumers are created at once, so events are kept
//!   from then on, and it is `Ready` when a pod with the sidecar runs the app, else
//!   `NoSubscriber`.
//!
//! A resource with a `sink` goes to the dispatcher (`herald dispatch`) through the bucket key
//! `sinks` (always written, `[]` when there is none); its sink must be an `http://` URL of a
//! Service in the resource's own namespace (`<service>.<namespace>[.svc[.<cluster domain>]]`),
//! as Kyma requires, or it is `InvalidSpec`. It subscribes as `sink:<name>` of its namespace.

use std::collections::{BTreeMap, BTreeSet};

use herald_core::consumer::{self, ConsumerSpec, Subscriber};
use herald_core::contract::parse_entries;
use herald_core::defaults::{Defaults, subscriptions_key};
use herald_core::delivery::SinkUrl;
use herald_core::limits;
use herald_core::sinks::{self, Kind, MAX_SINKS_BYTES, SINKS_KEY, SinkItem};

use super::inventory::Inventory;
use super::subscription::Subscription;

/// Why a resource is or is not ready (its `Ready` condition's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Subscribed,
    NoSubscriber,
    InvalidSpec,
    Conflict,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Subscribed => "Subscribed",
            Reason::NoSubscriber => "NoSubscriber",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Conflict => "Conflict",
        }
    }

    pub fn ready(self) -> bool {
        self == Reason::Subscribed
    }
}

/// One resource to route: herald's, or Kyma's turned into herald's spec (`refused` says why it
/// could not be).
#[derive(Debug, Clone)]
pub struct Input {
    pub kind: Kind,
    pub sub: Subscription,
    pub refused: Option<String>,
}

impl Input {
    pub fn herald(sub: Subscription) -> Self {
        Input {
            kind: Kind::Herald,
            sub,
            refused: None,
        }
    }
}

/// One resource's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub reason: Reason,
    pub message: String,
    /// `app <id>` or the sink.
    pub target: String,
    /// Its consumers (applied resources only), and their descriptions.
    pub consumers: Vec<String>,
    pub descriptions: Vec<String>,
    /// Subject filters of its dead letters in the dead-letter stream.
    pub dlq_filters: Vec<String>,
}

/// The decision over every resource.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Routing {
    /// Bucket key → the app's resource entries (a JSON list); apps without any are absent.
    pub keys: BTreeMap<String, String>,
    /// The consumers of applied resources.
    pub consumers: Vec<ConsumerSpec>,
    /// Their descriptions (`namespace/app-id/filter`), which keep them from the orphan cleanup.
    pub subscribed: BTreeSet<String>,
    pub verdicts: Vec<Verdict>,
}

/// What the controller would say about one herald Subscription on its own: `Err` with the rule
/// it breaks (naming the field) when its spec is invalid, as its `Ready` condition would. The
/// console checks a trigger with it before creating it.
pub fn check(sub: &Subscription, cluster: &Defaults) -> Result<(), String> {
    let routed = route(
        &[Input::herald(sub.clone())],
        &Inventory::default(),
        cluster,
    );
    match routed.verdicts.into_iter().next() {
        Some(v) if v.reason == Reason::InvalidSpec => Err(v.message),
        _ => Ok(()),
    }
}

/// Decides; see the module documentation.
pub fn route(resources: &[Input], inv: &Inventory, cluster: &Defaults) -> Routing {
    let mut sorted: Vec<&Input> = resources.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |i: &Input| {
            (
                i.sub.metadata.creation_timestamp.as_ref().map(|t| t.0),
                i.sub.metadata.namespace.clone(),
                i.sub.metadata.name.clone(),
                i.kind,
            )
        };
        key(a).cmp(&key(b))
    });
    let mut out = Routing::default();
    // Per key: the applied entries, and which resource holds each description.
    let mut entries: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let mut holder: BTreeMap<String, String> = BTreeMap::new();
    let mut sink_items: Vec<SinkItem> = Vec::new();
    let mut sink_bytes = 0usize;
    for input in sorted {
        let r = &input.sub;
        let namespace = r.metadata.namespace.clone().unwrap_or_default();
        let name = r.metadata.name.clone().unwrap_or_default();
        let mut verdict = Verdict {
            kind: input.kind,
            namespace: namespace.clone(),
            name: name.clone(),
            generation: r.metadata.generation,
            reason: Reason::InvalidSpec,
            message: String::new(),
            target: String::new(),
            consumers: Vec::new(),
            descriptions: Vec::new(),
            dlq_filters: Vec::new(),
        };
        if let Some(rule) = &input.refused {
            verdict.message = rule.clone();
            verdict.target = r.spec.sink.clone().unwrap_or_default();
            out.verdicts.push(verdict);
            continue;
        }
        let app = match (&r.spec.app, &r.spec.sink) {
            (Some(app), None) => app.clone(),
            (None, Some(sink)) => {
                verdict.target = sink.clone();
                let mut sinks = Sinks {
                    items: &mut sink_items,
                    bytes: &mut sink_bytes,
                    entries: &mut entries,
                };
                to_sink(r, sink, cluster, inv, &mut sinks, &mut verdict, &mut out);
                out.verdicts.push(verdict);
                continue;
            }
            _ => {
                verdict.message = "spec: set exactly one of app and sink".into();
                out.verdicts.push(verdict);
                continue;
            }
        };
        verdict.target = format!("app {app}");
        if let Err(rule) = herald_core::settings::parse_name(&app, limits::MAX_APP_ID_BYTES) {
            verdict.message = format!("spec.app {app:?} {rule}");
            out.verdicts.push(verdict);
            continue;
        }
        let list = r.spec.entries();
        let subs = match parse_entries(&list.to_string(), cluster) {
            Ok(s) => s,
            Err(rules) => {
                verdict.message = format!("spec: {}", rules.join("; "));
                out.verdicts.push(verdict);
                continue;
            }
        };
        let who = Subscriber {
            namespace: namespace.clone(),
            app_id: app.clone(),
        };
        let key = subscriptions_key(&namespace, &app);
        let mut clashes = Vec::new();
        for s in &subs {
            let description = who.describe(&s.filter);
            if inv.subscribed.contains(&description) {
                clashes.push(format!(
                    "the annotations of app {app} subscribe to `{}` already, and the annotation wins",
                    s.filter
                ));
            } else if let Some(other) = holder.get(&description) {
                clashes.push(format!(
                    "Subscription {other} (older) has `{}` for app {app} already",
                    s.filter
                ));
            }
        }
        if !clashes.is_empty() {
            verdict.reason = Reason::Conflict;
            verdict.message = clashes.join("; ");
            out.verdicts.push(verdict);
            continue;
        }
        let held = entries.get(&key).map_or(0, Vec::len);
        let items = list.as_array().cloned().unwrap_or_default();
        if held + items.len() > limits::MAX_SUBSCRIPTIONS {
            verdict.message = format!(
                "app {app} would have {} subscriptions from resources; the limit is {} per app",
                held + items.len(),
                limits::MAX_SUBSCRIPTIONS
            );
            out.verdicts.push(verdict);
            continue;
        }
        let mut joined = entries.get(&key).cloned().unwrap_or_default();
        joined.extend(items);
        let size = serde_json::Value::Array(joined.clone()).to_string().len();
        if size > limits::MAX_SUBSCRIPTIONS_ANNOTATION_BYTES {
            verdict.message = format!(
                "app {app}'s subscriptions from resources would take {size} bytes; the limit is {}",
                limits::MAX_SUBSCRIPTIONS_ANNOTATION_BYTES
            );
            out.verdicts.push(verdict);
            continue;
        }
        entries.insert(key, joined);
        for description in hold(&who, &subs, &mut verdict, &mut out) {
            holder.insert(description, format!("{namespace}/{name}"));
        }
        if inv.serving.contains(&format!("{namespace}/{app}")) {
            verdict.reason = Reason::Subscribed;
            verdict.message = format!("delivered by the sidecars of app {app}");
        } else {
            verdict.reason = Reason::NoSubscriber;
            verdict.message = format!(
                "no running pod of app {app} in namespace {namespace} has the herald sidecar; its events are kept until one does"
            );
        }
        out.verdicts.push(verdict);
    }
    out.keys = entries
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::Array(v).to_string()))
        .collect();
    out.keys.insert(
        SINKS_KEY.to_owned(),
        serde_json::to_string(&sink_items).unwrap_or_else(|_| "[]".into()),
    );
    out
}

/// Records an applied resource's consumers (subscribing as `who`) on its verdict and in the
/// routing; returns their descriptions.
fn hold(
    who: &Subscriber,
    subs: &[herald_core::contract::Subscription],
    verdict: &mut Verdict,
    out: &mut Routing,
) -> Vec<String> {
    let mut held = Vec::with_capacity(subs.len());
    for s in subs {
        let spec = consumer::spec(who, s);
        out.subscribed.insert(spec.description.clone());
        verdict.consumers.push(spec.name.clone());
        verdict.descriptions.push(spec.description.clone());
        verdict.dlq_filters.push(herald_core::delivery::dlq_subject(
            who,
            &spec.filter_subject,
        ));
        held.push(spec.description.clone());
        out.consumers.push(spec);
    }
    held
}

/// The namespace a sink's host names (`<service>.<namespace>`, optionally followed by `.svc`
/// and the cluster domain); `None` when it names none.
fn sink_namespace(host: &str) -> Option<&str> {
    let mut labels = host.split('.');
    let _service = labels.next()?;
    let namespace = labels.next()?;
    match labels.next() {
        None | Some("svc") => Some(namespace),
        Some(_) => None,
    }
}

/// Where sink resources go: the dispatcher's list (and its size so far, kept as items are added
/// so that thousands of sinks cost one serialization each), or the key of the app whose pods the
/// sink's Service selects.
struct Sinks<'a> {
    items: &'a mut Vec<SinkItem>,
    bytes: &'a mut usize,
    entries: &'a mut BTreeMap<String, Vec<serde_json::Value>>,
}

/// Checks a sink resource and, when it is valid, adds it to the dispatcher's list or to the key
/// of the app that serves its Service.
fn to_sink(
    r: &Subscription,
    sink: &str,
    cluster: &Defaults,
    inv: &Inventory,
    to: &mut Sinks<'_>,
    verdict: &mut Verdict,
    out: &mut Routing,
) {
    let namespace = verdict.namespace.clone();
    let url = match SinkUrl::parse(sink) {
        Ok(u) => u,
        Err(rule) => {
            verdict.message = format!("spec.sink {rule}");
            return;
        }
    };
    match sink_namespace(&url.host) {
        Some(ns) if ns == namespace => {}
        Some(ns) => {
            verdict.message = format!(
                "spec.sink {sink:?} is a Service of namespace {ns}; a sink must be in the subscription's namespace ({namespace})"
            );
            return;
        }
        None => {
            verdict.message = format!(
                "spec.sink {sink:?} must name a Service with its namespace: http://<service>.{namespace}.svc.cluster.local[:port][/path]"
            );
            return;
        }
    }
    let list = r.spec.entries();
    let subs = match parse_entries(&list.to_string(), cluster) {
        Ok(s) => s,
        Err(rules) => {
            verdict.message = format!("spec: {}", rules.join("; "));
            return;
        }
    };
    let who = sinks::subscriber(verdict.kind, &namespace, &verdict.name);
    let service = url.host.split('.').next().unwrap_or_default();
    match inv
        .sink_apps
        .get(&format!("{namespace}/{service}/{}", url.port))
    {
        // The Service's pods run the sidecar: they deliver, on the resource's behalf (its
        // consumers stay its own whoever delivers, so nothing is lost when that changes).
        Some(app) => {
            let key = subscriptions_key(&namespace, app);
            let mut joined = to.entries.get(&key).cloned().unwrap_or_default();
            let items = list.as_array().cloned().unwrap_or_default();
            if joined.len() + items.len() > limits::MAX_SUBSCRIPTIONS {
                verdict.message = format!(
                    "app {app}, whose pods the sink's Service selects, would have {} subscriptions from resources; the limit is {} per app",
                    joined.len() + items.len(),
                    limits::MAX_SUBSCRIPTIONS
                );
                return;
            }
            for mut item in items {
                if let Some(o) = item.as_object_mut() {
                    o.insert(sinks::AS_MEMBER.into(), who.app_id.clone().into());
                    o.insert("path".into(), url.path.clone().into());
                }
                joined.push(item);
            }
            let size = serde_json::Value::Array(joined.clone()).to_string().len();
            if size > limits::MAX_SUBSCRIPTIONS_ANNOTATION_BYTES {
                verdict.message = format!(
                    "app {app}'s subscriptions from resources would take {size} bytes; the limit is {}",
                    limits::MAX_SUBSCRIPTIONS_ANNOTATION_BYTES
                );
                return;
            }
            to.entries.insert(key, joined);
            verdict.message = format!(
                "delivered to {sink} by the sidecars of app {app}, which the Service's pods run"
            );
        }
        None => {
            let item = SinkItem {
                kind: verdict.kind,
                namespace: namespace.clone(),
                name: verdict.name.clone(),
                url: sink.to_owned(),
                entries: list,
            };
            // Each item and its separator; the brackets are the last 2 bytes.
            let size = *to.bytes + serde_json::to_string(&item).map_or(0, |s| s.len() + 1) + 2;
            if size > MAX_SINKS_BYTES {
                verdict.message = format!(
                    "the cluster's subscriptions to sinks would take {size} bytes; the limit is {MAX_SINKS_BYTES}"
                );
                return;
            }
            *to.bytes = size - 2;
            to.items.push(item);
            verdict.message = format!("delivered to {sink} by herald's dispatcher");
        }
    }
    hold(&who, &subs, verdict, out);
    verdict.reason = Reason::Subscribed;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::subscription::SubscriptionSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn resource(name: &str, age_secs: i64, yaml: &str) -> Input {
        let spec: SubscriptionSpec = yaml_serde::from_str(yaml).unwrap();
        let mut s = Subscription::new(name, spec);
        s.metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            generation: Some(1),
            creation_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 - age_secs).unwrap(),
            )),
            ..Default::default()
        };
        Input::herald(s)
    }

    fn verdict<'a>(r: &'a Routing, name: &str) -> &'a Verdict {
        r.verdicts.iter().find(|v| v.name == name).unwrap()
    }

    #[test]
    fn applied_resources_reach_their_app_s_key_and_keep_their_consumers() {
        let mut inv = Inventory::default();
        inv.serving.insert("shop/orders".into());
        let r = route(
            &[
                resource("a", 10, "app: orders\ntypes: [order.created.v1]\n"),
                resource(
                    "b",
                    5,
                    "app: orders\ntypes: [order.paid.v1]\nmaxInFlight: 3\n",
                ),
                resource("c", 5, "app: billing\ntypes: [order.paid.v1]\n"),
            ],
            &inv,
            &Defaults::default(),
        );
        let orders: serde_json::Value =
            serde_json::from_str(&r.keys["subscriptions.shop.orders"]).unwrap();
        assert_eq!(orders.as_array().unwrap().len(), 2);
        assert!(r.keys.contains_key("subscriptions.shop.billing"));
        assert_eq!(verdict(&r, "a").reason, Reason::Subscribed);
        assert_eq!(verdict(&r, "c").reason, Reason::NoSubscriber);
        assert_eq!(r.consumers.len(), 3);
        assert!(r.subscribed.contains("shop/billing/order.paid.v1"));
        assert_eq!(
            verdict(&r, "b").consumers,
            vec![r.consumers[1].name.clone()]
        );
    }

    #[test]
    fn a_sink_whose_pods_run_the_sidecar_goes_to_their_app_as_the_resource() {
        let mut inv = Inventory::default();
        inv.sink_apps
            .insert("shop/refunds/8080".into(), "payments".into());
        let r = route(
            &[resource(
                "refund-hook",
                1,
                "sink: http://refunds.shop.svc.cluster.local:8080/in\ntypes: [refund.v1]\n",
            )],
            &inv,
            &Defaults::default(),
        );
        let v = verdict(&r, "refund-hook");
        assert_eq!(v.reason, Reason::Subscribed);
        assert!(
            v.message.contains("sidecars of app payments"),
            "{}",
            v.message
        );
        assert_eq!(r.keys["sinks"], "[]");
        let app: serde_json::Value =
            serde_json::from_str(&r.keys["subscriptions.shop.payments"]).unwrap();
        assert_eq!(app[0]["as"], "sink:refund-hook");
        assert_eq!(app[0]["path"], "/in");
        // Its consumer is the resource's, whoever delivers.
        assert!(r.subscribed.contains("shop/sink:refund-hook/refund.v1"));
        // What the sidecars read back.
        let back = herald_core::sinks::parse_app_value(
            &r.keys["subscriptions.shop.payments"],
            &Defaults::default(),
        )
        .unwrap();
        assert_eq!(back.adopted[0].0, "sink:refund-hook");
    }

    #[test]
    fn the_sinks_value_stays_within_its_limit() {
        let many: Vec<Input> = (0..10_000)
            .map(|i| {
                resource(
                    &format!("fn-{i}"),
                    1,
                    &format!(
                        "sink: http://fn-{i}.shop.svc.cluster.local:8080/in\ntypes: [order.created.v1, order.paid.v1]\n"
                    ),
                )
            })
            .collect();
        let r = route(&many, &Inventory::default(), &Defaults::default());
        assert!(
            r.keys["sinks"].len() <= MAX_SINKS_BYTES,
            "{}",
            r.keys["sinks"].len()
        );
        let refused = r
            .verdicts
            .iter()
            .filter(|v| v.message.contains("the limit is 1048576"))
            .count();
        assert!(refused > 0 && refused < 10_000, "{refused}");
    }

    #[test]
    fn clashes_bad_specs_and_sinks_are_reported_and_not_applied() {
        let mut inv = Inventory::default();
        inv.subscribed.insert("shop/orders/order.created.v1".into());
        let r = route(
            &[
                resource("annotated", 10, "app: orders\ntypes: [order.created.v1]\n"),
                resource("older", 9, "app: orders\ntypes: [order.paid.v1]\n"),
                resource("newer", 1, "app: orders\ntypes: [order.paid.v1, x.v1]\n"),
                resource(
                    "bad",
                    1,
                    "app: orders\ntypes: [y.v1]\nfilters: [{sql: \"a >\"}]\n",
                ),
                resource(
                    "sink",
                    1,
                    "sink: http://fn.shop.svc.cluster.local:8080/in\ntypes: [y.v1]\n",
                ),
                resource(
                    "elsewhere",
                    1,
                    "sink: http://fn.other.svc.cluster.local\ntypes: [y.v1]\n",
                ),
                resource("bare", 1, "sink: http://fn\ntypes: [y.v1]\n"),
                resource("tls", 1, "sink: https://fn.shop.svc\ntypes: [y.v1]\n"),
            ],
            &inv,
            &Defaults::default(),
        );
        let v = verdict(&r, "annotated");
        assert_eq!(v.reason, Reason::Conflict);
        assert!(v.message.contains("annotation wins"), "{}", v.message);
        let v = verdict(&r, "newer");
        assert_eq!(v.reason, Reason::Conflict);
        assert!(v.message.contains("shop/older"), "{}", v.message);
        let v = verdict(&r, "bad");
        assert_eq!(v.reason, Reason::InvalidSpec);
        assert!(v.message.contains("entry 1"), "{}", v.message);
        // A sink of its own namespace goes to the dispatcher; others are refused with the rule.
        assert_eq!(verdict(&r, "sink").reason, Reason::Subscribed);
        let sinks: serde_json::Value = serde_json::from_str(&r.keys["sinks"]).unwrap();
        assert_eq!(sinks.as_array().unwrap().len(), 1);
        assert_eq!(sinks[0]["url"], "http://fn.shop.svc.cluster.local:8080/in");
        let v = verdict(&r, "elsewhere");
        assert_eq!(v.reason, Reason::InvalidSpec);
        assert!(v.message.contains("namespace other"), "{}", v.message);
        assert!(verdict(&r, "bare").message.contains("with its namespace"));
        assert!(verdict(&r, "tls").message.contains("http://"));
        // Only `older` reached the app's key; nothing of `newer` did, not even its own type.
        let orders: serde_json::Value =
            serde_json::from_str(&r.keys["subscriptions.shop.orders"]).unwrap();
        assert_eq!(orders.as_array().unwrap().len(), 1);
        assert_eq!(r.consumers.len(), 2);
        assert!(r.subscribed.contains("shop/sink:sink/y.v1"));
        assert_eq!(
            verdict(&r, "older").dlq_filters,
            ["herald-dlq.shop.orders.*.order.paid.v1"]
        );
    }
}
