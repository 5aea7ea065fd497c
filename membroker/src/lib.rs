//! An in-memory broker implementing every trait of [`herald_core::broker`], for unit tests of the
//! components built on them (the delivery engine's retry budget, drain and dead-lettering; the
//! publish API) under `tokio::time::pause()`: time here is tokio's, so a test advances the clock
//! instead of sleeping.
//!
//! It keeps what the components rely on, as JetStream does: streams that take messages by subject
//! (NATS wildcards), deduplication by id, durable consumers shared by every handle bound to them,
//! `max ack pending`, leases that time out after the ack wait, delayed redelivery counting
//! deliveries, pull requests that end when filled or expired, and a key-value bucket that can be
//! followed. It does not model retention (nothing is ever removed but by `delete_message`),
//! replicas or limits, and it never fails unless told to ([`MemBroker::set_connected`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use herald_core::broker::{
    Admin, BoxFuture, BrokerError, ConfigStore, ConsumerState, Consumers, KeyWatch, Lease,
    LeaseInfo, Leased, Observed, Observer, Pending, Seen, Settle, Store, StoreError, StoredMessage,
    StreamError, StreamState, Tail,
};
use herald_core::consumer::ConsumerSpec;
use herald_core::contract::StartPosition;
use herald_core::policy::{Ensured, StreamPolicy};
use herald_core::wire::{HeaderView, Headers, Message};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// The broker; clones share it.
#[derive(Clone, Default)]
pub struct MemBroker {
    state: Arc<Mutex<State>>,
    /// Woken on every change, so waiting pull requests look again.
    changed: Arc<Notify>,
}

#[derive(Default)]
struct State {
    disconnected: bool,
    streams: BTreeMap<String, MemStream>,
    buckets: HashMap<String, HashMap<String, Bytes>>,
    watchers: Vec<(String, String, mpsc::UnboundedSender<Option<Bytes>>)>,
    /// Observers: their filter and where each publish goes.
    observers: Vec<(String, mpsc::UnboundedSender<Observed>)>,
}

struct MemStream {
    policy: StreamPolicy,
    messages: BTreeMap<u64, StoredMessage>,
    last_sequence: u64,
    seen: HashSet<String>,
    consumers: BTreeMap<String, MemConsumer>,
}

struct MemConsumer {
    spec: ConsumerSpec,
    /// The next sequence never delivered.
    next_sequence: u64,
    /// Delivered and not settled: the delivery count and when the lease runs out.
    leased: BTreeMap<u64, (u32, Instant)>,
    /// Handed back: the delivery count so far and when it is due again.
    returned: BTreeMap<u64, (u32, Instant)>,
    /// Open pull requests.
    waiting: usize,
}

use herald_core::subject::subject_matches as matches;

impl MemConsumer {
    /// Leases that ran out go back, due at once.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .leased
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some((delivered, _)) = self.leased.remove(&seq) {
                self.returned.insert(seq, (delivered, now));
            }
        }
    }

    /// The next event to deliver now, if any: returned ones first, then new ones.
    fn take(&mut self, stream: &BTreeMap<u64, StoredMessage>, now: Instant) -> Option<(u64, u32)> {
        self.expire(now);
        if self.leased.len() >= self.spec.max_ack_pending.max(1) {
            return None;
        }
        let due = self
            .returned
            .iter()
            .filter(|(seq, (_, at))| *at <= now && stream.contains_key(seq))
            .map(|(seq, _)| *seq)
            .next();
        let (seq, delivered) = match due {
            Some(seq) => {
                let (delivered, _) = self.returned.remove(&seq)?;
                (seq, delivered + 1)
            }
            None => {
                let seq = stream
                    .range(self.next_sequence..)
                    .find(|(_, m)| matches(&self.spec.filter_subject, &m.subject))
                    .map(|(seq, _)| *seq)?;
                self.next_sequence = seq + 1;
                (seq, 1)
            }
        };
        self.leased
            .insert(seq, (delivered, now + self.spec.ack_wait));
        Some((seq, delivered))
    }

    /// When something may become deliverable without any other change.
    fn next_due(&self) -> Option<Instant> {
        self.returned
            .values()
            .map(|(_, at)| *at)
            .chain(self.leased.values().map(|(_, until)| *until))
            .min()
    }

    /// Events never delivered.
    fn pending(&self, stream: &BTreeMap<u64, StoredMessage>) -> u64 {
        stream
            .range(self.next_sequence..)
            .filter(|(_, m)| matches(&self.spec.filter_subject, &m.subject))
            .count() as u64
    }
}

