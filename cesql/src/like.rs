//! `LIKE` patterns (spec §3.4.3), compiled once. `%` is any run of characters, `_` exactly one;
//! `\%` and `\_` are the characters themselves, and any other backslash is itself (the TCK's
//! `'ab\c' LIKE 'ab\c'` is true). Matching is by character, not byte.

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pattern {
    /// No wildcard: plain equality.
    Exact(String),
    /// `abc%`.
    Prefix(String),
    /// `%abc`.
    Suffix(String),
    /// `%abc%`.
    Contains(String),
    /// Anything else, in pieces.
    General(Vec<Piece>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    Char(char),
    One,
    Many,
}

impl Pattern {
    pub(crate) fn new(src: &str) -> Pattern {
        let mut pieces = Vec::new();
        let mut chars = src.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if matches!(chars.peek(), Some('%' | '_')) => {
                    pieces.push(Piece::Char(chars.next().unwrap_or(c)));
                }
                '%' => {
                    // Runs of `%` are one.
                    if pieces.last() != Some(&Piece::Many) {
                        pieces.push(Piece::Many);
                    }
                }
                '_' => pieces.push(Piece::One),
                c => pieces.push(Piece::Char(c)),
            }
        }
        let literal = |p: &[Piece]| -> Option<String> {
            p.iter()
                .map(|p| match p {
                    Piece::Char(c) => Some(*c),
                    _ => None,
                })
                .collect()
        };
        let n = pieces.len();
        let starts = pieces.first() == Some(&Piece::Many);
        let ends = n > 1 && pieces.last() == Some(&Piece::Many);
        let middle = &pieces[usize::from(starts)..n - usize::from(ends)];
        match (starts, ends, literal(middle)) {
            (false, false, Some(s)) => Pattern::Exact(s),
            (false, true, Some(s)) => Pattern::Prefix(s),
            (true, false, Some(s)) => Pattern::Suffix(s),
            (true, true, Some(s)) => Pattern::Contains(s),
            _ => Pattern::General(pieces),
        }
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Exact(p) => s == p,
            Pattern::Prefix(p) => s.starts_with(p.as_str()),
            Pattern::Suffix(p) => s.ends_with(p.as_str()),
            Pattern::Contains(p) => s.contains(p.as_str()),
            Pattern::General(pieces) => general(pieces, s),
        }
    }
}

/// Wildcard matching with one backtrack point (the last `%`): linear in practice, and never worse
/// than pattern length times text length. Walks the text by byte offset, one character at a time,
/// so nothing is allocated per event.
fn general(pieces: &[Piece], s: &str) -> bool {
    let next = |t: usize| s[t..].chars().next();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(c) = next(t) {
        match pieces.get(p) {
            Some(Piece::Many) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Piece::One) => {
                p += 1;
                t += c.len_utf8();
            }
            Some(Piece::Char(w)) if *w == c => {
                p += 1;
                t += c.len_utf8();
            }
            _ => match star {
                Some((sp, st)) => {
                    // Let the `%` take one more character and try again after it.
                    let st = st + next(st).map_or(1, char::len_utf8);
                    p = sp + 1;
                    t = st;
                    star = Some((sp, st));
                }
                None => return false,
            },
        }
    }
    pieces[p..].iter().all(|p| *p == Piece::Many)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_paths_are_chosen() {
        assert_eq!(Pattern::new("abc"), Pattern::Exact("abc".into()));
        assert_eq!(
            Pattern::new("https://%"),
            Pattern::Prefix("https://".into())
        );
        assert_eq!(Pattern::new("%.error"), Pattern::Suffix(".error".into()));
        assert_eq!(Pattern::new("%x%%"), Pattern::Contains("x".into()));
        assert_eq!(Pattern::new("a\\%"), Pattern::Exact("a%".into()));
        assert!(matches!(Pattern::new("a_c"), Pattern::General(_)));
    }

    #[test]
    fn matching() {
        let m = |p: &str, s: &str| Pattern::new(p).matches(s);
        assert!(m("%", ""));
        assert!(m("%", "anything"));
        assert!(m("a%b%c", "azzzbzzzc"));
        assert!(!m("a%b%c", "azzzbzzz"));
        assert!(m("_b%", "abcd1"));
        assert!(!m("_b%", "b"));
        assert!(m("é_", "éü"));
        assert!(m("%a%a%a%a%b", "aaaaaaaaaaaaaaaaaaaab"));
        assert!(!m("%a%a%a%a%b", "aaaaaaaaaaaaaaaaaaaaa"));
        assert!(m("ab\\c", "ab\\c"));
    }
}
