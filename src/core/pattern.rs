//! [`Pattern`]: a topic name in which `*` matches any run of characters,
//! as token claims (contract §8) and topic policies (§11) use them.

use thiserror::Error;

use super::message::MAX_TOPIC_LEN;

/// A topic pattern: a topic name in which `*` matches any run of
/// characters (also none, also dots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(Box<str>);

/// Why a pattern is not valid.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("a pattern is 1 to 128 characters of A-Z a-z 0-9 _ . : @ - and *")]
pub struct PatternError;

impl Pattern {
    /// A pattern from its text: 1 to 128 characters of the topic alphabet
    /// (`A-Z a-z 0-9 _ . : @ -`) and `*`.
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        let ok = (1..=MAX_TOPIC_LEN).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:@-*".contains(&b));
        if ok {
            Ok(Pattern(s.into()))
        } else {
            Err(PatternError)
        }
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        glob(self.0.as_bytes(), topic.as_bytes())
    }
}

/// `*` matches any run of bytes; everything else matches itself. Goes back
/// to the last `*` only, so at most `p.len() × t.len()` steps (both are at
/// most 128 bytes).
fn glob(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}
