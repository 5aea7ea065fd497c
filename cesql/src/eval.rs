//! Evaluation (spec §3.3–3.7): every operator and function is total, so evaluation always yields a
//! value, and the errors met on the way are collected beside it.
//!
//! The rules, which the TCK pins down:
//! - An attribute the event lacks is a `missingAttribute` error and evaluates to `false`.
//! - An operator or function whose operand produced an error does not compute: it returns the
//!   zero value of its result type (`false`, `0`, `""`) with that error. So `missing / 0` is 0
//!   with only the missing attribute, and `NOT missing` is `false`.
//! - An operand that cannot be cast to the type the operator needs is a `cast` error and takes
//!   the zero value of that type; the operator still computes (`NOT 10` is `true`, with the error).
//! - `AND` and `OR` short-circuit: `false AND x` never evaluates `x`.
//! - Integer arithmetic is 32-bit. Division or remainder by zero is 0 with a `math` error; a result
//!   that overflows is a `math` error and saturates (as `ABS(-2147483648)` does in the TCK).

use std::borrow::Cow;

use crate::ast::{BinOp, Literal, Node};
use crate::value::{Type, Value, cast_message, implicit};
use crate::{ErrorKind, EvalError, Event};

/// Where errors go. In full mode each error gets its message; in quick mode (filtering) only the
/// kind of the first one is kept, so no message is formatted.
pub(crate) struct Errors {
    full: bool,
    pub(crate) list: Vec<EvalError>,
    pub(crate) first: Option<ErrorKind>,
    count: usize,
}

impl Errors {
    pub(crate) fn new(full: bool) -> Self {
        Errors {
            full,
            list: Vec::new(),
            first: None,
            count: 0,
        }
    }

    fn push(&mut self, kind: ErrorKind, message: impl FnOnce() -> String) {
        self.count += 1;
        self.first.get_or_insert(kind);
        if self.full {
            self.list.push(EvalError {
                kind,
                message: message(),
            });
        }
    }
}

/// Evaluates `node` as an operand: `None` if it produced an error, so the caller returns its zero
/// value.
fn operand<'a, E: Event + ?Sized>(
    node: &'a Node,
    ev: &'a E,
    errs: &mut Errors,
) -> Option<Value<'a>> {
    let before = errs.count;
    let v = eval(node, ev, errs);
    (errs.count == before).then_some(v)
}

fn cast<'a>(v: Value<'a>, to: Type, errs: &mut Errors) -> Value<'a> {
    implicit(v, to).unwrap_or_else(|v| {
        errs.push(ErrorKind::Cast, || cast_message(&v, to));
        Value::zero(to)
    })
}

fn bool_of(v: Value, errs: &mut Errors) -> bool {
    matches!(cast(v, Type::Boolean, errs), Value::Bool(true))
}

fn int_of(v: Value, errs: &mut Errors) -> i32 {
    match cast(v, Type::Integer, errs) {
        Value::Int(i) => i,
        _ => 0,
    }
}

/// `=` is defined for each type; with different types the left operand is cast to the right
/// one's type (§3.7: the right operand picks the definition).
fn equal(l: Value, r: Value, errs: &mut Errors) -> bool {
    if l.ty() == r.ty() {
        return l == r;
    }
    cast(l, r.ty(), errs) == r
}

/// The result of a checked operation, or its saturated value with a `math` error.
fn checked(
    r: Option<i32>,
    saturated: i32,
    errs: &mut Errors,
    what: &'static str,
) -> Value<'static> {
    Value::Int(r.unwrap_or_else(|| {
        errs.push(ErrorKind::Math, || format!("integer overflow in {what}"));
        saturated
    }))
}

