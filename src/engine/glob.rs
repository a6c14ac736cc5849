//! Glob matching with Redis `MATCH` syntax: `*`, `?`, `[abc]`, `[^abc]`, `[a-z]` and `\` escapes.
//!
//! It matches bytes, exactly as Redis does, so that a pattern selects the same keys in L1 as
//! `SCAN MATCH` selects in L2 (`?` is one byte, not one character). Unlike Redis's recursive
//! matcher it backtracks only to the last `*`, so a hostile pattern costs O(pattern × key).

/// Returns whether `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let pattern = pattern.as_bytes();
    let text = text.as_bytes();
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: pattern position after it, text position it covers up to.
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            while p < pattern.len() && pattern[p] == b'*' {
                p += 1;
            }
            if p == pattern.len() {
                return true;
            }
            resume = Some((p, t));
            continue;
        }
        if p < pattern.len() {
            if let Some(next) = match_one(pattern, p, text[t]) {
                p = next;
                t += 1;
                continue;
            }
        }
        match resume {
            Some((star_p, star_t)) => {
                p = star_p;
                t = star_t + 1;
                resume = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// Whether the pattern has no special characters, so it can only match itself.
pub fn is_literal(pattern: &str) -> bool {
    !pattern.bytes().any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
}

/// Matches the single pattern element at `p` against `byte`; returns the position after it.
fn match_one(pattern: &[u8], p: usize, byte: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == byte).then_some(p + 2),
        b'[' => match_class(pattern, p + 1, byte),
        literal => (literal == byte).then_some(p + 1),
    }
}

/// Matches a `[...]` class starting after the `[`. An unclosed class runs to the end of the
/// pattern, as in Redis.
fn match_class(pattern: &[u8], mut i: usize, byte: u8) -> Option<usize> {
    let negated = i < pattern.len() && pattern[i] == b'^';
    if negated {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == byte;
            i += 2;
        } else if pattern[i] == b']' {
            i += 1;
            return (matched != negated).then_some(i);
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' {
            let (mut low, mut high) = (pattern[i], pattern[i + 2]);
            if low > high {
                std::mem::swap(&mut low, &mut high);
            }
            matched |= (low..=high).contains(&byte);
            i += 3;
        } else {
            matched |= pattern[i] == byte;
            i += 1;
        }
    }
    (matched != negated).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn star_matches_any_run_including_slashes() {
        assert!(matches("user:*", "user:1"));
        assert!(matches("user:*", "user:"));
        assert!(matches("*", ""));
        assert!(matches("/api/*/orders", "/api/users/1/orders"));
        assert!(!matches("user:*", "users:1"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn question_mark_is_one_byte() {
        assert!(matches("user:?", "user:1"));
        assert!(!matches("user:?", "user:12"));
        assert!(!matches("user:?", "user:"));
        assert!(matches("??", "é"), "é is two bytes in UTF-8, as Redis counts");
    }

    #[test]
    fn classes_ranges_and_negation() {
        assert!(matches("h[ae]llo", "hello"));
        assert!(!matches("h[ae]llo", "hillo"));
        assert!(matches("h[^e]llo", "hallo"));
        assert!(!matches("h[^e]llo", "hello"));
        assert!(matches("h[a-b]llo", "hbllo"));
        assert!(matches("h[b-a]llo", "hallo"), "reversed ranges are swapped, as in Redis");
        assert!(!matches("h[a-b]llo", "hcllo"));
        assert!(matches("[\\]]", "]"));
    }

    #[test]
    fn escapes_make_specials_literal() {
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "aXb"));
        assert!(matches("a\\?", "a?"));
        assert!(!matches("a\\?", "ab"));
        assert!(matches("\\[x]", "[x]"));
    }

    #[test]
    fn hostile_patterns_finish_quickly() {
        let text = "a".repeat(512);
        let pattern = format!("{}b", "*a".repeat(100));
        assert!(!matches(&pattern, &text));
    }
}