impl MemBroker {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; carry on with the
        // state it left.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects or disconnects: while disconnected every call fails as a lost connection would.
    pub fn set_connected(&self, connected: bool) {
        self.lock().disconnected = !connected;
        self.changed.notify_waiters();
    }

    /// Every message of a stream, in order.
    pub fn stored(&self, stream: &str) -> Vec<StoredMessage> {
        self.lock()
            .streams
            .get(stream)
            .map(|s| s.messages.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A consumer's state.
    pub fn consumer_state(&self, stream: &str, name: &str) -> Option<ConsumerState> {
        let st = self.lock();
        let s = st.streams.get(stream)?;
        let c = s.consumers.get(name)?;
        Some(state_of(name, c, s))
    }

    /// The settings a consumer was last bound or updated with.
    pub fn consumer_spec(&self, stream: &str, name: &str) -> Option<ConsumerSpec> {
        let st = self.lock();
        Some(st.streams.get(stream)?.consumers.get(name)?.spec.clone())
    }

    fn disconnected(&self) -> Result<(), BrokerError> {
        if self.lock().disconnected {
            Err(BrokerError::Disconnected(
                "the in-memory broker is disconnected".into(),
            ))
        } else {
            Ok(())
        }
    }
}

fn state_of(name: &str, c: &MemConsumer, s: &MemStream) -> ConsumerState {
    ConsumerState {
        name: name.to_owned(),
        description: Some(c.spec.description.clone()),
        filter_subject: c.spec.filter_subject.clone(),
        pending: c.pending(&s.messages),
        ack_pending: c.leased.len() + c.returned.len(),
        waiting: c.waiting,
    }
}

impl Store for MemBroker {
    fn is_connected(&self) -> bool {
        !self.lock().disconnected
    }

    fn send(&self, msg: Message) -> BoxFuture<'_, Result<Pending, StoreError>> {
        Box::pin(async move {
            let mut st = self.lock();
            if st.disconnected {
                return Err(StoreError::Unavailable("not connected".into()));
            }
            // Observers see every publish, as a core NATS subscription does.
            let now = chrono::Utc::now();
            st.observers.retain(|(filter, tx)| {
                !matches(filter, &msg.subject)
                    || tx
                        .send(Observed {
                            subject: msg.subject.clone(),
                            headers: msg.headers.clone(),
                            payload: msg.payload.clone(),
                            time: now,
                        })
                        .is_ok()
            });
            let Some(stream) = st
                .streams
                .values_mut()
                .find(|s| s.policy.subjects.iter().any(|p| matches(p, &msg.subject)))
            else {
                return Err(StoreError::NoStream(msg.subject));
            };
            if let Some(id) = &msg.dedup_id
                && !stream.seen.insert(id.clone())
            {
                return Ok(Pending::ready(Ok(())));
            }
            stream.last_sequence += 1;
            let sequence = stream.last_sequence;
            stream.messages.insert(
                sequence,
                StoredMessage {
                    sequence,
                    subject: msg.subject,
                    headers: msg.headers,
                    payload: msg.payload,
                    time: chrono::Utc::now(),
                },
            );
            drop(st);
            self.changed.notify_waiters();
            Ok(Pending::ready(Ok(())))
        })
    }
}

impl Consumers for MemBroker {
    fn bind(
        &self,
        stream: &str,
        spec: &ConsumerSpec,
    ) -> BoxFuture<'_, Result<Box<dyn Lease>, BrokerError>> {
        let (stream, spec) = (stream.to_owned(), spec.clone());
        Box::pin(async move {
            self.disconnected()?;
            let mut st = self.lock();
            let s = st
                .streams
                .get_mut(&stream)
                .ok_or_else(|| BrokerError::NoStream(stream.clone()))?;
            let start = match spec.start {
                StartPosition::All => 1,
                StartPosition::New => s.last_sequence + 1,
                StartPosition::Time(t) => s
                    .messages
                    .values()
                    .find(|m| m.time >= t)
                    .map_or(s.last_sequence + 1, |m| m.sequence),
            };
            let name = spec.name.clone();
            match s.consumers.get_mut(&name) {
                // An existing consumer keeps its position.
                Some(c) => c.spec = spec,
                None => {
                    s.consumers.insert(
                        name.clone(),
                        MemConsumer {
                            spec,
                            next_sequence: start,
                            leased: BTreeMap::new(),
                            returned: BTreeMap::new(),
                            waiting: 0,
                        },
                    );
                }
            }
            Ok(Box::new(MemLease {
                broker: self.clone(),
                stream,
                consumer: name,
                open: None,
            }) as Box<dyn Lease>)
        })
    }
}

