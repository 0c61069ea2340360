//! `GET /api/haproxy/events/stream`: the `haproxy.events` exchange as
//! Server-Sent Events (docs/page.md).
//!
//! One relay per API process binds its own exclusive, auto-delete queue
//! (`<prefix>haproxy.events.api-stream.<random>`) to the events exchange and
//! fans every event out to the connected clients through a tokio broadcast
//! channel. A client that falls behind by more than the channel holds gets
//! a `lagged` event (it should reload its view) and goes on from the newest
//! event; it never slows the others down.
//!
//! What a role sees: operators and above every event as published;
//! viewers neither `approval.*` events (what is held, by whom, with what
//! reason) nor the free-text fields `output_tail` (an update hook's output)
//! and `error_detail`: viewer tokens are the ones left open on wall screens.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::{Stream, StreamExt as _};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::ApiState;
use super::auth::{Auth, Role, Viewer};
use super::error::ErrorBody;
use crate::queue::Topology;

/// Events a client may fall behind by before it is told it lagged.
pub const STREAM_BUFFER: usize = 1024;
/// How often an idle stream sends a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event off the exchange, parsed once for every client.
#[derive(Debug)]
pub struct StreamEvent {
    /// Its `type` (the routing key).
    pub kind: String,
    pub body: Value,
}

/// The fan-out point of the process's relay.
#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Arc<StreamEvent>>,
    /// Turns true when the API stops: every stream ends then (graceful
    /// shutdown waits for open responses).
    closing: watch::Receiver<bool>,
}

