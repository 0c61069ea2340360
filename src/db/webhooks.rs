//! `haproxy_webhook_*`: endpoints, callback URLs, the events deliveries
//! need, deliveries and their attempts.
//!
//! A delivery is claimed by a lease: [`claim_due`] moves `next_attempt_at`
//! to the end of the lease and writes the claimer's token, in one statement
//! with `FOR UPDATE SKIP LOCKED`, so several dispatchers never take the
//! same row and a dispatcher killed mid-attempt leaves a row that becomes
//! due again when its lease ends. [`record_attempt`] writes the outcome
//! only while the token is still the claimer's. Raw SQL for the claim (a
//! CTE with `SKIP LOCKED`) and for times computed from the database's clock.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};
use uuid::Uuid;

use super::DbError;
use super::schema::{
    haproxy_webhook_attempts as at, haproxy_webhook_callbacks as cb,
    haproxy_webhook_deliveries as d, haproxy_webhook_endpoints as e, haproxy_webhook_events as ev,
};
use crate::domain::webhook::{CallbackKind, DeliveryStatus};

/// An endpoint as stored (its secrets included: never answered as is).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = e)]
pub struct EndpointRow {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub active: bool,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub disabled_notified: bool,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = e)]
pub struct NewEndpoint {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub active: bool,
    pub secret: String,
    pub created_by: String,
}

/// What a PATCH changes (None: unchanged).
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<Option<String>>,
    pub active: Option<bool>,
    /// Who asked (recorded as the reason when they disable it).
    pub actor: String,
}

pub fn create_endpoint(conn: &mut PgConnection, new: &NewEndpoint) -> Result<EndpointRow, DbError> {
    Ok(diesel::insert_into(e::table)
        .values(new)
        .returning(EndpointRow::as_returning())
        .get_result(conn)?)
}

pub fn endpoint(conn: &mut PgConnection, id: i64) -> Result<Option<EndpointRow>, DbError> {
    Ok(e::table
        .find(id)
        .select(EndpointRow::as_select())
        .first(conn)
        .optional()?)
}

/// Endpoints with an id above `after`, oldest first.
pub fn list_endpoints(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<EndpointRow>, DbError> {
    Ok(e::table
        .filter(e::id.gt(after))
        .order(e::id)
        .limit(limit)
        .select(EndpointRow::as_select())
        .load(conn)?)
}

/// Applies a PATCH. Enabling clears the disabled state and the failure
/// streak; disabling records who did it (no `webhook.disabled`: that event
/// reports what the dispatcher decided).
pub fn update_endpoint(
    conn: &mut PgConnection,
    id: i64,
    patch: &EndpointPatch,
) -> Result<Option<EndpointRow>, DbError> {
    conn.transaction(|c| {
        let Some(before) = e::table
            .find(id)
            .for_update()
            .select(EndpointRow::as_select())
            .first(c)
            .optional()?
        else {
            return Ok(None);
        };
        let now = super::database_now(c)?;
        let mut row = before.clone();
        if let Some(url) = &patch.url {
            row.url.clone_from(url);
        }
        if let Some(events) = &patch.events {
            row.events.clone_from(events);
        }
        if let Some(description) = &patch.description {
            row.description.clone_from(description);
        }
        match patch.active {
            Some(true) if !before.active => {
                row.active = true;
                row.disabled_at = None;
                row.disabled_reason = None;
                row.disabled_notified = false;
                row.failing_since = None;
            }
            // Paused by an admin: no `disabled_at` (that marks the
            // dispatcher's disabling, which publishes `webhook.disabled`).
            Some(false) if before.active => {
                row.active = false;
                row.disabled_at = None;
                row.disabled_reason = Some(format!("paused by {}", patch.actor));
                row.disabled_notified = false;
            }
            _ => {}
        }
        Ok(Some(
            diesel::update(e::table.find(id))
                .set((
                    e::url.eq(&row.url),
                    e::events.eq(&row.events),
                    e::description.eq(&row.description),
                    e::active.eq(row.active),
                    e::disabled_at.eq(row.disabled_at),
                    e::disabled_reason.eq(&row.disabled_reason),
                    e::disabled_notified.eq(row.disabled_notified),
                    e::failing_since.eq(row.failing_since),
                    e::updated_at.eq(now),
                ))
                .returning(EndpointRow::as_returning())
                .get_result(c)?,
        ))
    })
}

/// Deletes an endpoint with its deliveries; false when there was none.
pub fn delete_endpoint(conn: &mut PgConnection, id: i64) -> Result<bool, DbError> {
    Ok(diesel::delete(e::table.find(id)).execute(conn)? > 0)
}

/// Makes `secret` the endpoint's secret; the current one keeps signing
/// for `grace_secs` (database clock).
pub fn rotate_secret(
    conn: &mut PgConnection,
    id: i64,
    secret: &str,
    grace_secs: f64,
) -> Result<Option<EndpointRow>, DbError> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let rotated: Option<Id> = diesel::sql_query(
        "UPDATE haproxy_webhook_endpoints SET previous_secret = secret, secret = $2, \
             previous_secret_until = now() + make_interval(secs => $3), updated_at = now() \
         WHERE id = $1 RETURNING id",
    )
    .bind::<BigInt, _>(id)
    .bind::<Text, _>(secret)
    .bind::<Double, _>(grace_secs)
    .get_result(conn)
    .optional()?;
    match rotated {
        Some(Id { id }) => endpoint(conn, id),
        None => Ok(None),
    }
}

