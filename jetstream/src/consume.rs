//! Durable pull consumers, and leasing their events a pull request at a time: herald asks for as
//! many events as it has free slots, so nothing waits in a local buffer that a crash would strand.
//!
//! Each pull request has an inbox of its own, so it can be ended early: draining that
//! subscription (UNSUB, then a PING) makes the server drop the request (it sends nothing to a
//! request nobody listens to) while every event it had already sent still arrives, up to the PONG.
//! That is what lets idle requests be long (one every two minutes per idle subscription) and a
//! stopping sidecar end them at once without stranding an event. The server's idle heartbeats
//! show that a long request is still alive: two missed ones, or a reconnect (a restarted server
//! forgot it), end it, and the engine asks again. On a JetStream cluster a request lives on the
//! consumer's leader; when that server dies the client may stay connected to another one and
//! hear nothing. So each lease also listens for JetStream's advisory that its consumer elected a
//! leader, and asks the new leader at once instead of after two missed heartbeats (a minute).

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message, consumer};
use async_nats::{StatusCode, Subscriber};
use bytes::Bytes;
use futures::StreamExt as _;
use herald_core::broker::{BoxFuture, BrokerError, Consumers, Lease, LeaseInfo, Leased, Settle};
use herald_core::consumer::ConsumerSpec;
use herald_core::contract::StartPosition;
use herald_core::wire::HeaderView;
use std::sync::atomic::Ordering::Relaxed;
use tokio::time::Instant;

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
            // Without the permission to subscribe to advisories the server refuses this
            // silently; the lease then falls back on the heartbeats.
            let elected = self
                .client
                .subscribe(format!(
                    "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.{}",
                    spec.name
                ))
                .await
                .ok();
            Ok(Box::new(JsLease {
                client: self.client.clone(),
                context: self.js.clone(),
                stream: s,
                consumer,
                open: None,
                elected,
            }) as Box<dyn Lease>)
        })
    }
}

struct JsLease {
    client: async_nats::Client,
    context: jetstream::Context,
    stream: jetstream::stream::Stream,
    consumer: consumer::Consumer<consumer::pull::Config>,
    /// The pull request in progress, if any. It belongs to the connection, not to the consumer
    /// handle, so it stays open when the consumer is updated.
    open: Option<Pull>,
    /// JetStream's advisories that the consumer elected a leader (a cluster lost the old one).
    elected: Option<Subscriber>,
}

