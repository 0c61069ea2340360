//! One load balancer as most tests want it: small HTTP backends, a real
//! HAProxy in front of them, a socket spy between HAProxy and its agent.

use super::{HttpBackends, SocketSpy, TestAgent, TestHaproxy};

pub struct SpiedLb {
    pub backends: HttpBackends,
    pub haproxy: TestHaproxy,
    pub spy: SocketSpy,
    pub agent: TestAgent,
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
}