/// An open pull request: how many more events, until when.
struct Request {
    remaining: usize,
    until: Instant,
}

struct MemLease {
    broker: MemBroker,
    stream: String,
    consumer: String,
    open: Option<Request>,
}

impl MemLease {
    fn close(&mut self) {
        if self.open.take().is_some() {
            let mut st = self.broker.lock();
            if let Some(c) = st
                .streams
                .get_mut(&self.stream)
                .and_then(|s| s.consumers.get_mut(&self.consumer))
            {
                c.waiting = c.waiting.saturating_sub(1);
            }
        }
    }
}

impl Drop for MemLease {
    fn drop(&mut self) {
        self.close();
    }
}

impl Lease for MemLease {
    fn request(&mut self, max: usize, wait: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.broker.disconnected()?;
            self.close();
            let mut st = self.broker.lock();
            let c = st
                .streams
                .get_mut(&self.stream)
                .and_then(|s| s.consumers.get_mut(&self.consumer))
                .ok_or_else(|| BrokerError::NotFound(format!("consumer {}", self.consumer)))?;
            c.waiting += 1;
            drop(st);
            self.open = Some(Request {
                remaining: max,
                until: Instant::now() + wait,
            });
            Ok(())
        })
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Result<Box<dyn Leased>, BrokerError>>> {
        Box::pin(async move {
            loop {
                let request = self.open.as_ref()?;
                let until = request.until;
                let changed = self.broker.changed.clone();
                let notified = changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let now = Instant::now();
                let (taken, due) = {
                    let mut st = self.broker.lock();
                    if st.disconnected {
                        drop(st);
                        self.close();
                        return None;
                    }
                    let Some(s) = st.streams.get_mut(&self.stream) else {
                        drop(st);
                        self.close();
                        return None;
                    };
                    let Some(c) = s.consumers.get_mut(&self.consumer) else {
                        drop(st);
                        self.close();
                        return None;
                    };
                    let taken = if request.remaining == 0 || now >= until {
                        None
                    } else {
                        c.take(&s.messages, now).and_then(|(seq, delivered)| {
                            let m = s.messages.get(&seq)?;
                            Some(MemLeased {
                                broker: self.broker.clone(),
                                stream: self.stream.clone(),
                                subject: m.subject.clone(),
                                headers: m.headers.clone(),
                                payload: m.payload.clone(),
                                info: LeaseInfo {
                                    delivered,
                                    stream_sequence: seq,
                                    consumer: self.consumer.clone(),
                                    pending: c.pending(&s.messages),
                                },
                            })
                        })
                    };
                    (taken, c.next_due())
                };
                if let Some(leased) = taken {
                    if let Some(r) = self.open.as_mut() {
                        r.remaining -= 1;
                    }
                    return Some(Ok(Box::new(leased) as Box<dyn Leased>));
                }
                if self.open.as_ref().is_some_and(|r| r.remaining == 0) || now >= until {
                    self.close();
                    return None;
                }
                let wake = due.map_or(until, |d| d.min(until));
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep_until(wake) => {}
                }
            }
        })
    }

    fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Events are taken from the stream as `next` asks, so none is ever in flight to a request:
    /// ending it is closing it.
    fn cancel(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.close() })
    }

    fn update(&mut self, spec: &ConsumerSpec) -> BoxFuture<'_, Result<(), BrokerError>> {
        let spec = spec.clone();
        Box::pin(async move {
            self.broker.disconnected()?;
            let mut st = self.broker.lock();
            let c = st
                .streams
                .get_mut(&self.stream)
                .and_then(|s| s.consumers.get_mut(&self.consumer))
                .ok_or_else(|| BrokerError::NotFound(format!("consumer {}", self.consumer)))?;
            c.spec = spec;
            Ok(())
        })
    }
}

