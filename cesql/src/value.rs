//! Values, types and casts (spec §3.1 and §3.7).

use std::borrow::Cow;
use std::fmt;

/// A CESQL value. Strings borrow from the event or the expression where they can, so evaluating a
/// filter over an event's attributes does not copy them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Bool(bool),
    Int(i32),
    String(Cow<'a, str>),
}

/// The three primitive types. URI, URI-reference and timestamp attributes are strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    Boolean,
    Integer,
    String,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Boolean => "Boolean",
            Type::Integer => "Integer",
            Type::String => "String",
        })
    }
}

impl<'a> Value<'a> {
    pub fn ty(&self) -> Type {
        match self {
            Value::Bool(_) => Type::Boolean,
            Value::Int(_) => Type::Integer,
            Value::String(_) => Type::String,
        }
    }

    /// The zero value of a type: what an operation returns when it cannot compute its result.
    pub fn zero(ty: Type) -> Value<'static> {
        match ty {
            Type::Boolean => Value::Bool(false),
            Type::Integer => Value::Int(0),
            Type::String => Value::String(Cow::Borrowed("")),
        }
    }

    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Bool(b) => Value::Bool(b),
            Value::Int(i) => Value::Int(i),
            Value::String(s) => Value::String(Cow::Owned(s.into_owned())),
        }
    }

    pub fn str(s: &'a str) -> Self {
        Value::String(Cow::Borrowed(s))
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{}", if *b { "true" } else { "false" }),
            Value::Int(i) => write!(f, "{i}"),
            Value::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// The message of a failed cast of `v` to `to`. Built only when errors are reported in full, so
/// a filter that fails on many events does not format a string for each.
pub(crate) fn cast_message(v: &Value, to: Type) -> String {
    match v {
        Value::String(s) if to == Type::Boolean => {
            format!("cannot cast the string {s:?} to Boolean (only true or false, in any case)")
        }
        Value::String(s) => format!("cannot cast the string {s:?} to {to}"),
        v => format!("cannot cast the {} {v} to {to}", v.ty()),
    }
}

/// The implicit cast operators and functions apply to their operands (§3.7). A failed cast gives
/// the value back.
///
/// Integer to Boolean is only an explicit cast (`BOOL(x)`): the TCK requires `NOT 10` to be a cast
/// error, while `BOOL(10)` is `true`. Boolean to Integer is implicit (`5 + TRUE` is 6).
pub(crate) fn implicit(v: Value<'_>, to: Type) -> Result<Value<'_>, Value<'_>> {
    match (v, to) {
        (v, to) if v.ty() == to => Ok(v),
        (Value::Bool(b), Type::String) => Ok(Value::str(if b { "true" } else { "false" })),
        (Value::Int(i), Type::String) => Ok(Value::String(Cow::Owned(i.to_string()))),
        (Value::Bool(b), Type::Integer) => Ok(Value::Int(i32::from(b))),
        (Value::String(s), Type::Integer) => match parse_int(&s) {
            Some(i) => Ok(Value::Int(i)),
            None => Err(Value::String(s)),
        },
        (Value::String(s), Type::Boolean) => match parse_bool(&s) {
            Some(b) => Ok(Value::Bool(b)),
            None => Err(Value::String(s)),
        },
        (v, _) => Err(v),
    }
}

/// The cast functions `INT`, `BOOL` and `STRING`: the implicit casts plus Integer to Boolean
/// (non-zero is true).
pub(crate) fn explicit(v: Value<'_>, to: Type) -> Result<Value<'_>, Value<'_>> {
    match (v, to) {
        (Value::Int(i), Type::Boolean) => Ok(Value::Bool(i != 0)),
        (v, to) => implicit(v, to),
    }
}

/// A 32-bit integer in decimal, with an optional sign and nothing else (no spaces).
pub(crate) fn parse_int(s: &str) -> Option<i32> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `true` or `false`, in any case.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_32_bit_decimal() {
        assert_eq!(parse_int("-2147483648"), Some(i32::MIN));
        assert_eq!(parse_int("+7"), Some(7));
        assert_eq!(parse_int("2147483648"), None);
        for bad in ["", "-", " 1", "1 ", "0x10", "1e3", "١"] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn casts() {
        assert_eq!(
            implicit(Value::Bool(true), Type::Integer).ok(),
            Some(Value::Int(1))
        );
        assert!(implicit(Value::Int(10), Type::Boolean).is_err());
        assert_eq!(
            explicit(Value::Int(-50), Type::Boolean).ok(),
            Some(Value::Bool(true))
        );
        assert_eq!(
            implicit(Value::str("FaLsE"), Type::Boolean).ok(),
            Some(Value::Bool(false))
        );
        let e = implicit(Value::str("abc"), Type::Integer).unwrap_err();
        assert_eq!(
            cast_message(&e, Type::Integer),
            "cannot cast the string \"abc\" to Integer"
        );
    }
}
