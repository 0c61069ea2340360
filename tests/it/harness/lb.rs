//! One load balancer as most tests want it: small HTTP backends, a real
//! HAProxy in front of them, a socket spy between HAProxy and its agent;
//! and the fixture most action and sync tests start from: that load
//! balancer registered as instance `lb-1` of a test system.

use super::{HttpBackends, SocketSpy, TestAgent, TestHaproxy, TestSystem};

pub struct SpiedLb {
    pub backends: HttpBackends,
    pub haproxy: TestHaproxy,
    pub spy: SocketSpy,
    pub agent: TestAgent,
}

/// A load balancer registered as instance `lb-1` of its own test system.
pub struct Registered {
    pub sys: TestSystem,
    pub lb: SpiedLb,
    /// The instance's id.
    pub id: i64,
}

/// Backend sections of servers `s1..sN` (and `spare`, when given) at `addr`.
pub fn numbered_servers<'a>(
    layout: impl IntoIterator<Item = (&'a str, usize)>,
    spare: Option<&str>,
    addr: std::net::SocketAddr,
) -> String {
    let mut config = String::new();
    for (backend, n) in layout {
        config.push_str(&format!("backend {backend}\n"));
        for i in 1..=n {
            config.push_str(&format!("  server s{i} {addr}\n"));
        }
        if let Some(spare) = spare {
            config.push_str(&format!("  server {spare} {addr}\n"));
        }
    }
    config
}

impl SpiedLb {
    /// Starts HAProxy with `config` (backend sections that may use the
    /// addresses of `backends`), the spy and the agent.
    pub async fn start(backends: HttpBackends, config: &str) -> SpiedLb {
        let haproxy = TestHaproxy::start(config).await;
        let spy = SocketSpy::start(&haproxy.socket).await;
        let agent = TestAgent::start(&spy.socket).await;
        SpiedLb {
            backends,
            haproxy,
            spy,
            agent,
        }
    }

    /// The backends of `layout` (name, number of servers), each of servers
    /// `s1..sN`, all in front of one small HTTP server `app` (no checks).
    pub async fn numbered(layout: &[(&str, usize)]) -> SpiedLb {
        let backends = HttpBackends::start(&["app"]).await;
        let config = numbered_servers(layout.iter().copied(), None, backends.addr("app"));
        Self::start(backends, &config).await
    }

    /// Backend `web` of `web1_shop_1` and `web2_shop_1`, each in front of
    /// its own HTTP server.
    pub async fn web_of_two() -> SpiedLb {
        let backends = HttpBackends::start(&["a", "b"]).await;
        let config = format!(
            "backend web\n  server web1_shop_1 {}\n  server web2_shop_1 {}\n",
            backends.addr("a"),
            backends.addr("b")
        );
        Self::start(backends, &config).await
    }

    /// HAProxy's `srv_admin_state` bits of `web/{server}` (8: FDRAIN, 1:
    /// FMAINT, 0: ready).
    pub async fn web_bits(&self, server: &str) -> u32 {
        self.haproxy
            .admin_bits()
            .await
            .into_iter()
            .find(|(name, _)| name == &format!("web/{server}"))
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("web/{server} missing"))
    }

    /// Registers this load balancer as `lb-1` of a new test system.
    pub async fn registered(self) -> Registered {
        self.registered_in(TestSystem::start().await).await
    }

    /// Registers this load balancer as `lb-1` of `sys` (which a test may
    /// have seeded first).
    pub async fn registered_in(self, sys: TestSystem) -> Registered {
        let id = sys.register_agent("lb-1", &self.agent).await;
        Registered { sys, lb: self, id }
    }

    /// Registers this load balancer as `lb-1` of a new test system and
    /// starts an in-process worker.
    pub async fn with_worker(self) -> Registered {
        let mut registered = self.registered().await;
        registered.sys.start_worker(registered.sys.config());
        registered
    }
}
