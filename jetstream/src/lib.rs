//! herald's broker on NATS JetStream: [`JetStream`] implements every trait of
//! [`herald_core::broker`] over one async-nats connection. Nothing else in herald imports
//! async-nats but this crate (and the benchmarks, which compare against raw async-nats).
//!
//! # Layout
//! - [`connect`]: the connection (reconnects forever), a one-shot connection for commands, URLs.
//! - [`publish`]: storing messages with JetStream's publish acknowledgement, every failure
//!   classified into a [`herald_core::broker::StoreError`] kind.
//! - [`consume`]: durable pull consumers and leasing their events a pull request at a time.
//! - [`admin`]: streams from herald's [`herald_core::policy::StreamPolicy`], consumers, stored
//!   messages.
//! - [`kv`]: the configuration bucket (made by hand: async-nats' `create_key_value` cannot parse
//!   nats-server 2.9's account info).
//! - [`natsd`]: a throwaway `nats-server -js` for `herald dev`, benchmarks and tests.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::connection::State;
use async_nats::jetstream;

pub mod admin;
pub mod connect;
pub mod consume;
pub mod kv;
pub mod natsd;
pub mod publish;

pub use connect::{ConnectionEvent, NatsConfig, connect, connect_once, parse_nats_url};

/// herald's broker on one NATS connection.
#[derive(Clone)]
pub struct JetStream {
    client: Client,
    js: jetstream::Context,
    ack_timeout: Duration,
    /// The events stream, named in the error when no stream takes a publish.
    events_stream: Arc<str>,
}

impl JetStream {
    /// `ack_timeout` bounds every JetStream request, a publish's acknowledgement included.
    pub fn new(client: Client, ack_timeout: Duration, events_stream: &str) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(ack_timeout)
            .build(client.clone());
        JetStream {
            client,
            js,
            ack_timeout,
            events_stream: events_stream.into(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Flushes what is buffered and closes the connection (before an embedded server goes, so
    /// the client does not start reconnecting to it). Bounded by `limit`.
    pub async fn close(&self, limit: Duration) {
        if tokio::time::timeout(limit, self.client.flush())
            .await
            .is_err()
        {
            tracing::warn!("NATS flush timed out at shutdown");
        }
        let _ = tokio::time::timeout(limit, self.client.drain()).await;
    }

    /// The server's largest message.
    fn max_payload(&self) -> u64 {
        self.client.server_info().max_payload as u64
    }
}

/// Whether a JetStream API error is "stream not found".
fn is_stream_not_found(e: &jetstream::Error) -> bool {
    e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
}