impl EventHub {
    pub fn new(capacity: usize, closing: watch::Receiver<bool>) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self { tx, closing }
    }

    /// Hands one raw event body to every client; bodies that are not a
    /// JSON object with a `type` are logged and dropped.
    pub fn publish_raw(&self, routing_key: &str, data: &[u8]) {
        let body: Value = match serde_json::from_slice(data) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                tracing::warn!(%routing_key, "event stream: a body that is not a JSON object, skipped");
                return;
            }
        };
        let kind = body
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(routing_key)
            .to_owned();
        // No receiver is not an error: nobody is watching.
        let _ = self.tx.send(Arc::new(StreamEvent { kind, body }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StreamEvent>> {
        self.tx.subscribe()
    }
}

/// What `role` may see of `event`: `None` when nothing.
pub fn visible(role: Role, event: &StreamEvent) -> Option<Value> {
    if role >= Role::Operator {
        return Some(event.body.clone());
    }
    if event.kind.starts_with("approval.") {
        return None;
    }
    let mut body = event.body.clone();
    if let Value::Object(map) = &mut body {
        map.remove("output_tail");
        map.remove("error_detail");
    }
    Some(body)
}

/// Binds the process's queue and relays events to `hub` until `shutdown`;
/// after a broker or channel failure it binds again (1 s, then up to 10 s
/// apart). Events published while it is not bound are not seen: clients
/// are sent a `lagged` event after each re-bind.
pub fn spawn_relay(
    conn: Arc<lapin::Connection>,
    topology: Arc<Topology>,
    hub: EventHub,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let queue = format!(
        "{}.api-stream.{}",
        topology.events_exchange,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        let mut first = true;
        loop {
            let relayed = tokio::select! {
                r = relay(&conn, &topology, &queue, &hub, !first) => r,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            first = false;
            match relayed {
                Ok(()) => wait = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %e, %queue, "event stream relay: binding failed; retrying");
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    })
}

/// One binding: declares, binds and consumes until the consumer ends.
async fn relay(
    conn: &lapin::Connection,
    topology: &Topology,
    queue: &str,
    hub: &EventHub,
    rebound: bool,
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    let mut consumer = topology.tap_events(&ch, queue, "#", "api-stream").await?;
    tracing::info!(%queue, "event stream relay bound");
    if rebound {
        let _ = hub.tx.send(Arc::new(StreamEvent {
            kind: LAGGED.into(),
            body: serde_json::json!({"missed": null, "why": "the API re-bound its events queue"}),
        }));
    }
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        hub.publish_raw(delivery.routing_key.as_str(), &delivery.data);
    }
    Ok(())
}

/// The event name told to a client that missed events.
const LAGGED: &str = "lagged";

/// What a client is sent.
fn frame(name: &str, data: &Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

/// The events a caller with `role` may see, as SSE frames: first `ready`,
/// then one frame per event (its `type` as the event name), `lagged` when
/// the caller fell behind.
fn frames(
    role: Role,
    actor: String,
    rx: broadcast::Receiver<Arc<StreamEvent>>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let ready = frame(
        "ready",
        &serde_json::json!({"actor": actor, "role": role.as_str()}),
    );
    let events = futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.kind == LAGGED => return Some((frame(LAGGED, &e.body), rx)),
                Ok(e) => {
                    if let Some(body) = visible(role, &e) {
                        return Some((frame(&e.kind, &body), rx));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Some((frame(LAGGED, &serde_json::json!({"missed": n})), rx));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    futures::stream::once(async move { ready })
        .chain(events)
        .map(Ok)
}

/// Live events of `haproxy.events` as Server-Sent Events.
///
/// The first event is `ready` (`{"actor", "role"}`): from then on every
/// event published is sent, named by its `type`, its data the event's JSON
/// (CONTRACT.md). `lagged` (`{"missed"}`) means events were missed: reload
/// the view. An idle stream sends a comment every 15 s. Viewers are not
/// sent `approval.*` events, `output_tail` nor `error_detail`.
#[utoipa::path(
    get, path = "/api/haproxy/events/stream", tag = "events",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An endless `text/event-stream`: `ready`, then one event per published event, `lagged` when some were missed", content_type = "text/event-stream", body = String),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    )
)]
pub async fn events_stream(
    State(st): State<ApiState>,
    Auth(caller, _): Auth<Viewer>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    tracing::debug!(actor = %caller.actor, "event stream opened");
    let rx = st.events.subscribe();
    let mut closing = st.events.closing.clone();
    let frames = frames(caller.role, caller.actor, rx).take_until(async move {
        let _ = closing.wait_for(|stop| *stop).await;
    });
    Sse::new(frames).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str) -> StreamEvent {
        StreamEvent {
            kind: kind.into(),
            body: serde_json::json!({"type": kind, "output_tail": "secret=1", "error_detail": "x", "server": {"id": 1}}),
        }
    }

    #[test]
    fn viewers_miss_approvals_and_free_text_operators_see_all() {
        assert!(visible(Role::Viewer, &event("approval.requested")).is_none());
        let v = visible(Role::Viewer, &event("rollout.server_failed")).expect("visible");
        assert!(v.get("output_tail").is_none() && v.get("error_detail").is_none());
        assert_eq!(v["server"]["id"], 1);
        for role in [Role::Operator, Role::Approver, Role::Admin] {
            let o = visible(role, &event("approval.requested")).expect("visible");
            assert_eq!(o["output_tail"], "secret=1");
        }
    }

    #[tokio::test]
    async fn a_slow_client_is_told_it_lagged_and_goes_on() {
        let (_stop, closing) = watch::channel(false);
        let hub = EventHub::new(2, closing);
        let rx = hub.subscribe();
        for n in 0..5 {
            hub.publish_raw(
                "server.state_changed",
                format!(r#"{{"type":"server.state_changed","n":{n}}}"#).as_bytes(),
            );
        }
        hub.publish_raw("x", b"not json");
        let mut frames = Box::pin(frames(Role::Viewer, "user:v".into(), rx));
        let mut names = Vec::new();
        for _ in 0..4 {
            let f = frames.next().await.expect("frame").expect("ok");
            names.push(format!("{f:?}"));
        }
        assert!(names[0].contains("ready"), "{names:?}");
        assert!(
            names[1].contains("lagged") && names[1].contains("missed"),
            "{names:?}"
        );
        assert!(
            names[2].contains("\\\"n\\\":3") || names[2].contains("\"n\":3"),
            "{names:?}"
        );
    }
}
