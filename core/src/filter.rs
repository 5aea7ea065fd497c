//! Event type filters, the grammar shared by `herald.dev/subscribe` and `herald.dev/publish-allow`:
//! a type pattern with NATS wildcards per token (`order.*.v1`, `order.>`), optionally restricted to
//! one source with `source/` in front (split at the first `/`).

use std::fmt;

use crate::limits::{MAX_FILTER_SOURCE_BYTES, MAX_FILTER_TYPE_BYTES};

/// One filter: an optional exact source and a dotted type pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeFilter {
    pub source: Option<String>,
    tokens: Vec<String>,
}

/// Why a filter is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter `{filter}`: {rule}")]
pub struct FilterError {
    pub filter: String,
    pub rule: String,
}

impl TypeFilter {
    pub fn parse(filter: &str) -> Result<Self, FilterError> {
        // A filter as long as this one is not worth repeating in full in the error.
        let shown = || {
            let mut end = filter.len().min(80);
            while !filter.is_char_boundary(end) {
                end -= 1;
            }
            if end < filter.len() {
                format!("{}...", &filter[..end])
            } else {
                filter.to_owned()
            }
        };
        let err = |rule: &str| FilterError {
            filter: shown(),
            rule: rule.to_owned(),
        };
        let (source, pattern) = match filter.split_once('/') {
            Some(("", _)) => return Err(err("the source before `/` is empty")),
            Some((s, p)) => (Some(s.to_owned()), p),
            None => (None, filter),
        };
        if pattern.is_empty() {
            return Err(err("the event type pattern is empty"));
        }
        // The same limits as an event's type and source, so a filter's consumer subject fits
        // NATS's control line as every event subject does.
        if pattern.len() > MAX_FILTER_TYPE_BYTES {
            return Err(err(&format!(
                "the type pattern is {} bytes long; the limit is {MAX_FILTER_TYPE_BYTES}",
                pattern.len()
            )));
        }
        if let Some(s) = &source {
            check_source(s).map_err(|rule| err(&rule))?;
        }
        let tokens: Vec<String> = pattern.split('.').map(str::to_owned).collect();
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(err(
                    "a type token is empty (two dots in a row, or a leading or trailing dot)",
                ));
            }
            if t == ">" && i + 1 != tokens.len() {
                return Err(err("`>` may only be the last token"));
            }
            if t.len() > 1 && (t.contains('*') || t.contains('>')) {
                return Err(err("wildcards `*` and `>` must be whole tokens"));
            }
            if t.contains(char::is_whitespace) {
                return Err(err("a type token may not contain whitespace"));
            }
        }
        Ok(TypeFilter { source, tokens })
    }

    /// A type pattern (no `source/` prefix: any `/` belongs to the type) with an optional exact
    /// source, as the YAML form writes them in two fields.
    pub fn with_source(source: Option<&str>, pattern: &str) -> Result<Self, FilterError> {
        let mut f = TypeFilter::parse(&format!("_/{pattern}")).map_err(|e| FilterError {
            filter: e.filter.strip_prefix("_/").unwrap_or(&e.filter).to_owned(),
            rule: e.rule,
        })?;
        let bad = |rule: String| FilterError {
            filter: pattern.to_owned(),
            rule,
        };
        f.source = match source {
            Some("") => {
                return Err(bad(
                    "the source is empty (leave it out to accept any source)".into(),
                ));
            }
            Some(s) => {
                check_source(s).map_err(bad)?;
                Some(s.to_owned())
            }
            None => None,
        };
        Ok(f)
    }

    /// The dotted type pattern's tokens (`*` and `>` are wildcards).
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().map(String::as_str)
    }

    /// Whether an event with this source and type passes.
    pub fn matches(&self, source: &str, ty: &str) -> bool {
        if self.source.as_deref().is_some_and(|s| s != source) {
            return false;
        }
        let mut parts = ty.split('.');
        for t in &self.tokens {
            match (t.as_str(), parts.next()) {
                (">", Some(_)) => return true,
                (_, None) => return false,
                ("*", Some(_)) => {}
                (lit, Some(p)) if lit == p => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for TypeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.source {
            write!(f, "{s}/")?;
        }
        f.write_str(&self.tokens.join("."))
    }
}

/// The rules of an event's `source` (a URI-reference, so no whitespace or control characters),
/// with its size limit: the source also names the consumer and goes into NATS headers.
fn check_source(s: &str) -> Result<(), String> {
    if s.len() > MAX_FILTER_SOURCE_BYTES {
        return Err(format!(
            "the source is {} bytes long; the limit is {MAX_FILTER_SOURCE_BYTES}",
            s.len()
        ));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "the source must be a URI-reference (no whitespace or control characters)".into(),
        );
    }
    Ok(())
}

