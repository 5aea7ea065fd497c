//! Kyma's `Subscription` (`eventing.kyma-project.io/v1alpha2`), served like herald's own so a
//! cluster moving off Kyma keeps its resources as they are: the schema of Kyma's
//! eventing-manager (`sink`, `source`, `types`, `typeMatching`, `config`), Kyma's status fields
//! (`ready`, `types[{originalType, cleanType}]`, `backend.types[{originalType, consumerName}]`,
//! `conditions`) and `kubectl get subscriptions` columns (READY, AGE).
//!
//! Each one is turned into a herald [`Subscription`](super::subscription::Subscription) spec
//! ([`KymaSubscriptionSpec::to_herald`]) and routed with herald's, subscribing as `kyma:<name>`
//! of its namespace, so it never shares a consumer with a herald resource of the same name:
//! - `typeMatching: standard` (the default): events of `source` with each type as given. Kyma
//!   cleans types of characters its subjects cannot carry; herald's subjects carry any type, so
//!   `cleanType` is the type itself and two types never collide.
//! - `typeMatching: exact`: each type as given, from any source (Kyma ignores the source then);
//!   a wildcard token (`*`, `>`) is refused, as exact types are literal.
//! - `config.maxInFlightMessages` (a string, Kyma's default `"10"`) is max in flight.
//!
//! The chart installs this CRD only when asked (`kyma.subscriptions: true`), for clusters moving
//! off Kyma; without it the controller serves none.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::subscription::SubscriptionSpec;

/// Kyma's Subscription, as eventing-manager defines it.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "eventing.kyma-project.io",
    version = "v1alpha2",
    kind = "Subscription",
    plural = "subscriptions",
    namespaced,
    status = "KymaSubscriptionStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KymaSubscriptionSpec {
    /// Unique identifier of the Subscription, read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Kubernetes Service that should be used as a target for the events that match the
    /// Subscription. Must exist in the same Namespace as the Subscription.
    pub sink: String,
    /// Defines how types should be handled: `standard` or `exact`.
    #[serde(default = "standard")]
    #[schemars(default = "standard")]
    pub type_matching: String,
    /// Defines the origin of the event.
    pub source: String,
    /// List of event types that will be used for subscribing on the backend.
    pub types: Vec<String>,
    /// Map of configuration options that will be applied on the backend.
    #[serde(default = "config")]
    #[schemars(default = "config")]
    pub config: BTreeMap<String, String>,
}

fn standard() -> String {
    "standard".into()
}

fn config() -> BTreeMap<String, String> {
    BTreeMap::from([("maxInFlightMessages".to_owned(), "10".to_owned())])
}

/// Kyma's status fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KymaSubscriptionStatus {
    /// Overall readiness of the Subscription.
    #[serde(default)]
    pub ready: bool,
    /// List of event types after cleanup for use with the configured backend.
    #[serde(default)]
    pub types: Vec<EventType>,
    /// Current state of the Subscription.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<KymaCondition>,
    /// Backend-specific status which is applicable to the active backend only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventType {
    pub original_type: String,
    pub clean_type: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// List of event type to consumer name mappings for the NATS backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<BackendType>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendType {
    pub original_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_name: Option<String>,
}

/// Kyma's condition (its own shape: only `status` is required).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KymaCondition {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Kyma's condition types and reasons for its NATS backend.
pub const CONDITION_ACTIVE: &str = "Subscription active";
pub const REASON_ACTIVE: &str = "NATS Subscription active";
pub const REASON_NOT_ACTIVE: &str = "NATS Subscription not active";

impl KymaSubscriptionSpec {
    /// The herald spec it stands for, or the rule it breaks (naming Kyma's field).
    pub fn to_herald(&self) -> Result<SubscriptionSpec, String> {
        let exact = match self.type_matching.as_str() {
            "standard" | "" => false,
            "exact" => true,
            other => {
                return Err(format!(
                    "spec.typeMatching must be `standard` or `exact`, not {other:?}"
                ));
            }
        };
        if self.types.is_empty() {
            return Err("spec.types must list at least one event type".into());
        }
        if exact
            && let Some(t) = self
                .types
                .iter()
                .find(|t| t.split('.').any(|tok| tok == "*" || tok == ">"))
        {
            return Err(format!(
                "spec.types: {t:?} has a wildcard token, and typeMatching exact takes types literally"
            ));
        }
        let max_in_flight = match self.config.get("maxInFlightMessages") {
            None => None,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (1..=10_000).contains(&n) => Some(n),
                _ => {
                    return Err(format!(
                        "spec.config.maxInFlightMessages must be a whole number from 1 to 10000, not {v:?}"
                    ));
                }
            },
        };
        Ok(SubscriptionSpec {
            sink: Some(self.sink.clone()),
            types: self.types.clone(),
            source: (!exact && !self.source.is_empty()).then(|| self.source.clone()),
            max_in_flight,
            ..Default::default()
        })
    }
}

