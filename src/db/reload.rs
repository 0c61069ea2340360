//! The database side of noticing a reload of HAProxy: the process identity
//! stored on the instance, which states the module wrote, and the restore
//! actions a reload leads to. All of it runs inside the sync's transaction,
//! so a reload is noticed, and its restores recorded, exactly once.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};

use super::DbError;
use super::actions::NewAction;
use super::schema::{haproxy_actions as a, haproxy_instances as i};
use crate::domain::HistorySource;
use crate::domain::action::ActionStatus;
use crate::domain::reload::{self, ProcessChange, ProcessIdentity, Restore};

/// The process identity the last sync stored on the instance, and its
/// `restore_after_reload`. Syncs of one instance are serialised by its sync
/// lock (rule 7), so no row lock is needed between this read and
/// [`record_process`].
///
/// # Errors
/// [`DbError`].
pub fn stored_process(
    conn: &mut PgConnection,
    instance_id: i64,
) -> Result<(Option<ProcessIdentity>, bool), DbError> {
    let (pid, started_at, restore_after_reload): (Option<i32>, Option<DateTime<Utc>>, bool) =
        i::table
            .find(instance_id)
            .select((
                i::haproxy_pid,
                i::haproxy_started_at,
                i::restore_after_reload,
            ))
            .first(conn)?;
    let stored = pid
        .and_then(|p| u32::try_from(p).ok())
        .map(|pid| ProcessIdentity { pid, started_at });
    Ok((stored, restore_after_reload))
}

/// Stores the identity just seen when it is new; a reload also sets
/// `last_reload_at` (the database's clock).
///
/// # Errors
/// [`DbError`].
pub fn record_process(
    conn: &mut PgConnection,
    instance_id: i64,
    seen: Option<ProcessIdentity>,
    change: ProcessChange,
) -> Result<(), DbError> {
    let Some(seen) = seen else { return Ok(()) };
    // Linux pids stay below 2^22, so the conversion never fails in practice.
    let pid = i32::try_from(seen.pid).ok();
    let row = diesel::update(i::table.find(instance_id));
    match change {
        ProcessChange::Reloaded { .. } => row
            .set((
                i::haproxy_pid.eq(pid),
                i::haproxy_started_at.eq(seen.started_at),
                i::last_reload_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?,
        ProcessChange::FirstSeen => row
            .set((
                i::haproxy_pid.eq(pid),
                i::haproxy_started_at.eq(seen.started_at),
            ))
            .execute(conn)?,
        ProcessChange::Same | ProcessChange::Unreported => 0,
    };
    Ok(())
}

/// The servers among `ids` whose latest history row was written by an
/// action (source `action`): their stored state is one the module applied.
///
/// # Errors
/// [`DbError`].
pub fn last_written_by_action(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<HashSet<i64>, DbError> {
    #[derive(QueryableByName)]
    struct Latest {
        #[diesel(sql_type = BigInt)]
        server_id: i64,
        #[diesel(sql_type = Text)]
        source: HistorySource,
    }
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    // One index range per server (server_id, changed_at DESC, id DESC).
    let rows: Vec<Latest> = diesel::sql_query(
        "SELECT DISTINCT ON (server_id) server_id, source \
         FROM haproxy_server_status_history WHERE server_id = ANY($1) \
         ORDER BY server_id, changed_at DESC, id DESC",
    )
    .bind::<Array<BigInt>, _>(ids)
    .load(conn)?;
    Ok(rows
        .into_iter()
        .filter(|r| r.source == HistorySource::Action)
        .map(|r| r.server_id)
        .collect())
}

/// Records the restores as `pending` actions (forced: they re-apply a state
/// that was in effect, which the guard admitted when it was first asked), to
/// be published after the sync commits. A restore whose transaction id is
/// recorded already (a duplicate of the same reload) is skipped.
///
/// # Errors
/// [`DbError`].
pub fn record_restores(
    conn: &mut PgConnection,
    restores: &[Restore],
    requested_at: DateTime<Utc>,
    reason: &str,
) -> Result<usize, DbError> {
    let rows: Vec<NewAction> = restores
        .iter()
        .map(|r| NewAction {
            transaction_id: r.transaction_id,
            server_id: Some(r.server_id),
            batch_id: None,
            action: r.action,
            status: ActionStatus::Pending,
            actor: reload::RESTORE_ACTOR.to_owned(),
            reason: Some(reason.to_owned()),
            force: true,
            requested_at,
        })
        .collect();
    Ok(diesel::insert_into(a::table)
        .values(&rows)
        .on_conflict(a::transaction_id)
        .do_nothing()
        .execute(conn)?)
}
