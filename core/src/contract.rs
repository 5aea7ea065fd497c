//! The annotation contract: the pod annotations herald reads, their defaults, parsing and
//! validation. Written once: the sidecar runs from it, and the webhook uses it to deny pods with
//! bad annotations. Every error names the key and the rule, and all errors are reported together.
//!
//! The sidecar reads annotations from the downward API file (`key="value"` lines, the value quoted
//! the way Go's `strconv.Quote` does it); locally the same keys come from flags.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::attrfilter::{self, AttrFilter};
use crate::defaults::Defaults;
use crate::filter::{self, TypeFilter};
use crate::limits::{self, DELIVERY_DURATION};

pub const INJECT: &str = "herald.dev/inject";
pub const APP_ID: &str = "herald.dev/app-id";
pub const APP_PORT: &str = "herald.dev/app-port";
pub const SUBSCRIBE: &str = "herald.dev/subscribe";
pub const PATH: &str = "herald.dev/path";
pub const MAX_IN_FLIGHT: &str = "herald.dev/max-in-flight";
pub const PUBLISH_ALLOW: &str = "herald.dev/publish-allow";
pub const SUBSCRIPTIONS: &str = "herald.dev/subscriptions";
/// A CESQL condition every event must meet to be delivered, for every subscription of the pod.
pub const FILTER: &str = "herald.dev/filter";
/// How long the publish API stays up after SIGTERM while the app may still publish.
pub const SHUTDOWN_WINDOW: &str = "herald.dev/shutdown-window";

const KNOWN: &[&str] = &[
    INJECT,
    APP_ID,
    APP_PORT,
    SUBSCRIBE,
    PATH,
    MAX_IN_FLIGHT,
    PUBLISH_ALLOW,
    SUBSCRIPTIONS,
    FILTER,
    SHUTDOWN_WINDOW,
];

/// Deliveries in flight per subscription, across replicas, unless `herald.dev/max-in-flight` says.
pub const DEFAULT_MAX_IN_FLIGHT: usize = crate::defaults::MAX_IN_FLIGHT;

/// One bad annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {rule}")]
pub struct AnnotationError {
    pub key: String,
    pub rule: String,
}

/// Every bad annotation of a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct AnnotationErrors(pub Vec<AnnotationError>);

/// How deliveries are retried: one budget over local retries and broker redeliveries.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, local and redelivered, before the event is dead-lettered.
    pub max_attempts: u32,
    /// Quick attempts inside one broker delivery.
    pub local_attempts: u32,
    /// First local backoff; doubles, with jitter.
    pub local_backoff: Duration,
    /// First broker redelivery delay; doubles per redelivery up to `max_redelivery_delay`.
    pub redelivery_delay: Duration,
    pub max_redelivery_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        use crate::defaults as d;
        RetryPolicy {
            max_attempts: d::MAX_ATTEMPTS,
            local_attempts: d::LOCAL_ATTEMPTS,
            local_backoff: d::LOCAL_BACKOFF,
            redelivery_delay: d::REDELIVERY_DELAY,
            max_redelivery_delay: d::MAX_REDELIVERY_DELAY,
        }
    }
}

/// How events are sent to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// `ce-*` headers and the data as the body (the default).
    #[default]
    Binary,
    /// One `application/cloudevents+json` document.
    Structured,
}

/// Where a new subscription starts reading. It applies when the consumer is created; an existing
/// consumer keeps its position (JetStream cannot move one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// Only events stored after the consumer was created (the default).
    #[default]
    New,
    /// Everything the stream still holds.
    All,
    /// Events stored at or after this time.
    Time(chrono::DateTime<chrono::Utc>),
}

/// One subscription of the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub filter: TypeFilter,
    /// HTTP path deliveries go to.
    pub path: String,
    pub max_in_flight: usize,
    pub retry: RetryPolicy,
    /// Timeout of one delivery attempt.
    pub attempt_timeout: Duration,
    pub dead_letter: bool,
    pub mode: DeliveryMode,
    pub start: StartPosition,
    /// Attribute filters, ANDed; an event that fails them is acknowledged without delivery.
    /// Empty: every event of the type filter is delivered.
    pub filters: Vec<AttrFilter>,
}

