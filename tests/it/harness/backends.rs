//! Small HTTP servers that answer every request with their own name.

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use tokio::task::JoinHandle;

pub struct HttpBackend {
    pub name: String,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

/// A set of named backends, each on its own loopback port.
pub struct HttpBackends {
    pub servers: Vec<HttpBackend>,
}

impl HttpBackends {
    /// Starts one server per name, each answering 200 with its name.
    pub async fn start(names: &[&str]) -> Self {
        let mut servers = Vec::new();
        for name in names {
            servers.push(start_one(name, StatusCode::OK).await);
        }
        Self { servers }
    }

    /// Starts one server that answers `status` to everything.
    pub async fn start_with_status(name: &str, status: StatusCode) -> HttpBackend {
        start_one(name, status).await
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.addr)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }
}

async fn start_one(name: &str, status: StatusCode) -> HttpBackend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let body = name.to_owned();
    let app = Router::new().fallback(move || {
        let body = body.clone();
        async move { (status, body) }
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    HttpBackend {
        name: name.to_owned(),
        addr,
        task,
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
