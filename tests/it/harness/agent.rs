//! The reference fagent, served in-process on a loopback port.

use std::time::Duration;

use haproxy_control::fagent::server::{self, AgentSettings, BearerToken, SocketTarget};
use tokio::sync::oneshot;

pub struct TestAgent {
    pub url: String,
    pub token: String,
    stop: Option<oneshot::Sender<()>>,
    pub client: reqwest::Client,
}

impl TestAgent {
    pub async fn start(socket: &std::path::Path) -> Self {
        Self::start_with(socket, None).await
    }

    /// An agent that keeps HAProxy's server-state file at `state_file`.
    pub async fn start_with_state_file(
        socket: &std::path::Path,
        state_file: &std::path::Path,
        interval: Duration,
    ) -> Self {
        let settings = server::StateFileSettings {
            path: state_file.to_owned(),
            interval,
        };
        Self::start_with(socket, Some(settings)).await
    }

    async fn start_with(
        socket: &std::path::Path,
        state_file: Option<server::StateFileSettings>,
    ) -> Self {
        let token = format!("token-{}", uuid::Uuid::new_v4());
        let settings = AgentSettings {
            socket: SocketTarget::Unix(socket.to_owned()),
            socket_timeout: Duration::from_secs(2),
            socket_concurrency: 8,
            token: BearerToken::new(&token).expect("token"),
            idempotency_capacity: 1000,
            state_file,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind agent");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(server::serve_on(listener, settings, async move {
            let _ = rx.await;
        }));
        let client = haproxy_control::http::client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Self {
            url,
            token,
            stop: Some(tx),
            client,
        }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    pub fn put_state(&self, backend: &str, server: &str, state: &str) -> reqwest::RequestBuilder {
        self.put_state_as(backend, server, state, uuid::Uuid::new_v4())
    }

    /// `PUT …/state` with a given transaction id.
    pub fn put_state_as(
        &self,
        backend: &str,
        server: &str,
        state: &str,
        transaction_id: uuid::Uuid,
    ) -> reqwest::RequestBuilder {
        self.client
            .put(format!(
                "{}/v1/backends/{backend}/servers/{server}/state",
                self.url
            ))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({
                "state": state,
                "transaction_id": transaction_id,
            }))
    }

    /// A request with `body` sent as it is, labelled JSON.
    pub fn raw_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
    }

    /// `POST /v1/state` with `body`.
    pub fn post_states(&self, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/v1/state", self.url))
            .bearer_auth(&self.token)
            .json(body)
    }

    /// Sets a state and returns the JSON answer, asserting 200.
    pub async fn set(&self, backend: &str, server: &str, state: &str) -> serde_json::Value {
        let r = self
            .put_state(backend, server, state)
            .send()
            .await
            .expect("agent answers");
        let status = r.status();
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(status, 200, "set {backend}/{server} {state}: {body}");
        body
    }

    /// The JSON answer of a GET.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path)
            .send()
            .await
            .expect("agent answers")
            .json()
            .await
            .expect("json")
    }

    /// The server as the agent lists it.
    pub async fn server(&self, backend: &str, server: &str) -> serde_json::Value {
        let body = self.get_json("/v1/backends").await;
        body["backends"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["name"] == backend))
            .and_then(|b| b["servers"].as_array())
            .and_then(|ss| ss.iter().find(|s| s["name"] == server))
            .cloned()
            .unwrap_or_else(|| panic!("{backend}/{server} not listed: {body}"))
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
