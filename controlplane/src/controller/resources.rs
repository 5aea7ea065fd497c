//! The pass step for herald's `Subscription` resources, acting on [`super::routing`]'s decision:
//! their consumers created (so events are kept from the moment a resource exists, subscriber or
//! not), each app's entries written to its key of the configuration bucket (keys of apps left
//! without resources deleted), and each resource's status patched when it changed.
//!
//! A resource whose spec turned invalid keeps the consumers it had, as annotations that stop
//! parsing keep theirs; the consumers of a deleted resource (or of types it no longer lists) are
//! deleted at once, not after the orphan grace, unless something else subscribes to them.

use std::collections::{BTreeSet, HashMap};

use herald_core::broker::ConsumerState;
use herald_core::consumer::ConsumerSpec;
use herald_core::defaults::{BUCKET, Defaults, SUBSCRIPTIONS_KEY_PREFIX, parse_subscriptions_key};
use herald_core::report::{DeliveryReport, status_key};
use herald_core::sinks::{self, Kind, SINKS_KEY};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;

use super::kyma;
use super::routing::{Routing, Verdict};
use super::subscription::{LastFailure, Subscription, SubscriptionStatus};
use super::{Controller, NATS_TIMEOUT, PassReport, now, truncate};

/// Pending counts in a status are refreshed at most this often; a condition change is written
/// at once. Bounds the status writes of busy subscriptions.
const COUNTS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What the step remembers within one leadership term.
#[derive(Default)]
pub struct ResourceState {
    /// Bucket key → value written; `None` until the keys were listed at the term's start.
    keys: Option<HashMap<String, String>>,
    /// Consumer specs this leader created or updated.
    ensured: HashMap<String, ConsumerSpec>,
    /// Each resource's consumer descriptions (`kind/namespace/name` → descriptions).
    held: HashMap<String, BTreeSet<String>>,
    /// When each herald resource's counts and facts were last written (`namespace/name`).
    counted: HashMap<String, Instant>,
}

impl Controller {
    /// Step 3; returns the descriptions the resources keep in use and those released by them
    /// since the last pass (deleted at once by the orphan step).
    pub(super) async fn resources(
        &mut self,
        w: &super::inventory::Workloads,
        routing: &Routing,
        consumers: Option<&[ConsumerState]>,
        report: &mut PassReport,
    ) -> (BTreeSet<String>, BTreeSet<String>) {
        self.ensure_consumers(routing, consumers, report).await;
        self.write_keys(routing, report).await;
        let mut held = HashMap::new();
        for v in &routing.verdicts {
            let key = format!("{:?}/{}/{}", v.kind, v.namespace, v.name);
            if !v.descriptions.is_empty() {
                held.insert(key, v.descriptions.iter().cloned().collect());
            } else if let Some(previous) = self.resources.held.get(&key) {
                held.insert(key, previous.clone());
            }
        }
        let in_use: BTreeSet<String> = held.values().flatten().cloned().collect();
        let released = self
            .resources
            .held
            .values()
            .flatten()
            .filter(|d| !in_use.contains(*d))
            .cloned()
            .collect();
        self.resources.held = held;
        let at = |m: &kube::api::ObjectMeta, v: &Verdict| {
            m.namespace.as_deref() == Some(v.namespace.as_str())
                && m.name.as_deref() == Some(v.name.as_str())
        };
        for v in &routing.verdicts {
            match v.kind {
                Kind::Herald => {
                    let current = w
                        .subscriptions
                        .iter()
                        .find(|r| at(&r.metadata, v))
                        .and_then(|r| r.status.clone())
                        .unwrap_or_default();
                    self.write_status(v, &current, consumers, report).await;
                }
                Kind::Kyma => {
                    if let Some(r) = w.kyma.iter().find(|r| at(&r.metadata, v)) {
                        self.write_kyma_status(v, r, report).await;
                    }
                }
            }
        }
        (in_use, released)
    }

    /// Creates the consumers of applied resources that do not exist, and updates those whose
    /// spec changed since this leader last wrote them. One that exists and that this leader did
    /// not write is left alone: a sidecar binding it keeps its settings current.
    async fn ensure_consumers(
        &mut self,
        routing: &Routing,
        consumers: Option<&[ConsumerState]>,
        report: &mut PassReport,
    ) {
        let Some(existing) = consumers else {
            return;
        };
        for spec in &routing.consumers {
            let exists = existing.iter().any(|c| c.name == spec.name);
            let written = self.resources.ensured.get(&spec.name);
            if exists && written.is_none_or(|w| w == spec) {
                continue;
            }
            let bind = self.broker.bind(&self.cfg.stream, spec);
            match tokio::time::timeout(NATS_TIMEOUT, bind).await {
                Ok(Ok(_lease)) => {
                    tracing::info!(consumer = %spec.name, description = %spec.description, "consumer of a Subscription resource created");
                    self.resources
                        .ensured
                        .insert(spec.name.clone(), spec.clone());
                }
                Ok(Err(e)) => report.errors.push(format!(
                    "cannot create consumer {} ({}): {e}",
                    spec.name, spec.description
                )),
                Err(_) => report.errors.push(format!(
                    "cannot create consumer {} ({}): NATS did not answer",
                    spec.name, spec.description
                )),
            }
        }
    }

