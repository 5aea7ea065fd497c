//! Storing messages: a JetStream publish awaited twice, send then acknowledgement, so a batch can
//! pipeline its round trips. Every NATS failure is classified into a [`StoreError`] kind; while
//! disconnected a send fails at once (the client would otherwise queue it and the publisher would
//! wait for the ack timeout to learn what is already known).

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use herald_core::broker::{BoxFuture, Pending, Store, StoreError};
use herald_core::wire::{DEDUP_HEADER, Message};

use crate::JetStream;

/// herald's headers as NATS headers. Values never hold a line break ([`herald_core::wire`]);
/// a name NATS cannot carry is left out rather than failing the publish.
pub fn header_map(msg: &Message) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in msg.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            name.parse::<async_nats::header::HeaderName>(),
            value.parse::<async_nats::HeaderValue>(),
        ) {
            h.append(n, v);
        }
    }
    if let Some(id) = msg
        .dedup_id
        .as_deref()
        .and_then(|i| i.parse::<async_nats::HeaderValue>().ok())
    {
        h.insert(DEDUP_HEADER, id);
    }
    h
}

impl Store for JetStream {
    fn is_connected(&self) -> bool {
        JetStream::is_connected(self)
    }

    fn send(&self, msg: Message) -> BoxFuture<'_, Result<Pending, StoreError>> {
        Box::pin(async move {
            if !self.is_connected() {
                return Err(StoreError::Unavailable(
                    "not connected (reconnecting)".into(),
                ));
            }
            let publish = PublishMessage::build()
                .headers(header_map(&msg))
                .payload(msg.payload);
            let ack = self
                .js
                .send_publish(msg.subject, publish)
                .await
                .map_err(|e| self.classify(e))?;
            let this = self.clone();
            Ok(Pending(Box::pin(async move {
                ack.await.map(|_| ()).map_err(|e| this.classify(e))
            })))
        })
    }
}

impl JetStream {
    fn classify(&self, err: jetstream::context::PublishError) -> StoreError {
        match err.kind() {
            PublishErrorKind::StreamNotFound => {
                StoreError::NoStream(self.events_stream.to_string())
            }
            PublishErrorKind::TimedOut if !self.is_connected() => {
                StoreError::Unavailable("connection lost before the ack arrived".into())
            }
            PublishErrorKind::TimedOut => StoreError::Timeout(self.ack_timeout),
            PublishErrorKind::BrokenPipe => {
                StoreError::Unavailable("connection lost before the ack arrived".into())
            }
            PublishErrorKind::MaxAckPending => StoreError::Backpressure,
            PublishErrorKind::MaxPayloadExceeded => StoreError::TooLarge {
                limit: self.max_payload(),
            },
            _ => classify_server_error(&err),
        }
    }
}

/// Maps a JetStream API error in a publish ack to its kind.
fn classify_server_error(err: &jetstream::context::PublishError) -> StoreError {
    use std::error::Error as _;
    let Some(api) = err
        .source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
    else {
        return StoreError::Rejected(format!("publish failed: {err}"));
    };
    let code = api.error_code();
    let text = api.to_string();
    use jetstream::ErrorCode as C;
    if code == C::STORAGE_RESOURCES_EXCEEDED
        || code == C::INSUFFICIENT_RESOURCES
        || code == C::MEMORY_RESOURCES_EXCEEDED
        || (code == C::STREAM_STORE_FAILED
            && (text.contains("maximum bytes") || text.contains("maximum messages")))
    {
        StoreError::StreamFull(text)
    } else if code == C::STREAM_MESSAGE_EXCEEDS_MAXIMUM {
        StoreError::TooLarge { limit: 0 }
    } else {
        StoreError::Rejected(text)
    }
}
