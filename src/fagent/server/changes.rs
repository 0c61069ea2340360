//! Applying state changes, for both endpoints: `PUT …/state` settles one,
//! `POST /v1/state` several, through the same steps: claim each
//! transaction id's slot, make the changes on HAProxy as one group, keep
//! each success for replays.

use axum::http::StatusCode;
use uuid::Uuid;

use super::AgentState;
use super::error::AgentError;
use super::idempotency::{Claim, Conflict, Owner, Request, Slot};
use super::runtime::{Change, Outcome};
use crate::domain::{BackendName, ServerName};
use crate::fagent::wire::StateChanged;

/// A change whose transaction id has its slot.
pub(crate) struct Pending {
    transaction_id: Uuid,
    change: Change,
    slot: Slot,
}

/// What one change came to: its answer or the error the single endpoint
/// would have answered.
pub(crate) type Settled = Result<StateChanged, AgentError>;

/// Both names, parsed (DESIGN.md rule 9), or a 400 `invalid_name`.
pub(crate) fn parse_names(
    backend: &str,
    server: &str,
) -> Result<(BackendName, ServerName), AgentError> {
    let invalid =
        |e: crate::domain::NameError| AgentError::bad_request("invalid_name", e.to_string());
    Ok((
        BackendName::parse(backend).map_err(invalid)?,
        ServerName::parse(server).map_err(invalid)?,
    ))
}

impl Pending {
    /// The change with its transaction id's slot.
    ///
    /// # Errors
    /// 409 `transaction_conflict` when the id was used for another change.
    pub(crate) fn new(
        state: &AgentState,
        transaction_id: Uuid,
        change: Change,
    ) -> Result<Self, AgentError> {
        let request = Request {
            backend: change.backend.to_string(),
            server: change.server.to_string(),
            state: change.state,
        };
        let slot = state
            .idempotency
            .slot(transaction_id, request)
            .map_err(|Conflict(first)| {
                AgentError::new(
                    StatusCode::CONFLICT,
                    "transaction_conflict",
                    format!(
                        "transaction_id {transaction_id} was already used to set {}/{} to {}",
                        first.backend, first.server, first.state
                    ),
                )
            })?;
        Ok(Self {
            transaction_id,
            change,
            slot,
        })
    }
}

/// Settles `items` in a task of their own: a caller that goes away (a
/// worker killed mid-call) does not cancel the changes half-way, and its
/// retry then gets these first answers instead of second commands to
/// HAProxy. One answer per item, in order.
///
/// # Errors
/// 503 when HAProxy cannot be reached at all (nothing was changed).
pub(crate) async fn settle_detached(
    state: AgentState,
    items: Vec<Pending>,
) -> Result<Vec<Settled>, AgentError> {
    tokio::spawn(settle(state, items)).await.map_err(|e| {
        AgentError::new(
            StatusCode::BAD_GATEWAY,
            "agent_task_failed",
            format!("the state change task failed: {e}"),
        )
    })?
}

/// Replays the answered ids, applies the free ones as one group, then
/// waits for the ids another call is applying (and applies those whose
/// other call failed).
async fn settle(state: AgentState, items: Vec<Pending>) -> Result<Vec<Settled>, AgentError> {
    let mut settled: Vec<Option<Settled>> = items.iter().map(|_| None).collect();
    let mut owned = Vec::new();
    let mut busy = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.slot.try_claim() {
            Some(Claim::Done(answer)) => settled[i] = Some(Ok(replayed(item, answer))),
            Some(Claim::Owned(owner)) => owned.push((i, owner)),
            None => busy.push(i),
        }
    }
    apply(&state, &items, owned, &mut settled).await?;
    for i in busy {
        match items[i].slot.claim().await {
            Claim::Done(answer) => settled[i] = Some(Ok(replayed(&items[i], answer))),
            Claim::Owned(owner) => {
                if let Err(e) = apply(&state, &items, vec![(i, owner)], &mut settled).await {
                    settled[i] = Some(Err(e));
                }
            }
        }
    }
    Ok(settled
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Err(not_settled())))
        .collect())
}

/// Makes the owned items' changes as one group, writes the state file once
/// if any changed something, and keeps each success in its slot.
async fn apply(
    state: &AgentState,
    items: &[Pending],
    owned: Vec<(usize, Owner)>,
    settled: &mut [Option<Settled>],
) -> Result<(), AgentError> {
    if owned.is_empty() {
        return Ok(());
    }
    let changes: Vec<Change> = owned
        .iter()
        .map(|(i, _)| items[*i].change.clone())
        .collect();
    let outcomes = state.haproxy.set_many(&changes).await?;
    let answers: Vec<Settled> = owned
        .iter()
        .zip(outcomes)
        .map(|((i, _), outcome)| answer(&items[*i], outcome))
        .collect();
    if answers.iter().any(|a| a.as_ref().is_ok_and(|c| c.applied))
        && let Some(file) = &state.state_file
    {
        file.after_change().await;
    }
    for ((i, owner), answer) in owned.into_iter().zip(answers) {
        if let Ok(changed) = &answer {
            owner.keep(changed);
        }
        settled[i] = Some(answer);
    }
    Ok(())
}

/// The answer to one change from what HAProxy said before and after it.
fn answer(item: &Pending, outcome: Outcome) -> Settled {
    let (before_bits, after) = outcome?;
    let Change {
        backend,
        server,
        state,
    } = &item.change;
    let applied = before_bits != after.admin_bits;
    tracing::info!(
        transaction_id = %item.transaction_id, %backend, %server, %state, applied,
        admin_state = %after.snapshot.admin_state, op_state = %after.snapshot.op_state,
        "server state set"
    );
    Ok(StateChanged {
        transaction_id: item.transaction_id,
        applied,
        server: after.snapshot,
    })
}

fn replayed(item: &Pending, answer: StateChanged) -> StateChanged {
    let Change {
        backend,
        server,
        state,
    } = &item.change;
    tracing::info!(
        transaction_id = %item.transaction_id, %backend, %server, %state,
        "replayed first answer"
    );
    answer
}

/// A change the task did not answer (never expected).
pub(crate) fn not_settled() -> AgentError {
    AgentError::new(
        StatusCode::BAD_GATEWAY,
        "agent_task_failed",
        "the state change was not settled",
    )
}
