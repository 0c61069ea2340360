//! An endpoint's event patterns, matched against routing keys the way
//! RabbitMQ's topic exchange matches binding keys: words separated by `.`,
//! `*` stands for exactly one word, `#` for zero or more words.

/// Longest pattern accepted.
pub const MAX_PATTERN_LEN: usize = 255;

/// A validated pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPattern(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

impl EventPattern {
    /// A pattern of words `[A-Za-z0-9_-]+`, `*` or `#`, separated by `.`.
    ///
    /// # Errors
    /// [`PatternError`] saying what is wrong.
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        let bad = |reason| PatternError {
            pattern: raw.chars().take(80).collect(),
            reason,
        };
        if raw.is_empty() || raw.len() > MAX_PATTERN_LEN {
            return Err(bad("must be 1 to 255 characters"));
        }
        for word in raw.split('.') {
            let ok = word == "*"
                || word == "#"
                || (!word.is_empty()
                    && word
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
            if !ok {
                return Err(bad(
                    "words are letters, digits, '_' or '-', or a whole '*' or '#', separated by '.'",
                ));
            }
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `routing_key` matches.
    pub fn matches(&self, routing_key: &str) -> bool {
        let pattern: Vec<&str> = self.0.split('.').collect();
        let key: Vec<&str> = routing_key.split('.').collect();
        words_match(&pattern, &key)
    }
}

fn words_match(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| words_match(rest, &key[skip..])),
        Some((word, rest)) => match key.split_first() {
            Some((k, key_rest)) => (*word == "*" || word == k) && words_match(rest, key_rest),
            None => false,
        },
    }
}

/// Whether any of `patterns` matches `routing_key`.
pub fn matches_any<'a>(patterns: impl IntoIterator<Item = &'a str>, routing_key: &str) -> bool {
    patterns
        .into_iter()
        .filter_map(|p| EventPattern::parse(p).ok())
        .any(|p| p.matches(routing_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: &str) -> bool {
        EventPattern::parse(pattern).expect("valid").matches(key)
    }

    #[test]
    fn star_is_one_word_and_hash_is_any_number() {
        assert!(m("action.*", "action.succeeded"));
        assert!(!m("action.*", "action"));
        assert!(!m("action.*", "action.a.b"));
        assert!(!m("action.*", "batch.completed"));
        assert!(m("#", "server.state_changed"));
        assert!(m("#", "x"));
        assert!(m("action.#", "action"));
        assert!(m("action.#", "action.failed"));
        assert!(m("#.failed", "action.failed"));
        assert!(m("#.failed", "instance.sync.failed"));
        assert!(!m("#.failed", "action.succeeded"));
        assert!(m("*.completed", "batch.completed"));
        assert!(m("rollout.#.x", "rollout.x"));
        assert!(m("rollout.#.x", "rollout.a.b.x"));
        assert!(!m("rollout.#.x", "rollout.a.b.y"));
        assert!(m("server.state_changed", "server.state_changed"));
        assert!(!m("server.state_changed", "server.state_changed.more"));
        assert!(m("*.*", "webhook.disabled"));
        assert!(!m("*", "webhook.disabled"));
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for bad in [
            "",
            "action.",
            ".x",
            "a..b",
            "act*",
            "a.#x",
            "a b",
            &"a".repeat(300),
        ] {
            assert!(EventPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches_any(["nope..", "batch.*"], "batch.completed"));
        assert!(!matches_any(["action.*"], "batch.completed"));
    }
}
