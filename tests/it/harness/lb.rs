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
}
