//! Subjects: dot-separated, non-empty tokens without whitespace. `*` as a whole token matches
//! exactly one token, `>` as the last whole token matches one or more; anywhere else they are
//! literal bytes (`foo*` is a literal token), as in NATS.

/// Why a subject or queue name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Empty, an empty token, whitespace, or `>` before the last token.
    #[error("invalid subject {0:?}")]
    Invalid(String),
    /// A wildcard where only a literal subject is allowed (a publish).
    #[error("wildcards are not allowed in a publish subject: {0:?}")]
    Wildcard(String),
    /// An empty queue name or one with whitespace.
    #[error("invalid queue group {0:?}")]
    Queue(String),
}

/// The whole-token wildcard matching one token.
pub const ONE: &str = "*";
/// The last-token wildcard matching one or more tokens.
pub const REST: &str = ">";

fn token_ok(t: &str) -> bool {
    !t.is_empty() && !t.bytes().any(|b| b.is_ascii_whitespace())
}

/// Checks a subscription's subject (wildcards allowed).
pub fn check_filter(subject: &str) -> Result<(), SubjectError> {
    let mut tokens = subject.split('.').peekable();
    while let Some(t) = tokens.next() {
        if !token_ok(t) || (t == REST && tokens.peek().is_some()) {
            return Err(SubjectError::Invalid(subject.to_string()));
        }
    }
    Ok(())
}

/// Checks a publish subject: valid and free of wildcards.
pub fn check_literal(subject: &str) -> Result<(), SubjectError> {
    check_filter(subject)?;
    if subject.split('.').any(|t| t == ONE || t == REST) {
        return Err(SubjectError::Wildcard(subject.to_string()));
    }
    Ok(())
}

/// The keys (etcd's range conventions: `range_end` empty for one key, `"\0"` for every key
/// from `key` on) that the subjects `filter` matches fall in, for permission checks on
/// subjects as keys: a literal subject is its own key; a filter with wildcards covers every
/// subject that starts with its tokens before the first wildcard (`orders.*.x` and
/// `orders.>` both ask for the prefix `orders.`), and every subject when it starts with one.
pub fn key_range(filter: &str) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = String::new();
    for t in filter.split('.') {
        if t == ONE || t == REST {
            if prefix.is_empty() {
                return (Vec::new(), vec![0]);
            }
            // The prefix ends in '.', so the next key past it ends in '/'.
            let mut end = prefix.clone().into_bytes();
            end.pop();
            end.push(b'.' + 1);
            return (prefix.into_bytes(), end);
        }
        prefix.push_str(t);
        prefix.push('.');
    }
    (filter.as_bytes().to_vec(), Vec::new())
}

/// Checks a queue group's name.
pub fn check_queue(queue: &str) -> Result<(), SubjectError> {
    if token_ok(queue) {
        Ok(())
    } else {
        Err(SubjectError::Queue(queue.to_string()))
    }
}

/// Whether the literal `subject` is one `filter` reaches.
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(REST), Some(_)) => return true,
            (Some(ONE), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some literal subject is reached by both filters (two streams may not share one).
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (Some(REST), Some(_)) | (Some(_), Some(REST)) => return true,
            (Some(ONE), Some(_)) | (Some(_), Some(ONE)) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every subject `inner` reaches, `outer` reaches too.
pub fn contains(outer: &str, inner: &str) -> bool {
    let mut x = outer.split('.');
    let mut y = inner.split('.');
    loop {
        match (x.next(), y.next()) {
            (Some(REST), Some(_)) => return true,
            (Some(ONE), Some(t)) if t != REST => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn filters_map_to_the_key_range_their_subjects_fall_in() {
        let r = |f: &str| {
            let (k, e) = key_range(f);
            (
                String::from_utf8(k).unwrap_or_default(),
                String::from_utf8(e).unwrap_or_default(),
            )
        };
        assert_eq!(r("orders.new"), ("orders.new".into(), String::new()));
        assert_eq!(r("orders.>"), ("orders.".into(), "orders/".into()));
        assert_eq!(r("orders.*.eu"), ("orders.".into(), "orders/".into()));
        assert_eq!(r("a.b.*"), ("a.b.".into(), "a.b/".into()));
        assert_eq!(r(">"), (String::new(), "\0".into()));
        assert_eq!(r("*.x"), (String::new(), "\0".into()));
        // Every subject a filter matches lies in its range.
        for (f, s) in [
            ("orders.>", "orders.x.y"),
            ("orders.*.eu", "orders.1.eu"),
            ("*.x", "a.x"),
        ] {
            assert!(matches(f, s));
            let (k, e) = key_range(f);
            assert!(s.as_bytes() >= k.as_slice() && (e == [0] || s.as_bytes() < e.as_slice()));
        }
    }

    use super::*;

    #[test]
    fn filters_match_overlap_and_contain_as_nats_does() {
        assert!(matches("a.*", "a.b") && !matches("a.*", "a.b.c") && !matches("a.*", "a"));
        assert!(matches("a.>", "a.b.c") && !matches("a.>", "a") && matches(">", "x"));
        assert!(matches("a.b", "a.b") && !matches("a.b", "a.c"));
        assert!(overlaps("a.*", "a.b") && overlaps("a.>", "*.b.c") && overlaps("*.x", "a.*"));
        assert!(!overlaps("a.*", "a.b.c") && !overlaps("a.b", "a.c") && !overlaps("a.>", "a"));
        assert!(contains("a.>", "a.*.c") && contains("a.*", "a.b") && contains(">", "x.>"));
        assert!(!contains("a.*", "a.>") && !contains("a.b", "a.*") && !contains("a.*.c", "a.>"));
    }

    #[test]
    fn filters_and_literals() {
        for ok in [
            "foo", "foo.bar", "foo.*", "foo.>", "*", ">", "*.*.>", "föo.bar", "foo*.bar",
        ] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "foo.",
            ".foo",
            "foo..bar",
            "foo.>.bar",
            "fo o",
            "foo\tbar",
            ">.foo",
        ] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_literal("foo.bar"), Ok(()));
        assert_eq!(check_literal("foo*.bar"), Ok(()));
        assert!(matches!(
            check_literal("foo.*"),
            Err(SubjectError::Wildcard(_))
        ));
        assert!(matches!(
            check_literal("foo.>"),
            Err(SubjectError::Wildcard(_))
        ));
        assert!(matches!(
            check_literal("foo..x"),
            Err(SubjectError::Invalid(_))
        ));
        assert_eq!(check_queue("workers"), Ok(()));
        assert!(check_queue("").is_err());
        assert!(check_queue("a b").is_err());
    }
}
