//! Writing a dead letter: the original event (headers and data, as stored) with the reason, the
//! last status, the attempt count, the subscription, the original subject and the consumer, to
//! `herald-dlq.<namespace>.<app id>.<original subject without "herald.">`; only once it is
//! stored is the original terminated. If the write fails, the original is handed back for a
//! later redelivery, never dropped.

use std::time::Duration;

use herald_core::broker::{Leased, Settle, Store};
use herald_core::consumer::Subscriber;
use herald_core::contract::Subscription;
use herald_core::delivery::{dlq_header, dlq_subject};
use herald_core::wire::{DEDUP_HEADER, Headers, Message};

/// How a dead-lettering ended, for the caller's counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored in the dead-letter stream; the original is terminated.
    DeadLettered,
    /// Dead letters are off for the subscription: the original is terminated without one.
    Dropped,
    /// The write failed: the original comes back later.
    Retried,
}

/// Why the event failed.
pub struct Failure<'a> {
    pub reason: &'a str,
    pub status: Option<u16>,
    pub attempts: u32,
}

/// The dead letter of `event` for `who`'s subscription `sub`.
pub fn message(
    who: &Subscriber,
    sub: &Subscription,
    event: &dyn Leased,
    f: &Failure<'_>,
) -> Message {
    let info = event.info();
    let mut headers = Headers::new();
    event.headers().each(&mut |name, value| {
        if !name.eq_ignore_ascii_case(DEDUP_HEADER) {
            headers.push(name, value);
        }
    });
    headers.push(dlq_header::REASON, f.reason);
    headers.push(
        dlq_header::STATUS,
        f.status
            .map_or_else(|| "none".to_owned(), |s| s.to_string()),
    );
    headers.push(dlq_header::ATTEMPTS, f.attempts.to_string());
    headers.push(dlq_header::SUBSCRIBER, who.describe(&sub.filter));
    headers.push(dlq_header::SUBJECT, event.subject());
    headers.push(
        dlq_header::CONSUMER,
        info.as_ref()
            .map(|i| i.consumer.as_str())
            .unwrap_or_default(),
    );
    Message {
        subject: dlq_subject(who, event.subject()),
        headers,
        payload: event.payload().clone(),
        // A retried dead-letter write is stored once; without delivery metadata no id is set
        // rather than one that would merge different events.
        dedup_id: info.map(|i| format!("{}:{}", i.consumer, i.stream_sequence)),
    }
}

/// Dead-letters `event` (or drops it, when dead letters are off), then settles it.
pub async fn write(
    store: &dyn Store,
    who: &Subscriber,
    sub: &Subscription,
    event: &dyn Leased,
    failure: Failure<'_>,
) -> Written {
    let reason = failure.reason;
    if !sub.dead_letter {
        tracing::warn!(%reason, attempts = failure.attempts, "event dropped (dead letters are off for this subscription)");
        let _ = event.settle(Settle::Term).await;
        return Written::Dropped;
    }
    let stored = async {
        store
            .send(message(who, sub, event, &failure))
            .await?
            .stored()
            .await
    };
    match stored.await {
        Ok(()) => {
            tracing::warn!(%reason, status = ?failure.status, attempts = failure.attempts, subject = %event.subject(), "event dead-lettered");
            if let Err(e) = event.settle(Settle::Term).await {
                tracing::warn!(error = %e, "term failed after dead-lettering; the event may be dead-lettered again");
            }
            Written::DeadLettered
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot write the dead letter; the event will be retried");
            let _ = event
                .settle(Settle::Nak(Some(Duration::from_secs(5))))
                .await;
            Written::Retried
        }
    }
}
