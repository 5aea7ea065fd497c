//! Reading and replaying the dead-letter stream: what `herald deadletter list|replay` and the
//! console's dead-letter pages share.
//!
//! Replay publishes the original event (headers and data as stored) back to its original subject
//! with `Herald-Replay-For: <namespace/app-id/filter>` naming the one subscription that failed, so
//! only that subscription delivers it again; every other subscription of the same type
//! acknowledges it without delivering. The replay's `Nats-Msg-Id` is `replay:<dead-letter
//! sequence>`, so replaying twice within the duplicate window stores it once. Callers delete the
//! dead letter only after the replay was stored.

use std::time::Duration;

use crate::broker::{Admin, BrokerError, Store, StoreError, StoredMessage};
use crate::delivery::{REPLAY_FOR, dlq_header};
use crate::wire::{DEDUP_HEADER, Headers, Message};

/// Why dead letters could not be read or replayed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter stream `{stream}`: {source}")]
    Stream { stream: String, source: BrokerError },
    #[error("dead letter {seq}: {source}")]
    Read { seq: u64, source: BrokerError },
    #[error("dead letter {0} has no Herald-Dlq-Subject header, so it cannot be replayed")]
    NoSubject(u64),
    #[error("replay of dead letter {seq}: {source}")]
    Replay { seq: u64, source: StoreError },
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub seq: u64,
    pub age: Duration,
    /// `namespace/app-id/filter` of the subscription that failed.
    pub subscriber: String,
    /// The consumer it was leased from.
    pub consumer: String,
    pub ty: String,
    pub source: String,
    pub id: String,
    pub status: String,
    pub attempts: String,
    pub reason: String,
    pub message: StoredMessage,
}

fn header(m: &StoredMessage, name: &str) -> String {
    m.headers.get(name).map(str::to_owned).unwrap_or_default()
}

fn decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

impl DeadLetter {
    /// Reads a stored dead letter's headers; `now` gives its age.
    pub fn from_stored(m: StoredMessage, now: chrono::DateTime<chrono::Utc>) -> Self {
        let age = Duration::from_secs(u64::try_from((now - m.time).num_seconds()).unwrap_or(0));
        DeadLetter {
            seq: m.sequence,
            age,
            subscriber: header(&m, dlq_header::SUBSCRIBER),
            consumer: header(&m, dlq_header::CONSUMER),
            ty: decode(&header(&m, "ce-type")),
            source: decode(&header(&m, "ce-source")),
            id: decode(&header(&m, "ce-id")),
            status: header(&m, dlq_header::STATUS),
            attempts: header(&m, dlq_header::ATTEMPTS),
            reason: header(&m, dlq_header::REASON),
            message: m,
        }
    }
}

/// Which dead letters to work on; every field that is set must match.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub app: Option<String>,
    pub ty: Option<String>,
    pub since: Option<Duration>,
    pub seqs: Option<Vec<u64>>,
    /// Leased from one of these consumers (a Subscription resource's).
    pub consumers: Option<Vec<String>>,
}

impl Selection {
    pub fn matches(&self, d: &DeadLetter) -> bool {
        let app_of = d.subscriber.split('/').nth(1).unwrap_or("");
        self.app.as_deref().is_none_or(|a| a == app_of)
            && self.ty.as_deref().is_none_or(|t| t == d.ty)
            && self.since.is_none_or(|s| d.age <= s)
            && self.seqs.as_ref().is_none_or(|seqs| seqs.contains(&d.seq))
            && self
                .consumers
                .as_ref()
                .is_none_or(|c| c.contains(&d.consumer))
    }
}

/// What a listing found, newest first, and whether it read the whole stream.
#[derive(Debug, Default)]
pub struct Listing {
    pub found: Vec<DeadLetter>,
    /// Dead letters read (matching or not).
    pub scanned: u64,
    /// False when `max_scan` stopped the listing before the oldest dead letter.
    pub complete: bool,
}

/// Reads the dead letters that match, newest first, reading at most `max_scan` of them (each one
/// request to the broker): `None` reads the whole stream.
pub async fn list(
    admin: &dyn Admin,
    stream: &str,
    sel: &Selection,
    max_scan: Option<u64>,
) -> Result<Listing, DeadLetterError> {
    let state = admin
        .stream(stream)
        .await
        .map_err(|source| DeadLetterError::Stream {
            stream: stream.to_owned(),
            source,
        })?;
    let mut out = Listing {
        complete: true,
        ..Listing::default()
    };
    if state.messages == 0 {
        return Ok(out);
    }
    let now = chrono::Utc::now();
    for seq in (state.first_sequence..=state.last_sequence).rev() {
        if max_scan.is_some_and(|max| out.scanned >= max) {
            out.complete = false;
            break;
        }
        let m = match admin.message(stream, seq).await {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(source) => return Err(DeadLetterError::Read { seq, source }),
        };
        out.scanned += 1;
        let d = DeadLetter::from_stored(m, now);
        if sel.matches(&d) {
            out.found.push(d);
        }
    }
    Ok(out)
}

/// The event a dead letter replays: the original headers and data, for its subscription only.
pub fn replay_message(d: &DeadLetter) -> Result<Message, DeadLetterError> {
    let subject = header(&d.message, dlq_header::SUBJECT);
    if subject.is_empty() {
        return Err(DeadLetterError::NoSubject(d.seq));
    }
    let mut headers = Headers::new();
    for (name, value) in d.message.headers.iter() {
        if name.starts_with(dlq_header::PREFIX) || name.eq_ignore_ascii_case(DEDUP_HEADER) {
            continue;
        }
        headers.push(name, value);
    }
    headers.push(REPLAY_FOR, &d.subscriber);
    Ok(Message {
        subject,
        headers,
        payload: d.message.payload.clone(),
        dedup_id: Some(format!("replay:{}", d.seq)),
    })
}

/// Publishes a dead letter back for its subscription; returns once the broker stored it.
pub async fn replay(store: &dyn Store, d: &DeadLetter) -> Result<(), DeadLetterError> {
    let failed = |source| DeadLetterError::Replay { seq: d.seq, source };
    store
        .send(replay_message(d)?)
        .await
        .map_err(failed)?
        .stored()
        .await
        .map_err(failed)
}
