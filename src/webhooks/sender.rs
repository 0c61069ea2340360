//! Sending one delivery attempt: a POST of the event's body with the
//! Standard Webhooks headers, no redirects followed, no proxy, a timeout,
//! and a DNS resolver that refuses names resolving to addresses the policy
//! forbids — the connection goes to an address that was checked, so DNS
//! rebinding between a check and the connection cannot bypass it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::signing::{SigningKey, signature_header};
use crate::domain::webhook::target::{self, TargetUrl};
use crate::domain::webhook::{AttemptOutcome, retry_after};

/// The HTTP client of deliveries.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private_targets: bool,
}

/// Resolves with the system resolver and refuses the name when any
/// address it resolves to is not allowed.
struct CheckedResolver {
    allow_private_targets: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_private_targets;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for a in &addrs {
                target::check(&host, a.ip(), allow)?;
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// One attempt's result.
#[derive(Debug, Clone)]
pub struct Sent {
    pub outcome: AttemptOutcome,
    pub duration: Duration,
    /// Why no answer came, or what the answer was when it is a failure.
    pub error: Option<String>,
}

/// The headers of one attempt.
pub struct Signed<'a> {
    pub webhook_id: &'a str,
    pub keys: &'a [SigningKey],
    pub body: &'a [u8],
}

impl Sender {
    /// A client with `timeout` per attempt.
    ///
    /// # Errors
    /// When the TLS backend cannot be set up.
    pub fn new(timeout: Duration, allow_private_targets: bool) -> Result<Self, String> {
        let client = crate::http::client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!(
                "haproxy-control-webhooks/",
                env!("CARGO_PKG_VERSION")
            ))
            .dns_resolver(CheckedResolver {
                allow_private_targets,
            })
            .build()
            .map_err(|e| format!("webhook HTTP client: {e}"))?;
        Ok(Self {
            client,
            allow_private_targets,
        })
    }

    /// Sends one attempt to `url`, signed now.
    pub async fn send(&self, url: &str, signed: &Signed<'_>) -> Sent {
        let started = Instant::now();
        let target = match TargetUrl::parse(url, self.allow_private_targets) {
            Ok(t) => t,
            Err(e) => return failed(started, e.to_string()),
        };
        let timestamp = Utc::now().timestamp();
        let request = self
            .client
            .post(target.url().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", signed.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature_header(signed.keys, signed.webhook_id, timestamp, signed.body),
            )
            .body(signed.body.to_vec());
        match request.send().await {
            Err(e) => failed(started, error_chain(&e)),
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, Utc::now()));
                let error = (!(200..300).contains(&status)).then(|| {
                    let location = response
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .map(|l| format!(" (redirect to {l} not followed)"))
                        .unwrap_or_default();
                    format!("answered HTTP {status}{location}")
                });
                Sent {
                    outcome: AttemptOutcome {
                        status: Some(status),
                        retry_after,
                    },
                    duration: started.elapsed(),
                    error,
                }
            }
        }
    }
}

fn failed(started: Instant, error: String) -> Sent {
    Sent {
        outcome: AttemptOutcome {
            status: None,
            retry_after: None,
        },
        duration: started.elapsed(),
        error: Some(error),
    }
}

/// An error with its causes, `a: b: c`, at most 500 characters.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.chars().take(500).collect()
}

/// Keeps the sender's resolver type private but testable.
pub fn resolver_for_tests(allow_private_targets: bool) -> Arc<dyn Resolve> {
    Arc::new(CheckedResolver {
        allow_private_targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_allowed() {
        let name: Name = "localhost".parse().expect("name");
        let refused = resolver_for_tests(false).resolve(name).await;
        let e = refused.err().expect("refused").to_string();
        assert!(e.contains("loopback"), "{e}");
        let name: Name = "localhost".parse().expect("name");
        assert!(resolver_for_tests(true).resolve(name).await.is_ok());
    }

    #[tokio::test]
    async fn a_literal_private_address_is_refused_before_any_connection() {
        let sender = Sender::new(Duration::from_secs(1), false).expect("client");
        let sent = sender
            .send(
                "http://127.0.0.1:9/hook",
                &Signed {
                    webhook_id: "x",
                    keys: &[],
                    body: b"{}",
                },
            )
            .await;
        assert_eq!(sent.outcome.status, None);
        assert!(
            sent.error
                .as_deref()
                .is_some_and(|e| e.contains("loopback")),
            "{sent:?}"
        );
    }
}
