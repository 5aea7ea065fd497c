//! Delivery facts of a resource's subscription, which the delivering process (the app's sidecar
//! or the dispatcher) publishes to the configuration bucket under [`status_key`] and the
//! controller copies into the resource's status: when an event was last delivered, and the last
//! failure (when, the HTTP status if there was an answer, why).
//!
//! Replicas of one subscriber write the same key, so the value is the latest any of them wrote:
//! "last" facts, which is what they are. Writes are batched (at most one per key per
//! [`PUBLISH_EVERY`]), so a busy subscription costs the bucket a write every few seconds.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Least time between two writes of one key.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(15);
/// Longest failure reason kept.
pub const MAX_REASON_BYTES: usize = 512;

/// The key of a consumer's facts: `status.<consumer name>`.
pub fn status_key(consumer: &str) -> String {
    format!("status.{consumer}")
}

/// What the key holds (JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryReport {
    /// RFC 3339, to the second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureReport {
    /// RFC 3339, to the second.
    pub time: String,
    /// The HTTP status, when the target answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub reason: String,
}

impl FailureReport {
    /// A failure, its reason cut to [`MAX_REASON_BYTES`] on a character boundary.
    pub fn new(time: DateTime<Utc>, status: Option<u16>, reason: &str) -> Self {
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        FailureReport {
            time: rfc3339(time),
            status,
            reason: reason[..end].to_owned(),
        }
    }
}

/// `t` as the report writes times.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl DeliveryReport {
    /// Parses a stored value; `None` for one that does not parse (a bucket value is outside
    /// input: it is ignored, never trusted to be well formed).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_bad_values_are_ignored() {
        let r = DeliveryReport {
            last_delivery: Some(rfc3339(Utc::now())),
            last_failure: Some(FailureReport::new(Utc::now(), Some(503), &"é".repeat(400))),
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        let back = DeliveryReport::parse(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(back.last_failure.unwrap().reason.len() <= MAX_REASON_BYTES);
        assert_eq!(DeliveryReport::parse(b"[1,2]"), None);
        assert_eq!(status_key("herald-00ff"), "status.herald-00ff");
    }
}
