//! Delivery policy, apart from any transport: what an app's answer means, what the retry budget
//! does next, where a dead letter goes and what it carries, and the HTTP request an event becomes.
//!
//! Outcomes: `2xx` acks. `429`, `503`, other `5xx`, `404`, `408`, `409`, network errors and
//! timeouts are retried; `429`/`503` honour `Retry-After`. Other `4xx` are permanent and
//! dead-lettered at once. Retries follow one budget (`max_attempts`) over two levels: a few quick
//! local attempts with jittered exponential backoff, then a delayed redelivery by the broker,
//! which survives a sidecar restart. The attempt number is derived from the broker's delivery
//! count, so the budget survives restarts too ([`Budget`]).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::consumer::Subscriber;
use crate::contract::{DeliveryMode, RetryPolicy, Subscription};
use crate::subject::{EVENT_PREFIX, encode_token_into};
use crate::wire::HeaderView;

/// Header with the attempt number (1 for the first delivery).
pub const ATTEMPT_HEADER: &str = "herald-delivery-attempt";
/// Prefix of dead-letter subjects.
pub const DLQ_PREFIX: &str = "herald-dlq";
/// Header of a replayed event naming the one subscription it is for.
pub const REPLAY_FOR: &str = "Herald-Replay-For";

/// Headers a dead letter carries besides the original event's; `herald deadletter` reads them.
pub mod dlq_header {
    /// Every dead-letter header starts with this (replay strips them).
    pub const PREFIX: &str = "Herald-Dlq-";
    pub const REASON: &str = "Herald-Dlq-Reason";
    pub const STATUS: &str = "Herald-Dlq-Status";
    pub const ATTEMPTS: &str = "Herald-Dlq-Attempts";
    pub const SUBSCRIBER: &str = "Herald-Dlq-Subscriber";
    pub const SUBJECT: &str = "Herald-Dlq-Subject";
    pub const CONSUMER: &str = "Herald-Dlq-Consumer";
}

/// A `Retry-After` or backoff longer than this is waited out by the broker (a delayed
/// redelivery), not in the sidecar.
pub const LONGEST_LOCAL_WAIT: Duration = Duration::from_secs(2);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Retry {
        status: Option<u16>,
        retry_after: Option<Duration>,
        reason: String,
    },
    Permanent {
        status: u16,
        reason: String,
    },
}

/// Classifies the app's answer.
pub fn classify(status: StatusCode, retry_after: Option<&HeaderValue>) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        return Outcome::Delivered;
    }
    let retryable = status.is_server_error() || matches!(code, 404 | 408 | 409 | 429);
    if retryable {
        let retry_after = if matches!(code, 429 | 503) {
            retry_after.and_then(parse_retry_after)
        } else {
            None
        };
        Outcome::Retry {
            status: Some(code),
            retry_after,
            reason: format!("the app answered {status}"),
        }
    } else {
        Outcome::Permanent {
            status: code,
            reason: format!("the app answered {status}, which is not retried"),
        }
    }
}

/// `Retry-After` in seconds, at most an hour (the HTTP-date form is rare from apps and is
/// ignored).
fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    v.to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(3600)))
}

/// What the budget says after a retryable failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Try again here after this wait (the lease is kept meanwhile).
    RetryLocally(Duration),
    /// Hand the event back to the broker, to be delivered again after this delay.
    Redeliver(Duration),
    /// The budget is spent: dead-letter it with this reason.
    DeadLetter(String),
}

/// The retry budget of one broker delivery of an event: `delivered` is the broker's delivery
/// count (1 the first time), so attempts are numbered across redeliveries and restarts, and local
/// and broker retries never multiply.
#[derive(Debug, Clone, Copy)]
pub struct Budget<'a> {
    pub policy: &'a RetryPolicy,
    pub delivered: u32,
}