/// The routing input of a Kyma resource: herald's spec it stands for, or why there is none.
pub fn input(k: &Subscription) -> super::routing::Input {
    let (spec, refused) = match k.spec.to_herald() {
        Ok(spec) => (spec, None),
        Err(rule) => (
            SubscriptionSpec {
                sink: Some(k.spec.sink.clone()),
                types: k.spec.types.clone(),
                ..Default::default()
            },
            Some(rule),
        ),
    };
    super::routing::Input {
        kind: herald_core::sinks::Kind::Kyma,
        sub: super::subscription::Subscription {
            metadata: k.metadata.clone(),
            spec,
            status: None,
        },
        refused,
    }
}

/// Kyma's status for a verdict: `ready`, the types (herald never cleans them), each type's
/// consumer, and the `Subscription active` condition.
pub fn status(
    v: &super::routing::Verdict,
    types: &[String],
    previous: &KymaSubscriptionStatus,
    now: Time,
) -> KymaSubscriptionStatus {
    let ready = v.reason.ready();
    let (status, reason) = if ready {
        ("True", REASON_ACTIVE)
    } else {
        ("False", REASON_NOT_ACTIVE)
    };
    let transition = previous
        .conditions
        .iter()
        .find(|c| c.type_.as_deref() == Some(CONDITION_ACTIVE))
        .filter(|c| c.status == status && c.reason.as_deref() == Some(reason))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    KymaSubscriptionStatus {
        ready,
        types: types
            .iter()
            .map(|t| EventType {
                original_type: t.clone(),
                clean_type: t.clone(),
            })
            .collect(),
        conditions: vec![KymaCondition {
            type_: Some(CONDITION_ACTIVE.into()),
            status: status.into(),
            last_transition_time: Some(transition),
            reason: Some(reason.into()),
            message: Some(v.message.clone()),
        }],
        backend: Some(Backend {
            types: types
                .iter()
                .enumerate()
                .map(|(i, t)| BackendType {
                    original_type: t.clone(),
                    consumer_name: v.consumers.get(i).cloned(),
                })
                .collect(),
        }),
    }
}

/// The CustomResourceDefinition, as `herald-controlplane crd kyma-subscriptions` prints it.
pub fn crd_yaml() -> Result<String, yaml_serde::Error> {
    use kube::CustomResourceExt as _;
    let mut crd = Subscription::crd();
    // Deleting a CRD deletes every resource of it: `helm uninstall` must leave the users' Kyma
    // Subscriptions alone.
    crd.metadata.annotations = Some(std::collections::BTreeMap::from([(
        "helm.sh/resource-policy".to_owned(),
        "keep".to_owned(),
    )]));
    Ok(format!(
        "# Generated by `herald-controlplane crd kyma-subscriptions`; the Helm chart's copy (templates/kyma-subscriptions-crd.yaml) is checked against it.\n{}",
        yaml_serde::to_string(&crd)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> KymaSubscriptionSpec {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn kyma_fields_map_onto_herald_s_as_kyma_means_them() {
        // Kyma's documented example, defaults and all.
        let s = spec(
            "sink: http://test.test.svc.cluster.local\nsource: commerce\ntypes: [order.created.v1]\n",
        );
        assert_eq!(s.type_matching, "standard");
        let h = s.to_herald().unwrap();
        assert_eq!(h.source.as_deref(), Some("commerce"));
        assert_eq!(h.max_in_flight, Some(10));
        assert_eq!(
            h.sink.as_deref(),
            Some("http://test.test.svc.cluster.local")
        );
        let exact = spec(
            "sink: http://f.ns.svc\nsource: ignored\ntypeMatching: exact\ntypes: [sap.kyma.custom.commerce.order.created.v1]\nconfig: {maxInFlightMessages: \"3\"}\n",
        )
        .to_herald()
        .unwrap();
        assert_eq!((exact.source, exact.max_in_flight), (None, Some(3)));
        for (bad, rule) in [
            ("typeMatching: fuzzy", "typeMatching"),
            ("typeMatching: exact\ntypes: ['order.*.v1']", "wildcard"),
            ("config: {maxInFlightMessages: lots}", "maxInFlightMessages"),
            ("types: []", "at least one"),
        ] {
            let mut base = "sink: http://f.ns.svc\nsource: s\n".to_owned();
            if !bad.contains("types") {
                base.push_str("types: [a.v1]\n");
            }
            base.push_str(bad);
            let e = spec(&base).to_herald().unwrap_err();
            assert!(e.contains(rule), "{bad}: {e}");
        }
    }

    #[test]
    fn the_crd_is_kyma_s() {
        use kube::CustomResourceExt as _;
        let crd = serde_json::to_value(Subscription::crd()).unwrap();
        assert_eq!(
            crd["metadata"]["name"],
            "subscriptions.eventing.kyma-project.io"
        );
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha2");
        assert_eq!(
            v["additionalPrinterColumns"][0]["jsonPath"],
            ".status.ready"
        );
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let required: Vec<&str> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r.as_str())
            .collect();
        assert_eq!(required, ["sink", "source", "types"]);
        assert_eq!(spec["properties"]["typeMatching"]["default"], "standard");
        assert_eq!(
            spec["properties"]["config"]["default"]["maxInFlightMessages"],
            "10"
        );
    }
}
