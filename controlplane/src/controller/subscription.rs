//! herald's `Subscription` resource (`herald.dev/v1alpha1`, namespaced, short name `hsub`): one
//! subscription entry of `herald.dev/subscriptions` (types with NATS wildcards, source, filters
//! in every dialect, delivery settings) plus its target, `app` (an app id in the same namespace,
//! served by that app's sidecars) or `sink` (an HTTP URL).
//!
//! The schema checks what it can (required fields, enums, ranges, exactly one target); the rest
//! is checked by the annotation contract's own parser ([`herald_core::contract::parse_entries`])
//! on the entries [`SubscriptionSpec::entries`] makes, the same text the sidecars later read from
//! the configuration bucket, so the resource and the annotation hold one contract.

use herald_core::limits;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Durations as herald writes them elsewhere: `500ms`, `30s`, `2m`.
const DURATION: &str = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)?$";

/// A declarative subscription: events of `types` delivered to an app's sidecars or to a sink.
#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "Subscription",
    plural = "subscriptions",
    shortname = "hsub",
    namespaced,
    status = "SubscriptionStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.target"}"#,
    printcolumn = r#"{"name":"Types","type":"string","jsonPath":".spec.types"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.pending"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new("has(self.app) != has(self.sink)").message("set exactly one of app and sink"))]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    /// Deliver to the sidecars of this app (its `herald.dev/app-id`, or the workload's name) in
    /// the subscription's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub app: Option<String>,
    /// Deliver to this URL, normally a Service of the subscription's namespace
    /// (`http://<service>.<namespace>.svc.cluster.local/path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub sink: Option<String>,
    /// Event types, NATS wildcards allowed (`order.*.v1`, `order.>`); one consumer each.
    #[schemars(length(min = 1, max = 64))]
    pub types: Vec<String>,
    /// Only events of this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// HTTP path the app receives deliveries on (default `/`); for a sink, the URL's own path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Deliveries in flight at once, across replicas (1 to 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight: Option<u64>,
    /// Timeout of one delivery attempt, e.g. 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub timeout: Option<String>,
    /// Dead-letter what cannot be delivered (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<bool>,
    /// CloudEvents HTTP content mode of deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryMode>,
    /// Where a new consumer starts: `new` (default), `all`, or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// The retry budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Attribute filters, ANDed, in herald's dialects (`exact`, `prefix`, `suffix`, `all`, `any`,
    /// `not`, `sql`; docs/FILTERS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub filters: Option<Vec<FilterValue>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    Binary,
    Structured,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Attempts in all before dead-lettering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
    /// Quick attempts inside one broker delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub local_attempts: Option<u32>,
    /// First local backoff, e.g. 100ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub backoff: Option<String>,
    /// First broker redelivery delay, e.g. 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub redelivery_delay: Option<String>,
    /// Longest broker redelivery delay, e.g. 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub max_redelivery_delay: Option<String>,
}

/// One filter: a map in one of herald's dialects, checked by the filter parser (the schema keeps
/// it free-form, as the dialects nest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FilterValue(pub serde_json::Value);

impl schemars::JsonSchema for FilterValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FilterValue".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// `Ready`: the subscription is applied and a subscriber serves it. Reasons: `Subscribed`,
    /// `NoSubscriber` (nothing runs that serves it; its events are kept), `InvalidSpec`,
    /// `Conflict` (another subscription of the app, or its annotations, have the filter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `app <id>` or the sink URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The JetStream consumers that keep the events, one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// Events waiting for delivery, over its consumers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// Events delivered and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_pending: Option<u64>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When an event was last delivered (RFC 3339), as the delivering sidecars or dispatcher
    /// last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<String>,
    /// The last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailure>,
    /// Dead letters of its consumers in the dead-letter stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastFailure {
    /// RFC 3339.
    pub time: String,
    /// The HTTP status of the answer, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why: the answer, or why there was none.
    pub reason: String,
}

