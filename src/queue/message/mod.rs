//! The command messages of CONTRACT.md (`action`, `batch`, `sync`): one
//! serde struct per message, the only way a command is built and the only
//! way it is read.
//!
//! - Reading: [`parse`] (or `parse_action`, `parse_batch`, `parse_sync`)
//!   checks the size, deserialises the wire struct and validates it into
//!   the domain request (`TryFrom<ActionMessage> for ActionRequest`, …).
//!   Anything that does not parse is dead-lettered with the message of the
//!   error returned here.
//! - Building: `ActionMessage::from(&ActionRequest)` (and the same for the
//!   other kinds), serialised with serde and published with
//!   `Publisher::publish_command`, which takes the routing key from
//!   [`Command`].
//!
//! A new kind of command is a new submodule: its wire struct, the two
//! conversions and an `impl Command`. The JSON Schemas under `schemas/` stay
//! the contract; `tests/it/message_schemas.rs` proves the structs match them.
//!
//! This module imports nothing but `crate::domain` (the fuzz crate compiles
//! it on its own).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::domain::{AdminState, BackendName};

mod action;
mod batch;
mod rollout;
mod sync;

pub use action::{ActionMessage, TargetMessage, parse_action};
pub use batch::{BatchMessage, BatchTargetsMessage, parse_batch, parse_batch_targets_json};
pub use rollout::{RolloutHookRun, RolloutTick, parse_hook_run, parse_tick};
pub use sync::{SCHEDULER_ACTOR, SyncMessage, parse_sync};

/// Largest message body accepted.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest `batch` body accepted: it may name [`MAX_BATCH_IDS`] ids.
pub const MAX_BATCH_MESSAGE_BYTES: usize = MAX_MESSAGE_BYTES * 4;
/// Most servers or applications one batch may name.
pub const MAX_BATCH_IDS: usize = 10_000;
/// Longest `actor` accepted.
pub const MAX_ACTOR_LEN: usize = 256;
/// Longest `reason` accepted.
pub const MAX_REASON_LEN: usize = 2048;

/// Why a message was refused. The text goes into the dead letter's `x-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidMessage(pub String);

fn invalid(msg: impl Into<String>) -> InvalidMessage {
    InvalidMessage(msg.into())
}

/// One kind of command message: its wire struct implements this.
pub trait Command: Serialize + DeserializeOwned {
    /// Its routing key on the commands exchange (CONTRACT.md), which also
    /// binds its queue and names it in errors ("not a valid action command").
    const ROUTING_KEY: &'static str;
    /// Largest body accepted.
    const MAX_BYTES: usize;
    /// The validated request the message is read into.
    type Request: TryFrom<Self, Error = InvalidMessage>;

    /// The `transaction_id` as sent, which is also the message's `message_id`.
    fn transaction_id(&self) -> &str;
}

/// Reads the body of a command: size, JSON shape, then every field.
///
/// # Errors
/// [`InvalidMessage`] naming the first thing that is wrong.
pub fn parse<C: Command>(body: &[u8]) -> Result<C::Request, InvalidMessage> {
    if body.len() > C::MAX_BYTES {
        return Err(invalid(format!(
            "message is {} bytes; the limit is {}",
            body.len(),
            C::MAX_BYTES
        )));
    }
    let message: C = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not a valid {} command: {e}", C::ROUTING_KEY)))?;
    C::Request::try_from(message)
}

/// RFC 3339 in UTC with a `Z`, as every command carries its times.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

pub(crate) fn parse_transaction_id(raw: &str) -> Result<Uuid, InvalidMessage> {
    Uuid::parse_str(raw).map_err(|_| invalid(format!("transaction_id {raw:?} is not a UUID")))
}

pub(crate) fn parse_action_kind(raw: &str) -> Result<AdminState, InvalidMessage> {
    raw.parse()
        .map_err(|_| invalid(format!("action {raw:?} is not one of ready, drain, maint")))
}

pub(crate) fn parse_actor(raw: &str) -> Result<String, InvalidMessage> {
    if raw.trim().is_empty() {
        return Err(invalid("actor must not be empty"));
    }
    if raw.len() > MAX_ACTOR_LEN || raw.chars().any(char::is_control) {
        return Err(invalid(format!(
            "actor must be at most {MAX_ACTOR_LEN} bytes without control characters"
        )));
    }
    Ok(raw.to_owned())
}

/// Free text, but without NUL: PostgreSQL cannot store it in a `text`
/// column, so a NUL that got past here failed every insert and the message
/// went round until the broker's delivery limit instead of being refused.
pub(crate) fn parse_reason(raw: Option<String>) -> Result<Option<String>, InvalidMessage> {
    match raw {
        Some(r) if r.len() > MAX_REASON_LEN => Err(invalid(format!(
            "reason is {} bytes; the limit is {MAX_REASON_LEN}",
            r.len()
        ))),
        Some(r) if r.contains('\0') => Err(invalid("reason must not contain NUL characters")),
        other => Ok(other),
    }
}

/// An optional `requested_at`.
fn parse_requested_at(raw: Option<&str>) -> Result<Option<DateTime<Utc>>, InvalidMessage> {
    raw.map(|raw| {
        DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| invalid(format!("requested_at {raw:?} is not an RFC 3339 time")))
    })
    .transpose()
}

/// Instance names follow the same rule as HAProxy identifiers.
pub(crate) fn parse_instance_name(raw: &str) -> Result<String, InvalidMessage> {
    BackendName::parse(raw).map(|n| n.to_string()).map_err(|e| {
        invalid(format!(
            "target.instance: {}",
            e.to_string().replace("backend", "instance")
        ))
    })
}

/// A command's optional `callback_url` (issue 13), read from the same body
/// the command was parsed from.
#[derive(serde::Deserialize)]
struct CallbackField {
    #[serde(default)]
    callback_url: Option<String>,
}

/// The `callback_url` of a command body, checked like an API request's:
/// `http`/`https`, a host, and (without `allow_private_targets`) no
/// literal non-public address. A host name's addresses are checked when
/// each delivery connects.
///
/// # Errors
/// [`InvalidMessage`] naming what is wrong.
pub fn parse_callback_url(
    body: &[u8],
    allow_private_targets: bool,
) -> Result<Option<crate::domain::webhook::TargetUrl>, InvalidMessage> {
    let field: CallbackField =
        serde_json::from_slice(body).map_err(|e| invalid(format!("callback_url: {e}")))?;
    field
        .callback_url
        .map(|raw| {
            crate::domain::webhook::TargetUrl::parse(&raw, allow_private_targets)
                .map_err(|e| invalid(format!("callback_url: {e}")))
        })
        .transpose()
}
