//! The event catalog: every (source, type) seen in the event stream, with its count, its rate
//! over the last minute, when it was last seen, and one sample event.
//!
//! A [`Tail`](herald_core::broker::Tail) follows the stream from [`WINDOW`] ago (headers only:
//! the subject says the source and the type), so the catalog starts with the last hour and
//! stays current. The sample is read in full once per pair and again at most every
//! [`SAMPLE_EVERY`], right when the event is seen (with interest retention it may be gone once
//! every subscriber acknowledged it). Bounded: at most [`MAX_PAIRS`] pairs (more are counted in
//! `others`), samples cut at [`MAX_SAMPLE_BYTES`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::broker::{Broker, Seen, StoredMessage};
use herald_core::subject::{EVENT_PREFIX, parse_event_subject};
use herald_runtime::shutdown::Shutdown;
use serde_json::{Value, json};

/// How far back the catalog starts.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// The most (source, type) pairs kept.
pub const MAX_PAIRS: usize = 10_000;
/// A sample's data is cut here.
pub const MAX_SAMPLE_BYTES: usize = 4096;
/// A pair's sample is read again at most this often.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// After the tail fails, it starts again after this long.
const RETRY: Duration = Duration::from_secs(5);

/// One (source, type).
#[derive(Debug, Clone)]
pub struct Entry {
    pub count: u64,
    pub last_seen: Option<DateTime<Utc>>,
    pub last_sequence: u64,
    /// Events per second of the last 60, by the second they were stored (`[unix second % 60]`,
    /// with the second each slot holds).
    slots: [(i64, u32); 60],
    pub sample: Option<Value>,
    sampled_at: Option<DateTime<Utc>>,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            count: 0,
            last_seen: None,
            last_sequence: 0,
            slots: [(0, 0); 60],
            sample: None,
            sampled_at: None,
        }
    }
}

impl Entry {
    /// Events per second over the minute before `now`.
    pub fn rate(&self, now: DateTime<Utc>) -> f64 {
        let now = now.timestamp();
        let n: u64 = self
            .slots
            .iter()
            .filter(|(sec, _)| *sec > now - 60 && *sec <= now)
            .map(|(_, n)| u64::from(*n))
            .sum();
        n as f64 / 60.0
    }

    fn record(&mut self, seen: &Seen) {
        self.count += 1;
        self.last_sequence = self.last_sequence.max(seen.sequence);
        self.last_seen = Some(self.last_seen.map_or(seen.time, |t| t.max(seen.time)));
        let sec = seen.time.timestamp();
        let slot = &mut self.slots[sec.rem_euclid(60) as usize];
        if slot.0 == sec {
            slot.1 = slot.1.saturating_add(1);
        } else if slot.0 < sec {
            *slot = (sec, 1);
        }
    }
}

/// What the tail has seen.
#[derive(Debug, Default)]
pub struct State {
    pub pairs: BTreeMap<(String, String), Entry>,
    /// Events of pairs beyond [`MAX_PAIRS`], and on subjects that are not herald's.
    pub others: u64,
    /// The last sequence counted (a restarted tail skips what it already counted).
    pub last_sequence: u64,
    pub last_time: Option<DateTime<Utc>>,
    /// Why the tail is not running, when it is not.
    pub error: Option<String>,
}

impl State {
    /// Counts one event; says whether its pair wants a fresh sample.
    pub fn record(&mut self, seen: &Seen) -> Option<(String, String)> {
        if seen.sequence <= self.last_sequence {
            return None;
        }
        self.last_sequence = seen.sequence;
        self.last_time = Some(seen.time);
        let Ok(pair) = parse_event_subject(&seen.subject) else {
            self.others += 1;
            return None;
        };
        if !self.pairs.contains_key(&pair) && self.pairs.len() >= MAX_PAIRS {
            self.others += 1;
            return None;
        }
        let entry = self.pairs.entry(pair.clone()).or_default();
        entry.record(seen);
        let stale = entry
            .sampled_at
            .is_none_or(|at| (seen.time - at).to_std().unwrap_or_default() >= SAMPLE_EVERY);
        stale.then_some(pair)
    }
}

/// The catalog, shared by the tail and the API.
#[derive(Default)]
pub struct Catalog {
    pub state: Mutex<State>,
}

/// A stored event as the console shows it: its attributes (from the `ce-` headers) and its data,
/// cut at [`MAX_SAMPLE_BYTES`]; text when it is UTF-8, else base64.
pub fn sample(m: &StoredMessage) -> Value {
    let mut attributes = serde_json::Map::new();
    for (name, value) in m.headers.iter() {
        let lower = name.to_ascii_lowercase();
        if let Some(attr) = lower.strip_prefix("ce-") {
            let decoded = percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned();
            attributes.insert(attr.to_owned(), Value::String(decoded));
        } else if lower == "content-type" {
            attributes.insert("datacontenttype".into(), Value::String(value.to_owned()));
        }
    }
    let shown = &m.payload[..m.payload.len().min(MAX_SAMPLE_BYTES)];
    let data = match std::str::from_utf8(shown) {
        Ok(text) => json!({"text": text}),
        Err(_) => {
            use base64::Engine as _;
            json!({"base64": base64::engine::general_purpose::STANDARD.encode(shown)})
        }
    };
    json!({
        "sequence": m.sequence,
        "time": m.time.to_rfc3339(),
        "attributes": attributes,
        "data": data,
        "dataBytes": m.payload.len(),
        "truncated": m.payload.len() > MAX_SAMPLE_BYTES,
    })
}