/// The active endpoints' ids and patterns (a fleet has a handful).
pub fn active_patterns(conn: &mut PgConnection) -> Result<Vec<(i64, Vec<String>)>, DbError> {
    Ok(e::table
        .filter(e::active.eq(true))
        .order(e::id)
        .select((e::id, e::events))
        .load(conn)?)
}

/// Records a request's callback URL; the first one given for a
/// transaction id stays.
pub fn record_callback(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    kind: CallbackKind,
    url: &str,
) -> Result<(), DbError> {
    diesel::insert_into(cb::table)
        .values((
            cb::transaction_id.eq(transaction_id),
            cb::kind.eq(kind.as_str()),
            cb::url.eq(url),
        ))
        .on_conflict(cb::transaction_id)
        .do_nothing()
        .execute(conn)?;
    Ok(())
}

/// The callback URLs recorded for these transaction ids, with their
/// request kinds (one statement for a group of events).
pub fn callbacks(
    conn: &mut PgConnection,
    transaction_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, (CallbackKind, String)>, DbError> {
    let rows: Vec<(Uuid, String, String)> = cb::table
        .filter(cb::transaction_id.eq_any(transaction_ids))
        .select((cb::transaction_id, cb::kind, cb::url))
        .load(conn)?;
    rows.into_iter()
        .map(|(id, kind, url)| {
            let kind = kind.parse::<CallbackKind>().map_err(|m| {
                DbError::Query(diesel::result::Error::DeserializationError(
                    format!("haproxy_webhook_callbacks.kind: {m}").into(),
                ))
            })?;
            Ok((id, (kind, url)))
        })
        .collect()
}

/// One event to deliver, and where.
pub struct Enqueue<'a> {
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub body: &'a str,
    pub endpoints: &'a [i64],
    pub callback_url: Option<&'a str>,
}

