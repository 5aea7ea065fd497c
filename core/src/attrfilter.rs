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
//! match, and its kind is reported so it can be counted. Stored events are read through
//! [`crate::wire::StoredAttributes`].

use std::borrow::Cow;

use herald_cesql::{ErrorKind, Expression, Type, Value};

use crate::limits::{
    MAX_ATTRIBUTE_NAME_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_FILTER_DEPTH, MAX_FILTERS,
};

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
/// At most [`MAX_FILTERS`] filters and attribute tests in all, nested at most
/// [`MAX_FILTER_DEPTH`] deep: every event is checked against them, and matching recurses.
pub fn parse_list(v: &yaml_serde::Value) -> Result<Vec<AttrFilter>, Vec<String>> {
    let mut walk = Walk {
        errors: Vec::new(),
        count: 0,
    };
    let out = list(v, "filters", 1, &mut walk);
    if walk.errors.is_empty() {
        Ok(out)
    } else {
        Err(walk.errors)
    }
}

struct Walk {
    errors: Vec<String>,
    /// Filters and attribute tests seen so far.
    count: usize,
}

impl Walk {
    /// Counts `n` more; false (with the error, once) past the limit.
    fn take(&mut self, n: usize, at: &str) -> bool {
        let before = self.count;
        self.count += n;
        if self.count > MAX_FILTERS {
            if before <= MAX_FILTERS {
                self.errors.push(format!(
                    "{at}: a subscription has at most {MAX_FILTERS} filters, counted through every level"
                ));
            }
            return false;
        }
        true
    }
}

fn list(v: &yaml_serde::Value, at: &str, depth: usize, walk: &mut Walk) -> Vec<AttrFilter> {
    if depth > MAX_FILTER_DEPTH {
        walk.errors.push(format!(
            "{at}: filters nest at most {MAX_FILTER_DEPTH} levels deep"
        ));
        return Vec::new();
    }
    match v.as_sequence() {
        Some(items) if !items.is_empty() => {
            let mut out = Vec::new();
            for (i, f) in items.iter().enumerate() {
                let at = format!("{at}[{i}]");
                if !walk.take(1, &at) {
                    break;
                }
                out.extend(one(f, &at, depth, walk));
            }
            out
        }
        _ => {
            walk.errors
                .push(format!("{at}: must be a non-empty list of filters"));
            Vec::new()
        }
    }
}

fn one(v: &yaml_serde::Value, at: &str, depth: usize, walk: &mut Walk) -> Option<AttrFilter> {
    let errors = &mut walk.errors;
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
            if m.len() > MAX_FILTERS {
                return bad(format!(
                    "tests {} attributes; the limit is {MAX_FILTERS} per filter",
                    m.len()
                ));
            }
            let mut pairs = Vec::new();
            for (k, v) in m {
                let name = k.as_str().unwrap_or_default();
                if name.is_empty()
                    || name.len() > MAX_ATTRIBUTE_NAME_BYTES
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                {
                    let shown: String = name.chars().take(80).collect();
                    return bad(format!(
                        "{shown:?} is not an attribute name (lowercase letters and digits, at most {MAX_ATTRIBUTE_NAME_BYTES} bytes)"
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
                if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
                    return bad(format!(
                        "the value of {name} is {} bytes long; the limit is {MAX_ATTRIBUTE_VALUE_BYTES}",
                        value.len()
                    ));
                }
                pairs.push((name.to_owned(), value));
            }
            Some(match dialect {
                "exact" => AttrFilter::Exact(pairs),
                "prefix" => AttrFilter::Prefix(pairs),
                _ => AttrFilter::Suffix(pairs),
            })
        }
        "all" => Some(AttrFilter::All(list(body, &at, depth + 1, walk))),
        "any" => Some(AttrFilter::Any(list(body, &at, depth + 1, walk))),
        "not" if depth >= MAX_FILTER_DEPTH => bad(format!(
            "filters nest at most {MAX_FILTER_DEPTH} levels deep"
        )),
        "not" => {
            if !walk.take(1, &at) {
                return None;
            }
            one(body, &at, depth + 1, walk).map(|f| AttrFilter::Not(Box::new(f)))
        }
        "sql" => match body.as_str().map(compile_sql) {
            Some(Ok(e)) => Some(AttrFilter::Sql(e)),
            Some(Err(rule)) => bad(rule),
            None => bad("must be a CESQL expression as a string".into()),
        },
        other => {
            let shown: String = other.chars().take(80).collect();
            bad(format!("{shown:?} is not a filter dialect ({DIALECTS})"))
        }
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

    use crate::wire::{Headers, StoredAttributes};

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.push(*k, v);
        }
        h
    }

    fn check(yaml: &str, h: &Headers) -> (bool, Option<ErrorKind>) {
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
    fn nesting_and_counts_are_bounded() {
        let nested = |n: usize| {
            let mut y = "{exact: {a: b}}".to_string();
            for _ in 0..n {
                y = format!("{{any: [{y}]}}");
            }
            format!("[{y}]")
        };
        assert!(parse(&nested(MAX_FILTER_DEPTH - 1)).is_ok());
        let e = parse(&nested(MAX_FILTER_DEPTH)).unwrap_err();
        assert!(
            e[0].ends_with("filters nest at most 16 levels deep"),
            "{e:?}"
        );
        let nots = format!(
            "[{}{{exact: {{a: b}}}}{}]",
            "{not: ".repeat(40),
            "}".repeat(40)
        );
        assert!(parse(&nots).unwrap_err()[0].contains("filters nest at most 16 levels deep"));
        let many = format!("[{}]", vec!["{exact: {a: b}}"; MAX_FILTERS + 1].join(", "));
        let e = parse(&many).unwrap_err();
        assert_eq!(
            e,
            ["filters[64]: a subscription has at most 64 filters, counted through every level"]
        );
        let long = format!("[{{exact: {{a: '{}'}}}}]", "x".repeat(5000));
        assert!(
            parse(&long).unwrap_err()[0]
                .contains("the value of a is 5000 bytes long; the limit is 4096")
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
            "filters[0].any[0].prefix: \"Source\" is not an attribute name (lowercase letters and digits, at most 64 bytes)"
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