    /// Writes each app's entries to its key when they changed; deletes the keys of apps that
    /// have none any more (at a term's start, every `subscriptions.` key in the bucket is
    /// compared, so a previous leader's leftovers go too).
    async fn write_keys(&mut self, routing: &Routing, report: &mut PassReport) {
        if self.resources.keys.is_none() {
            let listed = async {
                self.broker.ensure_bucket(BUCKET, self.replicas).await?;
                self.broker.keys(BUCKET, SUBSCRIPTIONS_KEY_PREFIX).await
            };
            match tokio::time::timeout(NATS_TIMEOUT, listed).await {
                Ok(Ok(keys)) => {
                    // What the previous leader's resources held, from the values it wrote: a
                    // resource deleted around the change of leader still lets go of its
                    // consumers at once.
                    for key in keys.iter().map(String::as_str).chain([SINKS_KEY]) {
                        let get = self.broker.get(BUCKET, key);
                        if let Ok(Ok(Some(value))) = tokio::time::timeout(NATS_TIMEOUT, get).await {
                            let held = held_by(key, &value);
                            if !held.is_empty() {
                                self.resources.held.insert(format!("bucket:{key}"), held);
                            }
                        }
                    }
                    // Unknown values: each is written again once, or deleted.
                    self.resources.keys =
                        Some(keys.into_iter().map(|k| (k, String::new())).collect());
                }
                Ok(Err(e)) => {
                    report
                        .errors
                        .push(format!("cannot list the keys of bucket {BUCKET}: {e}"));
                    return;
                }
                Err(_) => {
                    report.errors.push(format!(
                        "cannot list the keys of bucket {BUCKET}: NATS did not answer"
                    ));
                    return;
                }
            }
        }
        let written = self.resources.keys.clone().unwrap_or_default();
        for (key, value) in &routing.keys {
            if written.get(key) == Some(value) {
                continue;
            }
            let put = self
                .broker
                .put(BUCKET, key, value.clone().into_bytes().into());
            match tokio::time::timeout(NATS_TIMEOUT, put).await {
                Ok(Ok(())) => {
                    tracing::info!(%key, "resource subscriptions published to the sidecars");
                    if let Some(k) = self.resources.keys.as_mut() {
                        k.insert(key.clone(), value.clone());
                    }
                }
                Ok(Err(e)) => report
                    .errors
                    .push(format!("cannot write key {key} of bucket {BUCKET}: {e}")),
                Err(_) => report.errors.push(format!(
                    "cannot write key {key} of bucket {BUCKET}: NATS did not answer"
                )),
            }
        }
        for key in written.keys().filter(|k| !routing.keys.contains_key(*k)) {
            let delete = self.broker.delete(BUCKET, key);
            match tokio::time::timeout(NATS_TIMEOUT, delete).await {
                Ok(Ok(())) => {
                    tracing::info!(%key, "an app has no resource subscriptions any more");
                    if let Some(k) = self.resources.keys.as_mut() {
                        k.remove(key);
                    }
                }
                Ok(Err(e)) => report
                    .errors
                    .push(format!("cannot delete key {key} of bucket {BUCKET}: {e}")),
                Err(_) => report.errors.push(format!(
                    "cannot delete key {key} of bucket {BUCKET}: NATS did not answer"
                )),
            }
        }
    }