/// The next leader election of the consumer; never, without the advisory subscription.
async fn elected(sub: &mut Option<Subscriber>) {
    match sub {
        Some(s) => {
            if s.next().await.is_none() {
                // The subscription ended (the client is closing): stop listening.
                *sub = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// An open pull request on an inbox of its own.
struct Pull {
    sub: Subscriber,
    /// Events the request may still bring.
    remaining: usize,
    /// Silence after which the request is taken for lost: two heartbeats and a margin, or (with
    /// no heartbeat) its expiry and a margin.
    silence: Duration,
    /// When the server last sent something for this request.
    heard: Instant,
    /// Drained: the events already sent arrive, then the subscription ends.
    cancelled: bool,
    /// The client's connection count when the request was sent: a reconnect may have lost it.
    connects: u64,
}

/// The idle heartbeat asked for a request that waits `wait`: a quarter of it, at most 30 s (the
/// server refuses one over half the expiry); none for short requests, whose expiry says enough.
fn heartbeat(wait: Duration) -> Duration {
    if wait < Duration::from_secs(4) {
        Duration::ZERO
    } else {
        (wait / 4).min(Duration::from_secs(30))
    }
}

/// Margin over a heartbeat or an expiry before the request counts as lost.
const SILENCE_MARGIN: Duration = Duration::from_secs(2);
/// How often an open request looks at the connection's reconnect count: often enough that a
/// restarted server's forgotten requests are replaced within seconds, rarely enough that idle
/// subscriptions cost no CPU to speak of.
const CONNECTION_CHECK: Duration = Duration::from_secs(5);

impl JsLease {
    fn connects(&self) -> u64 {
        self.client.statistics().connects.load(Relaxed)
    }
}

impl Lease for JsLease {
    fn request(&mut self, max: usize, wait: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            // An election before this request concerns none of it.
            if let Some(sub) = self.elected.as_mut() {
                while let Some(Some(_)) = futures::FutureExt::now_or_never(sub.next()) {}
            }
            let inbox = self.client.new_inbox();
            let sub = self.client.subscribe(inbox.clone()).await.map_err(other)?;
            let idle_heartbeat = heartbeat(wait);
            let batch = consumer::pull::BatchConfig {
                batch: max,
                expires: Some(wait),
                idle_heartbeat,
                ..Default::default()
            };
            self.consumer
                .request_batch(batch, inbox.into())
                .await
                .map_err(other)?;
            let silence = if idle_heartbeat.is_zero() {
                wait
            } else {
                idle_heartbeat * 2
            };
            self.open = Some(Pull {
                sub,
                remaining: max,
                silence: silence.saturating_add(SILENCE_MARGIN),
                heard: Instant::now(),
                cancelled: false,
                connects: self.connects(),
            });
            Ok(())
        })
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Result<Box<dyn Leased>, BrokerError>>> {
        Box::pin(async move {
            loop {
                let pull = self.open.as_mut()?;
                if pull.remaining == 0 && !pull.cancelled {
                    self.open = None;
                    return None;
                }
                let deadline = pull.heard + pull.silence;
                // Woken every few seconds to notice a reconnect: a restarted server forgot the
                // request, and waiting for the missed heartbeats would idle the subscription.
                let wake = deadline.min(Instant::now() + CONNECTION_CHECK);
                let next = tokio::select! {
                    next = tokio::time::timeout_at(wake, pull.sub.next()) => Some(next),
                    () = elected(&mut self.elected), if !pull.cancelled => None,
                };
                let Some(next) = next else {
                    // The request lived on the old leader, which is likely gone; what it sent
                    // still arrives while the inbox drains, then the engine asks the new one.
                    tracing::debug!(
                        "the consumer elected a leader: ending the pull request, asking again"
                    );
                    pull.cancelled = true;
                    if pull.sub.drain().await.is_err() {
                        self.open = None;
                        return None;
                    }
                    continue;
                };
                let msg = match next {
                    Ok(Some(msg)) => msg,
                    Err(_) if Instant::now() < deadline => {
                        let connects = self.client.statistics().connects.load(Relaxed);
                        if connects != pull.connects && !pull.cancelled {
                            tracing::debug!("reconnected: ending the pull request, asking again");
                            pull.cancelled = true;
                            if pull.sub.drain().await.is_err() {
                                self.open = None;
                                return None;
                            }
                        }
                        continue;
                    }
                    // Drained to its end, or the client is closing.
                    Ok(None) => {
                        self.open = None;
                        return None;
                    }
                    // The server restarted, lost the request, or no longer knows the consumer.
                    Err(_) => {
                        let silence = pull.silence;
                        self.open = None;
                        return Some(Err(BrokerError::Timeout(silence)));
                    }
                };
                pull.heard = Instant::now();
                match msg.status {
                    None | Some(StatusCode::OK) => {
                        pull.remaining = pull.remaining.saturating_sub(1);
                        let msg = Message {
                            message: msg,
                            context: self.context.clone(),
                        };
                        return Some(Ok(Box::new(JsLeased::new(msg)) as Box<dyn Leased>));
                    }
                    Some(StatusCode::IDLE_HEARTBEAT) => continue,
                    // Expired (408), or nothing to wait for (404): the request is over.
                    Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => {
                        if !pull.cancelled {
                            self.open = None;
                            return None;
                        }
                    }
                    Some(status) => {
                        let reason = msg.description.unwrap_or_default();
                        if !pull.cancelled {
                            self.open = None;
                            return Some(Err(BrokerError::Other(format!(
                                "pull request ended: {status} {reason}"
                            ))));
                        }
                    }
                }
            }
        })
    }

    fn is_open(&self) -> bool {
        self.open.is_some()
    }

    fn cancel(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(pull) = self.open.as_mut()
                && !pull.cancelled
            {
                pull.cancelled = true;
                if pull.sub.drain().await.is_err() {
                    // The connection is gone: nothing more can arrive on it.
                    self.open = None;
                }
            }
        })
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
