//! Stream policy in herald's terms: the one description of `HERALD` and `HERALD_DLQ` that
//! `herald dev` and the controller both apply (through the broker seam's `Admin::ensure_stream`),
//! with nothing of any broker's types in it.

use std::time::Duration;

/// Default name of the events stream.
pub const EVENTS_STREAM: &str = "HERALD";
/// Default name of the dead-letter stream.
pub const DLQ_STREAM: &str = "HERALD_DLQ";

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

/// How long a stream keeps a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Until every consumer has it (the events stream's default).
    Interest,
    /// Until a limit (size, age, count) removes it.
    Limits,
}

/// What a full stream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Refuses new messages (publishers get `507`).
    New,
    /// Drops the oldest.
    Old,
}

/// The policy of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPolicy {
    pub name: String,
    pub subjects: Vec<String>,
    pub storage: Storage,
    pub retention: Retention,
    pub discard: Discard,
    /// Bytes the stream may hold; `-1` is unlimited (herald's defaults never are).
    pub max_bytes: i64,
    /// `Duration::ZERO` is unlimited.
    pub max_age: Duration,
    pub max_messages: i64,
    /// Per subject (one source and type); `-1` is unlimited.
    pub max_messages_per_subject: i64,
    /// `-1` is the server's limit.
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
            storage: Storage::File,
            retention: Retention::Interest,
            discard: Discard::New,
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
            retention: Retention::Limits,
            max_age: Duration::from_secs(24 * 3600),
            ..Self::events(name)
        }
    }

    /// The dead-letter stream: limits retention with a max age, so a dead letter outlives the
    /// interest of the consumer that gave up on it; when full, the oldest dead letters go.
    pub fn dead_letters(name: &str) -> Self {
        StreamPolicy {
            name: name.to_owned(),
            subjects: vec![format!("{}.>", crate::delivery::DLQ_PREFIX)],
            storage: Storage::File,
            retention: Retention::Limits,
            discard: Discard::Old,
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(14 * 24 * 3600),
            max_messages: -1,
            max_messages_per_subject: -1,
            max_message_size: -1,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

/// What ensuring a stream did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Updated,
    Unchanged,
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
        let e = StreamPolicy::events("HERALD");
        assert_eq!(e.subjects, vec!["herald.>"]);
        assert_eq!(e.retention, Retention::Interest);
        assert_eq!(e.discard, Discard::New);
        assert_eq!(e.storage, Storage::File);
        assert!(e.max_bytes > 0);
        let d = StreamPolicy::dead_letters("HERALD_DLQ");
        assert_eq!(d.subjects, vec!["herald-dlq.>"]);
        assert_eq!(d.retention, Retention::Limits);
        assert!(d.max_age > Duration::ZERO);
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }
}
