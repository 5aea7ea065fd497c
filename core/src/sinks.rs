//! Subscriptions to sinks: what the controller gives the dispatcher through the configuration
//! bucket (key [`SINKS_KEY`]), and who they subscribe as.
//!
//! The value is a JSON list, one item per resource with a sink:
//! `[{"namespace": "shop", "name": "orders-fn", "url": "http://orders-fn.shop.svc.cluster.local",
//! "entries": [...]}]`, the entries in the form of `herald.dev/subscriptions`, parsed with the
//! same contract ([`crate::contract::parse_entries`]), and `"kind": "kyma"` for Kyma's
//! resources. Each resource subscribes as the app id `sink:<name>` (`kyma:<name>`) of its
//! namespace, so its consumers are its own, shared by every dispatcher.

use serde::{Deserialize, Serialize};

use crate::consumer::Subscriber;
use crate::contract::{Subscription, parse_entries};
use crate::defaults::Defaults;
use crate::delivery::SinkUrl;

/// The key of the bucket holding every sink subscription.
pub const SINKS_KEY: &str = "sinks";
/// Largest value of [`SINKS_KEY`]: a NATS message's default maximum payload.
pub const MAX_SINKS_BYTES: usize = 1024 * 1024;

/// Which API a resource belongs to: herald's `Subscription` or Kyma's, which may share a name.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Herald,
    Kyma,
}

/// One resource's sink subscriptions as the bucket holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkItem {
    #[serde(default)]
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub url: String,
    pub entries: serde_json::Value,
}

/// One resource's sink subscriptions, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkTarget {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub url: SinkUrl,
    pub subscriptions: Vec<Subscription>,
}

/// Who a resource subscribes as when no app's sidecars serve it: `sink:<name>` (herald's) or
/// `kyma:<name>` (Kyma's) in its namespace.
pub fn subscriber(kind: Kind, namespace: &str, name: &str) -> Subscriber {
    Subscriber {
        namespace: namespace.to_owned(),
        app_id: match kind {
            Kind::Herald => format!("sink:{name}"),
            Kind::Kyma => format!("kyma:{name}"),
        },
    }
}

/// Parses the bucket's value. Items that do not parse are returned apart with their reason (the
/// others are served); a value that is not a list at all is an error.
pub fn parse(bytes: &[u8], cluster: &Defaults) -> Result<(Vec<SinkTarget>, Vec<String>), String> {
    if bytes.len() > MAX_SINKS_BYTES {
        return Err(format!(
            "the sink subscriptions are {} bytes long; the limit is {MAX_SINKS_BYTES}",
            bytes.len()
        ));
    }
    let items: Vec<SinkItem> = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JSON list of sink subscriptions: {e}"))?;
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for item in items {
        let at = format!("{}/{}", item.namespace, item.name);
        let url = match SinkUrl::parse(&item.url) {
            Ok(u) => u,
            Err(rule) => {
                bad.push(format!("{at}: url {rule}"));
                continue;
            }
        };
        match parse_entries(&item.entries.to_string(), cluster) {
            Ok(subscriptions) => ok.push(SinkTarget {
                kind: item.kind,
                namespace: item.namespace,
                name: item.name,
                url,
                subscriptions,
            }),
            Err(rules) => bad.push(format!("{at}: {}", rules.join("; "))),
        }
    }
    Ok((ok, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_parse_apart_and_a_bad_one_does_not_take_the_others() {
        let value = serde_json::json!([
            {"namespace": "shop", "name": "fn", "url": "http://fn.shop.svc:8080/x",
             "entries": [{"type": "order.*.v1", "maxInFlight": 3}]},
            {"namespace": "shop", "name": "bad", "url": "https://fn", "entries": [{"type": "a.v1"}]},
            {"namespace": "shop", "name": "worse", "url": "http://fn", "entries": [{"type": ""}]},
        ]);
        let (ok, bad) = parse(value.to_string().as_bytes(), &Defaults::default()).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].url.port, 8080);
        assert_eq!(ok[0].subscriptions[0].max_in_flight, 3);
        assert_eq!(bad.len(), 2);
        assert!(bad[0].starts_with("shop/bad: url"), "{bad:?}");
        assert!(parse(b"{}", &Defaults::default()).is_err());
        assert_eq!(
            subscriber(Kind::Herald, "shop", "fn").describe(&ok[0].subscriptions[0].filter),
            "shop/sink:fn/order.*.v1"
        );
    }
}
