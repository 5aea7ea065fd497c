//! Attribute filters: the CloudEvents Subscriptions API filter dialects (`exact`, `prefix`,
//! `suffix`, `all`, `any`, `not`, `sql`), compiled once per configuration and evaluated on a stored
//! event's attributes before delivery.
//!
//! The YAML form is a list of single-key maps; the list is ANDed:
//! ```yaml
//! filters:
//!   - exact: {region: eu}
//!   - any:
//!       - suffix: {subject: .pdf}
//!       - sql: "INT(amount) > 100"
//! ```
//! `exact`, `prefix` and `suffix` take one or more attributes, all of which must match
//! (case-sensitive); an attribute the event lacks does not match. `sql` is a CESQL expression
//! ([`herald_cesql`]) that must be a condition (return a Boolean); an evaluation error means no
//! match, and its kind is reported so it can be counted.

use std::borrow::Cow;

use herald_cesql::{ErrorKind, Expression, Type, Value};
use percent_encoding::percent_decode_str;

use crate::event::CE_PREFIX;

/// One compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrFilter {
    Exact(Vec<(String, String)>),
    Prefix(Vec<(String, String)>),
    Suffix(Vec<(String, String)>),
    All(Vec<AttrFilter>),
    Any(Vec<AttrFilter>),
    Not(Box<AttrFilter>),
    Sql(Expression),
}

const DIALECTS: &str = "exact, prefix, suffix, all, any, not, sql";

/// Compiles a CESQL condition; the error names the column and the rule.
pub fn compile_sql(src: &str) -> Result<Expression, String> {
    let e = Expression::parse(src.trim())
        .map_err(|e| format!("is not a valid CESQL expression: {e}"))?;
    match e.result_type() {
        Some(Type::Boolean) => Ok(e),
        Some(t) => Err(format!(
            "must be a condition (a Boolean), but {src:?} is {} {t}",
            if t == Type::Integer { "an" } else { "a" }
        )),
        None => Err(format!(
            "must be a condition (a Boolean), but {src:?} is an attribute's value; compare it, e.g. {src} = '...'"
        )),
    }
}

