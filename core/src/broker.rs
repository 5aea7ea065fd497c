//! The seam between herald and a message broker: what herald needs from one, in herald's terms.
//! The publish API, the delivery engine, readiness, dead letters, the CLI and the controller speak
//! only these traits; `herald-jetstream` implements them on NATS JetStream, `herald-membroker` in
//! memory (for unit tests under a paused clock). A second broker is one more implementation.
//!
//! - [`Store`]: store a message and learn when the broker holds it durably.
//! - [`Consumers`], [`Lease`], [`Leased`]: a subscription's durable consumer, shared by every
//!   replica; events are leased a request at a time and settled one by one (ack, delayed
//!   redelivery, in-progress, terminate).
//! - [`Admin`]: streams and consumers (ensure, inspect, list, delete) and stored messages by
//!   sequence (dead letters).
//! - [`ConfigStore`]: the configuration bucket: ensure, put, and follow a key.
//!
//! Futures are boxed ([`BoxFuture`]) so the traits can be used as trait objects: which broker
//! runs is a matter of configuration, not of type parameters threaded through every component.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::consumer::ConsumerSpec;
use crate::policy::{Ensured, Retention, StreamPolicy};
use crate::wire::{HeaderView, Headers, Message};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A broker failure outside of storing an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker is not connected: {0}")]
    Disconnected(String),
    #[error("stream `{0}` does not exist")]
    NoStream(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Other(String),
}

/// Why a message was not stored. Its kind, never its text, decides what the publisher hears.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The broker cannot be reached now; retrying later may succeed.
    #[error("the broker is unreachable: {0}")]
    Unavailable(String),
    #[error("stream `{0}` does not exist")]
    NoStream(String),
    /// A limit of the stream is reached and it refuses new messages.
    #[error("the stream is full: {0}")]
    StreamFull(String),
    /// No acknowledgement within this time; the message may or may not be stored.
    #[error("the broker did not acknowledge within {0:?}")]
    Timeout(Duration),
    /// The message with its headers is over the broker's limit (0: not said).
    #[error("the message is larger than the broker takes ({limit} bytes)")]
    TooLarge { limit: u64 },
    /// Too many messages wait for acknowledgements; retrying later may succeed.
    #[error("too many publishes are waiting for an acknowledgement")]
    Backpressure,
    #[error("the broker refused the message: {0}")]
    Rejected(String),
}

/// A sent message whose durable storage is still to be confirmed: awaiting it is the
/// acknowledgement. Sending a batch first and awaiting the acks after pipelines round trips.
pub struct Pending(pub BoxFuture<'static, Result<(), StoreError>>);

impl Pending {
    /// Resolves once the broker stored the message.
    pub async fn stored(self) -> Result<(), StoreError> {
        self.0.await
    }

    /// Already stored (or failed): for brokers without a separate acknowledgement.
    pub fn ready(r: Result<(), StoreError>) -> Self {
        Pending(Box::pin(std::future::ready(r)))
    }
}

/// Storing messages.
pub trait Store: Send + Sync {
    /// Whether the broker is connected now.
    fn is_connected(&self) -> bool;
    /// Sends `msg`; the [`Pending`] resolves once it is stored durably. Two messages with the
    /// same deduplication id within the stream's window are stored once.
    fn send(&self, msg: Message) -> BoxFuture<'_, Result<Pending, StoreError>>;
}

/// How a leased event is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done: never delivered to this consumer again.
    Ack,
    /// Deliver it again, after the delay (at once without one).
    Nak(Option<Duration>),
    /// Still working on it: the lease is extended.
    Progress,
    /// Never deliver it again (it was dead-lettered).
    Term,
}

/// Where a leased event stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// How often the consumer delivered it, this time included (1 the first time).
    pub delivered: u32,
    pub stream_sequence: u64,
    pub consumer: String,
    /// Events the consumer still has to deliver after this one (its lag).
    pub pending: u64,
}

/// An event leased to this subscriber.
pub trait Leased: Send + Sync {
    fn subject(&self) -> &str;
    fn headers(&self) -> &dyn HeaderView;
    fn payload(&self) -> &Bytes;
    /// `None` when the broker says nothing about the delivery.
    fn info(&self) -> Option<LeaseInfo>;
    fn settle(&self, how: Settle) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// A subscription's consumer, from which events are leased a request at a time.
pub trait Lease: Send {
    /// Asks for up to `max` events, waiting at most `wait` for them. They arrive through
    /// [`Lease::next`] until the request ends (filled, expired, lost or cancelled); events that
    /// arrive after the subscriber stopped wanting them are handed back with [`Settle::Nak`].
    fn request(&mut self, max: usize, wait: Duration) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// The next event of the open request; `None` once it ended (filled, expired or failed), and
    /// at once when no request is open.
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Box<dyn Leased>, BrokerError>>>;
    /// Whether a request is open.
    fn is_open(&self) -> bool;
    /// Ends the open request early: the broker sends nothing more to it, and what it had sent
    /// already still arrives through [`Lease::next`], which then returns `None`. So a stopping
    /// subscriber can hand every leased event back instead of stranding it until the ack wait.
    fn cancel(&mut self) -> BoxFuture<'_, ()>;
    /// Updates the consumer to `spec` (a reload changed the subscription's settings); an open
    /// request stays open and is read to its end as before.
    fn update(&mut self, spec: &ConsumerSpec) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// Subscriptions' consumers.
pub trait Consumers: Send + Sync {
    /// Creates the consumer, or updates it to `spec` (an existing one keeps its position: the
    /// broker cannot move it, and the position it reached matters more), and opens it.
    fn bind(
        &self,
        stream: &str,
        spec: &ConsumerSpec,
    ) -> BoxFuture<'_, Result<Box<dyn Lease>, BrokerError>>;
}

/// What a stream holds.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamState {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub consumers: usize,
    /// `-1`: no limit.
    pub max_bytes: i64,
    pub retention: Retention,
}

/// What a consumer knows.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerState {
    pub name: String,
    pub description: Option<String>,
    /// The subjects it takes (NATS wildcards).
    pub filter_subject: String,
    /// Events not yet delivered.
    pub pending: u64,
    /// Events delivered and not yet acknowledged.
    pub ack_pending: usize,
    /// Clients waiting on a request to it right now.
    pub waiting: usize,
}