impl SubscriptionSpec {
    /// The entries in the form of `herald.dev/subscriptions`, one per type, as a JSON list: what
    /// the contract's parser validates and the sidecars read.
    pub fn entries(&self) -> serde_json::Value {
        let entries: Vec<serde_json::Value> = self
            .types
            .iter()
            .map(|ty| {
                let mut e = serde_json::Map::new();
                e.insert("type".into(), ty.clone().into());
                let mut put = |k: &str, v: Option<serde_json::Value>| {
                    if let Some(v) = v {
                        e.insert(k.into(), v);
                    }
                };
                put("source", self.source.clone().map(Into::into));
                put("path", self.path.clone().map(Into::into));
                put("maxInFlight", self.max_in_flight.map(Into::into));
                put("timeout", self.timeout.clone().map(Into::into));
                put("deadLetter", self.dead_letter.map(Into::into));
                put(
                    "delivery",
                    self.delivery.map(|m| {
                        match m {
                            DeliveryMode::Binary => "binary",
                            DeliveryMode::Structured => "structured",
                        }
                        .into()
                    }),
                );
                put("start", self.start.clone().map(Into::into));
                put(
                    "retry",
                    self.retry
                        .as_ref()
                        .and_then(|r| serde_json::to_value(r).ok()),
                );
                put(
                    "filters",
                    self.filters
                        .as_ref()
                        .map(|f| f.iter().map(|v| v.0.clone()).collect()),
                );
                serde_json::Value::Object(e)
            })
            .collect();
        serde_json::Value::Array(entries)
    }
}

/// The CustomResourceDefinition, as `herald-controlplane crd subscriptions` prints it.
pub fn crd_yaml() -> Result<String, yaml_serde::Error> {
    use kube::CustomResourceExt as _;
    Ok(format!(
        "# Generated by `herald-controlplane crd subscriptions`; the Helm chart's copy is checked against it.\n{}",
        yaml_serde::to_string(&Subscription::crd())?
    ))
}

/// `types` beyond this many are refused by the schema; the annotation contract's per-pod limit
/// bounds an app's subscriptions from annotations and resources together.
pub const MAX_TYPES: usize = 64;
const _: () = assert!(MAX_TYPES <= limits::MAX_SUBSCRIPTIONS);

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::contract::parse_entries;
    use herald_core::defaults::Defaults;
    use kube::CustomResourceExt as _;

    fn spec(yaml: &str) -> SubscriptionSpec {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn entries_are_what_the_annotation_contract_parses() {
        let s = spec(
            "app: orders\ntypes: [order.created.v1, 'order.*.v2']\nsource: shop\nmaxInFlight: 5\n\
             retry: {maxAttempts: 3, backoff: 200ms}\nfilters: [{sql: \"amount > 10\"}]\n",
        );
        let text = s.entries().to_string();
        let subs = parse_entries(&text, &Defaults::default()).unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[1].filter.to_string(), "shop/order.*.v2");
        assert_eq!(subs[0].max_in_flight, 5);
        assert_eq!(subs[0].retry.max_attempts, 3);
        assert_eq!(subs[0].filters.len(), 1);
        // What only the contract knows is reported with the entry and the field.
        let bad = spec("app: a\ntypes: [x.v1]\nfilters: [{sql: \"amount >\"}]\n");
        let rules = parse_entries(&bad.entries().to_string(), &Defaults::default()).unwrap_err();
        assert!(rules[0].contains("entry 1"), "{rules:?}");
    }

    #[test]
    fn the_schema_wants_exactly_one_target_and_bounds_what_it_can() {
        let crd = serde_json::to_string(&Subscription::crd()).unwrap();
        assert!(crd.contains("has(self.app) != has(self.sink)"), "{crd}");
        assert!(crd.contains(r#""shortNames":["hsub"]"#), "{crd}");
        assert!(crd.contains(r#""maxItems":64"#), "{crd}");
        assert!(
            crd.contains("x-kubernetes-preserve-unknown-fields"),
            "{crd}"
        );
    }
}
