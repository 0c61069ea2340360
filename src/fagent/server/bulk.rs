//! `POST /v1/state`: several changes in one call, each answered as
//! `PUT …/state` would have answered it (docs/fagent-api.md).

use axum::Json;
use axum::extract::State;
use uuid::Uuid;

use super::AgentState;
use super::changes::{Pending, Settled, not_settled, parse_names, settle_detached};
use super::error::AgentError;
use super::extract::JsonBody;
use super::runtime::Change;
use crate::fagent::wire::{
    ChangeResult, ErrorDetail, MAX_STATE_CHANGES, SetStates, StateChange, StatesChanged,
};

/// Room for [`MAX_STATE_CHANGES`] changes with the longest names.
pub(crate) const BODY_LIMIT: usize = 256 * 1024;

/// Where one change's result comes from.
enum Entry {
    /// Known before HAProxy is asked (a bad name, a conflicting id).
    Decided(ChangeResult),
    /// Settled on HAProxy, in the order of the entries.
    Settled,
    /// The same change with the same id as the earlier change at this position.
    SameAs(usize),
}

pub(crate) async fn set_states(
    State(state): State<AgentState>,
    JsonBody(body): JsonBody<SetStates>,
) -> Result<Json<StatesChanged>, AgentError> {
    check_count(&body.changes)?;
    let (entries, items) = entries(&state, &body.changes);
    let mut settled = settle_detached(state, items).await?.into_iter();
    let mut results: Vec<ChangeResult> = Vec::with_capacity(entries.len());
    for (entry, change) in entries.into_iter().zip(&body.changes) {
        let result = match entry {
            Entry::Decided(result) => result,
            Entry::Settled => result_of(change.transaction_id, settled.next()),
            Entry::SameAs(j) => results[j].clone(),
        };
        results.push(result);
    }
    Ok(Json(StatesChanged { results }))
}

fn check_count(changes: &[StateChange]) -> Result<(), AgentError> {
    if changes.is_empty() {
        return Err(AgentError::bad_request(
            "invalid_request",
            "changes must hold at least one change",
        ));
    }
    if changes.len() > MAX_STATE_CHANGES {
        return Err(AgentError::bad_request(
            "too_many_changes",
            format!(
                "changes holds {} changes; at most {MAX_STATE_CHANGES} are taken in one call",
                changes.len()
            ),
        ));
    }
    Ok(())
}

/// Each change's entry, and the changes to settle (in order).
fn entries(state: &AgentState, changes: &[StateChange]) -> (Vec<Entry>, Vec<Pending>) {
    let mut entries = Vec::with_capacity(changes.len());
    let mut items = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        if let Some(j) = changes[..i].iter().position(|earlier| earlier == change) {
            entries.push(Entry::SameAs(j));
            continue;
        }
        match pending(state, change) {
            Ok(item) => {
                entries.push(Entry::Settled);
                items.push(item);
            }
            Err(e) => entries.push(Entry::Decided(result_of(
                change.transaction_id,
                Some(Err(e)),
            ))),
        }
    }
    (entries, items)
}

fn pending(state: &AgentState, change: &StateChange) -> Result<Pending, AgentError> {
    let (backend, server) = parse_names(&change.backend, &change.server)?;
    let change_of = Change {
        backend,
        server,
        state: change.state,
    };
    Pending::new(state, change.transaction_id, change_of)
}

fn result_of(transaction_id: Uuid, settled: Option<Settled>) -> ChangeResult {
    match settled.unwrap_or_else(|| Err(not_settled())) {
        Ok(changed) => ChangeResult {
            transaction_id,
            status: 200,
            changed: Some(changed),
            error: None,
        },
        Err(e) => ChangeResult {
            transaction_id,
            status: e.status.as_u16(),
            changed: None,
            error: Some(ErrorDetail {
                code: e.code.to_owned(),
                message: e.message,
            }),
        },
    }
}