/// A comma-separated list of at most `max` filters; an empty list is rejected by the parser (say
/// nothing instead).
pub fn parse_list(list: &str, max: usize) -> Result<Vec<TypeFilter>, FilterError> {
    let n = list.split(',').count();
    if n > max {
        return Err(FilterError {
            filter: format!("{n} filters"),
            rule: format!("a list holds at most {max} filters"),
        });
    }
    list.split(',')
        .map(str::trim)
        .map(|f| {
            if f.is_empty() {
                Err(FilterError {
                    filter: list.to_owned(),
                    rule: "an entry of the comma-separated list is empty".into(),
                })
            } else {
                TypeFilter::parse(f)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        let f = |s| TypeFilter::parse(s).unwrap();
        assert!(f("order.created.v1").matches("x", "order.created.v1"));
        assert!(!f("order.created.v1").matches("x", "order.created.v1.extra"));
        assert!(f("order.*.v1").matches("x", "order.paid.v1"));
        assert!(!f("order.*.v1").matches("x", "order.v1"));
        assert!(f("order.>").matches("x", "order.a.b"));
        assert!(!f("order.>").matches("x", "order"));
        assert!(f("shop/order.>").matches("shop", "order.a"));
        assert!(!f("shop/order.>").matches("shop2", "order.a"));
        assert!(f("https://x/y").matches("https:", "/x/y"));
    }

    #[test]
    fn errors_name_the_filter_and_rule() {
        for bad in ["", "a..b", ".a", "a.>.b", "a*.b", "/a", "a b"] {
            let e = TypeFilter::parse(bad).unwrap_err();
            assert_eq!(e.filter, bad);
        }
        assert!(parse_list("a, ,b", 10).is_err());
        assert_eq!(parse_list("a.b, shop/c.>", 10).unwrap().len(), 2);
        assert_eq!(
            parse_list("a,b,c", 2).unwrap_err().to_string(),
            "filter `3 filters`: a list holds at most 2 filters"
        );
    }

    #[test]
    fn long_types_and_sources_are_refused_with_the_limit() {
        let long = "a".repeat(MAX_FILTER_TYPE_BYTES + 1);
        let e = TypeFilter::parse(&long).unwrap_err();
        assert_eq!(
            e.rule,
            "the type pattern is 257 bytes long; the limit is 256"
        );
        assert!(e.filter.ends_with("...") && e.filter.len() < 100);
        assert!(TypeFilter::parse(&"a".repeat(MAX_FILTER_TYPE_BYTES)).is_ok());
        let e = TypeFilter::parse(&format!("{long}/x")).unwrap_err();
        assert_eq!(e.rule, "the source is 257 bytes long; the limit is 256");
        let e = TypeFilter::with_source(Some(&long), "x").unwrap_err();
        assert_eq!(e.rule, "the source is 257 bytes long; the limit is 256");
        let e = TypeFilter::with_source(None, &long).unwrap_err();
        assert!(e.rule.starts_with("the type pattern is 257 bytes"), "{e}");
        // The source names the consumer and travels in NATS headers, which cannot hold a line
        // break.
        let e = TypeFilter::with_source(Some("a\nb"), "x").unwrap_err();
        assert!(
            e.rule.contains("no whitespace or control characters"),
            "{e}"
        );
    }
}
