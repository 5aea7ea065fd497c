//! The built-in functions (spec §3.5), resolved by name and arity when the expression is
//! compiled, so a call to a function that does not exist never reaches an event.

use std::borrow::Cow;

use crate::ErrorKind;
use crate::value::{Type, Value, cast_message, explicit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    SubstringLen,
    Abs,
    Int,
    Bool,
    String,
    IsBool,
    IsInt,
}

/// The functions, for the error message that lists them.
pub(crate) const NAMES: &str = "ABS, BOOL, CONCAT, CONCAT_WS, INT, IS_BOOL, IS_INT, LEFT, LENGTH, LOWER, RIGHT, STRING, SUBSTRING, TRIM, UPPER";

impl Func {
    /// The function called `name` (upper case) with `arity` arguments.
    pub(crate) fn resolve(name: &str, arity: usize) -> Result<Func, String> {
        use Func::*;
        let f = match (name, arity) {
            ("LENGTH", 1) => Length,
            ("CONCAT", _) => Concat,
            ("CONCAT_WS", 1..) => ConcatWs,
            ("LOWER", 1) => Lower,
            ("UPPER", 1) => Upper,
            ("TRIM", 1) => Trim,
            ("LEFT", 2) => Left,
            ("RIGHT", 2) => Right,
            ("SUBSTRING", 2) => Substring,
            ("SUBSTRING", 3) => SubstringLen,
            ("ABS", 1) => Abs,
            ("INT", 1) => Int,
            ("BOOL", 1) => Bool,
            ("STRING", 1) => String,
            ("IS_BOOL", 1) => IsBool,
            ("IS_INT", 1) => IsInt,
            _ => {
                let known = NAMES.split(", ").any(|n| n == name);
                return Err(if known {
                    format!("{name} does not take {arity} argument(s)")
                } else {
                    format!("there is no function {name} (built in: {NAMES})")
                });
            }
        };
        Ok(f)
    }

    /// The type argument `i` is cast to, or `None` for any type.
    pub(crate) fn param(self, i: usize) -> Option<Type> {
        use Func::*;
        match self {
            Int | Bool | String | IsBool | IsInt => None,
            Abs => Some(Type::Integer),
            Left | Right | Substring | SubstringLen if i > 0 => Some(Type::Integer),
            _ => Some(Type::String),
        }
    }

    pub(crate) fn returns(self) -> Type {
        use Func::*;
        match self {
            Length | Abs | Int => Type::Integer,
            Bool | IsBool | IsInt => Type::Boolean,
            _ => Type::String,
        }
    }

    /// Calls the function on arguments already cast to its parameter types. An error comes with
    /// the value the spec says to return.
    pub(crate) fn call<'a>(
        self,
        mut args: Vec<Value<'a>>,
    ) -> (Value<'a>, Option<(ErrorKind, std::string::String)>) {
        use Func::*;
        let ok = |v| (v, None);
        // Arguments are already cast; arity was checked by `resolve`.
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(i)) => *i,
            _ => 0,
        };
        let owned = |s: std::string::String| Value::String(Cow::Owned(s));
        let string = |args: &mut Vec<Value<'a>>, i: usize| -> Cow<'a, str> {
            match args
                .get_mut(i)
                .map(|v| std::mem::replace(v, Value::Bool(false)))
            {
                Some(Value::String(s)) => s,
                _ => Cow::Borrowed(""),
            }
        };
        match self {
            Length => ok(Value::Int(
                i32::try_from(string(&mut args, 0).chars().count()).unwrap_or(i32::MAX),
            )),
            Concat => {
                let mut out = std::string::String::new();
                for i in 0..args.len() {
                    out.push_str(&string(&mut args, i));
                }
                ok(owned(out))
            }
            ConcatWs => {
                let sep = string(&mut args, 0);
                let parts: Vec<Cow<str>> = (1..args.len()).map(|i| string(&mut args, i)).collect();
                ok(owned(parts.join(&*sep)))
            }
            Lower => ok(owned(string(&mut args, 0).to_lowercase())),
            Upper => ok(owned(string(&mut args, 0).to_uppercase())),
            // Whitespace is space, tab, line feed and carriage return; other Unicode spaces stay.
            Trim => {
                let s = string(&mut args, 0);
                let trimmed = s.trim_matches([' ', '\t', '\n', '\r']);
                ok(owned(trimmed.to_owned()))
            }
            Left | Right => {
                let s = string(&mut args, 0);
                let n = int(args.get(1));
                if n < 0 {
                    let name = if self == Left { "LEFT" } else { "RIGHT" };
                    return (
                        Value::String(s),
                        Some((
                            ErrorKind::FunctionEvaluation,
                            format!("{name} needs a length of 0 or more, not {n}"),
                        )),
                    );
                }
                let len = s.chars().count();
                let n = (n as usize).min(len);
                let out: std::string::String = if self == Left {
                    s.chars().take(n).collect()
                } else {
                    s.chars().skip(len - n).collect()
                };
                ok(owned(out))
            }
            Substring | SubstringLen => {
                let s = string(&mut args, 0);
                let pos = int(args.get(1)) as i64;
                let len = s.chars().count() as i64;
                let fail = |why: std::string::String| {
                    (Value::str(""), Some((ErrorKind::FunctionEvaluation, why)))
                };
                if pos > len || pos < -len {
                    return fail(format!(
                        "SUBSTRING position {pos} is outside the string (length {len})"
                    ));
                }
                let count = match args.get(2).map(|v| int(Some(v))) {
                    Some(n) if n < 0 => {
                        return fail(format!("SUBSTRING length must not be negative, not {n}"));
                    }
                    Some(n) => n as i64,
                    None => len,
                };
                if pos == 0 {
                    return ok(Value::str(""));
                }
                let start = if pos > 0 { pos - 1 } else { len + pos };
                let out: std::string::String = s
                    .chars()
                    .skip(start as usize)
                    .take(count as usize)
                    .collect();
                ok(owned(out))
            }
            Abs => {
                let i = int(args.first());
                match i.checked_abs() {
                    Some(a) => ok(Value::Int(a)),
                    None => (
                        Value::Int(i32::MAX),
                        Some((ErrorKind::Math, format!("ABS({i}) overflows 32 bits"))),
                    ),
                }
            }
            Int | Bool | String => {
                let to = self.returns();
                let v = args.pop().unwrap_or(Value::Bool(false));
                match explicit(v, to) {
                    Ok(v) => ok(v),
                    Err(v) => (
                        Value::zero(to),
                        Some((ErrorKind::Cast, cast_message(&v, to))),
                    ),
                }
            }
            IsBool | IsInt => {
                let to = if self == IsBool {
                    Type::Boolean
                } else {
                    Type::Integer
                };
                let v = args.pop().unwrap_or(Value::Bool(false));
                ok(Value::Bool(explicit(v, to).is_ok()))
            }
        }
    }
}