fn lock(c: &Catalog) -> std::sync::MutexGuard<'_, State> {
    c.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Follows `stream` into `catalog` until `stop`; starts again after [`RETRY`] when the tail
/// fails (NATS away, the stream not made yet).
pub async fn follow(
    catalog: Arc<Catalog>,
    broker: Arc<dyn Broker>,
    stream: String,
    stop: Shutdown,
) {
    let filter = format!("{EVENT_PREFIX}.>");
    loop {
        let since = {
            let st = lock(&catalog);
            // Again from where it stopped (the sequence check skips what was counted).
            st.last_time.unwrap_or_else(|| {
                Utc::now() - chrono::Duration::from_std(WINDOW).unwrap_or_default()
            })
        };
        let tail = tokio::select! {
            _ = stop.wait() => return,
            t = broker.tail(&stream, &filter, since) => t,
        };
        match tail {
            Ok(mut tail) => {
                lock(&catalog).error = None;
                loop {
                    let next = tokio::select! {
                        _ = stop.wait() => return,
                        n = tail.next() => n,
                    };
                    let seen = match next {
                        Some(Ok(seen)) => seen,
                        Some(Err(e)) => {
                            lock(&catalog).error = Some(e.to_string());
                            break;
                        }
                        None => break,
                    };
                    let wants_sample = lock(&catalog).record(&seen);
                    if let Some(pair) = wants_sample
                        && let Ok(Some(m)) = broker.message(&stream, seen.sequence).await
                    {
                        let mut st = lock(&catalog);
                        if let Some(e) = st.pairs.get_mut(&pair) {
                            e.sample = Some(sample(&m));
                            e.sampled_at = Some(seen.time);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "console: the catalog cannot follow the stream yet");
                lock(&catalog).error = Some(e.to_string());
            }
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

impl Catalog {
    /// The catalog as the API shows it, filtered by `query` (a substring of source or type).
    pub fn view(&self, query: &str, now: DateTime<Utc>) -> Value {
        let st = lock(self);
        let q = query.to_lowercase();
        let items: Vec<Value> = st
            .pairs
            .iter()
            .filter(|((source, ty), _)| {
                q.is_empty() || source.to_lowercase().contains(&q) || ty.to_lowercase().contains(&q)
            })
            .map(|((source, ty), e)| {
                json!({
                    "source": source,
                    "type": ty,
                    "count": e.count,
                    "rate": e.rate(now),
                    "lastSeen": e.last_seen.map(|t| t.to_rfc3339()),
                    "sample": e.sample,
                })
            })
            .collect();
        json!({
            "items": items,
            "others": st.others,
            "since": (now - chrono::Duration::from_std(WINDOW).unwrap_or_default()).to_rfc3339(),
            "error": st.error,
        })
    }

    /// (source, type, events per second) of every pair.
    pub fn rates(&self, now: DateTime<Utc>) -> Vec<(String, String, f64, u64)> {
        lock(self)
            .pairs
            .iter()
            .map(|((s, t), e)| (s.clone(), t.clone(), e.rate(now), e.count))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::subject::event_subject;

    fn seen(seq: u64, source: &str, ty: &str, secs: i64) -> Seen {
        Seen {
            sequence: seq,
            subject: event_subject(source, ty),
            time: DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap(),
        }
    }

    #[test]
    fn counts_rates_and_samples_each_pair() {
        let mut st = State::default();
        assert!(
            st.record(&seen(1, "checkout", "order.paid.v1", 0))
                .is_some(),
            "first sight samples"
        );
        assert!(
            st.record(&seen(2, "checkout", "order.paid.v1", 1))
                .is_some(),
            "not sampled yet"
        );
        st.pairs
            .values_mut()
            .for_each(|e| e.sampled_at = Some(seen(2, "a", "b", 1).time));
        assert!(
            st.record(&seen(3, "checkout", "order.paid.v1", 2))
                .is_none()
        );
        assert!(
            st.record(&seen(4, "checkout", "order.paid.v1", 61))
                .is_some(),
            "a minute later"
        );
        // Seen already (a restarted tail): not counted twice.
        assert!(
            st.record(&seen(3, "checkout", "order.paid.v1", 2))
                .is_none()
        );
        let e = &st.pairs[&("checkout".into(), "order.paid.v1".into())];
        assert_eq!(e.count, 4);
        assert_eq!(e.last_sequence, 4);
        // Events at +1, +2 and +61 s: the minute before +61 holds +2 and +61.
        let now = DateTime::from_timestamp(1_700_000_061, 0).unwrap();
        assert!((e.rate(now) - 2.0 / 60.0).abs() < 1e-9, "{}", e.rate(now));
        st.record(&Seen {
            sequence: 9,
            subject: "not.herald".into(),
            time: now,
        });
        assert_eq!(st.others, 1);
    }

    #[test]
    fn the_catalog_is_bounded() {
        let mut st = State::default();
        for i in 0..(MAX_PAIRS as u64 + 5) {
            st.record(&seen(i + 1, "s", &format!("t{i}"), 0));
        }
        assert_eq!(st.pairs.len(), MAX_PAIRS);
        assert_eq!(st.others, 5);
    }
}