/// A stored event as a [`Tail`] sees it: where and when, without its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub sequence: u64,
    pub subject: String,
    pub time: chrono::DateTime<chrono::Utc>,
}

/// Follows a stream's events in order (the console's catalog): an ephemeral reader that
/// acknowledges nothing and holds nothing back for long, and takes up again by itself after a
/// connection loss.
pub trait Tail: Send {
    /// The next event; waits for one. `None` once the tail cannot go on (the stream is gone).
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Seen, BrokerError>>>;
}

/// An event as it was published, seen by an [`Observer`].
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub subject: String,
    pub headers: Headers,
    pub payload: Bytes,
    /// When the observer received it.
    pub time: chrono::DateTime<chrono::Utc>,
}

/// Sees every publish on some subjects as it happens, stored or not (an interest-retention
/// stream stores nothing that no consumer wants), without taking part in delivery: a plain
/// subscription. What arrives faster than it is read may be dropped; it is for looking, never
/// for delivering.
pub trait Observer: Send {
    /// The next publish; waits for one. `None` once the subscription ended.
    fn next(&mut self) -> BoxFuture<'_, Option<Observed>>;
}

/// A message as a stream holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    pub headers: Headers,
    pub payload: Bytes,
    pub time: chrono::DateTime<chrono::Utc>,
}

/// Why a stream could not be brought in line with its policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    Broker { stream: String, source: BrokerError },
}

/// Streams, consumers and stored messages.
pub trait Admin: Send + Sync {
    /// Creates the stream, or updates it to match the policy.
    fn ensure_stream(&self, policy: &StreamPolicy) -> BoxFuture<'_, Result<Ensured, StreamError>>;
    /// The stream's state; [`BrokerError::NoStream`] when it does not exist.
    fn stream(&self, name: &str) -> BoxFuture<'_, Result<StreamState, BrokerError>>;
    /// Every stream, by name.
    fn streams(&self) -> BoxFuture<'_, Result<Vec<StreamState>, BrokerError>>;
    fn consumers(&self, stream: &str) -> BoxFuture<'_, Result<Vec<ConsumerState>, BrokerError>>;
    /// One consumer's state; [`BrokerError::NotFound`] when it does not exist.
    fn consumer(
        &self,
        stream: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<ConsumerState, BrokerError>>;
    fn delete_consumer(&self, stream: &str, name: &str) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Messages of `stream` on subjects matching `filter` (wildcards allowed).
    fn count(&self, stream: &str, filter: &str) -> BoxFuture<'_, Result<u64, BrokerError>>;
    /// The message at `sequence`; `None` when there is none (deleted, or a gap).
    fn message(
        &self,
        stream: &str,
        sequence: u64,
    ) -> BoxFuture<'_, Result<Option<StoredMessage>, BrokerError>>;
    /// Follows the events of `stream` on subjects matching `filter`, from the first stored at or
    /// after `since`.
    fn tail(
        &self,
        stream: &str,
        filter: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<Box<dyn Tail>, BrokerError>>;
    /// Sees every publish on subjects matching `filter` from now on.
    fn observe(&self, filter: &str) -> BoxFuture<'_, Result<Box<dyn Observer>, BrokerError>>;
    fn delete_message(&self, stream: &str, sequence: u64)
    -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// A key being followed: its value first, then every change.
pub trait KeyWatch: Send {
    /// The next value (`None`: the key is absent or was deleted); `None` once the watch ended.
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Option<Bytes>, BrokerError>>>;
}

/// The configuration bucket.
pub trait ConfigStore: Send + Sync {
    /// Creates the bucket when it is missing, stored on `replicas` servers (1 outside a
    /// JetStream cluster); an existing bucket is brought to `replicas`, so it survives a server
    /// loss as well as the event stream beside it does.
    fn ensure_bucket(
        &self,
        bucket: &str,
        replicas: usize,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;
    fn put(&self, bucket: &str, key: &str, value: Bytes) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Deletes `key`; watchers see `None`.
    fn delete(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// The keys holding a value whose first token is `prefix` (`prefix.…`), sorted;
    /// [`BrokerError::NotFound`] when the bucket does not exist.
    fn keys(&self, bucket: &str, prefix: &str) -> BoxFuture<'_, Result<Vec<String>, BrokerError>>;
    /// The value of `key` (`None`: absent or deleted); [`BrokerError::NotFound`] when the bucket
    /// does not exist.
    fn get(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, BrokerError>>;
    /// Follows `key`; [`BrokerError::NotFound`] when the bucket does not exist.
    fn watch(
        &self,
        bucket: &str,
        key: &str,
    ) -> BoxFuture<'_, Result<Box<dyn KeyWatch>, BrokerError>>;
}

/// All of it: what a component that needs more than one part holds.
pub trait Broker: Store + Consumers + Admin + ConfigStore {}

impl<T: Store + Consumers + Admin + ConfigStore> Broker for T {}
