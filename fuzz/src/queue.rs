//! `crate::queue::message` as in the service, so its paths hold here too.

#[path = "../../src/queue/message/mod.rs"]
pub mod message;
