//! Streams, consumers and stored messages: herald's [`StreamPolicy`] made a JetStream stream,
//! and what JetStream holds read back in herald's terms.

use async_nats::jetstream::{self, stream};
use futures::TryStreamExt as _;
use herald_core::broker::{
    Admin, BoxFuture, BrokerError, ConsumerState, Observed, Observer, Seen, StoredMessage,
    StreamError, StreamState, Tail,
};
use herald_core::policy::{Discard, Ensured, Retention, Storage, StreamPolicy};
use herald_core::wire::Headers;

use crate::JetStream;

/// The JetStream configuration of a policy.
pub fn config(p: &StreamPolicy) -> stream::Config {
    stream::Config {
        name: p.name.clone(),
        subjects: p.subjects.clone(),
        storage: match p.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        retention: retention(p.retention),
        discard: match p.discard {
            Discard::New => stream::DiscardPolicy::New,
            Discard::Old => stream::DiscardPolicy::Old,
        },
        max_bytes: p.max_bytes,
        max_age: p.max_age,
        max_messages: p.max_messages,
        max_messages_per_subject: p.max_messages_per_subject,
        max_message_size: p.max_message_size,
        duplicate_window: p.duplicate_window,
        num_replicas: p.replicas,
        ..Default::default()
    }
}

fn retention(r: Retention) -> stream::RetentionPolicy {
    match r {
        Retention::Interest => stream::RetentionPolicy::Interest,
        Retention::Limits => stream::RetentionPolicy::Limits,
    }
}

fn herald_retention(r: stream::RetentionPolicy) -> Retention {
    match r {
        stream::RetentionPolicy::Interest => Retention::Interest,
        // A work-queue stream is not herald's; it keeps messages until a limit or an ack.
        _ => Retention::Limits,
    }
}

fn state(info: &stream::Info) -> StreamState {
    StreamState {
        name: info.config.name.clone(),
        messages: info.state.messages,
        bytes: info.state.bytes,
        first_sequence: info.state.first_sequence,
        last_sequence: info.state.last_sequence,
        consumers: info.state.consumer_count,
        max_bytes: info.config.max_bytes,
        retention: herald_retention(info.config.retention),
    }
}

fn other(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Other(e.to_string())
}

impl JetStream {
    /// The stream, or [`BrokerError::NoStream`].
    pub(crate) async fn get_stream(&self, name: &str) -> Result<stream::Stream, BrokerError> {
        self.js.get_stream(name).await.map_err(|e| match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(je)
                if crate::is_stream_not_found(&je) =>
            {
                BrokerError::NoStream(name.to_owned())
            }
            _ => other(e),
        })
    }
}

