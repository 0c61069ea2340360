//! One HAProxy with many backends, each with servers `s1..sN` and a
//! `spare`, behind a socket spy and an agent: the load balancer the fault
//! and load tests drive.

use super::HttpBackends;
use super::lb::{SpiedLb, numbered_servers};

/// The spare server of every backend. No test touches it, so the guard of
/// rule 10 (never the last ready server) never refuses an action on `s*`.
pub const SPARE: &str = "spare";

/// Backend `k` (from 1) is named `bk`.
pub fn backend_name(k: usize) -> String {
    format!("b{k}")
}

impl SpiedLb {
    /// `backends` backends `b1..`, each with `per_backend` servers `s1..`
    /// and the spare, all pointing at one small HTTP server (no checks).
    pub async fn fleet(backends: usize, per_backend: usize) -> Self {
        let names: Vec<String> = (1..=backends).map(backend_name).collect();
        Self::with_spares(names.iter().map(|n| (n.as_str(), per_backend))).await
    }

    /// The backends of `layout` (name, number of servers), each of servers
    /// `s1..sN` and the spare, all pointing at one small HTTP server `app`.
    pub async fn with_spares<'a>(layout: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        let app = HttpBackends::start(&["app"]).await;
        let config = numbered_servers(layout, Some(SPARE), app.addr("app"));
        Self::start(app, &config).await
    }

    /// How many servers (spares apart) HAProxy shows with exactly these
    /// `srv_admin_state` bits (0 ready, 8 drain, 1 maint).
    pub async fn servers_with_bits(&self, bits: u32) -> usize {
        self.haproxy
            .admin_bits()
            .await
            .into_iter()
            .filter(|(name, b)| !name.ends_with(&format!("/{SPARE}")) && *b == bits)
            .count()
    }

    /// Whether every spare is still ready in HAProxy.
    pub async fn spares_ready(&self) -> bool {
        self.haproxy
            .admin_bits()
            .await
            .into_iter()
            .filter(|(name, _)| name.ends_with(&format!("/{SPARE}")))
            .all(|(_, b)| b == 0)
    }
}
