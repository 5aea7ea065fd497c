//! Durable pull consumers, one per (namespace, app id, filter), shared by every replica of the
//! workload, so each subscribing workload gets each event once, spread over its replicas.
//!
//! Names are deterministic and short (`herald-` and 16 hex digits of a SHA-256 of
//! `namespace/app-id/filter`), so every replica binds the same consumer without coordination; the
//! description spells out `namespace/app-id/filter` for people and for the controller's orphan
//! cleanup. One filter subject per consumer keeps nats-server 2.9 correct.

use std::fmt::Write as _;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use sha2::{Digest, Sha256};

use crate::filter::TypeFilter;
use crate::subject::{EVENT_PREFIX, encode_token_into};
use crate::subscribe::{StartPosition, Subscription};

/// Who subscribes: the workload's namespace and app id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub namespace: String,
    pub app_id: String,
}

impl Subscriber {
    /// `namespace/app-id/filter`: the consumer's description, and what its name hashes.
    pub fn describe(&self, filter: &TypeFilter) -> String {
        format!("{}/{}/{}", self.namespace, self.app_id, filter)
    }

    pub fn consumer_name(&self, filter: &TypeFilter) -> String {
        consumer_name_of(&self.describe(filter))
    }
}

/// The consumer name of a description: the controller checks a consumer's name against its
/// description before it treats the consumer as herald's.
pub fn consumer_name_of(description: &str) -> String {
    let digest = Sha256::digest(description.as_bytes());
    let mut name = String::from("herald-");
    for b in &digest[..8] {
        let _ = write!(name, "{b:02x}");
    }
    name
}

/// The subject filter of a type filter: literal tokens encoded like event subjects, wildcards
/// kept, any source when none is given.
pub fn filter_subject(filter: &TypeFilter) -> String {
    let mut s = String::from(EVENT_PREFIX);
    s.push('.');
    match &filter.source {
        Some(src) => encode_token_into(src, &mut s),
        None => s.push('*'),
    }
    for t in filter.tokens() {
        s.push('.');
        if t == "*" || t == ">" {
            s.push_str(t);
        } else {
            encode_token_into(t, &mut s);
        }
    }
    s
}

/// The consumer configuration of a subscription.
pub fn config(who: &Subscriber, sub: &Subscription) -> consumer::pull::Config {
    // Saturating: the annotation contract bounds every term, and a consumer must never be the
    // place where an unchecked value panics.
    let local_time = sub
        .attempt_timeout
        .saturating_mul(sub.retry.local_attempts)
        .saturating_add(
            sub.retry
                .local_backoff
                .saturating_mul(2u32.saturating_pow(sub.retry.local_attempts)),
        );
    consumer::pull::Config {
        durable_name: Some(who.consumer_name(&sub.filter)),
        description: Some(who.describe(&sub.filter)),
        filter_subject: filter_subject(&sub.filter),
        ack_policy: consumer::AckPolicy::Explicit,
        // The sidecar also sends in-progress acks between local retries; this is the margin for a
        // sidecar that dies mid-delivery: its messages come back after ack_wait.
        ack_wait: local_time
            .saturating_add(Duration::from_secs(5))
            .min(Duration::from_secs(600)),
        // herald keeps the attempt budget itself (local and broker attempts together).
        max_deliver: -1,
        max_ack_pending: i64::try_from(sub.max_in_flight).unwrap_or(i64::MAX),
        deliver_policy: match sub.start {
            StartPosition::New => consumer::DeliverPolicy::New,
            StartPosition::All => consumer::DeliverPolicy::All,
            StartPosition::Time(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
        },
        ..Default::default()
    }
}

/// Creates the consumer, or updates it to the configuration. An existing consumer keeps its start
/// position: JetStream refuses to change it, and the position it has reached matters more.
pub async fn ensure(
    js: &jetstream::Context,
    stream: &str,
    who: &Subscriber,
    sub: &Subscription,
) -> Result<consumer::Consumer<consumer::pull::Config>, async_nats::Error> {
    let stream = js.get_stream(stream).await?;
    let mut cfg = config(who, sub);
    match stream.consumer_info(who.consumer_name(&sub.filter)).await {
        Ok(existing) => cfg.deliver_policy = existing.config.deliver_policy,
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::ConsumerInfoErrorKind::NotFound
            ) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(stream.create_consumer(cfg).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TypeFilter {
        TypeFilter::parse(s).unwrap()
    }

    #[test]
    fn subjects_follow_the_event_encoding() {
        assert_eq!(
            filter_subject(&f("order.created.v1")),
            "herald.*.order.created.v1"
        );
        assert_eq!(filter_subject(&f("order.*.v1")), "herald.*.order.*.v1");
        assert_eq!(filter_subject(&f("shop/order.>")), "herald.shop.order.>");
        assert_eq!(
            filter_subject(&f("https://x/a-b.c")),
            "herald.https~3A.~2Fx~2Fa-b.c"
        );
        // What a filter selects is exactly what `matches` accepts.
        let subj = crate::subject::event_subject("shop", "order.created.v1");
        assert!(subj.starts_with("herald.shop.order."));
    }

    #[test]
    fn extreme_settings_do_not_overflow() {
        let who = Subscriber {
            namespace: "ns".into(),
            app_id: "app".into(),
        };
        let mut sub = Subscription::new(f("a"));
        sub.attempt_timeout = Duration::MAX;
        sub.retry.local_attempts = u32::MAX;
        sub.retry.local_backoff = Duration::MAX;
        sub.max_in_flight = usize::MAX;
        let c = config(&who, &sub);
        assert_eq!(c.ack_wait, Duration::from_secs(600));
        assert_eq!(c.max_ack_pending, i64::MAX);
    }

    #[test]
    fn names_are_deterministic_short_and_distinct() {
        let a = Subscriber {
            namespace: "prod".into(),
            app_id: "billing".into(),
        };
        let b = Subscriber {
            namespace: "prod".into(),
            app_id: "shipping".into(),
        };
        let n = a.consumer_name(&f("order.>"));
        assert_eq!(n, a.consumer_name(&f("order.>")));
        assert_eq!(n.len(), "herald-".len() + 16);
        assert_ne!(n, b.consumer_name(&f("order.>")));
        assert_ne!(n, a.consumer_name(&f("order.*")));
        assert_eq!(a.describe(&f("shop/order.>")), "prod/billing/shop/order.>");
    }
}