/// Stores the event and one delivery per endpoint and callback, in one
/// transaction; an event seen before adds nothing. Returns the deliveries
/// created now.
pub fn enqueue(conn: &mut PgConnection, q: &Enqueue<'_>) -> Result<usize, DbError> {
    if q.endpoints.is_empty() && q.callback_url.is_none() {
        return Ok(0);
    }
    conn.transaction(|c| {
        diesel::insert_into(ev::table)
            .values((
                ev::event_id.eq(q.event_id),
                ev::event_type.eq(q.event_type),
                ev::body.eq(q.body),
            ))
            .on_conflict(ev::event_id)
            .do_nothing()
            .execute(c)?;
        let mut created = 0;
        for endpoint in q.endpoints {
            created += diesel::sql_query(
                "INSERT INTO haproxy_webhook_deliveries (event_id, endpoint_id, event_type) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind::<diesel::sql_types::Uuid, _>(q.event_id)
            .bind::<BigInt, _>(endpoint)
            .bind::<Text, _>(q.event_type)
            .execute(c)?;
        }
        if let Some(url) = q.callback_url {
            created += diesel::sql_query(
                "INSERT INTO haproxy_webhook_deliveries (event_id, callback_url, event_type) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind::<diesel::sql_types::Uuid, _>(q.event_id)
            .bind::<Text, _>(url)
            .bind::<Text, _>(q.event_type)
            .execute(c)?;
        }
        Ok(created)
    })
}

/// A claimed delivery with what sending it needs.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub event_id: Uuid,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i32,
    pub schedule_from: i32,
    pub endpoint_id: Option<i64>,
    pub url: String,
    /// The endpoint's secret, and its previous one while it still signs;
    /// empty for a callback (the service-wide callback secret signs it).
    pub secrets: Vec<String>,
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    event_id: Uuid,
    #[diesel(sql_type = Text)]
    body: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    schedule_from: i32,
    #[diesel(sql_type = Nullable<BigInt>)]
    endpoint_id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    callback_url: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    endpoint_url: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    secret: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    previous_secret: Option<String>,
}

/// Due rows of active endpoints and callbacks, oldest due first, leased
/// (database clock) for `lease_secs`.
const CLAIM: &str = "\
WITH due AS (
    SELECT dl.id FROM haproxy_webhook_deliveries dl
    LEFT JOIN haproxy_webhook_endpoints en ON en.id = dl.endpoint_id
    WHERE dl.status = 'pending' AND dl.next_attempt_at <= now()
      AND (dl.endpoint_id IS NULL OR en.active)
    ORDER BY dl.next_attempt_at
    LIMIT $2
    FOR UPDATE OF dl SKIP LOCKED
), claimed AS (
    UPDATE haproxy_webhook_deliveries dl
    SET next_attempt_at = now() + make_interval(secs => $3), claimed_by = $1, updated_at = now()
    FROM due WHERE dl.id = due.id
    RETURNING dl.id, dl.event_id, dl.attempts, dl.schedule_from, dl.endpoint_id, dl.callback_url
)
SELECT c.id, c.event_id, ev.body, c.attempts, c.schedule_from, c.endpoint_id, c.callback_url,
       en.url AS endpoint_url, en.secret,
       CASE WHEN en.previous_secret_until > now() THEN en.previous_secret END AS previous_secret
FROM claimed c
JOIN haproxy_webhook_events ev ON ev.event_id = c.event_id
LEFT JOIN haproxy_webhook_endpoints en ON en.id = c.endpoint_id
ORDER BY c.id";

/// Claims up to `limit` due deliveries for `token`.
pub fn claim_due(
    conn: &mut PgConnection,
    token: Uuid,
    limit: i64,
    lease_secs: f64,
) -> Result<Vec<Due>, DbError> {
    let rows: Vec<Claimed> = diesel::sql_query(CLAIM)
        .bind::<diesel::sql_types::Uuid, _>(token)
        .bind::<BigInt, _>(limit)
        .bind::<Double, _>(lease_secs)
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let url = r.callback_url.or(r.endpoint_url)?;
            Some(Due {
                id: r.id,
                event_id: r.event_id,
                body: r.body,
                attempts: r.attempts,
                schedule_from: r.schedule_from,
                endpoint_id: r.endpoint_id,
                url,
                secrets: r.secret.into_iter().chain(r.previous_secret).collect(),
            })
        })
        .collect())
}

/// One attempt as it went.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub duration_ms: i32,
    pub error: Option<String>,
}

/// What follows the attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Delivered,
    /// Retry after this many seconds.
    RetryIn(f64),
    /// Give up on this delivery.
    Failed,
    /// 410 Gone: give up and disable the endpoint.
    Gone,
}

/// What [`record_attempt`] did to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The lease was lost (another dispatcher took the row): nothing written.
    LeaseLost,
    Written,
    /// The endpoint was disabled now (410, or failing too long).
    EndpointDisabled(i64),
}

