//! The lexer and parser (spec §2): text to [`Node`]s, every error with its column.
//!
//! Precedence follows the spec's reference grammar (`CESQLParser.g4`), highest first:
//! function calls and parenthesised expressions; the unary `NOT` and `-`; `LIKE` and `IN`; `*` `/`
//! `%`; `+` `-`; `=` `!=` `<>`; `<` `<=` `>` `>=`; then `AND`, `OR` and `XOR`, which share one level
//! and group from the right. Two consequences surprise SQL users and are documented: `NOT a = b`
//! is `(NOT a) = b`, and `a AND b OR c` is `a AND (b OR c)`. Parentheses make either explicit.
//!
//! Expressions come from pod annotations and resources anyone may write, and the parser, the
//! evaluator and the tree's own drop all recurse, so two limits keep every one of them inside a
//! small stack: [`MAX_LENGTH`] bytes of source and [`MAX_DEPTH`] levels of nesting. Nesting is
//! counted on the tree (each operator, `NOT`, minus, `LIKE`, `IN` and function call is a level,
//! so `1 + 1 + 1` is three levels and so is `a OR b OR c`) and on the parser's own recursion
//! (parentheses count there). Past either limit the expression is a parse error with the column
//! where the limit was crossed.

use crate::ErrorKind;
use crate::ast::{BinOp, Literal, Node};
use crate::like::Pattern;

/// An expression that did not compile: a syntax error, or a call to a function that does not
/// exist. `column` counts characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    pub kind: ErrorKind,
    pub column: usize,
    pub message: String,
}

/// The longest expression, in bytes of source text.
pub const MAX_LENGTH: usize = 4096;
/// The deepest nesting of an expression (see the module documentation for what counts).
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// An unsigned integer literal, range-checked by the parser (a preceding `-` may make
    /// 2147483648 valid).
    Int(u64),
    Str(String),
    /// A word: keyword, identifier or function name, as written.
    Word(String),
    Sym(&'static str),
    End,
}

struct Token {
    tok: Tok,
    column: usize,
}

fn err(kind: ErrorKind, column: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        kind,
        column,
        message: message.into(),
    }
}

const SYMBOLS: [&str; 15] = [
    "!=", "<>", "<=", ">=", "=", "<", ">", "+", "-", "*", "/", "%", "(", ")", ",",
];

fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if matches!(c, ' ' | '\t' | '\n' | '\r') {
            i += 1;
        } else if c == '\'' || c == '"' {
            // Inside a string only the delimiter is escaped (`\'` or `\"`); any other backslash
            // is kept, so LIKE patterns can carry their own `\%` and `\_`.
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err(ErrorKind::Parse, column, "unterminated string")),
                    Some('\\') if chars.get(i + 1) == Some(&c) => {
                        s.push(c);
                        i += 2;
                    }
                    Some(&d) if d == c => {
                        i += 1;
                        break;
                    }
                    Some(&d) => {
                        s.push(d);
                        i += 1;
                    }
                }
            }
            out.push(Token {
                tok: Tok::Str(s),
                column,
            });
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let tok = if word.bytes().all(|b| b.is_ascii_digit()) {
                Tok::Int(word.parse().map_err(|_| {
                    err(
                        ErrorKind::Parse,
                        column,
                        format!("integer {word} is out of range (32-bit)"),
                    )
                })?)
            } else {
                Tok::Word(word)
            };
            out.push(Token { tok, column });
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let sym = SYMBOLS
                .iter()
                .find(|s| rest.starts_with(**s))
                .ok_or_else(|| {
                    err(
                        ErrorKind::Parse,
                        column,
                        format!("unexpected character {c:?}"),
                    )
                })?;
            i += sym.chars().count();
            out.push(Token {
                tok: Tok::Sym(sym),
                column,
            });
        }
    }
    out.push(Token {
        tok: Tok::End,
        column: chars.len() + 1,
    });
    Ok(out)
}

fn keyword(tok: &Tok, kw: &str) -> bool {
    matches!(tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

const KEYWORDS: [&str; 9] = [
    "AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS", "TRUE", "FALSE",
];

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Int(i) => format!("the number {i}"),
        Tok::Str(s) => format!("the string {s:?}"),
        Tok::Word(w) => format!("`{w}`"),
        Tok::Sym(s) => format!("`{s}`"),
        Tok::End => "the end of the expression".into(),
    }
}