/// Parses the `filters:` list. Errors name the path (`filters[1].any[0].prefix`) and the rule.
pub fn parse_list(v: &yaml_serde::Value) -> Result<Vec<AttrFilter>, Vec<String>> {
    let mut errors = Vec::new();
    let out = list(v, "filters", &mut errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn list(v: &yaml_serde::Value, at: &str, errors: &mut Vec<String>) -> Vec<AttrFilter> {
    match v.as_sequence() {
        Some(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .filter_map(|(i, f)| one(f, &format!("{at}[{i}]"), errors))
            .collect(),
        _ => {
            errors.push(format!("{at}: must be a non-empty list of filters"));
            Vec::new()
        }
    }
}

fn one(v: &yaml_serde::Value, at: &str, errors: &mut Vec<String>) -> Option<AttrFilter> {
    let map = v.as_mapping().filter(|m| m.len() == 1);
    let Some((key, body)) = map.and_then(|m| m.iter().next()) else {
        errors.push(format!(
            "{at}: must be a map with exactly one dialect ({DIALECTS})"
        ));
        return None;
    };
    let dialect = key.as_str().unwrap_or_default();
    let at = format!("{at}.{dialect}");
    let mut bad = |rule: String| {
        errors.push(format!("{at}: {rule}"));
        None
    };
    match dialect {
        "exact" | "prefix" | "suffix" => {
            let Some(m) = body.as_mapping().filter(|m| !m.is_empty()) else {
                return bad(
                    "must map attribute names to values, e.g. {source: \"https://\"}".into(),
                );
            };
            let mut pairs = Vec::new();
            for (k, v) in m {
                let name = k.as_str().unwrap_or_default();
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                {
                    return bad(format!(
                        "{name:?} is not an attribute name (lowercase letters and digits)"
                    ));
                }
                let value = match v {
                    yaml_serde::Value::String(s) => s.clone(),
                    yaml_serde::Value::Number(n) => n.to_string(),
                    yaml_serde::Value::Bool(b) => b.to_string(),
                    _ => return bad(format!("the value of {name} must be a string")),
                };
                if value.is_empty() && dialect != "exact" {
                    return bad(format!("the value of {name} must not be empty"));
                }
                pairs.push((name.to_owned(), value));
            }
            Some(match dialect {
                "exact" => AttrFilter::Exact(pairs),
                "prefix" => AttrFilter::Prefix(pairs),
                _ => AttrFilter::Suffix(pairs),
            })
        }
        "all" => Some(AttrFilter::All(list(body, &at, errors))),
        "any" => Some(AttrFilter::Any(list(body, &at, errors))),
        "not" => one(body, &at, errors).map(|f| AttrFilter::Not(Box::new(f))),
        "sql" => match body.as_str().map(compile_sql) {
            Some(Ok(e)) => Some(AttrFilter::Sql(e)),
            Some(Err(rule)) => bad(rule),
            None => bad("must be a CESQL expression as a string".into()),
        },
        other => bad(format!("{other:?} is not a filter dialect ({DIALECTS})")),
    }
}

/// A stored event's attributes, read from its NATS headers: `ce-<name>` (percent-encoded as in
/// HTTP) and `content-type` for `datacontenttype`. Nothing is copied unless a value was encoded.
pub struct StoredAttributes<'a>(pub &'a async_nats::HeaderMap);

impl StoredAttributes<'_> {
    fn raw(&self, name: &str) -> Option<&str> {
        let wanted = |header: &str| {
            if name == "datacontenttype" {
                header.eq_ignore_ascii_case("content-type")
            } else {
                header.len() == CE_PREFIX.len() + name.len()
                    && header[..CE_PREFIX.len()].eq_ignore_ascii_case(CE_PREFIX)
                    && header[CE_PREFIX.len()..].eq_ignore_ascii_case(name)
            }
        };
        // Iterating a dozen headers is cheaper than building a header name to look one up.
        self.0
            .iter()
            .find(|(n, _)| wanted(n.as_ref()))
            .and_then(|(_, v)| v.first())
            .map(|v| v.as_str())
    }
}

impl herald_cesql::Event for StoredAttributes<'_> {
    fn attribute(&self, name: &str) -> Option<Value<'_>> {
        let raw = self.raw(name)?;
        if name == "datacontenttype" {
            return Some(Value::str(raw));
        }
        Some(Value::String(percent_decode_str(raw).decode_utf8_lossy()))
    }

    fn has(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }
}

/// Whether the event passes every filter of the list. The first evaluation error (a `sql` filter
/// that could not be computed, which counts as no match) is left in `error`.
pub fn matches_all(
    filters: &[AttrFilter],
    ev: &dyn herald_cesql::Event,
    error: &mut Option<ErrorKind>,
) -> bool {
    filters.iter().all(|f| f.matches(ev, error))
}