    async fn write_status(
        &mut self,
        v: &Verdict,
        current: &SubscriptionStatus,
        consumers: Option<&[ConsumerState]>,
        report: &mut PassReport,
    ) {
        let key = format!("{}/{}", v.namespace, v.name);
        let (status, reason) = if v.reason.ready() {
            ("True", v.reason.as_str())
        } else {
            ("False", v.reason.as_str())
        };
        let message = truncate(v.message.clone(), 1024);
        let previous = current.conditions.iter().find(|c| c.type_ == "Ready");
        let transition = previous
            .filter(|c| c.status == status && c.reason == reason)
            .map_or_else(now, |c| c.last_transition_time.clone());
        let base = SubscriptionStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: status.into(),
                reason: reason.into(),
                message,
                last_transition_time: transition,
                observed_generation: v.generation,
            }],
            target: Some(v.target.clone()),
            consumers: v.consumers.clone(),
            observed_generation: v.generation,
            ..current.clone()
        };
        // What changes with every delivery (counts, facts) is refreshed at most once per
        // COUNTS_EVERY; a change of anything else is written at once.
        let recent = self
            .resources
            .counted
            .get(&key)
            .is_some_and(|t| t.elapsed() < COUNTS_EVERY);
        if base == *current && recent {
            return;
        }
        let next = self.facts(v, consumers, base).await;
        if next == *current {
            self.resources.counted.insert(key, Instant::now());
            return;
        }
        // Merge patch: cleared fields are sent as null, or the apiserver keeps them.
        let mut value = serde_json::to_value(&next).unwrap_or_else(|_| json!({}));
        if let Some(map) = value.as_object_mut() {
            for field in [
                "target",
                "consumers",
                "pending",
                "ackPending",
                "observedGeneration",
                "lastDelivery",
                "lastFailure",
                "deadLetters",
            ] {
                map.entry(field).or_insert(serde_json::Value::Null);
            }
        }
        let api: Api<Subscription> = Api::namespaced(self.kube.clone(), &v.namespace);
        match api
            .patch_status(
                &v.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": value })),
            )
            .await
        {
            Ok(_) => {
                self.resources.counted.insert(key, Instant::now());
                if previous.is_none_or(|c| c.reason != next.conditions[0].reason) {
                    tracing::info!(subscription = %format!("{}/{}", v.namespace, v.name), reason = %v.reason.as_str(), message = %v.message, "Subscription status");
                }
            }
            // Deleted meanwhile: nothing to report on.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => report.errors.push(format!(
                "cannot update the status of Subscription {key}: {e}"
            )),
        }
    }

    /// `base` with what the broker knows of the resource's consumers: pending counts, the
    /// delivering processes' last delivery and last failure, and its dead letters. Each is left
    /// out when NATS cannot say (the last written value stays).
    async fn facts(
        &self,
        v: &Verdict,
        consumers: Option<&[ConsumerState]>,
        mut base: SubscriptionStatus,
    ) -> SubscriptionStatus {
        if v.consumers.is_empty() {
            base.pending = None;
            base.ack_pending = None;
            base.last_delivery = None;
            base.last_failure = None;
            base.dead_letters = None;
            return base;
        }
        if let Some(all) = consumers {
            let ours = all.iter().filter(|c| v.consumers.contains(&c.name));
            let (pending, ack) = ours.fold((0u64, 0u64), |(p, a), c| {
                (p + c.pending, a + c.ack_pending as u64)
            });
            base.pending = Some(pending);
            base.ack_pending = Some(ack);
        }
        for name in &v.consumers {
            let get = self.broker.get(BUCKET, &status_key(name));
            let Ok(Ok(Some(bytes))) = tokio::time::timeout(NATS_TIMEOUT, get).await else {
                continue;
            };
            let Some(r) = DeliveryReport::parse(&bytes) else {
                continue;
            };
            // RFC 3339 in UTC to the second: later is greater.
            if r.last_delivery > base.last_delivery {
                base.last_delivery = r.last_delivery;
            }
            if let Some(f) = r.last_failure
                && base.last_failure.as_ref().is_none_or(|b| f.time > b.time)
            {
                base.last_failure = Some(LastFailure {
                    time: f.time,
                    status: f.status,
                    reason: f.reason,
                });
            }
        }
        let mut dead = Some(0u64);
        for filter in &v.dlq_filters {
            let count = self.broker.count(&self.cfg.dlq_stream, filter);
            dead = match (dead, tokio::time::timeout(NATS_TIMEOUT, count).await) {
                (Some(d), Ok(Ok(n))) => Some(d + n),
                _ => None,
            };
        }
        if dead.is_some() {
            base.dead_letters = dead;
        }
        base
    }

    /// Kyma's status fields, patched when they changed.
    async fn write_kyma_status(
        &mut self,
        v: &Verdict,
        r: &kyma::Subscription,
        report: &mut PassReport,
    ) {
        let current = r.status.clone().unwrap_or_default();
        let next = kyma::status(v, &r.spec.types, &current, now());
        if next == current {
            return;
        }
        let api: Api<kyma::Subscription> = Api::namespaced(self.kube.clone(), &v.namespace);
        let value = serde_json::to_value(&next).unwrap_or_else(|_| json!({}));
        match api
            .patch_status(
                &v.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": value })),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => report.errors.push(format!(
                "cannot update the status of Kyma Subscription {}/{}: {e}",
                v.namespace, v.name
            )),
        }
    }
}

/// The consumer descriptions a bucket value (an app's key, or the dispatcher's list) holds.
fn held_by(key: &str, value: &[u8]) -> BTreeSet<String> {
    let defaults = Defaults::default();
    let mut out = BTreeSet::new();
    if key == SINKS_KEY {
        if let Ok((targets, _)) = sinks::parse(value, &defaults) {
            for t in targets {
                let who = sinks::subscriber(t.kind, &t.namespace, &t.name);
                out.extend(t.subscriptions.iter().map(|s| who.describe(&s.filter)));
            }
        }
    } else if let Some((namespace, app)) = parse_subscriptions_key(key)
        && let Ok(text) = std::str::from_utf8(value)
        && let Ok(v) = sinks::parse_app_value(text, &defaults)
    {
        let own = herald_core::consumer::Subscriber {
            namespace: namespace.clone(),
            app_id: app,
        };
        out.extend(v.own.iter().map(|s| own.describe(&s.filter)));
        for (who, s) in &v.adopted {
            let who = herald_core::consumer::Subscriber {
                namespace: namespace.clone(),
                app_id: who.clone(),
            };
            out.insert(who.describe(&s.filter));
        }
    }
    out
}
