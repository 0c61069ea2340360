//! DESIGN.md rule 5: how many calls an action may make and how long to wait
//! between them.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Vec<Duration>,
}

impl RetryPolicy {
    /// The waits between the attempts of one call, in order: one fewer than
    /// `max_attempts` (a backon backoff, as every retry in the crate).
    pub fn backoff(&self) -> impl backon::Backoff + use<> {
        let policy = self.clone();
        (1..policy.max_attempts).map(move |n| policy.delay_before_retry(n))
    }

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
        assert_eq!(none.backoff().count(), 0);
        let waits: Vec<_> = p.backoff().collect();
        assert_eq!(waits, [Duration::from_secs(1), Duration::from_secs(2)]);
    }
}
