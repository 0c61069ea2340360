//! The worker's side of the FAgent API. Errors are classified once here:
//! what may succeed on retry (connect errors, timeouts, 5xx) and what may not.

use std::path::Path;
use std::time::Duration;

use uuid::Uuid;

use super::wire::{
    Backends, ChangeResult, ErrorBody, ErrorDetail, Health, SetState, SetStates, StateChange,
    StateChanged, StatesChanged,
};
use crate::domain::action::FailureCode;
use crate::domain::{AdminState, BackendName, ServerName};

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No answer: refused, reset, timed out, DNS.
    #[error("agent unreachable: {0}")]
    Unreachable(String),
    /// The agent answered 5xx (its HAProxy is down, or it failed).
    #[error("agent error {status}: {message}")]
    Server { status: u16, message: String },
    /// The agent answered 4xx: retrying cannot help.
    #[error("agent refused the call ({status} {code}): {message}")]
    Client {
        status: u16,
        code: String,
        message: String,
    },
    /// The agent answered 2xx with a body that is not the contract's.
    #[error("agent answer could not be read: {0}")]
    Decode(String),
    /// The TLS handshake failed (a certificate that does not verify, or
    /// no TLS at all): nothing was sent, and retrying cannot help.
    #[error("agent TLS failed: {0}")]
    Tls(String),
}

impl CallError {
    /// Whether another attempt may succeed (DESIGN.md rule 5).
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Unreachable(_) | CallError::Server { .. })
    }

    /// Whether the call counts as a failure of the agent for its breaker:
    /// every transient error does; a 4xx is an answer from a healthy agent,
    /// and a certificate this worker does not trust may be this worker's
    /// CA setting (like a wrong token), so neither opens the shared breaker.
    pub fn counts_for_breaker(&self) -> bool {
        self.is_transient() || matches!(self, CallError::Decode(_))
    }

    /// The `result` label of the agent-call metrics.
    pub fn result_label(&self) -> &'static str {
        match self {
            CallError::Unreachable(_) => "unreachable",
            CallError::Server { .. } => "server_error",
            CallError::Client { .. } => "client_error",
            CallError::Decode(_) => "decode",
            CallError::Tls(_) => "tls",
        }
    }

    /// The `error` of `action.failed`.
    pub fn failure_code(&self) -> FailureCode {
        match self {
            CallError::Unreachable(_) => FailureCode::AgentUnreachable,
            CallError::Server { .. } | CallError::Decode(_) | CallError::Tls(_) => {
                FailureCode::AgentError
            }
            CallError::Client { status: 404, .. } => FailureCode::NotFound,
            CallError::Client { status: 400, .. } => FailureCode::Invalid,
            CallError::Client { .. } => FailureCode::AgentError,
        }
    }
}

/// One HTTP client for every agent (connection pooling across calls).
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: reqwest::Client,
}

/// Where one agent is and how to authenticate.
#[derive(Debug, Clone)]
pub struct AgentEndpoint {
    pub base_url: String,
    pub token: String,
}

impl AgentClient {
    /// Agents' HTTPS certificates are verified against the CA certificates
    /// in `ca_file` (PEM) only, or against the system's roots without one.
    ///
    /// # Errors
    /// When the CA file cannot be read or the TLS backend cannot be set up.
    pub fn new(timeout: Duration, ca_file: Option<&Path>) -> Result<Self, String> {
        let mut builder = crate::http::client::builder();
        if let Some(path) = ca_file {
            builder = builder.tls_certs_only(crate::http::client::ca_certificates(path)?);
        }
        let http = builder
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the agent HTTP client: {e}"))?;
        Ok(Self { http })
    }

    fn url(endpoint: &AgentEndpoint, path: &str) -> String {
        format!("{}{path}", endpoint.base_url.trim_end_matches('/'))
    }

    /// `GET /v1/health`.
    ///
    /// # Errors
    /// [`CallError`], classified.
    pub async fn health(&self, endpoint: &AgentEndpoint) -> Result<Health, CallError> {
        let request = self
            .http
            .get(Self::url(endpoint, "/v1/health"))
            .bearer_auth(&endpoint.token);
        call("health", request).await
    }

    /// `GET /v1/backends`.
    ///
    /// # Errors
    /// [`CallError`], classified.
    pub async fn backends(&self, endpoint: &AgentEndpoint) -> Result<Backends, CallError> {
        let request = self
            .http
            .get(Self::url(endpoint, "/v1/backends"))
            .bearer_auth(&endpoint.token);
        call("backends", request).await
    }

    /// `PUT /v1/backends/{backend}/servers/{server}/state`. The names are
    /// parsed types, so they are safe in the path as they are.
    ///
    /// # Errors
    /// [`CallError`], classified.
    pub async fn set_state(
        &self,
        endpoint: &AgentEndpoint,
        backend: &BackendName,
        server: &ServerName,
        state: AdminState,
        transaction_id: Uuid,
    ) -> Result<StateChanged, CallError> {
        let request = self
            .http
            .put(Self::url(
                endpoint,
                &format!("/v1/backends/{backend}/servers/{server}/state"),
            ))
            .bearer_auth(&endpoint.token)
            .json(&SetState {
                state,
                transaction_id,
            });
        call("set_state", request).await
    }
}

