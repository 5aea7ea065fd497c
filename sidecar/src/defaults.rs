//! The cluster's delivery defaults: what the `EventStream`'s `spec.delivery` says, written by
//! the controller to the key `delivery` of the JetStream key-value bucket `HERALD_CONFIG`, and
//! watched by every sidecar. They replace the built-in defaults; a pod's annotations still win.
//!
//! The value is JSON, `{"maxAttempts": 5, "backoff": "200ms", "maxInFlight": 20,
//! "attemptTimeout": "10s"}`, every field optional.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use serde::Deserialize;

use crate::config::parse_duration;

pub const BUCKET: &str = "HERALD_CONFIG";
pub const DELIVERY_KEY: &str = "delivery";

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
            max_attempts: 10,
            local_backoff: Duration::from_millis(100),
            max_in_flight: 10,
            attempt_timeout: Duration::from_secs(30),
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
        let w: Wire = serde_json::from_slice(bytes)
            .map_err(|e| format!("{BUCKET}/{DELIVERY_KEY} is not valid: {e}"))?;
        let mut d = Defaults::default();
        let field = |name: &str, rule: &str| format!("{BUCKET}/{DELIVERY_KEY}: {name} {rule}");
        if let Some(n) = w.max_attempts {
            if !(1..=1000).contains(&n) {
                return Err(field("maxAttempts", "must be from 1 to 1000"));
            }
            d.max_attempts = n;
        }
        if let Some(n) = w.max_in_flight {
            if !(1..=10_000).contains(&n) {
                return Err(field("maxInFlight", "must be from 1 to 10000"));
            }
            d.max_in_flight = n as usize;
        }
        let duration = |name: &str, v: &str| match parse_duration(v) {
            Ok(t) if !t.is_zero() => Ok(t),
            _ => Err(field(
                name,
                "must be a duration above zero such as 500ms or 10s",
            )),
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

/// The bucket, created when `create` and it is missing. The stream is made here rather than
/// with `create_key_value`, which first asks for account information that async-nats cannot
/// parse from nats-server 2.9; the configuration is the one `create_key_value` makes.
pub async fn bucket(js: &jetstream::Context, create: bool) -> Result<kv::Store, String> {
    if create {
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{BUCKET}"),
            description: Some("herald cluster configuration, written by the controller".into()),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create bucket {BUCKET}: {e}"))?;
    }
    js.get_key_value(BUCKET)
        .await
        .map_err(|e| format!("cannot open bucket {BUCKET}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
                "maxAttempts must be from 1 to 1000",
            ),
            (
                r#"{"maxInFlight": 20000}"#,
                "maxInFlight must be from 1 to 10000",
            ),
            (r#"{"backoff": "soon"}"#, "backoff must be a duration"),
            (
                r#"{"attemptTimeout": "0s"}"#,
                "attemptTimeout must be a duration",
            ),
            (r#"{"retries": 3}"#, "unknown field `retries`"),
            ("[", "is not valid"),
        ] {
            let e = Defaults::from_json(bad.as_bytes()).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
