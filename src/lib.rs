//! haproxy-control: controls the servers behind a fleet of HAProxy load
//! balancers. See DESIGN.md for the architecture.

pub mod admin;
pub mod api;
pub mod app;
pub mod approvals;
pub mod cli;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod domain;
pub mod fagent;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod rollout;
pub mod scheduler;
pub mod sweeper;
pub mod telemetry;
pub mod webhooks;
pub mod worker;
