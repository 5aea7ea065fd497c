//! The reversible mapping from a CloudEvent's `source` and `type` to a NATS subject.
//!
//! `herald.<source-token>.<type-tokens>`: the type is split on `.`, the source is one token. Inside a
//! token every byte outside `[A-Za-z0-9_-]` is written `~XX` (upper-case hex), and an empty token is
//! `~`. Because `~` itself is escaped, decoding is unambiguous, so two different (source, type) pairs
//! can never share a subject. Kyma deleted characters instead, which let types collide; NATS
//! wildcards (`*`, `>`) and whitespace in a type can never leak into a subject either.

use std::fmt::Write as _;

/// The first token of every event subject.
pub const EVENT_PREFIX: &str = "herald";

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Appends the encoding of one token to `out`.
pub fn encode_token_into(token: &str, out: &mut String) {
    if token.is_empty() {
        out.push('~');
        return;
    }
    for &b in token.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "~{b:02X}");
        }
    }
}

/// Encodes one token.
pub fn encode_token(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    encode_token_into(token, &mut out);
    out
}

/// Why a subject token could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("byte {0:#04x} may not appear unescaped in a token")]
    Unescaped(u8),
    #[error("`~` must be followed by two upper-case hex digits")]
    BadEscape,
    #[error("escape `~{0:02X}` encodes a byte that is written plainly")]
    NonCanonical(u8),
    #[error("the decoded token is not UTF-8")]
    NotUtf8,
}

/// Decodes one token; rejects anything [`encode_token`] would not have produced.
pub fn decode_token(token: &str) -> Result<String, DecodeError> {
    if token == "~" {
        return Ok(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'~' {
            let hex = bytes.get(i + 1..i + 3).ok_or(DecodeError::BadEscape)?;
            let v = hex_upper(hex[0])
                .zip(hex_upper(hex[1]))
                .map(|(h, l)| h << 4 | l)
                .ok_or(DecodeError::BadEscape)?;
            if is_plain(v) {
                return Err(DecodeError::NonCanonical(v));
            }
            out.push(v);
            i += 3;
        } else if is_plain(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(DecodeError::Unescaped(b));
        }
    }
    if out.is_empty() {
        // "" never encodes to "" (it is "~"), so an empty token is not ours.
        return Err(DecodeError::BadEscape);
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

fn hex_upper(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The subject an event with this `source` and `type` is stored under.
pub fn event_subject(source: &str, ty: &str) -> String {
    let mut out = String::with_capacity(EVENT_PREFIX.len() + source.len() + ty.len() + 8);
    out.push_str(EVENT_PREFIX);
    out.push('.');
    encode_token_into(source, &mut out);
    for part in ty.split('.') {
        out.push('.');
        encode_token_into(part, &mut out);
    }
    out
}

/// Whether `subject` matches the NATS subject filter `pattern` (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for p in pattern.split('.') {
        match (p, s.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (lit, Some(t)) if lit == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

/// Recovers `(source, type)` from a subject made by [`event_subject`].
pub fn parse_event_subject(subject: &str) -> Result<(String, String), DecodeError> {
    let mut parts = subject.split('.');
    if parts.next() != Some(EVENT_PREFIX) {
        return Err(DecodeError::BadEscape);
    }
    let source = decode_token(parts.next().ok_or(DecodeError::BadEscape)?)?;
    let mut ty = String::new();
    let mut first = true;
    for p in parts {
        if !first {
            ty.push('.');
        }
        first = false;
        ty.push_str(&decode_token(p)?);
    }
    if first {
        return Err(DecodeError::BadEscape);
    }
    Ok((source, ty))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn design_example() {
        assert_eq!(
            event_subject("shop", "order.created.v1"),
            "herald.shop.order.created.v1"
        );
    }

    #[test]
    fn escapes_everything_outside_the_plain_set() {
        assert_eq!(encode_token("a b"), "a~20b");
        assert_eq!(encode_token("~"), "~7E");
        assert_eq!(encode_token(""), "~");
        assert_eq!(encode_token("é"), "~C3~A9");
        assert_eq!(
            event_subject("https://x.io/a", "a..*.>"),
            "herald.https~3A~2F~2Fx~2Eio~2Fa.a.~.~2A.~3E"
        );
    }

    #[test]
    fn kyma_collisions_are_distinct_here() {
        // Kyma cleaned both of these to `orderscreated`.
        assert_ne!(
            event_subject("s", "orders-created"),
            event_subject("s", "orders_created")
        );
        assert_ne!(
            event_subject("s", "order.created"),
            event_subject("s", "order~2Ecreated")
        );
    }

    #[test]
    fn rejects_non_canonical_tokens() {
        assert_eq!(decode_token("~41"), Err(DecodeError::NonCanonical(b'A')));
        assert_eq!(decode_token("~2a"), Err(DecodeError::BadEscape));
        assert_eq!(decode_token("a*"), Err(DecodeError::Unescaped(b'*')));
        assert_eq!(decode_token("~2"), Err(DecodeError::BadEscape));
    }

    proptest! {
        #[test]
        fn token_roundtrip(s in any::<String>()) {
            prop_assert_eq!(decode_token(&encode_token(&s)).unwrap(), s);
        }

        #[test]
        fn subject_roundtrip_and_shape(source in any::<String>(), ty in any::<String>()) {
            let subject = event_subject(&source, &ty);
            // Only plain bytes, `~` and the token separator: no wildcard, no whitespace.
            prop_assert!(subject.bytes().all(|b| is_plain(b) || b == b'~' || b == b'.'));
            prop_assert!(subject.split('.').all(|t| !t.is_empty()));
            prop_assert_eq!(parse_event_subject(&subject).unwrap(), (source, ty));
        }

        #[test]
        fn injective(a in (any::<String>(), any::<String>()), b in (any::<String>(), any::<String>())) {
            if a != b {
                prop_assert_ne!(event_subject(&a.0, &a.1), event_subject(&b.0, &b.1));
            }
        }

        #[test]
        fn injective_on_near_collisions(s in "[a-c~.*> _-]{0,6}", t in "[a-c~.*> _-]{0,6}") {
            if s != t {
                prop_assert_ne!(event_subject("x", &s), event_subject("x", &t));
            }
        }
    }
}
