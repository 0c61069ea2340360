//! Pure types and rules. Nothing in here performs I/O: every function is a
//! computation over values, so the rules are unit-tested fast.

pub mod action;
pub mod action_group;
pub mod approval;
pub mod breaker;
pub mod csv;
pub mod event;
pub mod mapping;
pub mod names;
pub mod reconcile;
pub mod reload;
pub mod rollout;
pub mod rollout_hook;
pub mod servers_state;
pub mod show_stat;
pub mod snapshot;
pub mod state;
pub mod webhook;

pub use names::{BackendName, NameError, ServerName};
pub use state::{AdminState, HistorySource, OpState, StateParseError};
