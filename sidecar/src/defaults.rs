//! The cluster's delivery defaults: what the `EventStream`'s `spec.delivery` says, written by
//! the controller to the key `delivery` of the JetStream key-value bucket `HERALD_CONFIG`, and
//! watched by every sidecar. They replace the built-in defaults; a pod's annotations still win.
//!
//! The value is JSON, `{"maxAttempts": 5, "backoff": "200ms", "maxInFlight": 20,
//! "attemptTimeout": "10s"}`, every field optional.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures::StreamExt as _;
use serde::Deserialize;
use tokio::sync::watch;

use crate::config::in_range;
use crate::limits::{self, DELIVERY_DURATION};
use crate::shutdown::Shutdown;
use crate::subscribe::{DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_MAX_IN_FLIGHT, RetryPolicy};

/// How long to wait before opening the bucket again after it was missing or NATS failed.
const RETRY: Duration = Duration::from_secs(10);

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
        let retry = RetryPolicy::default();
        Defaults {
            max_attempts: retry.max_attempts,
            local_backoff: retry.local_backoff,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
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

/// Follows the key until `shutdown`. `tx` holds `None` until the first answer: the current
/// value, or the built-in defaults when the bucket or key does not exist (no controller, as
/// under `herald dev`) or NATS cannot be asked; then each change. A value that does not
/// validate is logged with its field and ignored, so the last good defaults stay.
pub async fn follow(
    js: jetstream::Context,
    tx: watch::Sender<Option<Defaults>>,
    shutdown: Shutdown,
) {
    let settle = |tx: &watch::Sender<Option<Defaults>>| {
        tx.send_if_modified(|d| {
            d.is_none()
                .then(|| *d = Some(Defaults::default()))
                .is_some()
        })
    };
    while !shutdown.is_triggered() {
        let watched = async {
            let kv = bucket(&js, false).await?;
            // The watch starts before the read, so no change falls between them.
            let watch = kv
                .watch_with_history(DELIVERY_KEY)
                .await
                .map_err(|e| format!("cannot watch {BUCKET}/{DELIVERY_KEY}: {e}"))?;
            let first = kv
                .entry(DELIVERY_KEY)
                .await
                .map_err(|e| format!("cannot read {BUCKET}/{DELIVERY_KEY}: {e}"))?;
            Ok::<_, String>((watch, first))
        };
        let (mut watch, first) = match watched.await {
            Ok(w) => w,
            Err(e) => {
                settle(&tx);
                tracing::debug!(error = %e, "no cluster delivery defaults; the built-in ones apply");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        match first {
            Some(entry) => apply(&tx, &entry),
            None => {
                settle(&tx);
            }
        }
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                next = watch.next() => match next {
                    Some(Ok(entry)) => apply(&tx, &entry),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching the cluster delivery defaults failed; watching again");
                        break;
                    }
                    None => break,
                },
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn apply(tx: &watch::Sender<Option<Defaults>>, entry: &kv::Entry) {
    let next = match entry.operation {
        kv::Operation::Put => match Defaults::from_json(&entry.value) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "the cluster delivery defaults are invalid; the last good ones stay");
                if tx.borrow().is_none() {
                    tx.send_replace(Some(Defaults::default()));
                }
                return;
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => Defaults::default(),
    };
    let changed = tx.send_if_modified(|d| {
        let changed = *d != Some(next);
        *d = Some(next);
        changed
    });
    if changed {
        tracing::info!(defaults = ?next, "cluster delivery defaults");
    }
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