// Binding powers, higher binds tighter.
const LOGIC: u8 = 10;
const RELATIONAL: u8 = 20;
const EQUALITY: u8 = 30;
const ADDITIVE: u8 = 40;
const MULTIPLICATIVE: u8 = 50;
const POSTFIX: u8 = 60;
const UNARY: u8 = 70;

struct Parser {
    toks: Vec<Token>,
    at: usize,
    /// How deep the parser has recursed.
    depth: usize,
}

/// A node and the depth of the tree below it (a leaf is 1).
type Parsed = (Node, usize);

/// Parses an expression. Functions are resolved by the caller once the syntax is known to be
/// right, so a syntax error is reported before an unknown function.
pub(crate) fn parse(src: &str) -> Result<Node, ParseError> {
    if src.len() > MAX_LENGTH {
        // The column of the first character past the limit.
        let mut end = MAX_LENGTH;
        while !src.is_char_boundary(end) {
            end -= 1;
        }
        return Err(err(
            ErrorKind::Parse,
            src[..end].chars().count() + 1,
            format!(
                "the expression is {} bytes long; the limit is {MAX_LENGTH}",
                src.len()
            ),
        ));
    }
    let mut p = Parser {
        toks: lex(src)?,
        at: 0,
        depth: 0,
    };
    if p.peek() == &Tok::End {
        return Err(err(ErrorKind::Parse, 1, "the expression is empty"));
    }
    let (node, _) = p.expr(0)?;
    match p.peek() {
        Tok::End => Ok(node),
        other => Err(p.here(format!(
            "expected an operator or the end, found {}",
            describe(other)
        ))),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].tok
    }

    fn column(&self) -> usize {
        self.toks[self.at].column
    }

    fn here(&self, message: String) -> ParseError {
        err(ErrorKind::Parse, self.column(), message)
    }

    fn too_deep(column: usize) -> ParseError {
        err(
            ErrorKind::Parse,
            column,
            format!(
                "the expression nests deeper than {MAX_DEPTH} levels (each operator, NOT, LIKE, IN, function call and parenthesis is one); simplify it, or list alternatives with IN"
            ),
        )
    }

    /// A node one level above children of depth `below`, refused past [`MAX_DEPTH`].
    fn node(node: Node, below: usize, column: usize) -> Result<Parsed, ParseError> {
        let depth = below + 1;
        if depth > MAX_DEPTH {
            return Err(Self::too_deep(column));
        }
        Ok((node, depth))
    }

    /// Parses `min`-bound expression one recursion level down.
    fn expr(&mut self, min: u8) -> Result<Parsed, ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(Self::too_deep(self.column()));
        }
        self.depth += 1;
        let r = self.expr_at(min);
        self.depth -= 1;
        r
    }

    fn next(&mut self) -> Token {
        let i = self.at;
        if self.toks[i].tok != Tok::End {
            self.at += 1;
        }
        Token {
            tok: self.toks[i].tok.clone(),
            column: self.toks[i].column,
        }
    }

    fn expect(&mut self, sym: &'static str) -> Result<(), ParseError> {
        if self.peek() == &Tok::Sym(sym) {
            self.next();
            Ok(())
        } else {
            Err(self.here(format!("expected `{sym}`, found {}", describe(self.peek()))))
        }
    }

    /// The binary operator at the current token with its binding power, if any.
    fn binary(&self) -> Option<(BinOp, u8)> {
        let t = self.peek();
        Some(match t {
            Tok::Sym("*") => (BinOp::Mul, MULTIPLICATIVE),
            Tok::Sym("/") => (BinOp::Div, MULTIPLICATIVE),
            Tok::Sym("%") => (BinOp::Mod, MULTIPLICATIVE),
            Tok::Sym("+") => (BinOp::Add, ADDITIVE),
            Tok::Sym("-") => (BinOp::Sub, ADDITIVE),
            Tok::Sym("=") => (BinOp::Eq, EQUALITY),
            Tok::Sym("!=") | Tok::Sym("<>") => (BinOp::Ne, EQUALITY),
            Tok::Sym("<") => (BinOp::Lt, RELATIONAL),
            Tok::Sym("<=") => (BinOp::Le, RELATIONAL),
            Tok::Sym(">") => (BinOp::Gt, RELATIONAL),
            Tok::Sym(">=") => (BinOp::Ge, RELATIONAL),
            _ if keyword(t, "AND") => (BinOp::And, LOGIC),
            _ if keyword(t, "OR") => (BinOp::Or, LOGIC),
            _ if keyword(t, "XOR") => (BinOp::Xor, LOGIC),
            _ => return None,
        })
    }

    fn expr_at(&mut self, min: u8) -> Result<Parsed, ParseError> {
        let mut lhs = self.prefix()?;
        loop {
            // `[NOT] LIKE` and `[NOT] IN` are postfix operators above the arithmetic ones.
            let negated = keyword(self.peek(), "NOT");
            let op_at = self.at + usize::from(negated);
            let op = &self.toks[op_at].tok;
            if (keyword(op, "LIKE") || keyword(op, "IN")) && POSTFIX >= min {
                let is_like = keyword(op, "LIKE");
                let column = self.toks[op_at].column;
                self.at = op_at + 1;
                lhs = if is_like {
                    self.like(lhs, negated, column)?
                } else {
                    self.in_set(lhs, negated, column)?
                };
                continue;
            }
            if negated {
                return Err(self.here("expected LIKE or IN after NOT".into()));
            }
            let Some((op, bp)) = self.binary() else {
                break;
            };
            if bp < min {
                break;
            }
            let column = self.next().column;
            // The logic operators group from the right, as in the reference grammar; the others
            // from the left.
            let rhs = self.expr(if op.is_logic() { bp } else { bp + 1 })?;
            let below = lhs.1.max(rhs.1);
            lhs = Self::node(
                Node::Binary(op, Box::new(lhs.0), Box::new(rhs.0)),
                below,
                column,
            )?;
        }
        Ok(lhs)
    }

    fn like(&mut self, value: Parsed, negated: bool, at: usize) -> Result<Parsed, ParseError> {
        let column = self.column();
        match self.next().tok {
            Tok::Str(p) => Self::node(
                Node::Like {
                    value: Box::new(value.0),
                    pattern: Pattern::new(&p),
                    negated,
                },
                value.1,
                at,
            ),
            other => Err(err(
                ErrorKind::Parse,
                column,
                format!(
                    "LIKE needs a string literal pattern, found {}",
                    describe(&other)
                ),
            )),
        }
    }

    fn in_set(&mut self, value: Parsed, negated: bool, at: usize) -> Result<Parsed, ParseError> {
        self.expect("(")?;
        let mut below = value.1;
        let mut set = Vec::new();
        loop {
            let (item, depth) = self.expr(0)?;
            below = below.max(depth);
            set.push(item);
            if self.peek() != &Tok::Sym(",") {
                break;
            }
            self.next();
        }
        self.expect(")")?;
        Self::node(
            Node::In {
                value: Box::new(value.0),
                set,
                negated,
            },
            below,
            at,
        )
    }

    fn prefix(&mut self) -> Result<Parsed, ParseError> {
        let leaf = |n: Node| Ok((n, 1));
        let Token { tok, column } = self.next();
        match tok {
            Tok::Int(n) => leaf(int_literal(n, false, column)?),
            Tok::Str(s) => leaf(Node::Lit(Literal::String(s))),
            Tok::Sym("-") => {
                // A minus right before a number is part of the literal, so -2147483648 is valid.
                if let Tok::Int(n) = *self.peek() {
                    self.next();
                    return leaf(int_literal(n, true, column)?);
                }
                let (x, below) = self.expr(UNARY)?;
                Self::node(Node::Neg(Box::new(x)), below, column)
            }
            Tok::Sym("(") => {
                let inner = self.expr(0)?;
                self.expect(")")?;
                Ok(inner)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("NOT") => {
                let (x, below) = self.expr(UNARY)?;
                Self::node(Node::Not(Box::new(x)), below, column)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("TRUE") => leaf(Node::Lit(Literal::Bool(true))),
            Tok::Word(w) if w.eq_ignore_ascii_case("FALSE") => {
                leaf(Node::Lit(Literal::Bool(false)))
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("EXISTS") => {
                let column = self.column();
                match self.next().tok {
                    Tok::Word(name) if !is_keyword(&name) => {
                        leaf(Node::Exists(identifier(&name, column)?))
                    }
                    other => Err(err(
                        ErrorKind::Parse,
                        column,
                        format!("EXISTS needs an attribute name, found {}", describe(&other)),
                    )),
                }
            }
            Tok::Word(w) if self.peek() == &Tok::Sym("(") => {
                self.next();
                let mut args = Vec::new();
                let mut below = 0;
                if self.peek() != &Tok::Sym(")") {
                    loop {
                        let (arg, depth) = self.expr(0)?;
                        below = below.max(depth);
                        args.push(arg);
                        if self.peek() != &Tok::Sym(",") {
                            break;
                        }
                        self.next();
                    }
                }
                self.expect(")")?;
                if !w.chars().all(|c| c.is_ascii_alphabetic() || c == '_') || w.starts_with('_') {
                    return Err(err(
                        ErrorKind::Parse,
                        column,
                        format!("`{w}` is not a function name (letters and `_`)"),
                    ));
                }
                Self::node(
                    Node::Call {
                        name: w.to_ascii_uppercase(),
                        column,
                        args,
                    },
                    below,
                    column,
                )
            }
            Tok::Word(w) if !is_keyword(&w) => leaf(Node::Attr(identifier(&w, column)?)),
            other => Err(err(
                ErrorKind::Parse,
                column,
                format!("expected a value, found {}", describe(&other)),
            )),
        }
    }
}

fn is_keyword(w: &str) -> bool {
    KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k))
}

