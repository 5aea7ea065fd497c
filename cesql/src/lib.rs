//! CloudEvents SQL (CESQL v1.0): parse an expression once, evaluate it on many events.
//!
//! ```
//! use std::collections::BTreeMap;
//! use herald_cesql::{Expression, Value};
//!
//! let e = Expression::parse("type LIKE 'order.%' AND INT(amount) > 100").unwrap();
//! let event = BTreeMap::from([
//!     ("type".to_string(), "order.created".to_string()),
//!     ("amount".to_string(), "250".to_string()),
//! ]);
//! assert_eq!(e.evaluate(&event).value, Value::Bool(true));
//! assert_eq!(e.test(&event), Ok(true));
//! ```
//!
//! # Modules
//! - [`parse`](mod@parse): lexer and parser, text to a syntax tree; [`ParseError`] with a column.
//!   Expressions are bounded ([`MAX_LENGTH`] bytes, [`MAX_DEPTH`] levels of nesting), so no
//!   expression can exhaust the stack of the parser, the evaluator or the tree's drop.
//! - `ast`: the syntax tree; function calls are resolved after parsing, so an unknown function is
//!   a compile-time [`ErrorKind::MissingFunction`].
//! - `eval`: evaluation, with the spec's error rules (the value comes with the errors).
//! - [`value`]: [`Value`], [`Type`] and the casts.
//! - `func`: the built-in functions. `like`: `LIKE` patterns, compiled once.
//!
//! The crate depends on nothing of herald's; events reach it through the [`Event`] trait.

mod ast;
mod eval;
mod func;
mod like;
pub mod parse;
pub mod value;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

pub use parse::{MAX_DEPTH, MAX_LENGTH, ParseError};
pub use value::{Type, Value};

/// The spec's error kinds, named as in the TCK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Parse,
    Math,
    Cast,
    MissingAttribute,
    MissingFunction,
    FunctionEvaluation,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Math => "math",
            ErrorKind::Cast => "cast",
            ErrorKind::MissingAttribute => "missingAttribute",
            ErrorKind::MissingFunction => "missingFunction",
            ErrorKind::FunctionEvaluation => "functionEvaluation",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error met while evaluating.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} error: {message}")]
pub struct EvalError {
    pub kind: ErrorKind,
    pub message: String,
}

/// What an expression evaluated to, and the errors met on the way (empty if none).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation<'a> {
    pub value: Value<'a>,
    pub errors: Vec<EvalError>,
}

/// The event an expression is evaluated on: its context attributes and extensions by name.
pub trait Event {
    /// The attribute's value, `None` if the event does not have it. Attributes are strings
    /// unless the event knows better (a JSON event's integer or boolean extension).
    fn attribute(&self, name: &str) -> Option<Value<'_>>;

    /// Whether the event has the attribute (`EXISTS`).
    fn has(&self, name: &str) -> bool {
        self.attribute(name).is_some()
    }
}

impl Event for BTreeMap<String, String> {
    fn attribute(&self, name: &str) -> Option<Value<'_>> {
        self.get(name).map(|v| Value::str(v))
    }
}

impl Event for HashMap<String, String> {
    fn attribute(&self, name: &str) -> Option<Value<'_>> {
        self.get(name).map(|v| Value::str(v))
    }
}

impl<'v> Event for BTreeMap<String, Value<'v>> {
    fn attribute(&self, name: &str) -> Option<Value<'_>> {
        self.get(name).cloned()
    }
}

/// A compiled expression. Compare and print it by its source text.
#[derive(Clone)]
pub struct Expression {
    source: String,
    root: ast::Node,
}

