//! The event catalog: every (source, type) published, with its count and its rate over the last
//! minute (since the console started), when it was last seen, and one sample event.
//!
//! Two sources: an [`Observer`](herald_core::broker::Observer) sees every publish as it happens,
//! stored or not (an interest-retention stream keeps nothing no consumer wants, and a type nobody
//! subscribes to yet is exactly what one looks for when creating a trigger); and at start, a
//! [`Tail`](herald_core::broker::Tail) of what the stream still holds from the last
//! [`WINDOW`] (headers only) finds the pairs seen before, with their last time and a sample, so a
//! restart does not start blank. Counts and rates are the observer's alone, so nothing is
//! counted twice. Bounded: at most [`MAX_PAIRS`] pairs (more are counted in `others`), samples
//! cut at [`MAX_SAMPLE_BYTES`], refreshed at most every [`SAMPLE_EVERY`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::broker::{Broker, Observed, Seen};
use herald_core::subject::{EVENT_PREFIX, parse_event_subject};
use herald_core::wire::Headers;
use herald_runtime::shutdown::Shutdown;
use serde_json::{Value, json};

/// How far back the catalog looks in the stream at start.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// The most (source, type) pairs kept.
pub const MAX_PAIRS: usize = 10_000;
/// A sample's data is cut here.
pub const MAX_SAMPLE_BYTES: usize = 4096;
/// A pair's sample is read again at most this often.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// After the observer fails, it starts again after this long.
const RETRY: Duration = Duration::from_secs(5);
/// The look back at start ends when the tail has been quiet this long.
const HISTORY_QUIET: Duration = Duration::from_secs(2);

/// One (source, type).
#[derive(Debug, Clone)]
pub struct Entry {
    pub count: u64,
    pub last_seen: Option<DateTime<Utc>>,
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

    fn count(&mut self, time: DateTime<Utc>) {
        self.count += 1;
        self.seen_at(time);
        let sec = time.timestamp();
        let slot = &mut self.slots[sec.rem_euclid(60) as usize];
        if slot.0 == sec {
            slot.1 = slot.1.saturating_add(1);
        } else if slot.0 < sec {
            *slot = (sec, 1);
        }
    }

    fn seen_at(&mut self, time: DateTime<Utc>) {
        self.last_seen = Some(self.last_seen.map_or(time, |t| t.max(time)));
    }

    fn wants_sample(&self, now: DateTime<Utc>) -> bool {
        self.sampled_at
            .is_none_or(|at| (now - at).to_std().unwrap_or_default() >= SAMPLE_EVERY)
    }
}

/// What the catalog knows.
#[derive(Debug, Default)]
pub struct State {
    pub pairs: BTreeMap<(String, String), Entry>,
    /// Publishes of pairs beyond [`MAX_PAIRS`], and on subjects that are not herald's.
    pub others: u64,
    /// Why the observer is not running, when it is not.
    pub error: Option<String>,
}

impl State {
    /// The entry of a subject's pair, made if there is room.
    fn entry(&mut self, subject: &str) -> Option<(&mut Entry, (String, String))> {
        let Ok(pair) = parse_event_subject(subject) else {
            self.others += 1;
            return None;
        };
        if !self.pairs.contains_key(&pair) && self.pairs.len() >= MAX_PAIRS {
            self.others += 1;
            return None;
        }
        Some((self.pairs.entry(pair.clone()).or_default(), pair))
    }

    /// Counts one publish, and keeps it as the pair's sample when that is due.
    pub fn observed(&mut self, o: &Observed) {
        if let Some((e, _)) = self.entry(&o.subject) {
            e.count(o.time);
            if e.wants_sample(o.time) {
                e.sample = Some(sample(&o.headers, &o.payload, o.time, None));
                e.sampled_at = Some(o.time);
            }
        }
    }

    /// Notes an event the stream held from before; says whether its pair still needs a sample.
    pub fn held(&mut self, seen: &Seen) -> Option<(String, String)> {
        let (e, pair) = self.entry(&seen.subject)?;
        e.seen_at(seen.time);
        e.sample.is_none().then_some(pair)
    }
}

/// The catalog, shared by its readers and the API.
pub struct Catalog {
    pub state: Mutex<State>,
    /// Counts and rates are from this time on.
    pub started: DateTime<Utc>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            state: Mutex::default(),
            started: Utc::now(),
        }
    }
}

/// Data as the console shows it, cut at `max` bytes: `{"text": ...}` when it is UTF-8 (cut at a
/// character boundary), else `{"base64": ...}`.
pub fn shown_data(payload: &[u8], max: usize) -> Value {
    let shown = &payload[..payload.len().min(max)];
    let text = match std::str::from_utf8(shown) {
        Ok(text) => Some(text),
        // Cut in the middle of a character: the text up to it.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&shown[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    match text {
        Some(text) => json!({"text": text}),
        None => {
            use base64::Engine as _;
            json!({"base64": base64::engine::general_purpose::STANDARD.encode(shown)})
        }
    }
}