struct MemLeased {
    broker: MemBroker,
    stream: String,
    subject: String,
    headers: Headers,
    payload: Bytes,
    info: LeaseInfo,
}

impl Leased for MemLeased {
    fn subject(&self) -> &str {
        &self.subject
    }

    fn headers(&self) -> &dyn HeaderView {
        &self.headers
    }

    fn payload(&self) -> &Bytes {
        &self.payload
    }

    fn info(&self) -> Option<LeaseInfo> {
        Some(self.info.clone())
    }

    fn settle(&self, how: Settle) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.broker.disconnected()?;
            let mut st = self.broker.lock();
            let seq = self.info.stream_sequence;
            if let Some(c) = st
                .streams
                .get_mut(&self.stream)
                .and_then(|s| s.consumers.get_mut(&self.info.consumer))
            {
                // Settling what is no longer leased to this delivery (its lease ran out) does
                // nothing, as in JetStream.
                if let Some((delivered, until)) = c.leased.get_mut(&seq)
                    && *delivered == self.info.delivered
                {
                    let now = Instant::now();
                    match how {
                        Settle::Ack | Settle::Term => {
                            c.leased.remove(&seq);
                        }
                        Settle::Progress => *until = now + c.spec.ack_wait,
                        Settle::Nak(delay) => {
                            let delivered = *delivered;
                            c.leased.remove(&seq);
                            c.returned
                                .insert(seq, (delivered, now + delay.unwrap_or_default()));
                        }
                    }
                }
            }
            drop(st);
            self.broker.changed.notify_waiters();
            Ok(())
        })
    }
}

