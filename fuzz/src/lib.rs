//! The service's parsers, compiled from its own source files (`#[path]`),
//! and the properties every fuzz target checks on what they accept.
//!
//! `src/domain/` imports nothing outside itself and `src/queue/message/`
//! only `crate::domain`, so both build here exactly as in the service.

#[path = "../../src/domain/mod.rs"]
pub mod domain;

pub mod queue;

use queue::message::{MAX_ACTOR_LEN, MAX_REASON_LEN};

/// HAProxy's identifier characters, 1 to 128 bytes (DESIGN.md rule 9),
/// written out again independently of `domain::names`.
pub fn is_identifier(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// What an accepted `actor` must be.
pub fn assert_actor(actor: &str) {
    assert!(!actor.trim().is_empty(), "empty actor accepted");
    assert!(
        actor.len() <= MAX_ACTOR_LEN,
        "actor of {} bytes",
        actor.len()
    );
    assert!(
        !actor.chars().any(char::is_control),
        "control character in actor {actor:?}"
    );
}

/// What an accepted `reason` must be: short, and storable in PostgreSQL.
pub fn assert_reason(reason: Option<&str>) {
    if let Some(r) = reason {
        assert!(r.len() <= MAX_REASON_LEN, "reason of {} bytes", r.len());
        assert!(!r.contains('\0'), "NUL in reason {r:?}");
    }
}