impl Budget<'_> {
    /// Local attempts in this delivery.
    pub fn local_attempts(&self) -> u32 {
        self.policy.local_attempts.max(1)
    }

    /// The number of local attempt `i` (from 0) across every delivery: 1 for the very first.
    pub fn attempt(&self, i: u32) -> u32 {
        self.delivered
            .max(1)
            .saturating_sub(1)
            .saturating_mul(self.local_attempts())
            .saturating_add(i)
            .saturating_add(1)
    }

    /// What to do after local attempt `i` failed and may be retried. `jitter` spreads a computed
    /// wait (±20 % in the engine; the identity in tests); a `Retry-After` is taken as it is.
    pub fn after_failure(
        &self,
        i: u32,
        retry_after: Option<Duration>,
        reason: &str,
        jitter: impl Fn(Duration) -> Duration,
    ) -> Next {
        let attempt = self.attempt(i);
        if attempt >= self.policy.max_attempts {
            return Next::DeadLetter(format!("{reason}; gave up after {attempt} attempts"));
        }
        let local_wait = retry_after.unwrap_or_else(|| {
            jitter(
                self.policy
                    .local_backoff
                    .saturating_mul(2u32.saturating_pow(i)),
            )
        });
        if i + 1 < self.local_attempts() && local_wait <= LONGEST_LOCAL_WAIT {
            return Next::RetryLocally(local_wait);
        }
        let backoff = self
            .policy
            .redelivery_delay
            .saturating_mul(2u32.saturating_pow(self.delivered.max(1) - 1));
        Next::Redeliver(
            retry_after.unwrap_or_else(|| jitter(backoff.min(self.policy.max_redelivery_delay))),
        )
    }
}

/// `herald-dlq.<namespace>.<app id>.<the original subject without "herald.">`.
pub fn dlq_subject(who: &Subscriber, original: &str) -> String {
    let mut s = String::from(DLQ_PREFIX);
    s.push('.');
    encode_token_into(&who.namespace, &mut s);
    s.push('.');
    encode_token_into(&who.app_id, &mut s);
    let tail = original.strip_prefix(EVENT_PREFIX).unwrap_or(original);
    if !tail.starts_with('.') {
        s.push('.');
    }
    s.push_str(tail);
    s
}

/// What one subscription delivers to, as currently configured. Replaced as a whole on reload;
/// each delivery keeps the snapshot it started with.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub sub: Subscription,
    pub dest: Destination,
    /// Its delivery facts (last delivery, last failure) are published for a resource's status
    /// ([`crate::report`]): the subscriptions of Subscription resources only.
    pub reported: bool,
}

/// Where a subscription's deliveries go.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    /// The app beside the sidecar: `http://127.0.0.1:<port><subscription path>`.
    App(u16),
    /// A sink URL, delivered to by the dispatcher (the subscription's path is not used).
    Sink(SinkUrl),
}

/// An `http://host[:port][/path][?query]` sink, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Longest sink URL accepted.
pub const MAX_SINK_URL_BYTES: usize = 2048;

impl SinkUrl {
    /// Parses a sink; the error says what rule it breaks. Only `http`: sinks are in-cluster
    /// Services, reached over the cluster network (as Kyma's are).
    pub fn parse(url: &str) -> Result<SinkUrl, String> {
        if url.len() > MAX_SINK_URL_BYTES {
            return Err(format!(
                "is {} bytes long; the limit is {MAX_SINK_URL_BYTES}",
                url.len()
            ));
        }
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("is not a URL ({e}): {url:?}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "must be an http:// URL (in-cluster Services are reached over http), not {other}://"
                ));
            }
            None => return Err(format!("must be an absolute http:// URL, not {url:?}")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("has no host: {url:?}"))?;
        if authority.as_str().contains('@') {
            return Err("may not carry a user name or password".into());
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(format!("has no host: {url:?}"));
        }
        Ok(SinkUrl {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            path: uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
        })
    }

    /// `host:port`, as the Host header carries it.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The HTTP request delivering a stored event (its headers and payload) to the app: binary mode
