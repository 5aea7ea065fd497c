//! The annotation contract: the pod annotations herald reads, their defaults, parsing and
//! validation. Written once: the sidecar runs from it, and the injector will use it to deny pods
//! with bad annotations. Every error names the key and the rule, and all errors are reported
//! together.
//!
//! The sidecar reads annotations from the downward API file (`key="value"` lines, the value quoted
//! the way Go's `strconv.Quote` does it); locally the same keys come from flags.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::filter::{self, TypeFilter};

pub const INJECT: &str = "herald.dev/inject";
pub const APP_ID: &str = "herald.dev/app-id";
pub const APP_PORT: &str = "herald.dev/app-port";
pub const SUBSCRIBE: &str = "herald.dev/subscribe";
pub const PATH: &str = "herald.dev/path";
pub const MAX_IN_FLIGHT: &str = "herald.dev/max-in-flight";
pub const PUBLISH_ALLOW: &str = "herald.dev/publish-allow";
pub const SUBSCRIPTIONS: &str = "herald.dev/subscriptions";

const KNOWN: &[&str] = &[
    INJECT,
    APP_ID,
    APP_PORT,
    SUBSCRIBE,
    PATH,
    MAX_IN_FLIGHT,
    PUBLISH_ALLOW,
    SUBSCRIPTIONS,
];

/// Deliveries in flight per subscription, across replicas, unless `herald.dev/max-in-flight` says.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10;

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
        RetryPolicy {
            max_attempts: 10,
            local_attempts: 3,
            local_backoff: Duration::from_millis(100),
            redelivery_delay: Duration::from_secs(5),
            max_redelivery_delay: Duration::from_secs(300),
        }
    }
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
}

/// What the annotations say.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodConfig {
    pub app_id: Option<String>,
    pub app_port: Option<u16>,
    pub subscriptions: Vec<Subscription>,
    pub publish_allow: Vec<TypeFilter>,
}

/// Validates annotations (only `herald.dev/*` keys are looked at).
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<PodConfig, AnnotationErrors> {
    let mut errors = Vec::new();
    let mut err = |key: &str, rule: String| {
        errors.push(AnnotationError {
            key: key.to_owned(),
            rule,
        })
    };
    let get = |k: &str| annotations.get(k).map(|v| v.trim());

    for key in annotations.keys().filter(|k| k.starts_with("herald.dev/")) {
        if !KNOWN.contains(&key.as_str()) {
            err(
                key,
                format!("unknown herald annotation (known: {})", KNOWN.join(", ")),
            );
        }
    }
    if let Some(v) = get(INJECT).filter(|v| *v != "true" && *v != "false") {
        err(INJECT, format!("must be \"true\" or \"false\", not {v:?}"));
    }
    let app_id = get(APP_ID).map(str::to_owned);
    if app_id
        .as_deref()
        .is_some_and(|a| a.is_empty() || a.contains(char::is_whitespace))
    {
        err(APP_ID, "must be non-empty, without whitespace".into());
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
    let path = match get(PATH) {
        Some(p) if p.starts_with('/') && !p.contains(char::is_whitespace) => p.to_owned(),
        Some(p) => {
            err(
                PATH,
                format!("must be an absolute HTTP path starting with `/`, not {p:?}"),
            );
            "/".into()
        }
        None => "/".into(),
    };
    let max_in_flight = match get(MAX_IN_FLIGHT).map(|v| (v, v.parse::<usize>())) {
        None => DEFAULT_MAX_IN_FLIGHT,
        Some((_, Ok(n))) if (1..=10_000).contains(&n) => n,
        Some((v, _)) => {
            err(
                MAX_IN_FLIGHT,
                format!("must be a whole number from 1 to 10000, not {v:?}"),
            );
            DEFAULT_MAX_IN_FLIGHT
        }
    };
    let filters = match get(SUBSCRIBE) {
        None | Some("") => vec![],
        Some(v) => filter::parse_list(v).unwrap_or_else(|e| {
            err(SUBSCRIBE, e.to_string());
            vec![]
        }),
    };
    let publish_allow = match get(PUBLISH_ALLOW) {
        None | Some("") => vec![],
        Some(v) => filter::parse_list(v).unwrap_or_else(|e| {
            err(PUBLISH_ALLOW, e.to_string());
            vec![]
        }),
    };
    if annotations.contains_key(SUBSCRIPTIONS) {
        err(
            SUBSCRIPTIONS,
            format!(
                "the YAML form is not supported by this version of herald yet; use {SUBSCRIBE}, {PATH} and {MAX_IN_FLIGHT}"
            ),
        );
    }
    if get(SUBSCRIBE).is_some_and(|v| !v.is_empty()) && !annotations.contains_key(APP_PORT) {
        err(
            APP_PORT,
            format!("required when {SUBSCRIBE} is set (the port the app receives deliveries on)"),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for f in &filters {
        if !seen.insert(f.to_string()) {
            err(SUBSCRIBE, format!("filter `{f}` is listed twice"));
        }
    }
    if !errors.is_empty() {
        return Err(AnnotationErrors(errors));
    }
    let subscriptions = filters
        .into_iter()
        .map(|filter| Subscription {
            filter,
            path: path.clone(),
            max_in_flight,
            retry: RetryPolicy::default(),
            attempt_timeout: Duration::from_secs(30),
            dead_letter: true,
        })
        .collect();
    Ok(PodConfig {
        app_id,
        app_port,
        subscriptions,
        publish_allow,
    })
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
