//! The cluster's delivery defaults: what the `EventStream`'s `spec.delivery` says, written by
//! the controller to the key `delivery` of the configuration bucket `HERALD_CONFIG`, and watched
//! by every sidecar. They replace the built-in defaults; a pod's annotations still win.
//!
//! The value is JSON, `{"maxAttempts": 5, "backoff": "200ms", "maxInFlight": 20,
//! "attemptTimeout": "10s"}`, every field optional.

use std::time::Duration;

use serde::Deserialize;

use crate::limits::{self, DELIVERY_DURATION};
use crate::settings::in_range;

/// herald's built-in delivery defaults (docs/DELIVERY.md), where a pod and the cluster say
/// nothing. The annotation contract starts every subscription from these.
pub const MAX_ATTEMPTS: u32 = 10;
/// Quick attempts inside one broker delivery.
pub const LOCAL_ATTEMPTS: u32 = 3;
/// First local backoff; doubles, with jitter.
pub const LOCAL_BACKOFF: Duration = Duration::from_millis(100);
/// First broker redelivery delay; doubles per redelivery up to [`MAX_REDELIVERY_DELAY`].
pub const REDELIVERY_DELAY: Duration = Duration::from_secs(5);
pub const MAX_REDELIVERY_DELAY: Duration = Duration::from_secs(300);
/// Deliveries in flight per subscription, across replicas.
pub const MAX_IN_FLIGHT: usize = 10;
/// Timeout of one delivery attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

pub const BUCKET: &str = "HERALD_CONFIG";
pub const DELIVERY_KEY: &str = "delivery";
/// The first token of the keys holding an app's resource subscriptions.
pub const SUBSCRIPTIONS_KEY_PREFIX: &str = "subscriptions";

/// The key of the bucket where the controller puts the subscriptions that resources give the app
/// `app_id` in `namespace` (a JSON list in the form of `herald.dev/subscriptions`), which the
/// app's sidecars follow: `subscriptions.<namespace>.<app id>`, each name with the bytes a key may
/// not hold (`[-_a-zA-Z0-9]` are kept) written `=XX`, so no app id can reach another's key.
pub fn subscriptions_key(namespace: &str, app_id: &str) -> String {
    use std::fmt::Write as _;
    let mut key = String::from(SUBSCRIPTIONS_KEY_PREFIX);
    for part in [namespace, app_id] {
        key.push('.');
        if part.is_empty() {
            key.push('=');
        }
        for &b in part.as_bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                key.push(b as char);
            } else {
                // Writing to a String cannot fail.
                let _ = write!(key, "={b:02X}");
            }
        }
    }
    key
}

/// The delivery defaults a subscription starts from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    pub max_attempts: u32,
    pub local_backoff: Duration,
    pub max_in_flight: usize,
    pub attempt_timeout: Duration,
}

