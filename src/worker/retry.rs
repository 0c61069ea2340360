//! DESIGN.md rule 5: how many calls an action may make and how long to wait
//! between them.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Vec<Duration>,
}

impl RetryPolicy {
    /// The wait before retry `n` (1-based): the n-th backoff, the last one
    /// repeating.
    pub fn delay_before_retry(&self, n: u32) -> Duration {
        let index = usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::ZERO)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_list_and_the_last_repeats() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_before_retry(1), Duration::from_secs(1));
        assert_eq!(p.delay_before_retry(2), Duration::from_secs(2));
        assert_eq!(p.delay_before_retry(3), Duration::from_secs(4));
        assert_eq!(p.delay_before_retry(9), Duration::from_secs(4));
        let none = RetryPolicy {
            max_attempts: 1,
            backoff: vec![],
        };
        assert_eq!(none.delay_before_retry(1), Duration::ZERO);
    }
}