impl Admin for MemBroker {
    fn ensure_stream(&self, policy: &StreamPolicy) -> BoxFuture<'_, Result<Ensured, StreamError>> {
        let policy = policy.clone();
        Box::pin(async move {
            self.disconnected().map_err(|source| StreamError::Broker {
                stream: policy.name.clone(),
                source,
            })?;
            let mut st = self.lock();
            match st.streams.get_mut(&policy.name) {
                Some(s) => {
                    if s.policy.storage != policy.storage {
                        return Err(StreamError::Immutable {
                            stream: policy.name.clone(),
                            field: "storage",
                            current: format!("{:?}", s.policy.storage),
                            wanted: format!("{:?}", policy.storage),
                        });
                    }
                    if s.policy.retention != policy.retention {
                        return Err(StreamError::Immutable {
                            stream: policy.name.clone(),
                            field: "retention",
                            current: format!("{:?}", s.policy.retention),
                            wanted: format!("{:?}", policy.retention),
                        });
                    }
                    if s.policy == policy {
                        Ok(Ensured::Unchanged)
                    } else {
                        s.policy = policy;
                        Ok(Ensured::Updated)
                    }
                }
                None => {
                    st.streams.insert(
                        policy.name.clone(),
                        MemStream {
                            policy,
                            messages: BTreeMap::new(),
                            last_sequence: 0,
                            seen: HashSet::new(),
                            consumers: BTreeMap::new(),
                        },
                    );
                    Ok(Ensured::Created)
                }
            }
        })
    }

    fn stream(&self, name: &str) -> BoxFuture<'_, Result<StreamState, BrokerError>> {
        let name = name.to_owned();
        Box::pin(async move {
            self.disconnected()?;
            let st = self.lock();
            let s = st
                .streams
                .get(&name)
                .ok_or_else(|| BrokerError::NoStream(name.clone()))?;
            Ok(stream_state(s))
        })
    }

    fn streams(&self) -> BoxFuture<'_, Result<Vec<StreamState>, BrokerError>> {
        Box::pin(async move {
            self.disconnected()?;
            Ok(self.lock().streams.values().map(stream_state).collect())
        })
    }

    fn consumers(&self, stream: &str) -> BoxFuture<'_, Result<Vec<ConsumerState>, BrokerError>> {
        let stream = stream.to_owned();
        Box::pin(async move {
            self.disconnected()?;
            let st = self.lock();
            let s = st
                .streams
                .get(&stream)
                .ok_or_else(|| BrokerError::NoStream(stream.clone()))?;
            Ok(s.consumers
                .iter()
                .map(|(name, c)| state_of(name, c, s))
                .collect())
        })
    }

    fn consumer(
        &self,
        stream: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<ConsumerState, BrokerError>> {
        let (stream, name) = (stream.to_owned(), name.to_owned());
        Box::pin(async move {
            self.disconnected()?;
            self.consumer_state(&stream, &name)
                .ok_or_else(|| BrokerError::NotFound(format!("consumer {name}")))
        })
    }

    fn count(&self, stream: &str, filter: &str) -> BoxFuture<'_, Result<u64, BrokerError>> {
        let (stream, filter) = (stream.to_owned(), filter.to_owned());
        Box::pin(async move {
            self.disconnected()?;
            let st = self.lock();
            let s = st
                .streams
                .get(&stream)
                .ok_or_else(|| BrokerError::NoStream(stream.clone()))?;
            Ok(s.messages
                .values()
                .filter(|m| matches(&filter, &m.subject))
                .count() as u64)
        })
    }

    fn delete_consumer(&self, stream: &str, name: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let (stream, name) = (stream.to_owned(), name.to_owned());
        Box::pin(async move {
            self.disconnected()?;
            let mut st = self.lock();
            let s = st
                .streams
                .get_mut(&stream)
                .ok_or_else(|| BrokerError::NoStream(stream.clone()))?;
            s.consumers
                .remove(&name)
                .map(|_| ())
                .ok_or_else(|| BrokerError::NotFound(format!("consumer {name}")))
        })
    }

    fn message(
        &self,
        stream: &str,
        sequence: u64,
    ) -> BoxFuture<'_, Result<Option<StoredMessage>, BrokerError>> {
        let stream = stream.to_owned();
        Box::pin(async move {
            self.disconnected()?;
            let st = self.lock();
            let s = st
                .streams
                .get(&stream)
                .ok_or_else(|| BrokerError::NoStream(stream.clone()))?;
            Ok(s.messages.get(&sequence).cloned())
        })
    }

    fn tail(
        &self,
        stream: &str,
        filter: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<Box<dyn Tail>, BrokerError>> {
        let (stream, filter) = (stream.to_owned(), filter.to_owned());
        Box::pin(async move {
            self.disconnected()?;
            if !self.lock().streams.contains_key(&stream) {
                return Err(BrokerError::NoStream(stream));
            }
            Ok(Box::new(MemTail {
                broker: self.clone(),
                stream,
                filter,
                since,
                next_sequence: 0,
            }) as Box<dyn Tail>)
        })
    }

    fn observe(&self, filter: &str) -> BoxFuture<'_, Result<Box<dyn Observer>, BrokerError>> {
        let filter = filter.to_owned();
        Box::pin(async move {
            self.disconnected()?;
            let (tx, rx) = mpsc::unbounded_channel();
            self.lock().observers.push((filter, tx));
            Ok(Box::new(MemObserver { rx }) as Box<dyn Observer>)
        })
    }

    fn delete_message(
        &self,
        stream: &str,
        sequence: u64,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let stream = stream.to_owned();
        Box::pin(async move {
            self.disconnected()?;
            let mut st = self.lock();
            let s = st
                .streams
                .get_mut(&stream)
                .ok_or_else(|| BrokerError::NoStream(stream.clone()))?;
            s.messages
                .remove(&sequence)
                .map(|_| ())
                .ok_or_else(|| BrokerError::NotFound(format!("message {sequence}")))
        })
    }
}

