//! Stream policy: the one place that turns herald's stream settings into JetStream stream
//! configurations. `herald dev` uses it now; the controller reuses it with the `EventStream` spec.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::TryStreamExt as _;

/// Default name of the events stream.
pub const EVENTS_STREAM: &str = "HERALD";
/// Default name of the dead-letter stream.
pub const DLQ_STREAM: &str = "HERALD_DLQ";

/// The policy of one stream, in herald's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPolicy {
    pub name: String,
    pub subjects: Vec<String>,
    pub storage: stream::StorageType,
    pub retention: stream::RetentionPolicy,
    pub discard: stream::DiscardPolicy,
    /// Bytes the stream may hold; `-1` is unlimited (herald's defaults never are).
    pub max_bytes: i64,
    /// `Duration::ZERO` is unlimited.
    pub max_age: Duration,
    pub max_messages: i64,
    /// Per subject (one source and type); `-1` is unlimited.
    pub max_messages_per_subject: i64,
    pub max_message_size: i32,
    pub duplicate_window: Duration,
    pub replicas: usize,
}

impl StreamPolicy {
    /// The events stream: interest retention (an event is kept until every consumer has it),
    /// `discard: new` so a full stream refuses new events (`507`) instead of dropping stored ones.
    pub fn events(name: &str) -> Self {
        StreamPolicy {
            name: name.to_owned(),
            subjects: vec![format!("{}.>", crate::subject::EVENT_PREFIX)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Interest,
            discard: stream::DiscardPolicy::New,
            max_bytes: 1 << 30,
            max_age: Duration::ZERO,
            max_messages: -1,
            max_messages_per_subject: -1,
            max_message_size: -1,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }

    /// The events stream of `herald dev`: `limits` retention with a 24 h max age instead of
    /// `interest`, so what an app publishes locally stays visible (`herald stream info`) and
    /// replayable before any subscriber exists. Clusters keep the interest default.
    pub fn dev_events(name: &str) -> Self {
        StreamPolicy {
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(24 * 3600),
            ..Self::events(name)
        }
    }

    /// The dead-letter stream: limits retention with a max age, so a dead letter outlives the
    /// interest of the consumer that gave up on it; when full, the oldest dead letters go.
    pub fn dead_letters(name: &str) -> Self {
        StreamPolicy {
            name: name.to_owned(),
            subjects: vec!["herald-dlq.>".to_owned()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(14 * 24 * 3600),
            max_messages: -1,
            max_messages_per_subject: -1,
            max_message_size: -1,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }

    pub fn to_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            storage: self.storage,
            retention: self.retention,
            discard: self.discard,
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            max_messages: self.max_messages,
            max_messages_per_subject: self.max_messages_per_subject,
            max_message_size: self.max_message_size,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(
        "stream `{stream}`: {field} cannot be changed on an existing stream (it is {current}, the policy says {wanted}); back up and delete the stream to change it"
    )]
    Immutable {
        stream: String,
        field: &'static str,
        current: String,
        wanted: String,
    },
    #[error("stream `{stream}`: {source}")]
    Nats {
        stream: String,
        source: async_nats::Error,
    },
}

/// Creates the stream, or updates it to match the policy.
pub async fn ensure(
    js: &jetstream::Context,
    policy: &StreamPolicy,
) -> Result<Ensured, StreamError> {
    let nats = |e: async_nats::Error| StreamError::Nats {
        stream: policy.name.clone(),
        source: e,
    };
    let wanted = policy.to_config();
    match js.get_stream(&policy.name).await {
        Ok(mut s) => {
            let current = s.info().await.map_err(|e| nats(e.into()))?.config.clone();
            if current.storage != wanted.storage {
                return Err(StreamError::Immutable {
                    stream: policy.name.clone(),
                    field: "storage",
                    current: format!("{:?}", current.storage),
                    wanted: format!("{:?}", wanted.storage),
                });
            }
            if current.retention != wanted.retention {
                return Err(StreamError::Immutable {
                    stream: policy.name.clone(),
                    field: "retention",
                    current: format!("{:?}", current.retention),
                    wanted: format!("{:?}", wanted.retention),
                });
            }
            let differs = current.subjects != wanted.subjects
                || current.discard != wanted.discard
                || current.max_bytes != wanted.max_bytes
                || current.max_age != wanted.max_age
                || current.max_messages != wanted.max_messages
                || current.max_messages_per_subject != wanted.max_messages_per_subject
                || current.max_message_size != wanted.max_message_size
                || current.duplicate_window != wanted.duplicate_window
                || current.num_replicas != wanted.num_replicas;
            if differs {
                js.update_stream(&wanted)
                    .await
                    .map_err(|e| nats(e.into()))?;
                Ok(Ensured::Updated)
            } else {
                Ok(Ensured::Unchanged)
            }
        }
        Err(e) if is_not_found(&e) => {
            js.create_stream(wanted).await.map_err(|e| nats(e.into()))?;
            Ok(Ensured::Created)
        }
        Err(e) => Err(nats(e.into())),
    }
}

/// Whether `get_stream` failed because the stream does not exist.
pub fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(je) if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// One row of `herald stream info`.
#[derive(Debug, Clone)]
pub struct StreamSummary {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub consumers: usize,
    pub max_bytes: i64,
    pub retention: stream::RetentionPolicy,
}

/// Every stream on the server, as `nats stream ls` lists them.
pub async fn list(js: &jetstream::Context) -> Result<Vec<StreamSummary>, async_nats::Error> {
    let mut out: Vec<StreamSummary> = js
        .streams()
        .map_ok(|i| StreamSummary {
            name: i.config.name.clone(),
            messages: i.state.messages,
            bytes: i.state.bytes,
            consumers: i.state.consumer_count,
            max_bytes: i.config.max_bytes,
            retention: i.config.retention,
        })
        .try_collect()
        .await?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Human-readable byte count (IEC units), as the NATS CLI prints them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let e = StreamPolicy::events("HERALD").to_config();
        assert_eq!(e.subjects, vec!["herald.>"]);
        assert_eq!(e.retention, stream::RetentionPolicy::Interest);
        assert_eq!(e.discard, stream::DiscardPolicy::New);
        assert_eq!(e.storage, stream::StorageType::File);
        assert!(e.max_bytes > 0);
        let d = StreamPolicy::dead_letters("HERALD_DLQ").to_config();
        assert_eq!(d.subjects, vec!["herald-dlq.>"]);
        assert_eq!(d.retention, stream::RetentionPolicy::Limits);
        assert!(d.max_age > Duration::ZERO);
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }
}