impl AgentClient {
    /// `POST /v1/state`: several changes in one call. Outer `Err`: the
    /// call as a whole failed (classified like every call: unreachable,
    /// 5xx, 4xx, decode — e.g. an older agent answers 404 `not_found` for
    /// the path). Inner: one result per change, in the order given, each
    /// classified as the single call's would be (a 404 item →
    /// [`CallError::Client`] with status 404, a 503 item →
    /// [`CallError::Server`]).
    ///
    /// # Errors
    /// [`CallError`], classified; [`CallError::Decode`] when the results do
    /// not answer the changes one to one (count, or transaction id at each
    /// position).
    pub async fn set_states(
        &self,
        endpoint: &AgentEndpoint,
        changes: &[StateChange],
    ) -> Result<Vec<Result<StateChanged, CallError>>, CallError> {
        let request = self
            .http
            .post(Self::url(endpoint, "/v1/state"))
            .bearer_auth(&endpoint.token)
            .json(&SetStates {
                changes: changes.to_vec(),
            });
        call_then("set_states", request, |answer: StatesChanged| {
            results_of(changes, answer)
        })
        .await
    }

    /// `POST /v1/backends/{backend}/servers/{server}/shutdown-sessions`.
    ///
    /// # Errors
    /// [`CallError`], classified.
    pub async fn shutdown_sessions(
        &self,
        endpoint: &AgentEndpoint,
        backend: &BackendName,
        server: &ServerName,
    ) -> Result<crate::domain::snapshot::ServerSnapshot, CallError> {
        let request = self
            .http
            .post(Self::url(
                endpoint,
                &format!("/v1/backends/{backend}/servers/{server}/shutdown-sessions"),
            ))
            .bearer_auth(&endpoint.token);
        call("shutdown_sessions", request).await
    }
}

/// [`call_once`], counted and timed under `operation` in the process's
/// metrics (`haproxy_control_agent_calls_total`,
/// `haproxy_control_agent_call_duration_seconds`).
async fn call<T: serde::de::DeserializeOwned>(
    operation: &str,
    request: reqwest::RequestBuilder,
) -> Result<T, CallError> {
    call_then(operation, request, Ok).await
}

/// [`call`], with `then` reading the decoded answer inside the count (a
/// bulk answer that does not match its changes counts as `decode`).
async fn call_then<T: serde::de::DeserializeOwned, U>(
    operation: &str,
    request: reqwest::RequestBuilder,
    then: impl FnOnce(T) -> Result<U, CallError>,
) -> Result<U, CallError> {
    let started = std::time::Instant::now();
    let result = call_once(request).await.and_then(then);
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.result_label(),
    };
    crate::metrics::global().agent_call(operation, outcome, started.elapsed());
    result
}

async fn call_once<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
) -> Result<T, CallError> {
    let response = request.send().await.map_err(|e| {
        if crate::http::client::is_tls_failure(&e) {
            CallError::Tls(error_chain(&e))
        } else {
            CallError::Unreachable(error_chain(&e))
        }
    })?;
    let status = response.status();
    if status.is_success() {
        return response
            .json::<T>()
            .await
            .map_err(|e| CallError::Decode(error_chain(&e)));
    }
    let text = response.text().await.unwrap_or_default();
    let detail = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => body.error,
        Err(_) => ErrorDetail {
            code: String::new(),
            message: text.chars().take(500).collect(),
        },
    };
    Err(refusal(status.as_u16(), detail))
}

/// A failure status (4xx or 5xx) and its error detail, classified: the
/// same for a whole answer and for one result of a bulk answer.
fn refusal(status: u16, ErrorDetail { code, message }: ErrorDetail) -> CallError {
    if status >= 500 {
        CallError::Server {
            status,
            message: if code.is_empty() {
                message
            } else {
                format!("{code}: {message}")
            },
        }
    } else {
        CallError::Client {
            status,
            code,
            message,
        }
    }
}

/// The results of a bulk answer, one per change in order.
///
/// # Errors
/// [`CallError::Decode`] when they do not answer the changes one to one.
fn results_of(
    changes: &[StateChange],
    answer: StatesChanged,
) -> Result<Vec<Result<StateChanged, CallError>>, CallError> {
    if answer.results.len() != changes.len() {
        return Err(CallError::Decode(format!(
            "{} results for {} changes",
            answer.results.len(),
            changes.len()
        )));
    }
    if let Some((position, (change, result))) = changes
        .iter()
        .zip(&answer.results)
        .enumerate()
        .find(|(_, (change, result))| change.transaction_id != result.transaction_id)
    {
        return Err(CallError::Decode(format!(
            "result {position} is for transaction {}, not {}",
            result.transaction_id, change.transaction_id
        )));
    }
    Ok(answer.results.into_iter().map(item_result).collect())
}

