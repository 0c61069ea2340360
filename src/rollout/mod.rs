//! Rollouts (issue 12): the parts that touch the worker's host. The rules
//! are in `domain::rollout_hook`; here are the filesystem checks of a
//! playbook and the runner of an update hook, the request and the service
//! that records and steers rollouts, and the `rollout` command line.

pub mod cli;
pub mod follow;
pub mod hook;
pub mod report;
pub mod request;
pub mod service;
pub mod tail;

pub use hook::{HookRun, check_playbook, run, validate_update};
