//! Issue 11, point 5: secrets stay where they are.

mod agent_tls;
mod token_refs;
