//! HTTP plumbing shared by the two servers (the API and the fagent) and
//! the agent client: the one error body, the extractors that answer a bad
//! request with it, and the TLS-ready client builder. It sits below both
//! `api/` and `fagent/`, which import it; it imports neither.

pub mod client;
pub mod error;
pub mod extract;
