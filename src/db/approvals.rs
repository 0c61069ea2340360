//! `haproxy_settings` (the approval policy) and `haproxy_approvals`: an
//! approval is written in the same transaction as the request it holds
//! (see `crate::approvals`), and decided under `FOR UPDATE`, so a request is
//! approved, rejected or expired exactly once.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::DbError;
use super::schema::{haproxy_approvals as ap, haproxy_settings as st};
use crate::domain::approval::{
    ApprovalKind, ApprovalPolicy, ApprovalStatus, MatchedRule, PolicyDocument,
};

/// The settings name of the approval policy.
pub const POLICY: &str = "approval";

/// An approval as stored.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = ap)]
pub struct ApprovalRow {
    pub id: i64,
    pub kind: ApprovalKind,
    pub transaction_id: Uuid,
    pub status: ApprovalStatus,
    pub requester: String,
    pub summary: serde_json::Value,
    pub matched_rules: serde_json::Value,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub comment: Option<String>,
}

impl ApprovalRow {
    /// The matched rules as recorded (an unreadable value reads as none).
    pub fn rules(&self) -> Vec<MatchedRule> {
        serde_json::from_value(self.matched_rules.clone()).unwrap_or_default()
    }
}

/// What a held request records.
#[derive(Debug, Clone)]
pub struct NewApproval {
    pub kind: ApprovalKind,
    pub transaction_id: Uuid,
    pub requester: String,
    pub summary: serde_json::Value,
    pub matched_rules: Vec<MatchedRule>,
    pub ttl_secs: u64,
}

/// The stored approval policy; the default (nothing needs approval) when
/// none was ever saved.
///
/// # Errors
/// [`DbError`]; a stored document that no longer validates is a
/// deserialization error naming the setting.
pub fn policy(conn: &mut PgConnection) -> Result<ApprovalPolicy, DbError> {
    let value: Option<serde_json::Value> = st::table
        .find(POLICY)
        .select(st::value)
        .first(conn)
        .optional()?;
    let Some(value) = value else {
        return Ok(ApprovalPolicy::default());
    };
    let bad = |e: String| {
        DbError::Query(diesel::result::Error::DeserializationError(
            format!("haproxy_settings.value of {POLICY:?}: {e}").into(),
        ))
    };
    let doc: PolicyDocument = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    ApprovalPolicy::parse(&doc).map_err(|e| bad(e.0))
}

/// Saves the approval policy; returns when it was saved (database time).
///
/// # Errors
/// [`DbError`].
pub fn put_policy(
    conn: &mut PgConnection,
    policy: &ApprovalPolicy,
    actor: &str,
) -> Result<DateTime<Utc>, DbError> {
    let value = serde_json::to_value(policy.document())
        .map_err(|e| DbError::Query(diesel::result::Error::SerializationError(Box::new(e))))?;
    Ok(diesel::insert_into(st::table)
        .values((
            st::name.eq(POLICY),
            st::value.eq(&value),
            st::updated_by.eq(actor),
        ))
        .on_conflict(st::name)
        .do_update()
        .set((
            st::value.eq(&value),
            st::updated_by.eq(actor),
            st::updated_at.eq(diesel::dsl::now),
        ))
        .returning(st::updated_at)
        .get_result(conn)?)
}

