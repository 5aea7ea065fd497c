//! Event type filters, the grammar shared by `herald.dev/subscribe` and `herald.dev/publish-allow`:
//! a type pattern with NATS wildcards per token (`order.*.v1`, `order.>`), optionally restricted to
//! one source with `source/` in front (split at the first `/`).

use std::fmt;

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
    pub rule: &'static str,
}

impl TypeFilter {
    pub fn parse(filter: &str) -> Result<Self, FilterError> {
        let err = |rule| FilterError {
            filter: filter.to_owned(),
            rule,
        };
        let (source, pattern) = match filter.split_once('/') {
            Some(("", _)) => return Err(err("the source before `/` is empty")),
            Some((s, p)) => (Some(s.to_owned()), p),
            None => (None, filter),
        };
        if pattern.is_empty() {
            return Err(err("the event type pattern is empty"));
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
            filter: pattern.to_owned(),
            rule: e.rule,
        })?;
        f.source = match source {
            Some("") => {
                return Err(FilterError {
                    filter: pattern.to_owned(),
                    rule: "the source is empty (leave it out to accept any source)",
                });
            }
            s => s.map(str::to_owned),
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

/// A comma-separated list of filters; an empty list is rejected by the parser (say nothing instead).
pub fn parse_list(list: &str) -> Result<Vec<TypeFilter>, FilterError> {
    list.split(',')
        .map(str::trim)
        .map(|f| {
            if f.is_empty() {
                Err(FilterError {
                    filter: list.to_owned(),
                    rule: "an entry of the comma-separated list is empty",
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
        assert!(parse_list("a, ,b").is_err());
        assert_eq!(parse_list("a.b, shop/c.>").unwrap().len(), 2);
    }
}