fn stream_state(s: &MemStream) -> StreamState {
    StreamState {
        name: s.policy.name.clone(),
        messages: s.messages.len() as u64,
        bytes: s.messages.values().map(|m| m.payload.len() as u64).sum(),
        first_sequence: s.messages.keys().next().copied().unwrap_or(0),
        last_sequence: s.last_sequence,
        consumers: s.consumers.len(),
        max_bytes: s.policy.max_bytes,
        retention: s.policy.retention,
    }
}

impl ConfigStore for MemBroker {
    fn ensure_bucket(
        &self,
        bucket: &str,
        _replicas: usize,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let bucket = bucket.to_owned();
        Box::pin(async move {
            self.disconnected()?;
            self.lock().buckets.entry(bucket).or_default();
            Ok(())
        })
    }

    fn put(&self, bucket: &str, key: &str, value: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        Box::pin(async move {
            self.disconnected()?;
            let mut st = self.lock();
            let b = st
                .buckets
                .get_mut(&bucket)
                .ok_or_else(|| BrokerError::NotFound(format!("bucket {bucket}")))?;
            b.insert(key.clone(), value.clone());
            st.watchers.retain(|(wb, wk, tx)| {
                !(*wb == bucket && *wk == key) || tx.send(Some(value.clone())).is_ok()
            });
            Ok(())
        })
    }

    fn delete(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        Box::pin(async move {
            self.disconnected()?;
            let mut st = self.lock();
            let b = st
                .buckets
                .get_mut(&bucket)
                .ok_or_else(|| BrokerError::NotFound(format!("bucket {bucket}")))?;
            b.remove(&key);
            st.watchers
                .retain(|(wb, wk, tx)| !(*wb == bucket && *wk == key) || tx.send(None).is_ok());
            Ok(())
        })
    }

    fn get(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, BrokerError>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        Box::pin(async move {
            self.disconnected()?;
            let st = self.lock();
            Ok(st
                .buckets
                .get(&bucket)
                .ok_or_else(|| BrokerError::NotFound(format!("bucket {bucket}")))?
                .get(&key)
                .cloned())
        })
    }

    fn keys(&self, bucket: &str, prefix: &str) -> BoxFuture<'_, Result<Vec<String>, BrokerError>> {
        let (bucket, prefix) = (bucket.to_owned(), format!("{prefix}."));
        Box::pin(async move {
            self.disconnected()?;
            let st = self.lock();
            let b = st
                .buckets
                .get(&bucket)
                .ok_or_else(|| BrokerError::NotFound(format!("bucket {bucket}")))?;
            let mut keys: Vec<String> = b
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            keys.sort();
            Ok(keys)
        })
    }

    fn watch(
        &self,
        bucket: &str,
        key: &str,
    ) -> BoxFuture<'_, Result<Box<dyn KeyWatch>, BrokerError>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        Box::pin(async move {
            self.disconnected()?;
            let mut st = self.lock();
            let first = st
                .buckets
                .get(&bucket)
                .ok_or_else(|| BrokerError::NotFound(format!("bucket {bucket}")))?
                .get(&key)
                .cloned();
            let (tx, rx) = mpsc::unbounded_channel();
            st.watchers.push((bucket, key, tx));
            Ok(Box::new(MemWatch {
                first: Some(first),
                rx,
            }) as Box<dyn KeyWatch>)
        })
    }
}