impl Subscription {
    /// A subscription to `filter` with every default.
    pub fn new(filter: TypeFilter) -> Self {
        Subscription {
            filter,
            path: "/".into(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            retry: RetryPolicy::default(),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            dead_letter: true,
            mode: DeliveryMode::Binary,
            start: StartPosition::New,
            filters: Vec::new(),
        }
    }
}

/// Timeout of one delivery attempt unless configured.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = crate::defaults::ATTEMPT_TIMEOUT;

/// What the annotations say.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodConfig {
    pub app_id: Option<String>,
    pub app_port: Option<u16>,
    pub subscriptions: Vec<Subscription>,
    pub publish_allow: Vec<TypeFilter>,
    /// `herald.dev/shutdown-window`, when set.
    pub shutdown_window: Option<Duration>,
}

/// Validates annotations (only `herald.dev/*` keys are looked at), over the built-in defaults.
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<PodConfig, AnnotationErrors> {
    parse_with(annotations, &Defaults::default())
}

/// [`parse`] over the cluster's delivery defaults: what the annotations leave out comes from
/// `cluster`.
pub fn parse_with(
    annotations: &BTreeMap<String, String>,
    cluster: &Defaults,
) -> Result<PodConfig, AnnotationErrors> {
    let mut errors = Vec::new();
    let mut err = |key: &str, rule: String| {
        errors.push(AnnotationError {
            key: key.to_owned(),
            rule,
        })
    };
    // Values over their size limit are reported and then not parsed at all.
    let oversized: Vec<&str> = annotations
        .iter()
        .filter(|(k, v)| KNOWN.contains(&k.as_str()) && v.len() > max_bytes(k))
        .map(|(k, _)| k.as_str())
        .collect();
    let get = |k: &str| {
        annotations
            .get(k)
            .filter(|_| !oversized.contains(&k))
            .map(|v| v.trim())
    };

    for key in annotations.keys().filter(|k| k.starts_with("herald.dev/")) {
        if !KNOWN.contains(&key.as_str()) {
            err(
                key,
                format!("unknown herald annotation (known: {})", KNOWN.join(", ")),
            );
        }
    }
    for key in &oversized {
        err(
            key,
            format!(
                "the value is {} bytes long; the limit is {}",
                annotations[*key].len(),
                max_bytes(key)
            ),
        );
    }
    if let Some(v) = get(INJECT).filter(|v| *v != "true" && *v != "false") {
        err(INJECT, format!("must be \"true\" or \"false\", not {v:?}"));
    }
    let app_id = get(APP_ID).map(str::to_owned);
    if let Some(Err(rule)) = app_id
        .as_deref()
        .map(|a| crate::settings::parse_name(a, limits::MAX_APP_ID_BYTES))
    {
        err(APP_ID, rule);
    }
    let app_port = get(APP_PORT).and_then(|v| match v.parse::<u16>() {
        Ok(p) if p > 0 => Some(p),
        _ => {
            err(
                APP_PORT,
                format!("must be a port number from 1 to 65535, not {v:?}"),
            );
            None
        }
    });
    let path = match get(PATH).map(check_path) {
        Some(Ok(p)) => p,
        Some(Err(rule)) => {
            err(PATH, rule);
            "/".into()
        }
        None => "/".into(),
    };
    let max_in_flight = match get(MAX_IN_FLIGHT).map(|v| (v, v.parse::<u64>())) {
        None => cluster.max_in_flight,
        Some((_, Ok(n))) if check_max_in_flight(n).is_ok() => n as usize,
        Some((v, _)) => {
            err(
                MAX_IN_FLIGHT,
                format!("{}, not {v:?}", max_in_flight_rule()),
            );
            cluster.max_in_flight
        }
    };
    let filters = match get(SUBSCRIBE) {
        None | Some("") => vec![],
        Some(v) => filter::parse_list(v, limits::MAX_SUBSCRIPTIONS).unwrap_or_else(|e| {
            err(SUBSCRIBE, e.to_string());
            vec![]
        }),
    };
    let publish_allow = match get(PUBLISH_ALLOW) {
        None | Some("") => vec![],
        Some(v) => filter::parse_list(v, limits::MAX_PUBLISH_ALLOW).unwrap_or_else(|e| {
            err(PUBLISH_ALLOW, e.to_string());
            vec![]
        }),
    };
    let shutdown_window = get(SHUTDOWN_WINDOW).and_then(|v| {
        match crate::settings::in_range(limits::SHUTDOWN_WINDOW)(v) {
            Ok(d) => Some(d),
            Err(rule) => {
                err(SHUTDOWN_WINDOW, format!("{rule}, not {v:?}"));
                None
            }
        }
    });
    let pod_filter = get(FILTER).and_then(|v| match attrfilter::compile_sql(v) {
        Ok(e) => Some(AttrFilter::Sql(e)),
        Err(rule) => {
            err(FILTER, rule);
            None
        }
    });
    // The simple annotations are the pod-wide defaults of every subscription.
    let mut defaults = Subscription {
        path,
        max_in_flight,
        attempt_timeout: cluster.attempt_timeout,
        ..Subscription::new(
            TypeFilter::parse(">").unwrap_or_else(|_| unreachable!("`>` is a valid filter")),
        )
    };
    defaults.retry.max_attempts = cluster.max_attempts;
    defaults.retry.local_backoff = cluster.local_backoff;
    let mut subscriptions: Vec<Subscription> = filters
        .into_iter()
        .map(|filter| Subscription {
            filter,
            ..defaults.clone()
        })
        .collect();
    let mut listed_in = SUBSCRIBE;
    if let Some(yaml) = annotations
        .get(SUBSCRIPTIONS)
        .filter(|_| !oversized.contains(&SUBSCRIPTIONS))
    {
        listed_in = SUBSCRIPTIONS;
        if !subscriptions.is_empty() {
            err(
                SUBSCRIPTIONS,
                format!("use either {SUBSCRIBE} or {SUBSCRIPTIONS}, not both"),
            );
        }
        match parse_yaml(yaml, &defaults) {
            Ok(subs) => subscriptions = subs,
            Err(rules) => rules.into_iter().for_each(|r| err(SUBSCRIPTIONS, r)),
        }
    }
    // The pod-wide filter applies after each subscription's own.
    if let Some(f) = pod_filter {
        for s in &mut subscriptions {
            s.filters.push(f.clone());
        }
    }
    let subscribes =
        get(SUBSCRIBE).is_some_and(|v| !v.is_empty()) || annotations.contains_key(SUBSCRIPTIONS);
    if subscribes && !annotations.contains_key(APP_PORT) {
        err(
            APP_PORT,
            format!("required when {listed_in} is set (the port the app receives deliveries on)"),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for s in &subscriptions {
        if !seen.insert(s.filter.to_string()) {
            err(
                listed_in,
                format!(
                    "filter `{}` is listed twice (one subscription per filter)",
                    s.filter
                ),
            );
        }
    }
    if !errors.is_empty() {
        return Err(AnnotationErrors(errors));
    }
    Ok(PodConfig {
        app_id,
        app_port,
        subscriptions,
        publish_allow,
        shutdown_window,
    })
}

/// Subscriptions given apart from a pod's annotations (herald's `Subscription` resources, which
/// the controller distributes through the configuration bucket): a list of entries in the form of
/// `herald.dev/subscriptions` (YAML, or JSON, which is YAML), over the cluster's delivery
/// defaults. The controller validates a resource with this and the sidecar reads the bucket with
/// it, so both hold one contract. Each rule names the entry and the field.
pub fn parse_entries(text: &str, cluster: &Defaults) -> Result<Vec<Subscription>, Vec<String>> {
    if text.len() > limits::MAX_SUBSCRIPTIONS_ANNOTATION_BYTES {
        return Err(vec![format!(
            "the subscriptions are {} bytes long; the limit is {}",
            text.len(),
            limits::MAX_SUBSCRIPTIONS_ANNOTATION_BYTES
        )]);
    }
    let mut defaults = Subscription {
        max_in_flight: cluster.max_in_flight,
        attempt_timeout: cluster.attempt_timeout,
        ..Subscription::new(
            TypeFilter::parse(">").unwrap_or_else(|_| unreachable!("`>` is a valid filter")),
        )
    };
    defaults.retry.max_attempts = cluster.max_attempts;
    defaults.retry.local_backoff = cluster.local_backoff;
    let subs = parse_yaml(text, &defaults)?;
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<String> = subs
        .iter()
        .filter(|s| !seen.insert(s.filter.to_string()))
        .map(|s| {
            format!(
                "filter `{}` is listed twice (one subscription per filter)",
                s.filter
            )
        })
        .collect();
    if twice.is_empty() {
        Ok(subs)
    } else {
        Err(twice)
    }
}

/// The size limit of an annotation's value.
fn max_bytes(key: &str) -> usize {
    match key {
        SUBSCRIPTIONS => limits::MAX_SUBSCRIPTIONS_ANNOTATION_BYTES,
        SUBSCRIBE | PUBLISH_ALLOW => limits::MAX_FILTER_LIST_BYTES,
        FILTER => herald_cesql::MAX_LENGTH,
        _ => limits::MAX_ANNOTATION_BYTES,
    }
}

fn max_in_flight_rule() -> String {
    let (lo, hi) = limits::MAX_IN_FLIGHT_RANGE;
    format!("must be a whole number from {lo} to {hi}")
}

fn check_max_in_flight(n: u64) -> Result<u64, String> {
    let (lo, hi) = limits::MAX_IN_FLIGHT_RANGE;
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{}, not {n}", max_in_flight_rule()))
    }
}

fn check_path(p: &str) -> Result<String, String> {
    if p.starts_with('/') && !p.contains(|c: char| c.is_whitespace() || c.is_control()) {
        Ok(p.to_owned())
    } else {
        Err(format!(
            "must be an absolute HTTP path starting with `/`, not {p:?}"
        ))
    }
}

/// One entry of `herald.dev/subscriptions` as written; unknown fields are errors so typos are
/// caught at admission instead of silently ignored.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct YamlSubscription {
    #[serde(rename = "type")]
    ty: String,
    source: Option<String>,
    path: Option<String>,
    max_in_flight: Option<u64>,
    timeout: Option<String>,
    dead_letter: Option<bool>,
    delivery: Option<String>,
    start: Option<String>,
    retry: Option<YamlRetry>,
    filters: Option<yaml_serde::Value>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct YamlRetry {
    max_attempts: Option<u32>,
    local_attempts: Option<u32>,
    backoff: Option<String>,
    redelivery_delay: Option<String>,
    max_redelivery_delay: Option<String>,
}

/// Parses the YAML form. Each rule names the entry (1-based, with its type) and the field.
fn parse_yaml(yaml: &str, defaults: &Subscription) -> Result<Vec<Subscription>, Vec<String>> {
    let raw: Vec<YamlSubscription> = yaml_serde::from_str(yaml).map_err(|e| {
        // yaml_serde's message has the path (`[0].field`, counted from 0) and line and column.
        vec![format!(
            "not a valid YAML list of subscriptions (each entry a map with at least `type`): {e}"
        )]
    })?;
    if raw.is_empty() {
        return Err(vec![
            "the list is empty (remove the annotation instead)".into(),
        ]);
    }
    if raw.len() > limits::MAX_SUBSCRIPTIONS {
        return Err(vec![format!(
            "the list has {} subscriptions; the limit is {} per pod",
            raw.len(),
            limits::MAX_SUBSCRIPTIONS
        )]);
    }
    let mut rules = Vec::new();
    let mut out = Vec::new();
    for (i, y) in raw.into_iter().enumerate() {
        let at = format!("entry {} (type {:?})", i + 1, short(&y.ty));
        let mut bad = |field: &str, rule: String| rules.push(format!("{at}: {field} {rule}"));
        let mut sub = defaults.clone();
        match TypeFilter::with_source(y.source.as_deref(), y.ty.trim()) {
            Ok(f) => sub.filter = f,
            Err(e) if e.rule.starts_with("the source") => bad("source", e.rule),
            Err(e) => bad("type", e.rule),
        }
        if let Some(p) = y.path {
            check_path(&p).map_or_else(|r| bad("path", r), |p| sub.path = p);
        }
        if let Some(n) = y.max_in_flight {
            check_max_in_flight(n).map_or_else(
                |r| bad("maxInFlight", r),
                |n| sub.max_in_flight = n as usize,
            );
        }
        let mut duration = |field: &str, v: Option<String>, slot: &mut Duration| {
            if let Some(v) = v {
                match crate::settings::in_range(DELIVERY_DURATION)(v.trim()) {
                    Ok(d) => *slot = d,
                    Err(r) => bad(field, format!("{r}, not {:?}", v.trim())),
                }
            }
        };
        duration("timeout", y.timeout, &mut sub.attempt_timeout);
        if let Some(r) = y.retry {
            duration("retry.backoff", r.backoff, &mut sub.retry.local_backoff);
            duration(
                "retry.redeliveryDelay",
                r.redelivery_delay,
                &mut sub.retry.redelivery_delay,
            );
            duration(
                "retry.maxRedeliveryDelay",
                r.max_redelivery_delay,
                &mut sub.retry.max_redelivery_delay,
            );
            let (lo, hi) = limits::MAX_ATTEMPTS_RANGE;
            match r.max_attempts {
                Some(n) if (lo..=hi).contains(&n) => sub.retry.max_attempts = n,
                Some(n) => bad(
                    "retry.maxAttempts",
                    format!("must be a whole number from {lo} to {hi}, not {n}"),
                ),
                None => {}
            }
            let (lo, hi) = limits::LOCAL_ATTEMPTS_RANGE;
            match r.local_attempts {
                Some(n) if (lo..=hi).contains(&n) => sub.retry.local_attempts = n,
                Some(n) => bad(
                    "retry.localAttempts",
                    format!("must be a whole number from {lo} to {hi}, not {n}"),
                ),
                None => {}
            }
        }
        if let Some(d) = y.dead_letter {
            sub.dead_letter = d;
        }
        match y.delivery.as_deref().map(str::trim) {
            None | Some("binary") => {}
            Some("structured") => sub.mode = DeliveryMode::Structured,
            Some(v) => bad(
                "delivery",
                format!("must be `binary` or `structured`, not {v:?}"),
            ),
        }
        match y.start.as_deref().map(str::trim) {
            None | Some("new") => {}
            Some("all") => sub.start = StartPosition::All,
            Some(v) => match chrono::DateTime::parse_from_rfc3339(v) {
                Ok(t) => sub.start = StartPosition::Time(t.with_timezone(&chrono::Utc)),
                Err(_) => bad(
                    "start",
                    format!(
                        "must be `new`, `all` or an RFC 3339 time such as 2026-01-31T12:00:00Z, not {v:?}"
                    ),
                ),
            },
        }
        if let Some(f) = &y.filters {
            match attrfilter::parse_list(f) {
                Ok(fs) => sub.filters = fs,
                Err(errors) => rules.extend(errors.into_iter().map(|e| format!("{at}: {e}"))),
            }
        }
        out.push(sub);
    }
    if rules.is_empty() {
        Ok(out)
    } else {
        Err(rules)
    }
}

/// A value as errors quote it: at most 80 bytes of it.
fn short(v: &str) -> String {
    let mut end = v.len().min(80);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    if end < v.len() {
        format!("{}...", &v[..end])
    } else {
        v.to_owned()
    }
}

/// Parses the downward API annotations file: one `key="value"` line per annotation, the value
/// quoted as Go's `strconv.Quote` writes it (so multi-line values are one line with `\n`).
pub fn parse_downward_api(text: &str) -> Result<BTreeMap<String, String>, AnnotationError> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |rule: &str| AnnotationError {
            key: format!("line {}", n + 1),
            rule: rule.to_owned(),
        };
        let (key, quoted) = line
            .split_once('=')
            .ok_or_else(|| bad("expected key=\"value\""))?;
        let value = unquote(quoted).ok_or_else(|| bad("the value is not a valid quoted string"))?;
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

/// Undoes Go's `strconv.Quote`.
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut bytes: Vec<u8> = Vec::new();
    let mut chars = inner.chars();
    // `\x` and octal escapes produce raw bytes, which may form UTF-8 together.
    let flush = |bytes: &mut Vec<u8>, out: &mut String| -> Option<()> {
        if !bytes.is_empty() {
            out.push_str(std::str::from_utf8(bytes).ok()?);
            bytes.clear();
        }
        Some(())
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            flush(&mut bytes, &mut out)?;
            if c == '"' {
                return None;
            }
            out.push(c);
            continue;
        }
        let e = chars.next()?;
        let hex = |chars: &mut std::str::Chars, n: usize| -> Option<u32> {
            let s: String = chars.take(n).collect();
            if s.len() != n {
                return None;
            }
            u32::from_str_radix(&s, 16).ok()
        };
        let simple = match e {
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            '\\' => Some('\\'),
            '"' => Some('"'),
            '\'' => Some('\''),
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'f' => Some('\x0c'),
            'v' => Some('\x0b'),
            _ => None,
        };
        if let Some(c) = simple {
            flush(&mut bytes, &mut out)?;
            out.push(c);
            continue;
        }
        match e {
            'x' => bytes.push(u8::try_from(hex(&mut chars, 2)?).ok()?),
            'u' | 'U' => {
                flush(&mut bytes, &mut out)?;
                out.push(char::from_u32(hex(
                    &mut chars,
                    if e == 'u' { 4 } else { 8 },
                )?)?);
            }
            '0'..='7' => {
                let rest: String = chars.by_ref().take(2).collect();
                bytes.push(u8::from_str_radix(&format!("{e}{rest}"), 8).ok()?);
            }
            _ => return None,
        }
    }
    flush(&mut bytes, &mut out)?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_given_apart_from_annotations_use_the_same_rules() {
        let cluster = Defaults {
            max_in_flight: 7,
            ..Defaults::default()
        };
        let subs = parse_entries(
            r#"[{"type": "order.*.v1", "source": "shop", "filters": [{"sql": "amount > 10"}]}]"#,
            &cluster,
        )
        .unwrap();
        assert_eq!(subs[0].filter.to_string(), "shop/order.*.v1");
        assert_eq!(subs[0].max_in_flight, 7);
        assert_eq!(subs[0].filters.len(), 1);
        let err = parse_entries(r#"[{"type": "a.v1", "maxInFlight": 0}]"#, &cluster).unwrap_err();
        assert!(
            err[0].contains("entry 1") && err[0].contains("maxInFlight"),
            "{err:?}"
        );
        let err = parse_entries(r#"[{"type": "a.v1"}, {"type": "a.v1"}]"#, &cluster).unwrap_err();
        assert!(err[0].contains("listed twice"), "{err:?}");
        let big = format!("[{}]", vec![r#"{"type":"a.v1"}"#; 20_000].join(","));
        assert!(parse_entries(&big, &cluster).unwrap_err()[0].contains("limit"));
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn simple_form() {
        let c = parse(&map(&[
            (INJECT, "true"),
            (APP_PORT, "8080"),
            (SUBSCRIBE, "order.created.v1, shop/order.>"),
            (PATH, "/events"),
            (MAX_IN_FLIGHT, "4"),
            ("other.io/x", "ignored"),
        ]))
        .unwrap();
        assert_eq!(c.app_port, Some(8080));
        assert_eq!(c.subscriptions.len(), 2);
        assert_eq!(c.subscriptions[1].filter.to_string(), "shop/order.>");
        assert!(
            c.subscriptions
                .iter()
                .all(|s| s.path == "/events" && s.max_in_flight == 4)
        );
        let none = parse(&map(&[(INJECT, "true")])).unwrap();
        assert!(none.subscriptions.is_empty());
    }

    #[test]
    fn every_bad_key_is_named() {
        let e = parse(&map(&[
            (INJECT, "yes"),
            (APP_PORT, "http"),
            (SUBSCRIBE, "a..b"),
            (PATH, "events"),
            (MAX_IN_FLIGHT, "0"),
            (PUBLISH_ALLOW, "x.>.y"),
            ("herald.dev/subscibe", "typo"),
        ]))
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            INJECT,
            APP_PORT,
            SUBSCRIBE,
            PATH,
            MAX_IN_FLIGHT,
            PUBLISH_ALLOW,
            "herald.dev/subscibe",
        ] {
            assert!(keys.contains(&k), "{k} not named in {e}");
        }
        let e = parse(&map(&[(SUBSCRIBE, "a.b")])).unwrap_err();
        assert_eq!(e.0[0].key, APP_PORT);
        let e = parse(&map(&[(APP_PORT, "80"), (SUBSCRIBE, "a.b, a.b")])).unwrap_err();
        assert_eq!(e.0[0].key, SUBSCRIBE);
    }

    #[test]
    fn shutdown_window_is_a_bounded_duration() {
        let c = parse(&map(&[(SHUTDOWN_WINDOW, "20s")])).unwrap();
        assert_eq!(c.shutdown_window, Some(Duration::from_secs(20)));
        assert_eq!(parse(&map(&[])).unwrap().shutdown_window, None);
        let zero = parse(&map(&[(SHUTDOWN_WINDOW, "0s")])).unwrap();
        assert_eq!(zero.shutdown_window, Some(Duration::ZERO));
        for bad in ["2h", "soon", "-1s", ""] {
            let e = parse(&map(&[(SHUTDOWN_WINDOW, bad)])).unwrap_err();
            assert_eq!(e.0[0].key, SHUTDOWN_WINDOW, "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn yaml_form() {
        let yaml = r#"
- type: order.created.v1
  source: https://shop.example/orders
  path: /orders
  maxInFlight: 3
  timeout: 2s
  deadLetter: false
  delivery: structured
  start: all
  retry: {maxAttempts: 4, localAttempts: 2, backoff: 50ms, redeliveryDelay: 1s, maxRedeliveryDelay: 1m}
- type: order.>
  start: 2026-01-31T12:00:00+01:00
"#;
        let c = parse(&map(&[
            (APP_PORT, "8080"),
            (PATH, "/in"),
            (SUBSCRIPTIONS, yaml),
        ]))
        .unwrap();
        let [a, b] = &c.subscriptions[..] else {
            panic!("two subscriptions expected: {c:?}")
        };
        assert_eq!(
            a.filter.source.as_deref(),
            Some("https://shop.example/orders")
        );
        assert_eq!((a.path.as_str(), a.max_in_flight), ("/orders", 3));
        assert_eq!(a.attempt_timeout, Duration::from_secs(2));
        assert!(!a.dead_letter);
        assert_eq!(
            (a.mode, a.start),
            (DeliveryMode::Structured, StartPosition::All)
        );
        assert_eq!(
            (
                a.retry.max_attempts,
                a.retry.local_attempts,
                a.retry.local_backoff
            ),
            (4, 2, Duration::from_millis(50))
        );
        assert_eq!(a.retry.max_redelivery_delay, Duration::from_secs(60));
        // Unset fields take the simple annotations, then the built-in defaults.
        assert_eq!(
            (b.path.as_str(), b.max_in_flight),
            ("/in", DEFAULT_MAX_IN_FLIGHT)
        );
        assert_eq!(b.mode, DeliveryMode::Binary);
        let StartPosition::Time(t) = b.start else {
            panic!()
        };
        assert_eq!(t.to_rfc3339(), "2026-01-31T11:00:00+00:00");
    }

    #[test]
    fn yaml_errors_name_the_entry_and_field() {
        let rules = |yaml: &str| {
            let e = parse(&map(&[(APP_PORT, "80"), (SUBSCRIPTIONS, yaml)])).unwrap_err();
            assert!(e.0.iter().all(|e| e.key == SUBSCRIPTIONS), "{e}");
            e.to_string()
        };
        let e = rules(
            "- type: a.b\n  maxInFlight: 0\n  delivery: push\n  start: yesterday\n  timeout: 0s\n- type: a..b\n  path: rel\n  retry: {maxAttempts: 0}\n",
        );
        for needle in [
            "entry 1 (type \"a.b\"): maxInFlight must be",
            "entry 1 (type \"a.b\"): delivery must be `binary` or `structured`",
            "entry 1 (type \"a.b\"): start must be",
            "entry 1 (type \"a.b\"): timeout must be from 1ms to 24h, not \"0s\"",
            "entry 2 (type \"a..b\"): type a type token is empty",
            "entry 2 (type \"a..b\"): path must be an absolute",
            "entry 2 (type \"a..b\"): retry.maxAttempts must be",
        ] {
            assert!(e.contains(needle), "{needle:?} missing from {e}");
        }
        assert!(rules("- type: a\n  maxInFlihgt: 3\n").contains("unknown field `maxInFlihgt`"));
        assert!(rules("- path: /x\n").contains("missing field `type`"));
        assert!(rules("type: a\n").contains("not a valid YAML list"));
        assert!(rules("[]").contains("the list is empty"));
        assert!(rules("- type: a\n- type: a\n").contains("filter `a` is listed twice"));
        assert!(
            rules("- type: a\n  filters: [{exact: {Source: x}}]\n").contains(
                "entry 1 (type \"a\"): filters[0].exact: \"Source\" is not an attribute name"
            )
        );
        let e = parse(&map(&[(SUBSCRIPTIONS, "- type: a\n")])).unwrap_err();
        assert_eq!(e.0[0].key, APP_PORT);
        let e = parse(&map(&[
            (APP_PORT, "80"),
            (SUBSCRIBE, "b"),
            (SUBSCRIPTIONS, "- type: a\n"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn limits_are_errors_that_name_the_field_the_value_and_the_rule() {
        let yaml = |y: &str| {
            parse(&map(&[(APP_PORT, "80"), (SUBSCRIPTIONS, y)]))
                .unwrap_err()
                .to_string()
        };
        // Durations that overflowed the retry arithmetic before they had a range.
        for field in [
            "timeout",
            "retry: {backoff",
            "retry: {redeliveryDelay",
            "retry: {maxRedeliveryDelay",
        ] {
            let close = if field.contains('{') { "}" } else { "" };
            let e = yaml(&format!(
                "- type: a\n  {field}: 9000000000000000000s{close}\n"
            ));
            assert!(
                e.contains("must be from 1ms to 24h, not \"9000000000000000000s\""),
                "{field}: {e}"
            );
        }
        let many: String = (0..65).map(|i| format!("- type: t{i}\n")).collect();
        assert!(yaml(&many).contains("the list has 65 subscriptions; the limit is 64 per pod"));
        let list: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        let e = parse(&map(&[(APP_PORT, "80"), (SUBSCRIBE, &list.join(","))])).unwrap_err();
        assert!(
            e.to_string().contains("a list holds at most 64 filters"),
            "{e}"
        );
        // An oversized value is refused as a whole, without parsing it.
        let huge = format!("- type: a\n  path: /{}\n", "x".repeat(70_000));
        let e = parse(&map(&[(APP_PORT, "80"), (SUBSCRIPTIONS, &huge)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "herald.dev/subscriptions: the value is {} bytes long; the limit is 65536",
                huge.len()
            )
        );
        let e = parse(&map(&[(APP_ID, &"a".repeat(2000))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "herald.dev/app-id: the value is 2000 bytes long; the limit is 1024"
        );
        let e = parse(&map(&[(APP_ID, &"a".repeat(254))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "herald.dev/app-id: is 254 bytes long; the limit is 253"
        );
        let e = parse(&map(&[(FILTER, &"(".repeat(5000))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "herald.dev/filter: the value is 5000 bytes long; the limit is 4096"
        );
        let deep = format!("{}type = 'a'{}", "(".repeat(100), ")".repeat(100));
        let e = parse(&map(&[(FILTER, &deep)])).unwrap_err();
        assert!(
            e.to_string()
                .contains("column 65: the expression nests deeper than 64 levels"),
            "{e}"
        );
    }

    #[test]
    fn attribute_filters() {
        let c = parse(&map(&[
            (APP_PORT, "80"),
            (
                SUBSCRIPTIONS,
                "- type: a\n  filters: [{exact: {region: eu}}]\n- type: b\n",
            ),
            (FILTER, "source LIKE 'https://%'"),
        ]))
        .unwrap();
        // The pod-wide filter comes after each subscription's own.
        assert_eq!(c.subscriptions[0].filters.len(), 2);
        assert!(matches!(
            c.subscriptions[0].filters[0],
            AttrFilter::Exact(_)
        ));
        assert!(matches!(
            c.subscriptions[1].filters[..],
            [AttrFilter::Sql(_)]
        ));
        let c = parse(&map(&[(APP_PORT, "80"), (SUBSCRIBE, "a,b")])).unwrap();
        assert!(c.subscriptions.iter().all(|s| s.filters.is_empty()));
        let e = parse(&map(&[
            (APP_PORT, "80"),
            (SUBSCRIBE, "a"),
            (FILTER, "type = 'a' AND source LIKE 5"),
        ]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "herald.dev/filter: is not a valid CESQL expression: column 28: LIKE needs a string literal pattern, found the number 5"
        );
    }

    #[test]
    fn downward_api_file() {
        let text = concat!(
            "herald.dev/inject=\"true\"\n",
            "herald.dev/subscribe=\"order.created.v1,shop/order.\\u003e\"\n",
            "kubectl.kubernetes.io/last-applied-configuration=\"{\\\"a\\\":\\\"caf\\xc3\\xa9\\\"}\\n\"\n",
            "note=\"tab\\there \\\"quoted\\\" \\\\ back\"\n",
        );
        let m = parse_downward_api(text).unwrap();
        assert_eq!(m[SUBSCRIBE], "order.created.v1,shop/order.>");
        assert_eq!(
            m["kubectl.kubernetes.io/last-applied-configuration"],
            "{\"a\":\"café\"}\n"
        );
        assert_eq!(m["note"], "tab\there \"quoted\" \\ back");
        assert!(parse_downward_api("novalue\n").is_err());
        assert!(parse_downward_api("k=\"open\n").is_err());
    }
}
