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

/// The member of an entry in an app's key (`subscriptions.<ns>.<app>`) that says the app's
/// sidecars deliver it on behalf of a resource with a sink (whose Service selects the app's
/// pods): its value is the resource's subscriber, `sink:<name>` or `kyma:<name>`. Not part of the
/// annotation form.
pub const AS_MEMBER: &str = "as";

/// An app's key, parsed: its own subscriptions (resources targeting the app) and those it
/// delivers for resources with a sink (the subscriber's app id with each).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppValue {
    pub own: Vec<Subscription>,
    pub adopted: Vec<(String, Subscription)>,
}

/// Parses an app's key: entries in the annotation form, some with [`AS_MEMBER`]. An `as` other
/// than `sink:<name>` or `kyma:<name>` is refused: an app's key can never make its sidecars
/// consume as another app.
pub fn parse_app_value(text: &str, cluster: &Defaults) -> Result<AppValue, Vec<String>> {
    if text.len() > crate::limits::MAX_SUBSCRIPTIONS_ANNOTATION_BYTES {
        return Err(vec![format!(
            "the app's resource subscriptions are {} bytes long; the limit is {}",
            text.len(),
            crate::limits::MAX_SUBSCRIPTIONS_ANNOTATION_BYTES
        )]);
    }
    let items: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(text)
        .map_err(|e| vec![format!("not a JSON list of subscription entries: {e}")])?;
    let mut groups: Vec<(Option<String>, Vec<serde_json::Value>)> = Vec::new();
    for (i, mut item) in items.into_iter().enumerate() {
        let who = match item.remove(AS_MEMBER) {
            None => None,
            Some(serde_json::Value::String(a))
                if (a.starts_with("sink:") || a.starts_with("kyma:")) && a.len() > 5 =>
            {
                Some(a)
            }
            Some(other) => {
                return Err(vec![format!(
                    "entry {}: `as` must be sink:<name> or kyma:<name>, not {other}",
                    i + 1
                )]);
            }
        };
        match groups.iter_mut().find(|(w, _)| *w == who) {
            Some((_, list)) => list.push(serde_json::Value::Object(item)),
            None => groups.push((who, vec![serde_json::Value::Object(item)])),
        }
    }
    let mut out = AppValue::default();
    for (who, list) in groups {
        let subs = parse_entries(&serde_json::Value::Array(list).to_string(), cluster)?;
        match who {
            None => out.own = subs,
            Some(w) => out.adopted.extend(subs.into_iter().map(|s| (w.clone(), s))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_s_key_holds_its_own_entries_and_those_it_delivers_for_sinks() {
        let v = parse_app_value(
            r#"[{"type": "a.v1"}, {"type": "b.v1", "as": "sink:fn", "path": "/in"},
                {"type": "c.v1", "as": "kyma:order"}]"#,
            &Defaults::default(),
        )
        .unwrap();
        assert_eq!(v.own.len(), 1);
        assert_eq!(v.adopted.len(), 2);
        assert_eq!(v.adopted[0].0, "sink:fn");
        assert_eq!(v.adopted[0].1.path, "/in");
        for bad in [
            r#"[{"type": "a.v1", "as": "orders"}]"#,
            r#"[{"type": "a.v1", "as": 3}]"#,
        ] {
            let e = parse_app_value(bad, &Defaults::default()).unwrap_err();
            assert!(e[0].contains("`as`"), "{e:?}");
        }
        // The annotation form still refuses it.
        assert!(
            parse_entries(
                r#"[{"type": "a.v1", "as": "sink:fn"}]"#,
                &Defaults::default()
            )
            .is_err()
        );
    }

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