struct MemWatch {
    first: Option<Option<Bytes>>,
    rx: mpsc::UnboundedReceiver<Option<Bytes>>,
}

impl KeyWatch for MemWatch {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Option<Bytes>, BrokerError>>> {
        Box::pin(async move {
            if let Some(first) = self.first.take() {
                return Some(Ok(first));
            }
            self.rx.recv().await.map(Ok)
        })
    }
}

/// [`Admin::observe`] in memory.
struct MemObserver {
    rx: mpsc::UnboundedReceiver<Observed>,
}

impl Observer for MemObserver {
    fn next(&mut self) -> BoxFuture<'_, Option<Observed>> {
        Box::pin(self.rx.recv())
    }
}

/// [`Admin::tail`] in memory: reads the stream's map in order, and waits for a change.
struct MemTail {
    broker: MemBroker,
    stream: String,
    filter: String,
    since: chrono::DateTime<chrono::Utc>,
    next_sequence: u64,
}

impl Tail for MemTail {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Seen, BrokerError>>> {
        Box::pin(async move {
            loop {
                // Registered before looking, so a store in between still wakes it.
                let changed = self.broker.changed.clone();
                let notified = changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let st = self.broker.lock();
                    if st.disconnected {
                        return Some(Err(BrokerError::Other(
                            "the in-memory broker is disconnected".into(),
                        )));
                    }
                    let s = st.streams.get(&self.stream)?;
                    let found = s
                        .messages
                        .range(self.next_sequence..)
                        .find(|(_, m)| m.time >= self.since && matches(&self.filter, &m.subject));
                    if let Some((seq, m)) = found {
                        self.next_sequence = seq + 1;
                        return Some(Ok(Seen {
                            sequence: *seq,
                            subject: m.subject.clone(),
                            time: m.time,
                        }));
                    }
                    if let Some((last, _)) = s.messages.last_key_value() {
                        self.next_sequence = self.next_sequence.max(last + 1);
                    }
                }
                notified.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::consumer::{Subscriber, spec};
    use herald_core::contract::Subscription;
    use herald_core::filter::TypeFilter;

    fn msg(subject: &str, id: &str) -> Message {
        Message {
            subject: subject.into(),
            headers: Headers::new(),
            payload: Bytes::from_static(b"x"),
            dedup_id: Some(id.into()),
        }
    }

    async fn broker() -> MemBroker {
        let b = MemBroker::new();
        b.ensure_stream(&StreamPolicy::dev_events("HERALD"))
            .await
            .unwrap();
        b
    }

    fn consumer_spec(filter: &str, max_in_flight: usize) -> ConsumerSpec {
        let who = Subscriber {
            namespace: "ns".into(),
            app_id: "app".into(),
        };
        let mut sub = Subscription::new(TypeFilter::parse(filter).unwrap());
        sub.max_in_flight = max_in_flight;
        sub.start = StartPosition::All;
        spec(&who, &sub)
    }

    #[tokio::test(start_paused = true)]
    async fn a_tail_reads_in_order_and_waits_for_more() {
        let b = broker().await;
        let before = chrono::Utc::now() - chrono::Duration::seconds(1);
        for (subject, id) in [("herald.s.a", "1"), ("other.x", "2"), ("herald.s.b", "3")] {
            if let Ok(p) = b.send(msg(subject, id)).await {
                p.stored().await.unwrap();
            }
        }
        let mut tail = b.tail("HERALD", "herald.>", before).await.unwrap();
        let first = tail.next().await.unwrap().unwrap();
        let second = tail.next().await.unwrap().unwrap();
        assert_eq!(
            (first.subject.as_str(), second.subject.as_str()),
            ("herald.s.a", "herald.s.b")
        );
        assert!(first.sequence < second.sequence);
        // Nothing more: it waits, and a new event wakes it.
        let waiting = tokio::spawn(async move { tail.next().await.map(|s| s.map(|s| s.subject)) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        b.send(msg("herald.s.c", "4"))
            .await
            .unwrap()
            .stored()
            .await
            .unwrap();
        assert_eq!(waiting.await.unwrap().unwrap().unwrap(), "herald.s.c");
        assert!(b.tail("NOPE", ">", before).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_observer_sees_every_publish_on_its_subjects() {
        let b = broker().await;
        let mut o = b.observe("herald.s.>").await.unwrap();
        b.send(msg("herald.s.a", "1")).await.unwrap();
        b.send(msg("herald.s.a", "1")).await.unwrap(); // a duplicate: not stored, still seen
        b.send(msg("herald.t.a", "2")).await.unwrap();
        assert_eq!(o.next().await.unwrap().subject, "herald.s.a");
        assert_eq!(o.next().await.unwrap().subject, "herald.s.a");
        assert_eq!(b.stored("HERALD").len(), 2);
        drop(o);
        // A dropped observer is forgotten on the next publish.
        b.send(msg("herald.s.b", "3")).await.unwrap();
        assert!(b.lock().observers.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn store_dedups_and_needs_a_stream() {
        let b = broker().await;
        for id in ["a", "a", "b"] {
            b.send(msg("herald.s.t", id))
                .await
                .unwrap()
                .stored()
                .await
                .unwrap();
        }
        assert_eq!(b.stored("HERALD").len(), 2);
        assert!(matches!(
            b.send(msg("other.x", "c")).await.err(),
            Some(StoreError::NoStream(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn leases_honour_max_ack_pending_ack_wait_and_delayed_redelivery() {
        let b = broker().await;
        for i in 0..3 {
            b.send(msg("herald.s.order.created", &i.to_string()))
                .await
                .unwrap();
        }
        b.send(msg("herald.s.other", "o")).await.unwrap();
        let spec = consumer_spec("order.>", 2);
        let mut lease = b.bind("HERALD", &spec).await.unwrap();
        lease.request(10, Duration::from_secs(1)).await.unwrap();
        let first = lease.next().await.unwrap().unwrap();
        let second = lease.next().await.unwrap().unwrap();
        assert_eq!(first.info().unwrap().stream_sequence, 1);
        assert_eq!(second.info().unwrap().delivered, 1);
        // Max ack pending 2: the third waits until the request expires.
        assert!(lease.next().await.is_none());
        first.settle(Settle::Ack).await.unwrap();
        second
            .settle(Settle::Nak(Some(Duration::from_secs(5))))
            .await
            .unwrap();
        lease.request(10, Duration::from_secs(1)).await.unwrap();
        let third = lease.next().await.unwrap().unwrap();
        assert_eq!(third.info().unwrap().stream_sequence, 3);
        // The handed-back event comes again once due, counted as a second delivery.
        lease.request(10, Duration::from_secs(10)).await.unwrap();
        let again = lease.next().await.unwrap().unwrap();
        assert_eq!(
            (
                again.info().unwrap().stream_sequence,
                again.info().unwrap().delivered
            ),
            (2, 2)
        );
        // A lease that is neither settled nor extended comes back after the ack wait.
        lease.request(10, spec.ack_wait * 2).await.unwrap();
        let expired = lease.next().await.unwrap().unwrap();
        assert_eq!(expired.info().unwrap().stream_sequence, 3);
        assert_eq!(expired.info().unwrap().delivered, 2);
        assert_eq!(
            b.consumer_state("HERALD", &spec.name).unwrap().pending,
            0,
            "the other subject is not this consumer's"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_followed() {
        let b = MemBroker::new();
        assert!(matches!(
            b.watch("B", "k").await.err(),
            Some(BrokerError::NotFound(_))
        ));
        b.ensure_bucket("B", 1).await.unwrap();
        let mut w = b.watch("B", "k").await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap(), None);
        b.put("B", "k", Bytes::from_static(b"v")).await.unwrap();
        assert_eq!(
            w.next().await.unwrap().unwrap(),
            Some(Bytes::from_static(b"v"))
        );
    }
}
