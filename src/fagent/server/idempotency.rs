//! Replays of a transaction id get the first answer (CONTRACT.md). Memory is
//! bounded: the oldest ids are forgotten first. Only successful answers are
//! kept, so a caller retrying after a 503 gets a real second attempt; a
//! concurrent duplicate waits for the first call and shares its answer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
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

type Cell = Arc<OnceCell<StateChanged>>;

pub struct Idempotency {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Uuid, (Request, Cell)>,
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
    pub fn slot(&self, id: Uuid, request: Request) -> Result<Cell, Conflict> {
        let mut inner = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((first, cell)) = inner.entries.get(&id) {
            if *first != request {
                return Err(Conflict(first.clone()));
            }
            return Ok(cell.clone());
        }
        let cell: Cell = Arc::default();
        inner.entries.insert(id, (request, cell.clone()));
        inner.order.push_back(id);
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.entries.remove(&old);
            }
        }
        Ok(cell)
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
        assert!(Arc::ptr_eq(&a, &b));
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
