//! Durable consumers, one per (namespace, app id, filter), shared by every replica of the
//! workload, so each subscribing workload gets each event once, spread over its replicas.
//!
//! Names are deterministic and short (`herald-` and 16 hex digits of a SHA-256 of
//! `namespace/app-id/filter`), so every replica binds the same consumer without coordination; the
//! description spells out `namespace/app-id/filter` for people and for the controller's orphan
//! cleanup. One filter subject per consumer keeps nats-server 2.9 correct. [`ConsumerSpec`] is
//! what a broker creates for a subscription.

use std::fmt::Write as _;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::contract::{StartPosition, Subscription};
use crate::filter::TypeFilter;
use crate::subject::{EVENT_PREFIX, encode_token_into};

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

/// The consumer of a subscription, in herald's terms. Acknowledgements are explicit, and the
/// broker never gives up on an event by itself: herald keeps the attempt budget.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    /// Deterministic: every replica binds the same consumer.
    pub name: String,
    /// `namespace/app-id/filter`.
    pub description: String,
    pub filter_subject: String,
    /// How long a leased event stays leased without an acknowledgement or a sign of progress.
    pub ack_wait: Duration,
    /// Events leased and not yet acknowledged, across every replica: max in flight.
    pub max_ack_pending: usize,
    /// Where a new consumer starts; an existing one keeps its position.
    pub start: StartPosition,
}

/// The consumer of `sub` for `who`.
pub fn spec(who: &Subscriber, sub: &Subscription) -> ConsumerSpec {
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
    ConsumerSpec {
        name: who.consumer_name(&sub.filter),
        description: who.describe(&sub.filter),
        filter_subject: filter_subject(&sub.filter),
        // The sidecar also sends in-progress acks between local retries; this is the margin for
        // a sidecar that dies mid-delivery: its events come back after the ack wait.
        ack_wait: local_time
            .saturating_add(Duration::from_secs(5))
            .min(Duration::from_secs(600)),
        max_ack_pending: sub.max_in_flight,
        start: sub.start,
    }
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
        let c = spec(&who, &sub);
        assert_eq!(c.ack_wait, Duration::from_secs(600));
        assert_eq!(c.max_ack_pending, usize::MAX);
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