pub(crate) fn eval<'a, E: Event + ?Sized>(
    node: &'a Node,
    ev: &'a E,
    errs: &mut Errors,
) -> Value<'a> {
    match node {
        Node::Lit(Literal::Bool(b)) => Value::Bool(*b),
        Node::Lit(Literal::Int(i)) => Value::Int(*i),
        Node::Lit(Literal::String(s)) => Value::String(Cow::Borrowed(s)),
        Node::Attr(name) => ev.attribute(name).unwrap_or_else(|| {
            errs.push(ErrorKind::MissingAttribute, || {
                format!("the event has no attribute `{name}`")
            });
            Value::Bool(false)
        }),
        Node::Exists(name) => Value::Bool(ev.has(name)),
        Node::Not(x) => match operand(x, ev, errs) {
            Some(v) => Value::Bool(!bool_of(v, errs)),
            None => Value::Bool(false),
        },
        Node::Neg(x) => match operand(x, ev, errs) {
            Some(v) => {
                let i = int_of(v, errs);
                checked(i.checked_neg(), i.saturating_neg(), errs, "unary -")
            }
            None => Value::Int(0),
        },
        Node::Binary(op, l, r) => binary(*op, l, r, ev, errs),
        Node::Like {
            value,
            pattern,
            negated,
        } => match operand(value, ev, errs) {
            Some(v) => match cast(v, Type::String, errs) {
                Value::String(s) => Value::Bool(pattern.matches(&s) != *negated),
                _ => Value::Bool(false),
            },
            None => Value::Bool(false),
        },
        Node::In {
            value,
            set,
            negated,
        } => {
            let Some(v) = operand(value, ev, errs) else {
                return Value::Bool(false);
            };
            // The left operand's type is the target of the set's casts (§3.7).
            let to = v.ty();
            let mut found = false;
            for item in set {
                let Some(item) = operand(item, ev, errs) else {
                    return Value::Bool(false);
                };
                match implicit(item, to) {
                    Ok(item) if item == v => {
                        found = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(item) => errs.push(ErrorKind::Cast, || cast_message(&item, to)),
                }
            }
            Value::Bool(found != *negated)
        }
        Node::Func(f, args) => {
            let mut values = Vec::with_capacity(args.len());
            for (i, arg) in args.iter().enumerate() {
                let Some(v) = operand(arg, ev, errs) else {
                    return Value::zero(f.returns());
                };
                values.push(match f.param(i) {
                    Some(to) => cast(v, to, errs),
                    None => v,
                });
            }
            let (v, err) = f.call(values);
            if let Some((kind, message)) = err {
                errs.push(kind, || message);
            }
            v
        }
        // Compilation resolves every call; this is only reachable through a bug.
        Node::Call { name, .. } => {
            errs.push(ErrorKind::MissingFunction, || {
                format!("{name} was not resolved")
            });
            Value::Bool(false)
        }
    }
}

fn binary<'a, E: Event + ?Sized>(
    op: BinOp,
    l: &'a Node,
    r: &'a Node,
    ev: &'a E,
    errs: &mut Errors,
) -> Value<'a> {
    let zero = Value::zero(op.returns());
    let Some(lv) = operand(l, ev, errs) else {
        return zero;
    };
    if matches!(op, BinOp::And | BinOp::Or) {
        let lb = bool_of(lv, errs);
        if lb == (op == BinOp::Or) {
            return Value::Bool(lb);
        }
        return match operand(r, ev, errs) {
            Some(rv) => Value::Bool(bool_of(rv, errs)),
            None => zero,
        };
    }
    let Some(rv) = operand(r, ev, errs) else {
        return zero;
    };
    match op {
        BinOp::Xor => Value::Bool(bool_of(lv, errs) != bool_of(rv, errs)),
        BinOp::Eq => Value::Bool(equal(lv, rv, errs)),
        BinOp::Ne => Value::Bool(!equal(lv, rv, errs)),
        _ => {
            let (a, b) = (int_of(lv, errs), int_of(rv, errs));
            match op {
                BinOp::Lt => Value::Bool(a < b),
                BinOp::Le => Value::Bool(a <= b),
                BinOp::Gt => Value::Bool(a > b),
                BinOp::Ge => Value::Bool(a >= b),
                BinOp::Add => checked(a.checked_add(b), a.saturating_add(b), errs, "+"),
                BinOp::Sub => checked(a.checked_sub(b), a.saturating_sub(b), errs, "-"),
                BinOp::Mul => checked(a.checked_mul(b), a.saturating_mul(b), errs, "*"),
                BinOp::Div | BinOp::Mod if b == 0 => {
                    errs.push(ErrorKind::Math, || "division by zero".into());
                    Value::Int(0)
                }
                BinOp::Div => checked(a.checked_div(b), a.saturating_div(b), errs, "/"),
                // -2147483648 % -1 is 0: the remainder cannot overflow.
                _ => Value::Int(a.checked_rem(b).unwrap_or(0)),
            }
        }
    }
}