/// One result of a bulk answer, classified as the single call's answer.
fn item_result(result: ChangeResult) -> Result<StateChanged, CallError> {
    match result {
        ChangeResult {
            status: 200,
            changed: Some(changed),
            ..
        } => Ok(changed),
        ChangeResult {
            status: status @ 400..=599,
            error,
            ..
        } => Err(refusal(
            status,
            error.unwrap_or_else(|| ErrorDetail {
                code: String::new(),
                message: "the agent gave no error detail".into(),
            }),
        )),
        ChangeResult { status, .. } => Err(CallError::Decode(format!(
            "a result with status {status} and no answer"
        ))),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_retry_rule() {
        let unreachable = CallError::Unreachable("refused".into());
        let server = CallError::Server {
            status: 503,
            message: "down".into(),
        };
        let not_found = CallError::Client {
            status: 404,
            code: "no_such_server".into(),
            message: String::new(),
        };
        let bad = CallError::Client {
            status: 400,
            code: "invalid_name".into(),
            message: String::new(),
        };
        assert!(unreachable.is_transient() && server.is_transient());
        assert!(!not_found.is_transient() && !bad.is_transient());
        assert!(!not_found.counts_for_breaker());
        assert_eq!(unreachable.failure_code(), FailureCode::AgentUnreachable);
        assert_eq!(server.failure_code(), FailureCode::AgentError);
        assert_eq!(not_found.failure_code(), FailureCode::NotFound);
        assert_eq!(bad.failure_code(), FailureCode::Invalid);
        let tls = CallError::Tls("invalid peer certificate: UnknownIssuer".into());
        assert!(!tls.is_transient() && !tls.counts_for_breaker());
        assert_eq!(tls.failure_code(), FailureCode::AgentError);
    }

    fn change(server: &str) -> StateChange {
        StateChange {
            backend: "web".into(),
            server: server.into(),
            state: AdminState::Drain,
            transaction_id: Uuid::new_v4(),
        }
    }

    fn changed(change: &StateChange) -> StateChanged {
        StateChanged::example(change.transaction_id, &change.server)
    }

    fn failed(change: &StateChange, status: u16, code: &str) -> ChangeResult {
        ChangeResult {
            transaction_id: change.transaction_id,
            status,
            changed: None,
            error: Some(ErrorDetail {
                code: code.into(),
                message: format!("{code} for {}", change.server),
            }),
        }
    }

    fn ok(change: &StateChange) -> ChangeResult {
        ChangeResult {
            transaction_id: change.transaction_id,
            status: 200,
            changed: Some(changed(change)),
            error: None,
        }
    }

    #[test]
    fn each_bulk_result_is_classified_as_its_single_call_would_be() {
        let changes: Vec<StateChange> = ["a", "b", "c", "d", "e"].map(change).into();
        let answer = StatesChanged {
            results: vec![
                ok(&changes[0]),
                failed(&changes[1], 404, "no_such_server"),
                failed(&changes[2], 503, "haproxy_unreachable"),
                failed(&changes[3], 409, "transaction_conflict"),
                ChangeResult {
                    changed: None,
                    ..ok(&changes[4])
                },
            ],
        };
        let results = results_of(&changes, answer).expect("one to one");
        assert_eq!(results[0].as_ref().ok(), Some(&changed(&changes[0])));
        assert!(matches!(
            &results[1],
            Err(CallError::Client { status: 404, code, .. }) if code == "no_such_server"
        ));
        assert!(matches!(
            &results[2],
            Err(CallError::Server { status: 503, message })
                if message.starts_with("haproxy_unreachable: ")
        ));
        assert!(matches!(
            &results[3],
            Err(CallError::Client { status: 409, .. })
        ));
        assert!(matches!(&results[4], Err(CallError::Decode(_))));
        let not_found = results[1].as_ref().err().map(CallError::failure_code);
        assert_eq!(not_found, Some(FailureCode::NotFound));
        assert!(results[2].as_ref().is_err_and(CallError::is_transient));
    }

    #[test]
    fn a_bulk_answer_that_does_not_match_its_changes_is_a_decode_error() {
        let changes: Vec<StateChange> = ["a", "b"].map(change).into();
        let short = StatesChanged {
            results: vec![ok(&changes[0])],
        };
        assert!(matches!(
            results_of(&changes, short),
            Err(CallError::Decode(m)) if m == "1 results for 2 changes"
        ));
        let swapped = StatesChanged {
            results: vec![ok(&changes[1]), ok(&changes[0])],
        };
        assert!(matches!(
            results_of(&changes, swapped),
            Err(CallError::Decode(m)) if m.starts_with("result 0 is for transaction")
        ));
        let none = StatesChanged { results: vec![] };
        assert!(matches!(
            results_of(&changes, none),
            Err(CallError::Decode(_))
        ));
    }

    #[test]
    fn a_whole_answer_and_a_bulk_item_share_one_classification() {
        let c = change("a");
        for (status, code) in [
            (404, "no_such_server"),
            (503, "haproxy_unreachable"),
            (400, ""),
        ] {
            let item = failed(&c, status, code);
            let whole = refusal(status, item.error.clone().expect("detail"));
            let item = item_result(item).expect_err("a failure");
            assert_eq!(format!("{item:?}"), format!("{whole:?}"));
        }
    }
}