/// Writes an attempt and the delivery's new state, and the endpoint's
/// failure streak (disabling it after 410 or when it has failed for
/// `disable_after_secs`), in one transaction, if `token` still holds the
/// lease.
pub fn record_attempt(
    conn: &mut PgConnection,
    due: &Due,
    token: Uuid,
    attempt: &AttemptRecord,
    next: Next,
    disable_after_secs: f64,
) -> Result<Recorded, DbError> {
    #[derive(QueryableByName)]
    struct Written {
        #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>)]
        next_attempt_at: Option<DateTime<Utc>>,
    }
    let (status, retry_secs) = match next {
        Next::Delivered => (DeliveryStatus::Delivered, None),
        Next::RetryIn(s) => (DeliveryStatus::Pending, Some(s)),
        Next::Failed | Next::Gone => (DeliveryStatus::Failed, None),
    };
    conn.transaction(|c| {
        let written: Option<Written> = diesel::sql_query(
            "UPDATE haproxy_webhook_deliveries SET attempts = $3, status = $4, \
                 next_attempt_at = CASE WHEN $5::float8 IS NULL THEN now() \
                                        ELSE now() + make_interval(secs => $5) END, \
                 claimed_by = NULL, last_status_code = $6, last_error = $7, last_duration_ms = $8, \
                 delivered_at = CASE WHEN $4 = 'delivered' THEN now() END, updated_at = now() \
             WHERE id = $1 AND claimed_by = $2 \
             RETURNING CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at",
        )
        .bind::<BigInt, _>(due.id)
        .bind::<diesel::sql_types::Uuid, _>(token)
        .bind::<diesel::sql_types::Integer, _>(attempt.attempt)
        .bind::<Text, _>(status.as_str())
        .bind::<Nullable<Double>, _>(retry_secs)
        .bind::<Nullable<diesel::sql_types::Integer>, _>(attempt.status_code)
        .bind::<Nullable<Text>, _>(attempt.error.as_deref())
        .bind::<diesel::sql_types::Integer, _>(attempt.duration_ms)
        .get_result(c)
        .optional()?;
        let Some(written) = written else {
            return Ok(Recorded::LeaseLost);
        };
        diesel::insert_into(at::table)
            .values((
                at::delivery_id.eq(due.id),
                at::attempt.eq(attempt.attempt),
                at::attempted_at.eq(attempt.attempted_at),
                at::status_code.eq(attempt.status_code),
                at::duration_ms.eq(attempt.duration_ms),
                at::error.eq(attempt.error.as_deref()),
                at::next_attempt_at.eq(written.next_attempt_at),
            ))
            .on_conflict_do_nothing()
            .execute(c)?;
        let Some(endpoint) = due.endpoint_id else {
            return Ok(Recorded::Written);
        };
        endpoint_streak(c, endpoint, next, disable_after_secs)
    })
}