fn int_literal(n: u64, negative: bool, column: usize) -> Result<Node, ParseError> {
    let v = if negative { -(n as i64) } else { n as i64 };
    i32::try_from(v)
        .map(|v| Node::Lit(Literal::Int(v)))
        .map_err(|_| {
            err(
                ErrorKind::Parse,
                column,
                format!("integer {v} is out of range (32-bit)"),
            )
        })
}

/// An attribute name: CloudEvents names are lowercase letters and digits, so the name is
/// matched without regard to case (`SOURCE` is `source`).
fn identifier(w: &str, column: usize) -> Result<String, ParseError> {
    let name = w.to_ascii_lowercase();
    if name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Ok(name)
    } else {
        Err(err(
            ErrorKind::Parse,
            column,
            format!("`{w}` is not an attribute name (letters and digits only)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(src: &str) -> (usize, String) {
        let e = parse(src).unwrap_err();
        (e.column, e.message)
    }

    #[test]
    fn errors_carry_their_column() {
        assert_eq!(column("ABC(").0, 5);
        assert_eq!(column("type = 'a").0, 8);
        assert_eq!(
            column("x LIKE 123"),
            (
                8,
                "LIKE needs a string literal pattern, found the number 123".into()
            )
        );
        assert_eq!(column("a = = b").0, 5);
        assert_eq!(column("a b").0, 3);
        assert_eq!(column("my_ext = 'a'").0, 1);
        assert_eq!(column("a NOT b").0, 3);
        assert_eq!(column("é").1, "unexpected character 'é'");
        assert_eq!(column("").1, "the expression is empty");
        assert_eq!(
            column("2147483648").1,
            "integer 2147483648 is out of range (32-bit)"
        );
    }

    #[test]
    fn integer_literals() {
        assert_eq!(parse("-2147483648"), Ok(Node::Lit(Literal::Int(i32::MIN))));
        assert_eq!(parse("2147483647"), Ok(Node::Lit(Literal::Int(i32::MAX))));
        assert_eq!(
            column("-2147483649").1,
            "integer -2147483649 is out of range (32-bit)"
        );
    }

    /// Expressions of one shape that nest deeper as `k` grows.
    type Shape = (&'static str, fn(usize) -> String);

    const SHAPES: [Shape; 7] = [
        ("parentheses", |k| {
            format!("{}a = 'x'{}", "(".repeat(k), ")".repeat(k))
        }),
        ("NOT", |k| format!("{}TRUE", "NOT ".repeat(k))),
        ("minus", |k| format!("{}a = 1", "-".repeat(k))),
        ("OR chain", |k| vec!["a = 'x'"; k + 1].join(" OR ")),
        ("+ chain", |k| {
            format!("{} = 1", vec!["1"; k + 1].join(" + "))
        }),
        ("calls", |k| {
            format!("{}a{} = 'x'", "LOWER(".repeat(k), ")".repeat(k))
        }),
        ("IN", |k| {
            format!("{}TRUE{}", "a IN (".repeat(k), ")".repeat(k))
        }),
    ];

    /// The deepest expression of each shape that parses; one level more must be refused for
    /// its depth, with a column.
    fn deepest() -> Vec<(&'static str, String)> {
        SHAPES
            .iter()
            .map(|(name, shape)| {
                let k = (1..).find(|&k| parse(&shape(k + 1)).is_err()).unwrap();
                let e = parse(&shape(k + 1)).unwrap_err();
                assert!(
                    e.message.contains("nests deeper than 64 levels"),
                    "{name}: {e}"
                );
                assert!(e.column > 1, "{name}: {e}");
                // Each shape nests one level per step, give or take the comparison around it.
                assert!(k + 3 >= MAX_DEPTH && k <= MAX_DEPTH, "{name}: {k}");
                (*name, shape(k))
            })
            .collect()
    }

    #[test]
    fn nesting_past_the_limit_is_an_error_with_its_column() {
        assert_eq!(deepest().len(), SHAPES.len());
        // The column is where the limit was crossed: the 65th level starts at the 65th `(`.
        let src = format!("{}a{}", "(".repeat(70), ")".repeat(70));
        assert_eq!(parse(&src).unwrap_err().column, 65);
    }

    #[test]
    fn length_past_the_limit_is_an_error() {
        let at_limit = format!("a = '{}'", "x".repeat(MAX_LENGTH - 6));
        assert_eq!(at_limit.len(), MAX_LENGTH);
        assert!(parse(&at_limit).is_ok());
        let e = parse(&format!("{at_limit} ")).unwrap_err();
        assert_eq!((e.column, e.kind), (MAX_LENGTH + 1, ErrorKind::Parse));
        assert!(e.message.contains("the limit is 4096"), "{e}");
        // What crashed injectors before the limits: 100,000 parentheses, 50,000 NOTs.
        for src in [
            format!("{}a{}", "(".repeat(100_000), ")".repeat(100_000)),
            format!("{}TRUE", "NOT ".repeat(50_000)),
        ] {
            assert!(
                parse(&src)
                    .unwrap_err()
                    .message
                    .contains("the limit is 4096")
            );
        }
    }

    #[test]
    fn the_deepest_expressions_fit_a_small_stack() {
        // Parse, evaluate, print and drop each deepest shape on a thread with half the stack a
        // tokio worker has (2 MiB). A debug build needs about 700 KiB for the deepest shape, a
        // release build less than 128 KiB.
        let worker = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                let event = std::collections::BTreeMap::from([("a".to_string(), "x".to_string())]);
                for (shape, src) in deepest() {
                    let e =
                        crate::Expression::parse(&src).unwrap_or_else(|e| panic!("{shape}: {e}"));
                    let _ = e.evaluate(&event);
                    let _ = e.test(&event);
                    let _ = format!("{e:?}");
                    drop(e.clone());
                }
            })
            .unwrap();
        worker.join().expect("no stack overflow");
    }

    #[test]
    fn precedence_follows_the_reference_grammar() {
        let shape = |src: &str| format!("{:?}", parse(src).unwrap());
        // AND/OR/XOR share a level and group from the right.
        assert_eq!(shape("a AND b OR c"), shape("a AND (b OR c)"));
        // NOT binds tighter than comparison.
        assert_eq!(shape("NOT a = b"), shape("(NOT a) = b"));
        assert_eq!(shape("1 + 2 * 3"), shape("1 + (2 * 3)"));
        assert_eq!(shape("1 - 2 - 3"), shape("(1 - 2) - 3"));
        assert_eq!(shape("a < b = c"), shape("a < (b = c)"));
    }
}