/// An event as the console shows it: its attributes (from the `ce-` headers) and its data, cut
/// at [`MAX_SAMPLE_BYTES`]; text when it is UTF-8, else base64.
pub fn sample(
    headers: &Headers,
    payload: &[u8],
    time: DateTime<Utc>,
    sequence: Option<u64>,
) -> Value {
    let mut attributes = serde_json::Map::new();
    for (name, value) in headers.iter() {
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
    let data = shown_data(payload, MAX_SAMPLE_BYTES);
    json!({
        "sequence": sequence,
        "time": time.to_rfc3339(),
        "attributes": attributes,
        "data": data,
        "dataBytes": payload.len(),
        "truncated": payload.len() > MAX_SAMPLE_BYTES,
    })
}

fn lock(c: &Catalog) -> std::sync::MutexGuard<'_, State> {
    c.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fills `catalog` until `stop`: what the stream holds from the last [`WINDOW`], once, then
/// every publish as it happens (the observer starts first, so nothing falls between).
pub async fn follow(
    catalog: Arc<Catalog>,
    broker: Arc<dyn Broker>,
    stream: String,
    stop: Shutdown,
) {
    let filter = format!("{EVENT_PREFIX}.>");
    let mut looked_back = false;
    loop {
        let observer = tokio::select! {
            _ = stop.wait() => return,
            o = broker.observe(&filter) => o,
        };
        match observer {
            Ok(mut observer) => {
                lock(&catalog).error = None;
                if !looked_back {
                    looked_back = true;
                    let history = look_back(&catalog, broker.as_ref(), &stream, &filter);
                    tokio::select! {
                        _ = stop.wait() => return,
                        () = history => {}
                    }
                }
                loop {
                    let next = tokio::select! {
                        _ = stop.wait() => return,
                        n = observer.next() => n,
                    };
                    match next {
                        Some(o) => lock(&catalog).observed(&o),
                        None => break,
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "console: the catalog cannot observe publishes yet");
                lock(&catalog).error = Some(e.to_string());
            }
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Reads what the stream holds from the last [`WINDOW`], up to its last event at the start.
/// Publishes meanwhile queue at the observer.
async fn look_back(catalog: &Catalog, broker: &dyn Broker, stream: &str, filter: &str) {
    let Ok(state) = broker.stream(stream).await else {
        return;
    };
    if state.messages == 0 {
        return;
    }
    let since = Utc::now() - chrono::Duration::from_std(WINDOW).unwrap_or_default();
    let Ok(mut tail) = broker.tail(stream, filter, since).await else {
        return;
    };
    while let Ok(Some(Ok(seen))) = tokio::time::timeout(HISTORY_QUIET, tail.next()).await {
        let wants_sample = lock(catalog).held(&seen);
        if let Some(pair) = wants_sample
            && let Ok(Some(m)) = broker.message(stream, seen.sequence).await
        {
            let mut st = lock(catalog);
            if let Some(e) = st.pairs.get_mut(&pair) {
                e.sample = Some(sample(&m.headers, &m.payload, m.time, Some(m.sequence)));
            }
        }
        if seen.sequence >= state.last_sequence {
            break;
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
            "since": self.started.to_rfc3339(),
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

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn published(source: &str, ty: &str, secs: i64, data: &str) -> Observed {
        let mut headers = Headers::new();
        headers.push("ce-type", ty);
        headers.push("ce-source", source);
        Observed {
            subject: event_subject(source, ty),
            headers,
            payload: bytes::Bytes::copy_from_slice(data.as_bytes()),
            time: at(secs),
        }
    }

    #[test]
    fn publishes_are_counted_rated_and_sampled() {
        let mut st = State::default();
        st.observed(&published("checkout", "order.paid.v1", 1, "first"));
        st.observed(&published("checkout", "order.paid.v1", 2, "second"));
        st.observed(&published("checkout", "order.paid.v1", 61, "third"));
        let e = &st.pairs[&("checkout".into(), "order.paid.v1".into())];
        assert_eq!(e.count, 3);
        assert_eq!(e.last_seen, Some(at(61)));
        // The minute before +61 holds +2 and +61.
        assert!(
            (e.rate(at(61)) - 2.0 / 60.0).abs() < 1e-9,
            "{}",
            e.rate(at(61))
        );
        // Sampled at once, then again a minute later, not in between.
        let s = e.sample.as_ref().unwrap();
        assert_eq!(s["data"]["text"], "third");
        assert_eq!(s["attributes"]["source"], "checkout");
        st.observed(&Observed {
            subject: "not.herald".into(),
            headers: Headers::new(),
            payload: bytes::Bytes::new(),
            time: at(62),
        });
        assert_eq!(st.others, 1);
    }

    #[test]
    fn events_held_from_before_are_found_not_counted() {
        let mut st = State::default();
        let seen = Seen {
            sequence: 7,
            subject: event_subject("checkout", "order.paid.v1"),
            time: at(5),
        };
        assert!(
            st.held(&seen).is_some(),
            "a pair without a sample asks for one"
        );
        let e = &st.pairs[&("checkout".into(), "order.paid.v1".into())];
        assert_eq!((e.count, e.last_seen), (0, Some(at(5))));
    }

    #[test]
    fn the_catalog_is_bounded() {
        let mut st = State::default();
        for i in 0..(MAX_PAIRS as i64 + 5) {
            st.observed(&published("s", &format!("t{i}"), 0, ""));
        }
        assert_eq!(st.pairs.len(), MAX_PAIRS);
        assert_eq!(st.others, 5);
        let big = "x".repeat(MAX_SAMPLE_BYTES + 10);
        let v = sample(&Headers::new(), big.as_bytes(), at(0), None);
        assert_eq!(v["truncated"], true);
        assert_eq!(v["data"]["text"].as_str().unwrap().len(), MAX_SAMPLE_BYTES);
        // Cut inside a character: text up to it; not UTF-8 at all: base64.
        assert_eq!(shown_data("aé".as_bytes(), 2), json!({"text": "a"}));
        assert_eq!(shown_data(&[0xff, 0x00], 10), json!({"base64": "/wA="}));
    }
}
