//! Replays of a transaction id get the first answer (CONTRACT.md), whether
//! it came through `PUT …/state` or `POST /v1/state`: both use one store.
//! Memory is bounded: the oldest ids are forgotten first. Only successful
//! answers are kept, so a caller retrying after a 503 gets a real second
//! attempt; a concurrent duplicate waits for the first call and shares its
//! answer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use crate::domain::AdminState;
use crate::fagent::wire::StateChanged;

/// What a transaction id was used for; a replay must ask for the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub backend: String,
    pub server: String,
    pub state: AdminState,
}

/// One transaction id's answer, once there is one. Whoever holds its lock
/// is applying the change; a duplicate waits for the lock.
#[derive(Clone, Default)]
pub struct Slot(Arc<tokio::sync::Mutex<Option<StateChanged>>>);

/// A slot, claimed.
pub enum Claim {
    /// The first answer, to replay.
    Done(StateChanged),
    /// Nobody has answered yet: the holder applies the change.
    Owned(Owner),
}

/// The right to apply a slot's change; dropping it without
/// [`Owner::keep`] leaves the slot empty for the next attempt.
pub struct Owner(OwnedMutexGuard<Option<StateChanged>>);

impl Slot {
    /// Waits while another call applies this id.
    pub async fn claim(&self) -> Claim {
        Self::claimed(self.0.clone().lock_owned().await)
    }

    /// Claims without waiting; `None` while another call applies this id.
    pub fn try_claim(&self) -> Option<Claim> {
        self.0.clone().try_lock_owned().ok().map(Self::claimed)
    }

    fn claimed(guard: OwnedMutexGuard<Option<StateChanged>>) -> Claim {
        match &*guard {
            Some(answer) => Claim::Done(answer.clone()),
            None => Claim::Owned(Owner(guard)),
        }
    }
}

impl Owner {
    /// Keeps the (successful) answer for replays.
    pub fn keep(mut self, answer: &StateChanged) {
        *self.0 = Some(answer.clone());
    }
}

pub struct Idempotency {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Uuid, (Request, Slot)>,
    order: VecDeque<Uuid>,
}

/// The same transaction id was used for a different request.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict(pub Request);

impl Idempotency {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The slot of `id`, created when new.
    ///
    /// # Errors
    /// [`Conflict`] with the first request when `id` was used for another one.
    pub fn slot(&self, id: Uuid, request: Request) -> Result<Slot, Conflict> {
        let mut inner = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((first, slot)) = inner.entries.get(&id) {
            if *first != request {
                return Err(Conflict(first.clone()));
            }
            return Ok(slot.clone());
        }
        let slot = Slot::default();
        inner.entries.insert(id, (request, slot.clone()));
        inner.order.push_back(id);
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.entries.remove(&old);
            }
        }
        Ok(slot)
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|i| i.entries.len())
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(server: &str) -> Request {
        Request {
            backend: "web".into(),
            server: server.into(),
            state: AdminState::Drain,
        }
    }

    #[test]
    fn same_id_same_request_shares_one_slot() {
        let idem = Idempotency::new(10);
        let id = Uuid::new_v4();
        let a = idem.slot(id, req("a")).expect("first");
        let b = idem.slot(id, req("a")).expect("replay");
        assert!(Arc::ptr_eq(&a.0, &b.0));
    }

    fn answer() -> StateChanged {
        StateChanged::example(Uuid::nil(), "a")
    }

    #[tokio::test]
    async fn a_slot_is_applied_by_one_holder_and_only_a_kept_answer_is_replayed() {
        let slot = Slot::default();
        let Some(Claim::Owned(first)) = slot.try_claim() else {
            panic!("a new slot is free");
        };
        assert!(slot.try_claim().is_none(), "held while applied");
        drop(first);
        let Claim::Owned(second) = slot.claim().await else {
            panic!("a failed attempt is not remembered");
        };
        second.keep(&answer());
        assert!(matches!(slot.try_claim(), Some(Claim::Done(a)) if a == answer()));
        assert!(matches!(slot.claim().await, Claim::Done(_)));
    }

    #[test]
    fn same_id_other_request_conflicts() {
        let idem = Idempotency::new(10);
        let id = Uuid::new_v4();
        assert!(idem.slot(id, req("a")).is_ok());
        assert_eq!(idem.slot(id, req("b")).err(), Some(Conflict(req("a"))));
    }

    #[test]
    fn memory_is_bounded_and_oldest_goes_first() {
        let idem = Idempotency::new(3);
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            assert!(idem.slot(*id, req("a")).is_ok());
        }
        assert_eq!(idem.len(), 3);
        // The first id was forgotten: it may now be used for another request.
        assert!(idem.slot(ids[0], req("b")).is_ok());
        assert!(idem.slot(ids[4], req("b")).is_err());
    }
}