impl Expression {
    /// Parses `source` and resolves its function calls.
    pub fn parse(source: &str) -> Result<Expression, ParseError> {
        let mut root = parse::parse(source)?;
        root.resolve()?;
        Ok(Expression {
            source: source.to_owned(),
            root,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The type the expression returns, when it is known without an event: `None` for a bare
    /// attribute name, whose type is the attribute's.
    pub fn result_type(&self) -> Option<Type> {
        self.root.static_type()
    }

    /// Evaluates the expression: the value, and every error met.
    pub fn evaluate<'a, E: Event + ?Sized>(&'a self, event: &'a E) -> Evaluation<'a> {
        let mut errs = eval::Errors::new(true);
        let value = eval::eval(&self.root, event, &mut errs);
        Evaluation {
            value,
            errors: errs.list,
        }
    }

    /// The filter verdict (spec §1.2): `Ok(true)` if the expression is `true` without errors,
    /// `Ok(false)` if it evaluates without errors to anything else, and the kind of the first
    /// error otherwise (the event does not pass). No error message is formatted.
    pub fn test<E: Event + ?Sized>(&self, event: &E) -> Result<bool, ErrorKind> {
        let mut errs = eval::Errors::new(false);
        let value = eval::eval(&self.root, event, &mut errs);
        match errs.first {
            Some(kind) => Err(kind),
            None => Ok(value == Value::Bool(true)),
        }
    }
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expression({:?})", self.source)
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Expression {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expression::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn errors_come_with_the_value() {
        let e = Expression::parse("myext = 'x' OR 1 / 0 = 0").unwrap();
        let ev = event(&[("myext", "y")]);
        let r = e.evaluate(&ev);
        assert_eq!(r.value, Value::Bool(false));
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].kind, ErrorKind::Math);
        assert_eq!(e.test(&ev), Err(ErrorKind::Math));
    }

    #[test]
    fn a_missing_function_is_a_compile_error_with_its_column() {
        let e = Expression::parse("type = 'a' AND STARTS_WITH(type, 'a')").unwrap_err();
        assert_eq!(e.kind, ErrorKind::MissingFunction);
        assert_eq!(e.column, 16);
        assert!(
            e.message.starts_with("there is no function STARTS_WITH"),
            "{e}"
        );
        let e = Expression::parse("left('a')").unwrap_err();
        assert_eq!(e.message, "LEFT does not take 1 argument(s)");
    }

    #[test]
    fn result_types() {
        let t = |s: &str| Expression::parse(s).unwrap().result_type();
        assert_eq!(t("a = 'b'"), Some(Type::Boolean));
        assert_eq!(t("subject"), None);
        assert_eq!(t("LOWER(subject)"), Some(Type::String));
        assert_eq!(t("1 + 2"), Some(Type::Integer));
    }

    #[test]
    fn non_boolean_results_do_not_pass() {
        let ev = event(&[("subject", "true")]);
        assert_eq!(Expression::parse("subject").unwrap().test(&ev), Ok(false));
        assert_eq!(
            Expression::parse("BOOL(subject)").unwrap().test(&ev),
            Ok(true)
        );
    }

    #[test]
    fn overflow_is_a_math_error_and_saturates() {
        let r = |s: &str| {
            let e = Expression::parse(s).unwrap();
            let ev = event(&[]);
            let out = e.evaluate(&ev);
            (out.value.into_owned(), out.errors.first().map(|e| e.kind))
        };
        assert_eq!(
            r("2147483647 + 1"),
            (Value::Int(i32::MAX), Some(ErrorKind::Math))
        );
        assert_eq!(
            r("-2147483648 - 1"),
            (Value::Int(i32::MIN), Some(ErrorKind::Math))
        );
        assert_eq!(
            r("-2147483648 / -1"),
            (Value::Int(i32::MAX), Some(ErrorKind::Math))
        );
        assert_eq!(r("-2147483648 % -1"), (Value::Int(0), None));
        assert_eq!(
            r("-(-2147483648)"),
            (Value::Int(i32::MAX), Some(ErrorKind::Math))
        );
        assert_eq!(r("-7 % 3"), (Value::Int(-1), None));
        assert_eq!(r("-7 / 2"), (Value::Int(-3), None));
    }
}