impl Default for Defaults {
    /// The built-in defaults (docs/DELIVERY.md).
    fn default() -> Self {
        Defaults {
            max_attempts: MAX_ATTEMPTS,
            local_backoff: LOCAL_BACKOFF,
            max_in_flight: MAX_IN_FLIGHT,
            attempt_timeout: ATTEMPT_TIMEOUT,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Wire {
    max_attempts: Option<u32>,
    backoff: Option<String>,
    max_in_flight: Option<u32>,
    attempt_timeout: Option<String>,
}

impl Defaults {
    /// Reads the bucket's value over the built-in defaults. The controller only writes a spec
    /// the apiserver validated, but a value written by hand gets the same checks as the
    /// annotations, each error naming its field.
    pub fn from_json(bytes: &[u8]) -> Result<Defaults, String> {
        if bytes.len() > limits::MAX_KV_VALUE_BYTES {
            return Err(format!(
                "{BUCKET}/{DELIVERY_KEY} is {} bytes long; the limit is {}",
                bytes.len(),
                limits::MAX_KV_VALUE_BYTES
            ));
        }
        let w: Wire = serde_json::from_slice(bytes)
            .map_err(|e| format!("{BUCKET}/{DELIVERY_KEY} is not valid: {e}"))?;
        let mut d = Defaults::default();
        let field = |name: &str, rule: &str| format!("{BUCKET}/{DELIVERY_KEY}: {name} {rule}");
        if let Some(n) = w.max_attempts {
            let (lo, hi) = limits::MAX_ATTEMPTS_RANGE;
            if !(lo..=hi).contains(&n) {
                return Err(field(
                    "maxAttempts",
                    &format!("must be from {lo} to {hi}, not {n}"),
                ));
            }
            d.max_attempts = n;
        }
        if let Some(n) = w.max_in_flight {
            let (lo, hi) = limits::MAX_IN_FLIGHT_RANGE;
            if !(lo..=hi).contains(&u64::from(n)) {
                return Err(field(
                    "maxInFlight",
                    &format!("must be from {lo} to {hi}, not {n}"),
                ));
            }
            d.max_in_flight = n as usize;
        }
        let duration = |name: &str, v: &str| {
            in_range(DELIVERY_DURATION)(v)
                .map_err(|rule| field(name, &format!("{rule}, not {v:?}")))
        };
        if let Some(v) = &w.backoff {
            d.local_backoff = duration("backoff", v)?;
        }
        if let Some(v) = &w.attempt_timeout {
            d.attempt_timeout = duration("attemptTimeout", v)?;
        }
        Ok(d)
    }
}

/// The namespace and app id of a key made by [`subscriptions_key`]; `None` for any other key.
pub fn parse_subscriptions_key(key: &str) -> Option<(String, String)> {
    let rest = key
        .strip_prefix(SUBSCRIPTIONS_KEY_PREFIX)?
        .strip_prefix('.')?;
    let (ns, app) = rest.split_once('.')?;
    let decode = |part: &str| -> Option<String> {
        if part == "=" {
            return Some(String::new());
        }
        let mut bytes = Vec::with_capacity(part.len());
        let mut it = part.bytes();
        while let Some(b) = it.next() {
            if b == b'=' {
                let hex = [it.next()?, it.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
            } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                bytes.push(b);
            } else {
                // Not this encoding (a `.` would make a third part).
                return None;
            }
        }
        String::from_utf8(bytes).ok()
    };
    Some((decode(ns)?, decode(app)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_keys_are_valid_bucket_keys_and_never_collide() {
        assert_eq!(
            subscriptions_key("shop", "orders"),
            "subscriptions.shop.orders"
        );
        let hostile = subscriptions_key("shop", "a.b>*/~ é");
        assert!(
            hostile
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)),
            "{hostile}"
        );
        assert_eq!(hostile.matches('.').count(), 2, "{hostile}");
        assert_ne!(subscriptions_key("a", "b.c"), subscriptions_key("a.b", "c"));
        assert_ne!(subscriptions_key("a", ""), subscriptions_key("a", "=3D"));
        for (ns, app) in [("shop", "orders"), ("shop", "a.b>*/~ é"), ("a", "")] {
            let key = subscriptions_key(ns, app);
            assert_eq!(
                parse_subscriptions_key(&key),
                Some((ns.to_owned(), app.to_owned())),
                "{key}"
            );
        }
        assert_eq!(parse_subscriptions_key("delivery"), None);
        assert_eq!(parse_subscriptions_key("subscriptions.a.b.c"), None);
        assert_eq!(parse_subscriptions_key("subscriptions.a.=Z"), None);
    }

    #[test]
    fn values_replace_built_in_defaults_and_bad_ones_name_their_field() {
        let d = Defaults::from_json(br#"{"maxAttempts": 3, "attemptTimeout": "2s"}"#).unwrap();
        assert_eq!(d.max_attempts, 3);
        assert_eq!(d.attempt_timeout, Duration::from_secs(2));
        assert_eq!(d.max_in_flight, Defaults::default().max_in_flight);
        assert_eq!(Defaults::from_json(b"{}").unwrap(), Defaults::default());
        for (bad, needle) in [
            (
                r#"{"maxAttempts": 0}"#,
                "maxAttempts must be from 1 to 1000, not 0",
            ),
            (
                r#"{"maxInFlight": 20000}"#,
                "maxInFlight must be from 1 to 10000, not 20000",
            ),
            (r#"{"backoff": "soon"}"#, "backoff must be a duration"),
            (
                r#"{"attemptTimeout": "0s"}"#,
                "attemptTimeout must be from 1ms to 24h, not \"0s\"",
            ),
            (
                r#"{"attemptTimeout": "9000000000000000000s"}"#,
                "attemptTimeout must be from 1ms to 24h",
            ),
            (r#"{"retries": 3}"#, "unknown field `retries`"),
            ("[", "is not valid"),
        ] {
            let e = Defaults::from_json(bad.as_bytes()).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
