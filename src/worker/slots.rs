//! How many actions a worker processes at once.
//!
//! An action holds one pooled connection for as long as it runs: its
//! server's advisory lock lives in that session (rule 3), across the agent
//! call and its retries. So a worker lets no more actions run than its pool
//! serves ([`super::pool_size`]); the deliveries beyond that (the prefetch
//! may be larger) wait here holding nothing, instead of timing out on the
//! pool. And a command for a target that another action of this worker is
//! working on waits here for it, without taking a slot: commands for one
//! server are serialised anyway, and commands for other servers keep the
//! slots busy meanwhile. (The advisory lock still orders commands across
//! workers, and a target named by id and by names is serialised only there.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use crate::domain::action::Target;

/// The worker's action slots and the per-target turns.
#[derive(Debug)]
pub struct ActionSlots {
    permits: Arc<Semaphore>,
    /// One turn per target some action of this worker holds or waits for;
    /// an entry goes when its last holder does.
    turns: Mutex<HashMap<Target, Weak<tokio::sync::Mutex<()>>>>,
}

/// A slot and its target's turn, held while one action is processed.
#[derive(Debug)]
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    _turn: OwnedMutexGuard<()>,
}

/// A slot held while one group of actions is processed.
#[derive(Debug)]
pub struct GroupSlot {
    _permit: Option<OwnedSemaphorePermit>,
}

impl ActionSlots {
    /// `slots` actions at once (at least 1).
    pub fn new(slots: u32) -> Self {
        let n = usize::try_from(slots.max(1)).unwrap_or(usize::MAX);
        Self {
            permits: Arc::new(Semaphore::new(n)),
            turns: Mutex::default(),
        }
    }

    /// Waits for `target`'s turn, then for a free slot (both first come,
    /// first served).
    pub async fn acquire(&self, target: &Target) -> Slot {
        let turn = self.turn_of(target).lock_owned().await;
        // The semaphore is never closed, so this always gives a permit.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        Slot {
            _permit: permit,
            _turn: turn,
        }
    }

    /// Waits for a free slot for a group of actions: one connection, so one
    /// slot; its targets are serialised by their advisory locks.
    pub async fn acquire_for_group(&self) -> GroupSlot {
        GroupSlot {
            _permit: Arc::clone(&self.permits).acquire_owned().await.ok(),
        }
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    fn turn_of(&self, target: &Target) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        // At most one entry per action in flight: the prefetch bounds this.
        turns.retain(|_, turn| turn.strong_count() > 0);
        if let Some(turn) = turns.get(target).and_then(Weak::upgrade) {
            return turn;
        }
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        turns.insert(target.clone(), Arc::downgrade(&turn));
        turn
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn no_more_actions_run_than_there_are_slots() {
        let slots = ActionSlots::new(2);
        let a = slots.acquire(&Target::ServerId(1)).await;
        let _b = slots.acquire(&Target::ServerId(2)).await;
        assert_eq!(slots.available(), 0);
        let third = tokio::time::timeout(SHORT, slots.acquire(&Target::ServerId(3))).await;
        assert!(third.is_err(), "a third action ran with two slots");
        drop(a);
        let third = tokio::time::timeout(SHORT, slots.acquire(&Target::ServerId(3))).await;
        assert!(third.is_ok(), "a freed slot was not given out");
    }

    #[tokio::test]
    async fn a_second_command_for_a_target_waits_without_taking_a_slot() {
        let slots = ActionSlots::new(2);
        let first = slots.acquire(&Target::ServerId(7)).await;
        let second = tokio::time::timeout(SHORT, slots.acquire(&Target::ServerId(7))).await;
        assert!(second.is_err(), "two commands for one server ran at once");
        assert_eq!(slots.available(), 1, "the waiting command took a slot");
        let other = tokio::time::timeout(SHORT, slots.acquire(&Target::ServerId(8)))
            .await
            .expect("another server's command runs meanwhile");
        drop(first);
        drop(other);
        let second = tokio::time::timeout(SHORT, slots.acquire(&Target::ServerId(7))).await;
        assert!(second.is_ok(), "the target's turn was not passed on");
    }

    #[tokio::test]
    async fn turns_of_finished_targets_are_forgotten() {
        let slots = ActionSlots::new(4);
        for id in 0..100 {
            drop(slots.acquire(&Target::ServerId(id)).await);
        }
        let _held = slots.acquire(&Target::ServerId(1_000)).await;
        let turns = slots.turns.lock().map(|t| t.len()).unwrap_or_default();
        assert_eq!(turns, 1);
    }
}
