//! FAgent: the agent next to each HAProxy. `server` is the reference agent
//! (HTTP in front of the runtime API); `wire` holds the bodies both sides
//! speak (CONTRACT.md, "FAgent HTTP API").

pub mod client;
pub mod server;
pub mod token_ref;
pub mod wire;