/// The endpoint's failure streak after an attempt; disables it after a
/// 410 or when it has failed every attempt for `disable_after_secs`.
fn endpoint_streak(
    c: &mut PgConnection,
    endpoint: i64,
    next: Next,
    disable_after_secs: f64,
) -> Result<Recorded, DbError> {
    if next == Next::Delivered {
        diesel::update(
            e::table
                .find(endpoint)
                .filter(e::failing_since.is_not_null()),
        )
        .set(e::failing_since.eq(None::<DateTime<Utc>>))
        .execute(c)?;
        return Ok(Recorded::Written);
    }
    let reason = if next == Next::Gone {
        "the endpoint answered 410 Gone".to_owned()
    } else {
        format!(
            "every attempt failed for {} hours",
            (disable_after_secs / 3600.0).round()
        )
    };
    #[derive(QueryableByName)]
    struct Disabled {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        disabled: bool,
    }
    // One statement: a data-modifying CTE and its outer UPDATE may not both
    // change the same row (PostgreSQL applies only one of them).
    let d: Option<Disabled> = diesel::sql_query(
        "WITH cur AS (SELECT id, ($4 OR COALESCE(failing_since, now()) \
                 <= now() - make_interval(secs => $2)) AS stop \
             FROM haproxy_webhook_endpoints WHERE id = $1 AND active FOR UPDATE) \
         UPDATE haproxy_webhook_endpoints en SET failing_since = COALESCE(en.failing_since, now()), \
             active = NOT cur.stop, \
             disabled_at = CASE WHEN cur.stop THEN now() ELSE en.disabled_at END, \
             disabled_reason = CASE WHEN cur.stop THEN $3 ELSE en.disabled_reason END, \
             disabled_notified = CASE WHEN cur.stop THEN false ELSE en.disabled_notified END, \
             updated_at = now() \
         FROM cur WHERE en.id = cur.id \
         RETURNING cur.stop AS disabled",
    )
    .bind::<BigInt, _>(endpoint)
    .bind::<Double, _>(disable_after_secs)
    .bind::<Text, _>(&reason)
    .bind::<diesel::sql_types::Bool, _>(next == Next::Gone)
    .get_result(c)
    .optional()?;
    Ok(match d {
        Some(Disabled { disabled: true }) => Recorded::EndpointDisabled(endpoint),
        _ => Recorded::Written,
    })
}

/// Endpoints the dispatcher disabled whose `webhook.disabled` is not
/// published yet.
pub fn to_notify(conn: &mut PgConnection) -> Result<Vec<EndpointRow>, DbError> {
    Ok(e::table
        .filter(e::disabled_at.is_not_null())
        .filter(e::disabled_notified.eq(false))
        .order(e::id)
        .limit(100)
        .select(EndpointRow::as_select())
        .load(conn)?)
}

/// `webhook.disabled` for the endpoint's `disabled_at` is published.
pub fn mark_notified(
    conn: &mut PgConnection,
    id: i64,
    disabled_at: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::update(e::table.find(id).filter(e::disabled_at.eq(disabled_at)))
        .set(e::disabled_notified.eq(true))
        .execute(conn)?;
    Ok(())
}

/// A delivery as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = d)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: Uuid,
    pub endpoint_id: Option<i64>,
    pub callback_url: Option<String>,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub last_duration_ms: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// An attempt as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = at)]
pub struct AttemptRow {
    pub delivery_id: i64,
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub duration_ms: i32,
    pub error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// An endpoint's deliveries with an id below `before` (0: from the
/// newest), newest first, each with its attempts in order.
pub fn deliveries(
    conn: &mut PgConnection,
    endpoint_id: i64,
    before: i64,
    limit: i64,
) -> Result<Vec<(DeliveryRow, Vec<AttemptRow>)>, DbError> {
    let mut q = d::table
        .filter(d::endpoint_id.eq(endpoint_id))
        .order(d::id.desc())
        .limit(limit)
        .select(DeliveryRow::as_select())
        .into_boxed();
    if before > 0 {
        q = q.filter(d::id.lt(before));
    }
    let rows: Vec<DeliveryRow> = q.load(conn)?;
    with_attempts(conn, rows)
}

/// The deliveries of a callback URL's transaction (tests and operators
/// look them up by event).
pub fn deliveries_of_event(
    conn: &mut PgConnection,
    event_id: Uuid,
) -> Result<Vec<(DeliveryRow, Vec<AttemptRow>)>, DbError> {
    let rows: Vec<DeliveryRow> = d::table
        .filter(d::event_id.eq(event_id))
        .order(d::id)
        .select(DeliveryRow::as_select())
        .load(conn)?;
    with_attempts(conn, rows)
}

fn with_attempts(
    conn: &mut PgConnection,
    rows: Vec<DeliveryRow>,
) -> Result<Vec<(DeliveryRow, Vec<AttemptRow>)>, DbError> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let attempts: Vec<AttemptRow> = at::table
        .filter(at::delivery_id.eq_any(&ids))
        .order((at::delivery_id, at::attempt))
        .select(AttemptRow::as_select())
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mine = attempts
                .iter()
                .filter(|a| a.delivery_id == r.id)
                .cloned()
                .collect();
            (r, mine)
        })
        .collect())
}

