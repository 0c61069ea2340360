//! Issue 11, point 5: the agent serves HTTPS (`--tls-cert`, `--tls-key`)
//! and the worker verifies it against `--agent-ca-file`, so the bearer
//! token never crosses the network in clear. Certificates are made here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haproxy_control::config::Config;
use haproxy_control::fagent::server::{
    self, AgentSettings, BearerToken, SocketTarget, TlsAcceptor, TlsListener,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::harness::TestSystem;
use crate::harness::lb::SpiedLb;

const WAIT: Duration = Duration::from_secs(30);

/// A CA of its own; `issue` makes a certificate for 127.0.0.1 signed by it.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// Writes `ca.pem` into `dir`; returns its path.
    fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.issuer.pem()).expect("write CA");
        path
    }

    /// Writes a leaf certificate for 127.0.0.1 and its key into `dir`;
    /// returns (cert, key).
    fn issue(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let (cert_path, key_path) = (dir.join("agent.pem"), dir.join("agent.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }
}

/// The reference agent over HTTPS, counting every HTTP request that reached
/// it (and the bearer token it carried).
struct TlsAgent {
    url: String,
    token: String,
    acceptor: TlsAcceptor,
    requests: Arc<Mutex<Vec<String>>>,
    _stop: oneshot::Sender<()>,
}

impl TlsAgent {
    async fn start(socket: &Path, cert: &Path, key: &Path) -> TlsAgent {
        let token = format!("token-{}", Uuid::new_v4());
        let settings = AgentSettings {
            socket: SocketTarget::Unix(socket.to_owned()),
            socket_timeout: Duration::from_secs(2),
            socket_concurrency: 8,
            token: BearerToken::new(&token).expect("token"),
            idempotency_capacity: 1000,
            state_file: None,
        };
        let acceptor = TlsAcceptor::from_pem_files(cert, key).expect("agent TLS");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind agent");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = requests.clone();
        let app = server::router(settings).layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let seen = seen.clone();
                async move {
                    let auth = request
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    seen.lock().expect("requests").push(auth);
                    next.run(request).await
                }
            },
        ));
        let (stop, rx) = oneshot::channel::<()>();
        let tls = TlsListener::new(listener, acceptor.clone()).expect("TLS listener");
        tokio::spawn(async move {
            axum::serve(tls, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
        });
        TlsAgent {
            url: format!("https://{addr}"),
            token,
            acceptor,
            requests,
            _stop: stop,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

/// Registers the agent as `lb-1` from the CLI path (loads its servers
/// over HTTPS with `config`'s CA); returns the answer.
async fn register(config: &Config, agent: &TlsAgent) -> String {
    let args = haproxy_control::cli::InstanceAddArgs {
        name: "lb-1".into(),
        fagent_url: agent.url.clone(),
        token_file: None,
        token_env: None,
        token: Some(agent.token.clone()),
        server_id: None,
        inactive: false,
        restore_after_reload: None,
    };
    haproxy_control::admin::add_instance(config, &args)
        .await
        .expect("instance registered")
}

async fn drain_web1(sys: &TestSystem) -> Uuid {
    let txn = Uuid::new_v4();
    sys.publish_action(&json!({
        "transaction_id": txn,
        "action": "drain",
        "target": {"instance": "lb-1", "backend": "web", "server": "web1_shop_1"},
        "actor": "user:alice",
        "reason": "tls test",
    }))
    .await;
    txn
}

/// HAProxy with `web1_shop_1` and `web2_shop_1`, the agent over HTTPS with
/// a certificate of its own CA, registered as `lb-1` and synced over HTTPS
/// by a client that trusts that CA (written to `dir`).
struct Setup {
    lb: SpiedLb,
    agent: TlsAgent,
    sys: TestSystem,
    dir: tempfile::TempDir,
    /// The system's config with `worker.agent_ca_file` = the agent's CA.
    config: Config,
}

impl Setup {
    async fn start() -> Setup {
        let lb = SpiedLb::web_of_two().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("agents CA");
        let (cert, key) = ca.issue(dir.path());
        let agent = TlsAgent::start(&lb.spy.socket, &cert, &key).await;
        let sys = TestSystem::start().await;
        let mut config = sys.config();
        config.worker.agent_ca_file = Some(ca.write_ca(dir.path(), "ca.pem"));
        let said = register(&config, &agent).await;
        assert!(said.contains("synced from its agent"), "{said}");
        Setup {
            lb,
            agent,
            sys,
            dir,
            config,
        }
    }
}

#[tokio::test]
async fn over_https_with_the_agents_ca_an_action_succeeds() {
    let Setup {
        lb,
        agent,
        mut sys,
        config,
        // Kept to the end: it holds the CA file the worker reads.
        dir: _dir,
    } = Setup::start().await;
    sys.start_worker(config);
    let txn = drain_web1(&sys).await;
    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!(
        row.status, "success",
        "{:?} {:?}",
        row.error, row.error_detail
    );
    assert_eq!(lb.spy.count("set server"), 1);
    let requests = agent.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    let bearer = format!("Bearer {}", agent.token);
    assert!(requests.iter().all(|r| *r == bearer), "{requests:?}");
    assert_eq!(agent.acceptor.failed_handshakes(), 0);
}

#[tokio::test]
async fn a_worker_that_does_not_trust_the_agents_certificate_sends_nothing() {
    let Setup {
        lb,
        agent,
        mut sys,
        dir,
        ..
    } = Setup::start().await;
    let before = agent.requests().len();

    // The worker trusts another CA only: the handshake fails, the token is
    // never sent, the action fails at once as agent_error (no retry).
    let mut wrong = sys.config();
    wrong.worker.agent_ca_file = Some(TestCa::new("another CA").write_ca(dir.path(), "other.pem"));
    sys.start_worker(wrong);
    let txn = drain_web1(&sys).await;
    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!(row.status, "failed");
    assert_eq!(
        row.error.as_deref(),
        Some("agent_error"),
        "{:?}",
        row.error_detail
    );
    assert!(
        row.error_detail
            .as_deref()
            .is_some_and(|d| d.contains("certificate")),
        "{:?}",
        row.error_detail
    );
    assert_eq!(
        row.attempts, 1,
        "a certificate that does not verify is not retried"
    );
    assert_eq!(
        agent.requests().len(),
        before,
        "no HTTP request reached the agent"
    );
    assert!(agent.acceptor.failed_handshakes() >= 1);
    assert_eq!(lb.spy.count("set server"), 0);

    // Without a CA file the system's roots are used: they do not know the
    // test CA either.
    let mut none = sys.config();
    none.worker.agent_ca_file = None;
    sys.stop_workers().await;
    sys.start_worker(none);
    let txn = drain_web1(&sys).await;
    let row = sys.wait_final(txn, WAIT).await;
    assert_eq!(
        row.error.as_deref(),
        Some("agent_error"),
        "{:?}",
        row.error_detail
    );
    assert_eq!(
        agent.requests().len(),
        before,
        "no HTTP request reached the agent"
    );
    assert_eq!(lb.spy.count("set server"), 0);
}
