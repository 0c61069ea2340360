//! The webhook dispatcher (issue 13): one more subscriber of
//! `haproxy.events`. Its consumer turns each event into one delivery row per
//! matching active endpoint (and one for the request's callback URL), in one
//! transaction, then acks; its delivery loop claims due rows by lease, sends
//! them signed, and records every attempt. Everything it must remember is in
//! PostgreSQL, so a dispatcher killed at any instant loses no pending retry
//! and several can run at once. See docs/webhooks.md.

pub mod dispatcher;
pub mod sender;
pub mod signing;

pub use dispatcher::{Dispatcher, DispatcherSettings};

/// Database connections one dispatcher uses at most: one for the consumer's
/// transaction and one for the delivery loop's claims and records (every
/// database call of the dispatcher waits for one of these).
pub const DISPATCHER_CONNECTIONS: u32 = 2;