/// Makes a delivery due now with a fresh retry schedule (its attempt
/// numbers go on). None when there is no such delivery.
pub fn redeliver(conn: &mut PgConnection, id: i64) -> Result<Option<DeliveryRow>, DbError> {
    let now = super::database_now(conn)?;
    Ok(diesel::update(d::table.find(id))
        .set((
            d::status.eq(DeliveryStatus::Pending.as_str()),
            d::next_attempt_at.eq(now),
            d::schedule_from.eq(d::attempts),
            d::claimed_by.eq(None::<Uuid>),
            d::delivered_at.eq(None::<DateTime<Utc>>),
            d::updated_at.eq(now),
        ))
        .returning(DeliveryRow::as_returning())
        .get_result(conn)
        .optional()?)
}

/// What `haproxy_control_webhook_endpoints{state}` calls an endpoint:
/// `active`; `disabled` by the dispatcher (410, or failing too long: it has
/// a `disabled_at`); or `paused` by an admin (`active: false`, no
/// `disabled_at`). The alert on `state="disabled"` thus means failures only.
pub const ENDPOINT_STATES: [&str; 3] = ["active", "disabled", "paused"];

/// A count per label value.
pub type Counts = Vec<(String, i64)>;

/// Endpoints by state ([`ENDPOINT_STATES`]) and deliveries by status,
/// every state present (0 when none), for `/metrics`.
pub fn counts(conn: &mut PgConnection) -> Result<(Counts, Counts), DbError> {
    #[derive(QueryableByName)]
    struct ByState {
        #[diesel(sql_type = diesel::sql_types::Text)]
        state: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let by_state: Vec<ByState> = diesel::sql_query(
        "SELECT CASE WHEN active THEN 'active' \
                     WHEN disabled_at IS NOT NULL THEN 'disabled' ELSE 'paused' END AS state, \
                count(*) AS n \
         FROM haproxy_webhook_endpoints GROUP BY 1",
    )
    .load(conn)?;
    let endpoints = ENDPOINT_STATES
        .into_iter()
        .map(|name| {
            let n = by_state.iter().find(|b| b.state == name).map_or(0, |b| b.n);
            (name.to_owned(), n)
        })
        .collect();
    let by_status: Vec<(String, i64)> = d::table
        .group_by(d::status)
        .select((d::status, diesel::dsl::count_star()))
        .load(conn)?;
    let deliveries = DeliveryStatus::ALL
        .into_iter()
        .map(|s| {
            let n = by_status
                .iter()
                .find(|(st, _)| st == s.as_str())
                .map_or(0, |(_, n)| *n);
            (s.as_str().to_owned(), n)
        })
        .collect();
    Ok((endpoints, deliveries))
}

/// Deletes finished deliveries older than `retention_secs` and events no
/// delivery needs any more; returns the deliveries deleted.
pub fn prune(conn: &mut PgConnection, retention_secs: f64, batch: i64) -> Result<usize, DbError> {
    let n = diesel::sql_query(
        "DELETE FROM haproxy_webhook_deliveries WHERE id IN ( \
             SELECT id FROM haproxy_webhook_deliveries \
             WHERE status <> 'pending' AND updated_at < now() - make_interval(secs => $1) \
             LIMIT $2)",
    )
    .bind::<Double, _>(retention_secs)
    .bind::<BigInt, _>(batch)
    .execute(conn)?;
    diesel::sql_query(
        "DELETE FROM haproxy_webhook_events ev WHERE ev.event_id IN ( \
             SELECT e2.event_id FROM haproxy_webhook_events e2 \
             WHERE e2.received_at < now() - make_interval(secs => $1) \
               AND NOT EXISTS (SELECT 1 FROM haproxy_webhook_deliveries dl WHERE dl.event_id = e2.event_id) \
             LIMIT $2)",
    )
    .bind::<Double, _>(retention_secs)
    .bind::<BigInt, _>(batch)
    .execute(conn)?;
    Ok(n)
}
