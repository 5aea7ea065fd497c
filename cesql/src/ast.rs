//! The syntax tree the parser builds and the evaluator walks.

use crate::func::Func;
use crate::like::Pattern;
use crate::value::Type;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Bool(bool),
    Int(i32),
    String(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    And,
    Or,
    Xor,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    pub(crate) fn is_logic(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Xor)
    }

    pub(crate) fn returns(self) -> Type {
        use BinOp::*;
        match self {
            Add | Sub | Mul | Div | Mod => Type::Integer,
            And | Or | Xor | Eq | Ne | Lt | Le | Gt | Ge => Type::Boolean,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Lit(Literal),
    /// An attribute, by its lowercase name.
    Attr(String),
    Exists(String),
    Not(Box<Node>),
    Neg(Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    Like {
        value: Box<Node>,
        pattern: Pattern,
        negated: bool,
    },
    In {
        value: Box<Node>,
        set: Vec<Node>,
        negated: bool,
    },
    /// A call as parsed, before the function is looked up.
    Call {
        name: String,
        column: usize,
        args: Vec<Node>,
    },
    /// A call to a built-in function, resolved at compile time.
    Func(Func, Vec<Node>),
}

impl Node {
    /// The type the node evaluates to, when it is known before an event is seen (an attribute
    /// can be of any type).
    pub(crate) fn static_type(&self) -> Option<Type> {
        Some(match self {
            Node::Lit(Literal::Bool(_)) => Type::Boolean,
            Node::Lit(Literal::Int(_)) => Type::Integer,
            Node::Lit(Literal::String(_)) => Type::String,
            Node::Attr(_) | Node::Call { .. } => return None,
            Node::Exists(_) | Node::Not(_) | Node::Like { .. } | Node::In { .. } => Type::Boolean,
            Node::Neg(_) => Type::Integer,
            Node::Binary(op, ..) => op.returns(),
            Node::Func(f, _) => f.returns(),
        })
    }

    /// Looks up every function call, depth first.
    pub(crate) fn resolve(&mut self) -> Result<(), crate::ParseError> {
        match self {
            Node::Lit(_) | Node::Attr(_) | Node::Exists(_) => Ok(()),
            Node::Not(x) | Node::Neg(x) => x.resolve(),
            Node::Binary(_, l, r) => {
                l.resolve()?;
                r.resolve()
            }
            Node::Like { value, .. } => value.resolve(),
            Node::In { value, set, .. } => {
                value.resolve()?;
                set.iter_mut().try_for_each(Node::resolve)
            }
            Node::Func(_, args) => args.iter_mut().try_for_each(Node::resolve),
            Node::Call { name, column, args } => {
                args.iter_mut().try_for_each(Node::resolve)?;
                let f = Func::resolve(name, args.len()).map_err(|message| crate::ParseError {
                    kind: crate::ErrorKind::MissingFunction,
                    column: *column,
                    message,
                })?;
                *self = Node::Func(f, std::mem::take(args));
                Ok(())
            }
        }
    }
}