impl AttrFilter {
    pub fn matches(&self, ev: &dyn herald_cesql::Event, error: &mut Option<ErrorKind>) -> bool {
        let text = |name: &str| -> Option<Cow<'_, str>> {
            match ev.attribute(name)? {
                Value::String(s) => Some(s),
                other => Some(Cow::Owned(match other {
                    Value::Bool(b) => b.to_string(),
                    Value::Int(i) => i.to_string(),
                    Value::String(_) => String::new(),
                })),
            }
        };
        let each = |pairs: &[(String, String)], test: fn(&str, &str) -> bool| {
            pairs
                .iter()
                .all(|(name, want)| text(name).is_some_and(|v| test(&v, want)))
        };
        match self {
            AttrFilter::Exact(p) => each(p, |v, w| v == w),
            AttrFilter::Prefix(p) => each(p, |v, w| v.starts_with(w)),
            AttrFilter::Suffix(p) => each(p, |v, w| v.ends_with(w)),
            AttrFilter::All(fs) => fs.iter().all(|f| f.matches(ev, error)),
            AttrFilter::Any(fs) => fs.iter().any(|f| f.matches(ev, error)),
            AttrFilter::Not(f) => !f.matches(ev, error),
            AttrFilter::Sql(e) => match e.test(ev) {
                Ok(b) => b,
                Err(kind) => {
                    error.get_or_insert(kind);
                    false
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<AttrFilter>, Vec<String>> {
        parse_list(&yaml_serde::from_str(yaml).unwrap())
    }

    fn headers(pairs: &[(&str, &str)]) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    }

    fn check(yaml: &str, h: &async_nats::HeaderMap) -> (bool, Option<ErrorKind>) {
        let fs = parse(yaml).unwrap_or_else(|e| panic!("{e:?}"));
        let mut err = None;
        (matches_all(&fs, &StoredAttributes(h), &mut err), err)
    }

    #[test]
    fn dialects() {
        let h = headers(&[
            ("ce-type", "order.created"),
            ("ce-source", "https://shop/eu"),
            ("ce-subject", "invoice%20no%201.pdf"),
            ("ce-region", "eu"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(check("[{exact: {region: eu}}]", &h), (true, None));
        assert_eq!(check("[{exact: {region: EU}}]", &h), (false, None));
        assert_eq!(
            check("[{exact: {region: eu, type: order.created}}]", &h),
            (true, None)
        );
        assert_eq!(check("[{prefix: {source: 'https://'}}]", &h), (true, None));
        // Values are decoded before matching.
        assert_eq!(check("[{suffix: {subject: ' 1.pdf'}}]", &h), (true, None));
        assert_eq!(
            check("[{exact: {datacontenttype: application/json}}]", &h),
            (true, None)
        );
        assert_eq!(check("[{exact: {missing: x}}]", &h), (false, None));
        assert_eq!(check("[{not: {exact: {missing: x}}}]", &h), (true, None));
        assert_eq!(
            check(
                "[{any: [{exact: {region: us}}, {exact: {region: eu}}]}]",
                &h
            ),
            (true, None)
        );
        assert_eq!(
            check(
                "[{all: [{exact: {region: us}}, {exact: {region: eu}}]}]",
                &h
            ),
            (false, None)
        );
        assert_eq!(
            check("[{exact: {region: eu}}, {exact: {type: x}}]", &h),
            (false, None)
        );
        assert_eq!(
            check("[{sql: \"subject LIKE '%.pdf' AND EXISTS region\"}]", &h),
            (true, None)
        );
        assert_eq!(
            check("[{sql: \"tenant = 'a'\"}]", &h),
            (false, Some(ErrorKind::MissingAttribute))
        );
        assert_eq!(
            check("[{not: {sql: \"tenant = 'a'\"}}]", &h),
            (true, Some(ErrorKind::MissingAttribute))
        );
    }

    #[test]
    fn errors_name_the_path_and_the_rule() {
        let e = |yaml: &str| parse(yaml).unwrap_err().join(" | ");
        assert_eq!(e("[]"), "filters: must be a non-empty list of filters");
        assert_eq!(
            e("[{exact: {a: b}, prefix: {a: b}}]"),
            "filters[0]: must be a map with exactly one dialect (exact, prefix, suffix, all, any, not, sql)"
        );
        assert_eq!(
            e("[{regex: {a: b}}]"),
            "filters[0].regex: \"regex\" is not a filter dialect (exact, prefix, suffix, all, any, not, sql)"
        );
        assert_eq!(
            e("[{any: [{prefix: {Source: x}}]}]"),
            "filters[0].any[0].prefix: \"Source\" is not an attribute name (lowercase letters and digits)"
        );
        assert_eq!(
            e("[{suffix: {subject: ''}}]"),
            "filters[0].suffix: the value of subject must not be empty"
        );
        assert_eq!(
            e("[{sql: \"type = \"}]"),
            "filters[0].sql: is not a valid CESQL expression: column 7: expected a value, found the end of the expression"
        );
        assert_eq!(
            e("[{sql: \"LOWER(type)\"}]"),
            "filters[0].sql: must be a condition (a Boolean), but \"LOWER(type)\" is a String"
        );
        assert_eq!(
            e("[{not: []}]"),
            "filters[0].not: must be a map with exactly one dialect (exact, prefix, suffix, all, any, not, sql)"
        );
    }
}
