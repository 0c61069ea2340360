//! The broker's addresses: one RabbitMQ node or the nodes of a cluster.
//! A connection goes to the first address that answers; when it is lost,
//! lapin's recovery reconnects through [`Brokers::connect`]'s connector,
//! which tries the addresses round-robin from the one after the node it
//! lost, so a stopped node is left for another. Topology, consumers and
//! QoS are re-declared by lapin's recovery on the new node (the quorum
//! queues are the cluster's, not the node's).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::tcp::AMQPUriTcpExt as _;
use lapin::uri::AMQPUri;

/// How long one TCP connect to one address may take before the next is
/// tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A list of broker addresses that failed validation; the message names
/// the entry without its credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidBrokers(pub String);

/// One or more nodes of one broker, all reached with the same scheme,
/// credentials, virtual host and options (those of the first).
#[derive(Debug, Clone)]
pub struct Brokers {
    uris: Vec<AMQPUri>,
}

/// `amqp://user:***@host:port/vhost` for messages: never the password.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl Brokers {
    /// Parses `urls` (what `source` calls them, for messages: `amqp.urls`,
    /// `AMQP_URLS`).
    ///
    /// # Errors
    /// [`InvalidBrokers`] for an empty list, an empty or malformed entry,
    /// or entries that differ in anything but host and port.
    pub fn parse<S: AsRef<str>>(source: &str, urls: &[S]) -> Result<Self, InvalidBrokers> {
        if urls.is_empty() {
            return Err(InvalidBrokers(format!(
                "{source} is empty: give at least one amqp:// URL"
            )));
        }
        let mut uris: Vec<AMQPUri> = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let url = url.as_ref().trim();
            let n = i + 1;
            if url.is_empty() {
                return Err(InvalidBrokers(format!("{source} entry {n} is empty")));
            }
            let uri: AMQPUri = url.parse().map_err(|e| {
                InvalidBrokers(format!(
                    "{source} entry {n} ({}) is not an AMQP URL: {e}",
                    redact(url)
                ))
            })?;
            if let Some(first) = uris.first()
                && (first.scheme != uri.scheme
                    || first.authority.userinfo != uri.authority.userinfo
                    || first.vhost != uri.vhost)
            {
                return Err(InvalidBrokers(format!(
                    "{source} entry {n} ({}) has another scheme, user, password or virtual host \
                     than entry 1: the nodes of one cluster are reached with the same ones",
                    redact(url)
                )));
            }
            uris.push(uri);
        }
        Ok(Self { uris })
    }

    /// The addresses as `host:port`, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.uris
            .iter()
            .map(|u| format!("{}:{}", u.authority.host, u.authority.port))
            .collect()
    }

    /// Connects to the first address that answers, with lapin's automatic
    /// recovery on: after a connection loss it reconnects (with
    /// `props`'s backoff) to the next address that answers, round-robin,
    /// and restores channels, topology, QoS and consumers there.
    ///
    /// # Errors
    /// When no address answers within the backoff.
    pub async fn connect(
        &self,
        props: lapin::ConnectionProperties,
    ) -> Result<lapin::Connection, lapin::Error> {
        let runtime = lapin::runtime::default_runtime()?;
        let nodes = Arc::new(self.uris.clone());
        let next = Arc::new(AtomicUsize::new(0));
        let first = self.uris[0].clone();
        lapin::Connection::connector(
            first,
            runtime,
            async move |_uri, runtime| {
                let start = next.load(Ordering::Relaxed);
                let mut last = None;
                for k in 0..nodes.len() {
                    let i = (start + k) % nodes.len();
                    let node = &nodes[i];
                    let address = format!("{}:{}", node.authority.host, node.authority.port);
                    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, node.connect_async(&runtime));
                    match attempt.await {
                        Ok(Ok(stream)) => {
                            // The next reconnection starts after this node.
                            next.store((i + 1) % nodes.len(), Ordering::Relaxed);
                            tracing::info!(broker = %address, "connected to RabbitMQ");
                            return Ok(stream);
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(broker = %address, error = %e, "RabbitMQ node does not answer");
                            last = Some(e);
                        }
                        Err(_) => {
                            tracing::warn!(broker = %address, "RabbitMQ node does not answer within {CONNECT_TIMEOUT:?}");
                            last = Some(std::io::Error::from(std::io::ErrorKind::TimedOut));
                        }
                    }
                }
                Err(last
                    .unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
                    .into())
            },
            props,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_parses_and_keeps_its_order() {
        let b = Brokers::parse(
            "AMQP_URLS",
            &[
                "amqp://u:p@10.0.0.1:5672/%2f",
                " amqp://u:p@10.0.0.2:5673/%2f ",
            ],
        )
        .expect("valid");
        assert_eq!(b.addresses(), ["10.0.0.1:5672", "10.0.0.2:5673"]);
    }

    #[test]
    fn bad_lists_are_refused_naming_the_entry_without_its_password() {
        let empty: [&str; 0] = [];
        let e = Brokers::parse("amqp.urls", &empty).expect_err("empty");
        assert!(e.0.contains("amqp.urls is empty"), "{e}");
        let e = Brokers::parse("AMQP_URLS", &["amqp://u:p@h:1/%2f", ""]).expect_err("empty entry");
        assert_eq!(e.0, "AMQP_URLS entry 2 is empty");
        let e = Brokers::parse(
            "AMQP_URLS",
            &["amqp://u:secret@h:1/%2f", "http://u:secret@h:x/"],
        )
        .expect_err("malformed");
        assert!(
            e.0.starts_with("AMQP_URLS entry 2 (http://u:***@h:x/) is not an AMQP URL"),
            "{e}"
        );
        assert!(!e.0.contains("secret"), "{e}");
        let e = Brokers::parse(
            "amqp.urls",
            &["amqp://u:secret@h:1/%2f", "amqp://v:secret@h:2/%2f"],
        )
        .expect_err("other user");
        assert!(
            e.0.contains("entry 2 (amqp://v:***@h:2/%2f) has another"),
            "{e}"
        );
        assert!(!e.0.contains("secret"), "{e}");
    }

    #[test]
    fn redaction_keeps_the_user_and_hides_the_password() {
        assert_eq!(
            redact("amqp://guest:guest@h:1/%2f"),
            "amqp://guest:***@h:1/%2f"
        );
        assert_eq!(redact("amqp://h:1"), "amqp://h:1");
        assert_eq!(redact("not a url"), "not a url");
    }
}
