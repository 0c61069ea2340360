//! The HTTP API served in-process on a loopback port, with a client that
//! checks every answer is JSON and never a 5xx, and the tokens of its roles.

use std::sync::Mutex;
use std::time::Duration;

use haproxy_control::config::{ApiRole, ApiTokenConfig, Config};
use reqwest::Method;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lb::SpiedLb;
use super::{TestSystem, eventually};

const WAIT: Duration = Duration::from_secs(20);

pub const VIEWER: &str = "viewer-token-0001";
pub const OPERATOR: &str = "operator-token-0002";
pub const ADMIN: &str = "admin-token-0003";
/// Role approver, actor `user:petra`.
pub const APPROVER: &str = "approver-token-0004";
/// The agent token of instances these tests insert by SQL.
pub const FAGENT_SECRET: &str = "fagent-secret-do-not-show";

/// A running API and an HTTP client for it. Every GET answer is kept, so a
/// test can check that no agent token ever appears in one.
pub struct Api {
    pub url: String,
    pub http: reqwest::Client,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    gets: Mutex<Vec<String>>,
    _dir: tempfile::TempDir,
}

impl Api {
    pub async fn start(sys: &TestSystem) -> Api {
        Self::start_with(sys.config()).await
    }

    /// [`Api::start_configured`] with a pool of 4.
    pub async fn start_with(mut config: Config) -> Api {
        config.api.pool_size = 4;
        Self::start_configured(config).await
    }

    /// Operator and admin tokens inline in the config, the viewer's in a
    /// tokens file (`role actor token` lines); the rest of `config` as given.
    pub async fn start_configured(mut config: Config) -> Api {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("api.tokens");
        std::fs::write(
            &file,
            format!("# role actor token\nviewer user:vera {VIEWER}\n"),
        )
        .expect("tokens file");
        config.api.tokens_file = Some(file);
        config.api.tokens = vec![
            ApiTokenConfig {
                token: Some(OPERATOR.into()),
                token_file: None,
                actor: "user:olga".into(),
                role: ApiRole::Operator,
            },
            ApiTokenConfig {
                token: Some(ADMIN.into()),
                token_file: None,
                actor: "user:adam".into(),
                role: ApiRole::Admin,
            },
            ApiTokenConfig {
                token: Some(APPROVER.into()),
                token_file: None,
                actor: "user:petra".into(),
                role: ApiRole::Approver,
            },
        ];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind api");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, rx) = watch::channel(false);
        let task =
            tokio::spawn(
                async move { haproxy_control::api::serve_on(listener, &config, rx).await },
            );
        let http = haproxy_control::http::client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("client");
        let api = Api {
            url,
            http,
            stop,
            task,
            gets: Mutex::default(),
            _dir: dir,
        };
        eventually(WAIT, "the API to answer /healthz", || async {
            let r = api.http.get(format!("{}/healthz", api.url)).send().await;
            r.ok().filter(|r| r.status() == 200).map(|_| ())
        })
        .await;
        api
    }

    /// Sends a request; asserts the answer is JSON and never a 5xx.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        self.finish(method, path, rb).await
    }

    /// Sends raw bytes (not always UTF-8) with the given content type.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: Option<&str>,
        body: impl AsRef<[u8]>,
    ) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(token)
            .body(body.as_ref().to_vec());
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        self.finish(method, path, rb).await
    }

    async fn finish(
        &self,
        method: Method,
        path: &str,
        rb: reqwest::RequestBuilder,
    ) -> (u16, Value) {
        let r = rb.send().await.expect("the API answers");
        let status = r.status().as_u16();
        let is_json = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let text = r.text().await.expect("body");
        // Only readiness may answer a 5xx (503: not ready).
        assert!(
            status < 500 || (path == "/readyz" && status == 503),
            "{method} {path}: {status} {text}"
        );
        assert!(is_json, "{method} {path}: {status} is not JSON: {text}");
        if method == Method::GET {
            self.gets.lock().expect("gets").push(text.clone());
        }
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {status} {text}: {e}"));
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.send(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.send(Method::PUT, path, Some(token), Some(body)).await
    }

    /// A GET that must answer 200.
    pub async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path, VIEWER).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Plain text (metrics).
    pub async fn text(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("the API answers");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// Polls an action until it is final.
    pub async fn wait_action(&self, transaction_id: &str) -> Value {
        eventually(
            WAIT,
            &format!("action {transaction_id} to finish"),
            || async {
                let body = self
                    .ok(&format!("/api/haproxy/actions/{transaction_id}"))
                    .await;
                let done = !matches!(body["status"].as_str(), Some("pending" | "running"));
                done.then_some(body)
            },
        )
        .await
    }

    /// No GET answer so far held `secret`.
    pub fn assert_never_shown(&self, secret: &str) {
        let gets = self.gets.lock().expect("gets");
        assert!(!gets.is_empty());
        for body in gets.iter() {
            assert!(!body.contains(secret), "a GET answer shows a token: {body}");
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

#[track_caller]
pub fn assert_error(answer: &(u16, Value), status: u16, code: &str) {
    let (s, body) = answer;
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// One instance (id 901, `lb-sql`) with backend `web` (id 9001) holding
/// seven servers `s1`..`s7` (ids 90001..90007), all ready and up, written
/// straight into the database: no HAProxy needed.
pub async fn seed_inventory(sys: &TestSystem) {
    sys.exec(&format!(
        "INSERT INTO haproxy_instances (id, name, fagent_url, fagent_token_ref) \
           VALUES (901, 'lb-sql', 'http://127.0.0.1:9', 'token:{FAGENT_SECRET}'); \
         INSERT INTO haproxy_backends (id, haproxy_id, backend_name) VALUES (9001, 901, 'web'); \
         INSERT INTO haproxy_servers (id, backend_id, server_name, address, port, admin_state, op_state) \
           SELECT 90000 + g, 9001, 's' || g, '127.0.0.1', 8000 + g, 'ready', 'up' FROM generate_series(1, 7) g;"
    ))
    .await;
}

/// The whole stack for API tests that must see what reaches HAProxy:
/// instance `lb-1` ([`SpiedLb::web_of_two`]) registered and synced, a
/// worker, and the API.
pub struct LiveApi {
    pub lb: SpiedLb,
    pub sys: TestSystem,
    pub api: Api,
    /// The instance's id and `web1_shop_1`'s.
    pub instance: i64,
    pub server: i64,
}

impl LiveApi {
    pub async fn start() -> LiveApi {
        let lb = SpiedLb::web_of_two().await;
        let mut sys = TestSystem::start().await;
        let instance = sys.register_agent("lb-1", &lb.agent).await;
        let server = sys.server_id("lb-1", "web", "web1_shop_1").await;
        sys.start_worker(sys.config());
        let api = Api::start(&sys).await;
        LiveApi {
            lb,
            sys,
            api,
            instance,
            server,
        }
    }

    /// An operator's request on `web1_shop_1` is accepted, applied once
    /// on the socket and succeeds: proof that refusals before it were about
    /// the request, not a broken setup.
    pub async fn assert_an_operator_action_succeeds(&self, body: &Value) {
        let path = format!("/api/haproxy/servers/{}/action", self.server);
        let (status, accepted) = self
            .api
            .send(Method::POST, &path, Some(OPERATOR), Some(body))
            .await;
        assert_eq!(status, 202, "{accepted}");
        let txn = accepted["transaction_id"].as_str().expect("transaction id");
        assert_eq!(self.api.wait_action(txn).await["status"], "success");
        assert_eq!(self.lb.spy.count("set server"), 1);
    }

    pub async fn stop(self) {
        self.api.stop().await;
    }
}