impl Admin for JetStream {
    fn ensure_stream(&self, policy: &StreamPolicy) -> BoxFuture<'_, Result<Ensured, StreamError>> {
        let policy = policy.clone();
        Box::pin(async move {
            let broker = |source: BrokerError| StreamError::Broker {
                stream: policy.name.clone(),
                source,
            };
            let wanted = config(&policy);
            match self.get_stream(&policy.name).await {
                Ok(mut s) => {
                    let current = s.info().await.map_err(|e| broker(other(e)))?.config.clone();
                    if current.storage != wanted.storage {
                        return Err(StreamError::Immutable {
                            stream: policy.name.clone(),
                            field: "storage",
                            current: format!("{:?}", current.storage),
                            wanted: format!("{:?}", wanted.storage),
                        });
                    }
                    if current.retention != wanted.retention {
                        return Err(StreamError::Immutable {
                            stream: policy.name.clone(),
                            field: "retention",
                            current: format!("{:?}", current.retention),
                            wanted: format!("{:?}", wanted.retention),
                        });
                    }
                    let differs = current.subjects != wanted.subjects
                        || current.discard != wanted.discard
                        || current.max_bytes != wanted.max_bytes
                        || current.max_age != wanted.max_age
                        || current.max_messages != wanted.max_messages
                        || current.max_messages_per_subject != wanted.max_messages_per_subject
                        || current.max_message_size != wanted.max_message_size
                        || current.duplicate_window != wanted.duplicate_window
                        || current.num_replicas != wanted.num_replicas;
                    if differs {
                        self.js
                            .update_stream(&wanted)
                            .await
                            .map_err(|e| broker(other(e)))?;
                        Ok(Ensured::Updated)
                    } else {
                        Ok(Ensured::Unchanged)
                    }
                }
                Err(BrokerError::NoStream(_)) => {
                    self.js
                        .create_stream(wanted)
                        .await
                        .map_err(|e| broker(other(e)))?;
                    Ok(Ensured::Created)
                }
                Err(e) => Err(broker(e)),
            }
        })
    }

    fn stream(&self, name: &str) -> BoxFuture<'_, Result<StreamState, BrokerError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let mut s = self.get_stream(&name).await?;
            let info = s.info().await.map_err(other)?;
            Ok(state(info))
        })
    }

    fn streams(&self) -> BoxFuture<'_, Result<Vec<StreamState>, BrokerError>> {
        Box::pin(async move {
            let mut out: Vec<StreamState> = self
                .js
                .streams()
                .map_ok(|i| state(&i))
                .try_collect()
                .await
                .map_err(other)?;
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn consumers(&self, stream: &str) -> BoxFuture<'_, Result<Vec<ConsumerState>, BrokerError>> {
        let stream = stream.to_owned();
        Box::pin(async move {
            let s = self.get_stream(&stream).await?;
            s.consumers()
                .map_ok(|i| ConsumerState {
                    name: i.name.clone(),
                    description: i.config.description.clone(),
                    filter_subject: i.config.filter_subject.clone(),
                    pending: i.num_pending,
                    ack_pending: i.num_ack_pending,
                    waiting: i.num_waiting,
                })
                .try_collect()
                .await
                .map_err(other)
        })
    }

    fn count(&self, stream: &str, filter: &str) -> BoxFuture<'_, Result<u64, BrokerError>> {
        let (stream, filter) = (stream.to_owned(), filter.to_owned());
        Box::pin(async move {
            use futures::StreamExt as _;
            let s = self.get_stream(&stream).await?;
            let mut subjects = s.info_with_subjects(&filter).await.map_err(other)?;
            let mut total = 0u64;
            while let Some(item) = subjects.next().await {
                let (_, n) = item.map_err(other)?;
                total = total.saturating_add(n as u64);
            }
            Ok(total)
        })
    }

    fn consumer(
        &self,
        stream: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<ConsumerState, BrokerError>> {
        let (stream, name) = (stream.to_owned(), name.to_owned());
        Box::pin(async move {
            let s = self.get_stream(&stream).await?;
            let i = s.consumer_info(&name).await.map_err(|e| match e.kind() {
                jetstream::context::ConsumerInfoErrorKind::NotFound => {
                    BrokerError::NotFound(format!("consumer {name}"))
                }
                _ => other(e),
            })?;
            Ok(ConsumerState {
                name: i.name.clone(),
                description: i.config.description.clone(),
                filter_subject: i.config.filter_subject.clone(),
                pending: i.num_pending,
                ack_pending: i.num_ack_pending,
                waiting: i.num_waiting,
            })
        })
    }

    fn delete_consumer(&self, stream: &str, name: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let (stream, name) = (stream.to_owned(), name.to_owned());
        Box::pin(async move {
            self.js
                .delete_consumer_from_stream(&name, &stream)
                .await
                .map(|_| ())
                .map_err(other)
        })
    }

    fn message(
        &self,
        stream: &str,
        sequence: u64,
    ) -> BoxFuture<'_, Result<Option<StoredMessage>, BrokerError>> {
        let stream = stream.to_owned();
        Box::pin(async move {
            let s = self.get_stream(&stream).await?;
            let m = match s.get_raw_message(sequence).await {
                Ok(m) => m,
                // Deleted, or a gap: nothing there.
                Err(e)
                    if matches!(
                        e.kind(),
                        jetstream::stream::RawMessageErrorKind::NoMessageFound
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(other(e)),
            };
            let mut headers = Headers::new();
            for (n, vs) in m.headers.iter() {
                for v in vs {
                    headers.push(AsRef::<str>::as_ref(n), v.as_str());
                }
            }
            Ok(Some(StoredMessage {
                sequence,
                subject: m.subject.to_string(),
                headers,
                payload: m.payload,
                time: m.time,
            }))
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
            let s = self.get_stream(&stream).await?;
            // An ordered consumer: ephemeral, acknowledging nothing, in memory, recreated by the
            // client after a gap or a lost connection; headers only, as the subject and the
            // time are all a tail reports.
            let consumer = s
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    filter_subject: filter,
                    headers_only: true,
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime {
                        start_time: since,
                    },
                    ..Default::default()
                })
                .await
                .map_err(other)?;
            let messages = consumer.messages().await.map_err(other)?;
            Ok(Box::new(JsTail { messages }) as Box<dyn Tail>)
        })
    }

    fn observe(&self, filter: &str) -> BoxFuture<'_, Result<Box<dyn Observer>, BrokerError>> {
        let filter = filter.to_owned();
        Box::pin(async move {
            let sub = self.client.subscribe(filter).await.map_err(other)?;
            Ok(Box::new(JsObserver { sub }) as Box<dyn Observer>)
        })
    }

    fn delete_message(
        &self,
        stream: &str,
        sequence: u64,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let stream = stream.to_owned();
        Box::pin(async move {
            let s = self.get_stream(&stream).await?;
            s.delete_message(sequence).await.map(|_| ()).map_err(other)
        })
    }
}

/// [`Admin::tail`] over an ordered consumer.
struct JsTail {
    messages: jetstream::consumer::pull::Ordered,
}

impl Tail for JsTail {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Seen, BrokerError>>> {
        Box::pin(async move {
            use futures::StreamExt as _;
            let m = match self.messages.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(other(e))),
            };
            Some(m.info().map_err(other).map(|i| Seen {
                sequence: i.stream_sequence,
                subject: m.subject.to_string(),
                time: i.published,
            }))
        })
    }
}

/// [`Admin::observe`] over a core NATS subscription.
struct JsObserver {
    sub: async_nats::Subscriber,
}

impl Observer for JsObserver {
    fn next(&mut self) -> BoxFuture<'_, Option<Observed>> {
        Box::pin(async move {
            use futures::StreamExt as _;
            let m = self.sub.next().await?;
            let mut headers = Headers::new();
            for (n, vs) in m.headers.iter().flat_map(|h| h.iter()) {
                for v in vs {
                    headers.push(AsRef::<str>::as_ref(n), v.as_str());
                }
            }
            Some(Observed {
                subject: m.subject.to_string(),
                headers,
                payload: m.payload,
                time: chrono::Utc::now(),
            })
        })
    }
}
