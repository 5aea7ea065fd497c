//! Durable pull consumers, and leasing their events a pull request at a time: herald asks for as
//! many events as it has free slots, so nothing waits in a local buffer that a crash would strand.
//! A pull request cannot be cancelled once sent, so the engine reads each to its end.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message, consumer};
use bytes::Bytes;
use futures::StreamExt as _;
use herald_core::broker::{BoxFuture, BrokerError, Consumers, Lease, LeaseInfo, Leased, Settle};
use herald_core::consumer::ConsumerSpec;
use herald_core::contract::StartPosition;
use herald_core::wire::HeaderView;

use crate::JetStream;

/// The JetStream configuration of a consumer spec. `max_deliver: -1`: herald keeps the attempt
/// budget itself (local and broker attempts together).
pub fn config(spec: &ConsumerSpec) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(spec.name.clone()),
        description: Some(spec.description.clone()),
        filter_subject: spec.filter_subject.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: -1,
        max_ack_pending: i64::try_from(spec.max_ack_pending).unwrap_or(i64::MAX),
        deliver_policy: match spec.start {
            StartPosition::New => consumer::DeliverPolicy::New,
            StartPosition::All => consumer::DeliverPolicy::All,
            StartPosition::Time(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
        },
        ..Default::default()
    }
}

fn other(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Other(e.to_string())
}

/// Creates the consumer, or updates it to `spec`. An existing consumer keeps its start position:
/// JetStream refuses to change it, and the position it has reached matters more.
async fn ensure(
    s: &jetstream::stream::Stream,
    spec: &ConsumerSpec,
) -> Result<consumer::Consumer<consumer::pull::Config>, BrokerError> {
    let mut cfg = config(spec);
    match s.consumer_info(&spec.name).await {
        Ok(existing) => cfg.deliver_policy = existing.config.deliver_policy,
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::ConsumerInfoErrorKind::NotFound
            ) => {}
        Err(e) => return Err(other(e)),
    }
    s.create_consumer(cfg).await.map_err(other)
}

impl Consumers for JetStream {
    fn bind(
        &self,
        stream: &str,
        spec: &ConsumerSpec,
    ) -> BoxFuture<'_, Result<Box<dyn Lease>, BrokerError>> {
        let (stream, spec) = (stream.to_owned(), spec.clone());
        Box::pin(async move {
            let s = self.get_stream(&stream).await?;
            let consumer = ensure(&s, &spec).await?;
            Ok(Box::new(JsLease {
                stream: s,
                consumer,
                open: None,
            }) as Box<dyn Lease>)
        })
    }
}

struct JsLease {
    stream: jetstream::stream::Stream,
    consumer: consumer::Consumer<consumer::pull::Config>,
    /// The pull request in progress, if any. It belongs to the connection, not to the consumer
    /// handle, so it stays open when the consumer is updated.
    open: Option<consumer::pull::Batch>,
}

impl Lease for JsLease {
    fn request(&mut self, max: usize, wait: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let batch = self
                .consumer
                .batch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await
                .map_err(other)?;
            self.open = Some(batch);
            Ok(())
        })
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Result<Box<dyn Leased>, BrokerError>>> {
        Box::pin(async move {
            let batch = self.open.as_mut()?;
            match batch.next().await {
                None => {
                    self.open = None;
                    None
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "pull ended");
                    self.open = None;
                    None
                }
                Some(Ok(msg)) => Some(Ok(Box::new(JsLeased::new(msg)) as Box<dyn Leased>)),
            }
        })
    }

    fn is_open(&self) -> bool {
        self.open.is_some()
    }

    fn update(&mut self, spec: &ConsumerSpec) -> BoxFuture<'_, Result<(), BrokerError>> {
        let spec = spec.clone();
        Box::pin(async move {
            self.consumer = ensure(&self.stream, &spec).await?;
            Ok(())
        })
    }
}

/// A leased JetStream message.
struct JsLeased {
    msg: Message,
    info: Option<LeaseInfo>,
}

impl JsLeased {
    fn new(msg: Message) -> Self {
        let info = msg.info().ok().map(|i| LeaseInfo {
            delivered: u32::try_from(i.delivered.max(1)).unwrap_or(u32::MAX),
            stream_sequence: i.stream_sequence,
            consumer: i.consumer.to_owned(),
            pending: i.pending,
        });
        JsLeased { msg, info }
    }
}

impl HeaderView for JsLeased {
    fn find(&self, wanted: &dyn Fn(&str) -> bool) -> Option<&str> {
        self.msg.headers.as_ref().and_then(|h| find(h, wanted))
    }

    fn each(&self, f: &mut dyn FnMut(&str, &str)) {
        if let Some(h) = &self.msg.headers {
            NatsHeaders(h).each(f);
        }
    }
}

fn find<'h>(h: &'h async_nats::HeaderMap, wanted: &dyn Fn(&str) -> bool) -> Option<&'h str> {
    h.iter()
        .find(|(n, _)| wanted(n.as_ref()))
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str())
}

/// A NATS message's headers as herald reads stored headers, without copying.
pub struct NatsHeaders<'a>(pub &'a async_nats::HeaderMap);

impl HeaderView for NatsHeaders<'_> {
    fn find(&self, wanted: &dyn Fn(&str) -> bool) -> Option<&str> {
        find(self.0, wanted)
    }

    fn each(&self, f: &mut dyn FnMut(&str, &str)) {
        for (n, vs) in self.0.iter() {
            for v in vs {
                f(n.as_ref(), v.as_str());
            }
        }
    }
}

impl Leased for JsLeased {
    fn subject(&self) -> &str {
        self.msg.subject.as_str()
    }

    fn headers(&self) -> &dyn HeaderView {
        self
    }

    fn payload(&self) -> &Bytes {
        &self.msg.payload
    }

    fn info(&self) -> Option<LeaseInfo> {
        self.info.clone()
    }

    fn settle(&self, how: Settle) -> BoxFuture<'_, Result<(), BrokerError>> {
        let kind = match how {
            Settle::Ack => AckKind::Ack,
            Settle::Nak(delay) => AckKind::Nak(delay),
            Settle::Progress => AckKind::Progress,
            Settle::Term => AckKind::Term,
        };
        Box::pin(async move { self.msg.ack_with(kind).await.map_err(other) })
    }
}
