//! The publish path's one error type. Its kind, never its text, decides the HTTP status, whether a
//! `Retry-After` is sent, and whether the async buffer retries.

use std::time::Duration;

use http::StatusCode;

use herald_core::broker::StoreError;
use herald_core::event::EventError;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The request is not a valid CloudEvent.
    #[error(transparent)]
    Invalid(#[from] EventError),
    /// A request-level rule (a header or query parameter) is broken.
    #[error("{name}: {rule}")]
    BadRequest { name: &'static str, rule: String },
    /// The body, or one event with its headers, is over a limit.
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    /// A batch holds more events than the limit.
    #[error("the batch holds more than {0} events, the limit; split it")]
    TooManyEvents(usize),
    /// The client sent its body too slowly.
    #[error("the request body did not arrive within {0:?}")]
    SlowBody(Duration),
    #[error(
        "content type `{0}` is not supported: use binary mode, application/cloudevents+json or application/cloudevents-batch+json"
    )]
    UnsupportedMediaType(String),
    #[error("event type `{ty}` from source `{origin}` is not in this app's publish allowlist")]
    Forbidden { ty: String, origin: String },
    /// The broker cannot take the event now; the client should retry.
    #[error("NATS is unreachable: {0}")]
    Unavailable(String),
    #[error(
        "no JetStream server took the event for stream `{0}`: it does not exist yet (herald's controller, or `herald dev`, creates it), or its cluster is electing a new leader"
    )]
    NoStream(String),
    /// The stream refused the event because a limit is reached and it discards new events.
    #[error("stream is full: {0}")]
    StreamFull(String),
    #[error("JetStream did not acknowledge the event within {0:?}")]
    Timeout(Duration),
    #[error("the async buffer is full: {0}")]
    BufferFull(String),
    #[error("the sidecar is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for PublishError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => PublishError::Unavailable(why),
            StoreError::NoStream(stream) => PublishError::NoStream(stream),
            StoreError::StreamFull(why) => PublishError::StreamFull(why),
            StoreError::Timeout(after) => PublishError::Timeout(after),
            StoreError::TooLarge { limit } => PublishError::TooLarge {
                what: "the event (data and attributes)",
                limit,
            },
            StoreError::Backpressure => {
                PublishError::Unavailable("too many publishes waiting for an ack".into())
            }
            StoreError::Rejected(why) => {
                PublishError::Internal(format!("JetStream refused the event: {why}"))
            }
        }
    }
}

impl PublishError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) | Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } | Self::TooManyEvents(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::Unavailable(_) | Self::NoStream(_) | Self::BufferFull(_) | Self::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::StreamFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds a client should wait before retrying, for the statuses where retrying helps.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Self::Unavailable(_) | Self::BufferFull(_) => Some(1),
            Self::NoStream(_) => Some(5),
            Self::ShuttingDown => Some(2),
            _ => None,
        }
    }

    /// Whether the same publish may succeed later (the async buffer retries these).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::NoStream(_) | Self::Timeout(_) | Self::BufferFull(_)
        )
    }

    /// The attribute a validation error is about.
    pub fn attribute(&self) -> Option<&str> {
        match self {
            Self::Invalid(e) => e.attribute(),
            _ => None,
        }
    }
}