/// copies the stored `ce-*` headers as they are (they are already in the HTTP binding's
/// encoding), structured mode writes one JSON document; `traceparent`, `tracestate` and the
/// attempt number go with either. Any stored event may come from a publisher that bypassed the
/// sidecar, so a header the HTTP binding cannot carry is an error here (the event is
/// dead-lettered), never a panic.
pub fn request(
    target: &Target,
    headers: &dyn HeaderView,
    payload: &Bytes,
    attempt: u32,
) -> Result<http::Request<Bytes>, http::Error> {
    let sub = &target.sub;
    // Built straight into the header map: one parse per copied header and no intermediate
    // strings (this runs for every delivery).
    let mut map = http::HeaderMap::with_capacity(16);
    let mut failed: Option<http::Error> = None;
    headers.each(&mut |name, value| {
        if failed.is_some() {
            return;
        }
        let wanted = match sub.mode {
            DeliveryMode::Binary => {
                name.len() >= 3 && name.as_bytes()[..3].eq_ignore_ascii_case(b"ce-")
                    || name.eq_ignore_ascii_case("content-type")
            }
            DeliveryMode::Structured => false,
        } || name.eq_ignore_ascii_case("traceparent")
            || name.eq_ignore_ascii_case("tracestate");
        if !wanted {
            return;
        }
        // `HeaderName` stores names lower case, as HTTP/1.1 sends them.
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            (Err(e), _) => failed = Some(e.into()),
            (_, Err(e)) => failed = Some(e.into()),
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let body = match sub.mode {
        DeliveryMode::Binary => payload.clone(),
        DeliveryMode::Structured => {
            let mut pairs = Vec::new();
            headers.each(&mut |n, v| pairs.push((n.to_owned(), v.to_owned())));
            map.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
            );
            Bytes::from(crate::event::to_structured(
                pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                payload,
            ))
        }
    };
    map.insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
    let uri = match &target.dest {
        Destination::App(port) => format!("http://127.0.0.1:{port}{}", sub.path),
        Destination::Sink(sink) => {
            // Explicit, so the request keeps it when the dispatcher connects elsewhere
            // (`--resolve`).
            map.insert(
                http::header::HOST,
                HeaderValue::from_str(&sink.authority())?,
            );
            format!("http://{}{}", sink.authority(), sink.path)
        }
    };
    let mut req = http::Request::post(uri).body(body)?;
    *req.headers_mut() = map;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::TypeFilter;
    use crate::wire::Headers;

    #[test]
    fn sink_urls_are_http_with_a_host_and_nothing_else() {
        let s = SinkUrl::parse("http://orders.shop.svc.cluster.local/hook?x=1").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.path.as_str()),
            ("orders.shop.svc.cluster.local", 80, "/hook?x=1")
        );
        assert_eq!(SinkUrl::parse("http://fn:8080").unwrap().path, "/");
        for (bad, rule) in [
            ("https://fn.shop.svc", "http://"),
            ("fn.shop.svc", "absolute"),
            ("http://user:pw@fn/", "user name"),
            ("http:///x", "URL"),
            ("not a url", "URL"),
        ] {
            let e = SinkUrl::parse(bad).unwrap_err();
            assert!(e.contains(rule), "{bad}: {e}");
        }
        assert!(
            SinkUrl::parse(&format!("http://h/{}", "a".repeat(3000)))
                .unwrap_err()
                .contains("limit")
        );
    }

    #[test]
    fn classification_follows_the_contract() {
        let retry = |c: u16| {
            matches!(
                classify(StatusCode::from_u16(c).unwrap(), None),
                Outcome::Retry { .. }
            )
        };
        assert_eq!(classify(StatusCode::NO_CONTENT, None), Outcome::Delivered);
        for c in [404, 408, 409, 429, 500, 502, 503, 504] {
            assert!(retry(c), "{c} is retried");
        }
        for c in [400, 401, 403, 405, 410, 413, 415, 422] {
            assert!(
                matches!(
                    classify(StatusCode::from_u16(c).unwrap(), None),
                    Outcome::Permanent { .. }
                ),
                "{c} is permanent"
            );
        }
        let ra = HeaderValue::from_static("7");
        let Outcome::Retry { retry_after, .. } = classify(StatusCode::TOO_MANY_REQUESTS, Some(&ra))
        else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(7)));
        let Outcome::Retry { retry_after, .. } =
            classify(StatusCode::INTERNAL_SERVER_ERROR, Some(&ra))
        else {
            panic!()
        };
        assert_eq!(retry_after, None, "only 429 and 503 carry Retry-After");
        let long = HeaderValue::from_static("999999");
        let Outcome::Retry { retry_after, .. } =
            classify(StatusCode::SERVICE_UNAVAILABLE, Some(&long))
        else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(3600)));
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            local_attempts: 3,
            local_backoff: Duration::from_millis(100),
            redelivery_delay: Duration::from_secs(5),
            max_redelivery_delay: Duration::from_secs(300),
        }
    }

    #[test]
    fn the_budget_retries_locally_then_hands_back_with_doubling_delays() {
        let p = policy();
        let first = Budget {
            policy: &p,
            delivered: 1,
        };
        let same = |d| d;
        assert_eq!(first.attempt(0), 1);
        assert_eq!(
            first.after_failure(0, None, "503", same),
            Next::RetryLocally(Duration::from_millis(100))
        );
        assert_eq!(
            first.after_failure(1, None, "503", same),
            Next::RetryLocally(Duration::from_millis(200))
        );
        // The last local attempt hands the event back: 5 s, then 10, 20, ... up to 5 m.
        assert_eq!(
            first.after_failure(2, None, "503", same),
            Next::Redeliver(Duration::from_secs(5))
        );
        let third = Budget {
            policy: &p,
            delivered: 3,
        };
        assert_eq!(third.attempt(0), 7, "attempts count across redeliveries");
        assert_eq!(
            third.after_failure(2, None, "503", same),
            Next::Redeliver(Duration::from_secs(20))
        );
        let twelfth = Budget {
            policy: &p,
            delivered: 12,
        };
        assert_eq!(
            twelfth.after_failure(0, None, "503", same),
            Next::DeadLetter("503; gave up after 34 attempts".into())
        );
        let fourth = Budget {
            policy: &p,
            delivered: 4,
        };
        assert_eq!(
            fourth.after_failure(0, None, "503", same),
            Next::DeadLetter("503; gave up after 10 attempts".into())
        );
        // The cap on the redelivery delay.
        let mut long = policy();
        long.max_attempts = 1000;
        let late = Budget {
            policy: &long,
            delivered: 20,
        };
        assert_eq!(
            late.after_failure(2, None, "x", same),
            Next::Redeliver(Duration::from_secs(300))
        );
    }

    #[test]
    fn retry_after_is_honoured_and_long_waits_go_to_the_broker() {
        let p = policy();
        let b = Budget {
            policy: &p,
            delivered: 1,
        };
        let same = |d| d;
        assert_eq!(
            b.after_failure(0, Some(Duration::from_secs(1)), "429", same),
            Next::RetryLocally(Duration::from_secs(1))
        );
        assert_eq!(
            b.after_failure(0, Some(Duration::from_secs(30)), "429", same),
            Next::Redeliver(Duration::from_secs(30))
        );
        // Jitter spreads computed waits only.
        let double = |d: Duration| d * 2;
        assert_eq!(
            b.after_failure(0, None, "503", double),
            Next::RetryLocally(Duration::from_millis(200))
        );
    }

    #[test]
    fn extreme_counts_saturate() {
        let mut p = policy();
        p.local_attempts = u32::MAX;
        p.local_backoff = Duration::MAX;
        p.max_attempts = u32::MAX;
        let b = Budget {
            policy: &p,
            delivered: u32::MAX,
        };
        assert_eq!(b.attempt(u32::MAX - 1), u32::MAX);
        assert!(matches!(
            b.after_failure(40, None, "x", |d| d),
            Next::DeadLetter(_)
        ));
    }

    #[test]
    fn dead_letter_subjects() {
        let who = Subscriber {
            namespace: "prod".into(),
            app_id: "billing".into(),
        };
        assert_eq!(
            dlq_subject(&who, "herald.shop.order.created.v1"),
            "herald-dlq.prod.billing.shop.order.created.v1"
        );
    }

    #[test]
    fn requests_carry_the_binding_and_refuse_what_http_cannot_carry() {
        let target = Target {
            sub: Subscription::new(TypeFilter::parse("a").unwrap()),
            dest: Destination::App(8080),
            reported: false,
        };
        let mut h = Headers::new();
        h.push("ce-id", "1");
        h.push("ce-type", "a");
        h.push("Content-Type", "text/plain");
        h.push("traceparent", "00-abc");
        h.push("Nats-Msg-Id", "s 1");
        let req = request(&target, &h, &Bytes::from_static(b"hi"), 3).unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:8080/");
        let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        for n in [
            "ce-id",
            "ce-type",
            "content-type",
            "traceparent",
            ATTEMPT_HEADER,
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert!(!names.contains(&"nats-msg-id"));
        // A publisher that wrote to NATS directly can store a value HTTP cannot carry.
        let mut bad = Headers::new();
        bad.push("ce-id", "control\u{1}char");
        assert!(request(&target, &bad, &Bytes::new(), 1).is_err());
        let mut structured = target.clone();
        structured.sub.mode = DeliveryMode::Structured;
        let req = request(&structured, &h, &Bytes::from_static(b"hi"), 1).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"id": "1", "type": "a", "datacontenttype": "text/plain", "data": "hi"})
        );
    }
}
