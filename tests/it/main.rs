//! Integration tests: one binary, real haproxy processes, real services.

mod harness;

mod action_groups;
mod action_path;
mod alert_rules;
mod api;
mod approvals;
mod batch_guard;
mod bounded_waits;
mod clock;
mod cluster;
mod connections;
mod dead_letters;
mod debian_package;
mod fagent_api;
mod fagent_bulk;
mod fagent_states;
mod fagent_traffic;
mod faults;
mod harness_selftest;
mod hostile;
mod load;
mod message_schemas;
mod metrics;
mod page;
mod reload;
mod reload_notice;
mod rollout;
mod rollout_cli;
mod rollout_hook;
mod secrets;
mod security;
mod sweeper;
mod sync;
mod webhooks;
