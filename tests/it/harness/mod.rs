//! What tests start: small HTTP backends, a real `haproxy` with a generated
//! config and its own stats socket, and a fagent in front of it. Everything
//! stops when dropped.

pub mod agent;
pub mod api;
pub mod backends;
pub mod cluster;
pub mod corpus;
pub mod demo_apps;
pub mod final_check;
pub mod fleet;
pub mod haproxy;
pub mod lb;
pub mod postgres;
pub mod proxy;
pub mod rng;
pub mod rows;
pub mod spy;
pub mod system;

use std::future::Future;
use std::time::Duration;

pub use agent::TestAgent;
pub use backends::HttpBackends;
pub use cluster::RabbitCluster;
pub use final_check::{assert_db_matches_haproxy, differences_from_haproxy, final_check};
pub use haproxy::TestHaproxy;
pub use lb::SpiedLb;
pub use postgres::OwnPostgres;
pub use proxy::TcpProxy;
pub use rng::SeededRng;
pub use spy::SocketSpy;
pub use system::TestSystem;

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// Polls `check` every 50 ms until it returns Some or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP client that opens a new connection for every request, so each
/// request is a new session for HAProxy to balance.
pub fn fresh_connection_client() -> reqwest::Client {
    haproxy_control::http::client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client")
}