/// Records an approval (pending, expiring `ttl_secs` from the database's
/// now), or returns the one the request already has; the flag says whether
/// it was created now. Call it in the transaction that holds the request.
///
/// # Errors
/// [`DbError`].
pub fn create(conn: &mut PgConnection, new: &NewApproval) -> Result<(ApprovalRow, bool), DbError> {
    let rules = serde_json::to_value(&new.matched_rules)
        .map_err(|e| DbError::Query(diesel::result::Error::SerializationError(Box::new(e))))?;
    let ttl = i64::try_from(new.ttl_secs).unwrap_or(i64::MAX);
    let expires = diesel::dsl::sql::<diesel::sql_types::Timestamptz>(&format!(
        "now() + make_interval(secs => {ttl})"
    ));
    let inserted: Option<ApprovalRow> = diesel::insert_into(ap::table)
        .values((
            ap::kind.eq(new.kind),
            ap::transaction_id.eq(new.transaction_id),
            ap::requester.eq(&new.requester),
            ap::summary.eq(&new.summary),
            ap::matched_rules.eq(&rules),
            ap::expires_at.eq(expires),
        ))
        .on_conflict((ap::kind, ap::transaction_id))
        .do_nothing()
        .returning(ApprovalRow::as_returning())
        .get_result(conn)
        .optional()?;
    if let Some(row) = inserted {
        return Ok((row, true));
    }
    let row = by_request(conn, new.kind, new.transaction_id)?
        .ok_or(DbError::Query(diesel::result::Error::NotFound))?;
    Ok((row, false))
}

/// The approval of a request.
///
/// # Errors
/// [`DbError`].
pub fn by_request(
    conn: &mut PgConnection,
    kind: ApprovalKind,
    transaction_id: Uuid,
) -> Result<Option<ApprovalRow>, DbError> {
    Ok(ap::table
        .filter(ap::kind.eq(kind))
        .filter(ap::transaction_id.eq(transaction_id))
        .select(ApprovalRow::as_select())
        .first(conn)
        .optional()?)
}

/// # Errors
/// [`DbError`].
pub fn get(conn: &mut PgConnection, id: i64) -> Result<Option<ApprovalRow>, DbError> {
    Ok(ap::table
        .find(id)
        .select(ApprovalRow::as_select())
        .first(conn)
        .optional()?)
}

/// The approval under a row lock, with whether it is past its expiry by
/// the database's clock.
///
/// # Errors
/// [`DbError`].
pub fn lock(conn: &mut PgConnection, id: i64) -> Result<Option<(ApprovalRow, bool)>, DbError> {
    Ok(ap::table
        .find(id)
        .select((
            ApprovalRow::as_select(),
            ap::expires_at.le(diesel::dsl::now),
        ))
        .for_update()
        .first(conn)
        .optional()?)
}

/// Writes a decision (approved, rejected or expired) of a pending approval.
///
/// # Errors
/// [`DbError`].
pub fn decide(
    conn: &mut PgConnection,
    id: i64,
    status: ApprovalStatus,
    by: Option<&str>,
    comment: Option<&str>,
) -> Result<ApprovalRow, DbError> {
    Ok(diesel::update(ap::table.find(id))
        .set((
            ap::status.eq(status),
            ap::decided_by.eq(by),
            ap::decided_at.eq(diesel::dsl::now),
            ap::comment.eq(comment),
        ))
        .returning(ApprovalRow::as_returning())
        .get_result(conn)?)
}

/// Pending approvals past their expiry (database clock), locked, skipping
/// those another sweeper holds.
///
/// # Errors
/// [`DbError`].
pub fn take_expired(conn: &mut PgConnection, limit: i64) -> Result<Vec<ApprovalRow>, DbError> {
    Ok(ap::table
        .filter(ap::status.eq(ApprovalStatus::Pending))
        .filter(ap::expires_at.le(diesel::dsl::now))
        .order(ap::expires_at)
        .limit(limit)
        .select(ApprovalRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)?)
}

/// A page of approvals, newest first, optionally of one status, after the
/// cursor's id.
///
/// # Errors
/// [`DbError`].
pub fn list(
    conn: &mut PgConnection,
    status: Option<ApprovalStatus>,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<ApprovalRow>, DbError> {
    let mut q = ap::table
        .select(ApprovalRow::as_select())
        .order(ap::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(s) = status {
        q = q.filter(ap::status.eq(s));
    }
    if let Some(id) = before_id {
        q = q.filter(ap::id.lt(id));
    }
    Ok(q.load(conn)?)
}
