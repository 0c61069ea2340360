//! Several state changes on as few runtime-API connections as HAProxy's
//! line buffer allows. Each connection carries one `;`-joined line of at
//! most [`MAX_LINE_BYTES`] (HAProxy reads a command line into one buffer,
//! `tune.bufsize`, 16 KiB by default) and reads every backend it touches
//! once before and once after its changes:
//!
//! `show servers state <b>` per backend; `set server <b>/<s> state <x>` per
//! change; `show servers state <b>` per backend again; then `show stat`,
//! one row per change where its ids are known, else one per backend.
//!
//! A single change is a group of one, with exactly the commands the agent
//! has always sent for it.

use std::collections::{HashMap, HashSet};

use super::{Haproxy, RuntimeError, ServerReading, check_set_reply};
use crate::domain::servers_state::ServerStateRow;
use crate::domain::show_stat::{self, StatKind, StatRow};
use crate::domain::snapshot;
use crate::domain::{AdminState, BackendName, ServerName};

/// The longest `;`-joined line sent on one connection: half of HAProxy's
/// default buffer, so that a line always fits.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// One `set server … state` to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub backend: BackendName,
    pub server: ServerName,
    pub state: AdminState,
}

/// What one change did: HAProxy's admin bits before it, and the server as
/// read back after it.
pub type Outcome = Result<(u32, ServerReading), RuntimeError>;

impl Haproxy {
    /// Makes `changes`, reading each server before and after, on as few
    /// connections as [`MAX_LINE_BYTES`] allows, one after the other; a
    /// server changed twice is changed on two connections, in the order
    /// given. Answers one outcome per change, in the order given: a change
    /// HAProxy refuses ("No such server.") or a connection that fails after
    /// the first affects only the outcomes of its changes.
    ///
    /// # Errors
    /// [`RuntimeError::Unreachable`] / [`RuntimeError::Timeout`] when the
    /// first connection does not reach HAProxy: nothing was changed.
    pub async fn set_many(&self, changes: &[Change]) -> Result<Vec<Outcome>, RuntimeError> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; changes.len()];
        for (n, exchange) in plan(changes, &self.known_ids(changes)).iter().enumerate() {
            match self.exchange(changes, exchange).await {
                Ok(done) => done.into_iter().for_each(|(i, o)| outcomes[i] = Some(o)),
                Err(e) if n == 0 && e.is_unreachable() => return Err(e),
                Err(e) => exchange
                    .items
                    .iter()
                    .for_each(|i| outcomes[*i] = Some(Err(e.clone()))),
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(RuntimeError::Unreadable("no reply".into()))))
            .collect())
    }

    /// The cached (proxy id, server id) of each change's server.
    fn known_ids(&self, changes: &[Change]) -> Vec<Option<(u32, u32)>> {
        let Ok(ids) = self.ids.lock() else {
            return vec![None; changes.len()];
        };
        changes.iter().map(|c| ids.get(&key(c)).copied()).collect()
    }

    /// One connection: its commands, then each change's outcome.
    async fn exchange(
        &self,
        changes: &[Change],
        exchange: &Exchange,
    ) -> Result<Vec<(usize, Outcome)>, RuntimeError> {
        let replies = self.commands(&exchange.lines(changes)).await?;
        let read = Replies::read(exchange, changes, &replies);
        let mut done = Vec::with_capacity(exchange.items.len());
        for (k, &i) in exchange.items.iter().enumerate() {
            let change = &changes[i];
            done.push((i, self.finish(change, read.of(k, change)).await));
        }
        Ok(done)
    }

    /// The outcome of a change from its rows; the server is read again
    /// when its `show stat` row is missing (cached ids gone stale after a
    /// reload).
    async fn finish(&self, change: &Change, read: Result<Read, RuntimeError>) -> Outcome {
        let Read {
            before,
            after,
            stat,
        } = read?;
        let reading = match stat {
            Some(stat) => ServerReading {
                snapshot: snapshot::server_snapshot(&stat, Some(&after)),
                admin_bits: after.admin_bits,
            },
            None => self.server(&change.backend, &change.server).await?,
        };
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(key(change), (after.backend_id, after.server_id));
        }
        Ok((before, reading))
    }
}

impl RuntimeError {
    /// Whether HAProxy was not reached at all (or did not answer in time).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            RuntimeError::Unreachable { .. } | RuntimeError::Timeout { .. }
        )
    }
}

fn key(change: &Change) -> (String, String) {
    (change.backend.to_string(), change.server.to_string())
}

fn state_cmd(backend: &BackendName) -> String {
    format!("show servers state {backend}")
}

fn set_cmd(change: &Change) -> String {
    let Change {
        backend,
        server,
        state,
    } = change;
    format!("set server {backend}/{server} state {state}")
}

fn backend_stat_cmd(backend: &BackendName) -> String {
    format!("show stat {backend} 4 -1")
}

fn server_stat_cmd((proxy_id, server_id): (u32, u32)) -> String {
    format!("show stat {proxy_id} 4 {server_id}")
}

/// The changes sent on one connection and how they are read.
#[derive(Debug, PartialEq, Eq)]
struct Exchange {
    /// Indexes into the changes.
    items: Vec<usize>,
    /// The backends they touch, each once.
    backends: Vec<BackendName>,
    /// `show stat` by ids when every change of a backend has them, else
    /// one for the whole backend.
    stats: Vec<String>,
}

impl Exchange {
    fn new(items: Vec<usize>, changes: &[Change], ids: &[Option<(u32, u32)>]) -> Self {
        let mut backends: Vec<BackendName> = Vec::new();
        for &i in &items {
            if !backends.contains(&changes[i].backend) {
                backends.push(changes[i].backend.clone());
            }
        }
        let stats = backends
            .iter()
            .flat_map(|b| {
                let known: Option<Vec<String>> = items
                    .iter()
                    .filter(|i| changes[**i].backend == *b)
                    .map(|i| ids[*i].map(server_stat_cmd))
                    .collect();
                known.unwrap_or_else(|| vec![backend_stat_cmd(b)])
            })
            .collect();
        Self {
            items,
            backends,
            stats,
        }
    }

    fn lines(&self, changes: &[Change]) -> Vec<String> {
        let states = self.backends.iter().map(state_cmd);
        let sets = self.items.iter().map(|i| set_cmd(&changes[*i]));
        states
            .clone()
            .chain(sets)
            .chain(states)
            .chain(self.stats.iter().cloned())
            .collect()
    }
}

/// Splits the changes into connections: grouped by backend (in the order
/// given within one), a new connection when the line would grow past
/// [`MAX_LINE_BYTES`] or a server comes a second time.
fn plan(changes: &[Change], ids: &[Option<(u32, u32)>]) -> Vec<Exchange> {
    let mut order: Vec<usize> = (0..changes.len()).collect();
    order.sort_by(|a, b| changes[*a].backend.cmp(&changes[*b].backend));
    let mut line = Line::default();
    let mut exchanges = Vec::new();
    for i in order {
        if !line.takes(&changes[i], ids[i]) {
            exchanges.push(Exchange::new(line.take(), changes, ids));
            line.takes(&changes[i], ids[i]);
        }
        line.items.push(i);
    }
    if !line.items.is_empty() {
        exchanges.push(Exchange::new(line.take(), changes, ids));
    }
    exchanges
}

/// The line being filled, with an upper bound of its length (both forms
/// of `show stat` counted).
#[derive(Default)]
struct Line {
    items: Vec<usize>,
    servers: HashSet<(String, String)>,
    backends: HashSet<BackendName>,
    bytes: usize,
}

impl Line {
    /// Counts `change` in when it fits; an empty line takes any change.
    fn takes(&mut self, change: &Change, ids: Option<(u32, u32)>) -> bool {
        let separator = "; ".len();
        let mut bytes = set_cmd(change).len() + separator;
        bytes += ids.map_or(0, |ids| server_stat_cmd(ids).len() + separator);
        if !self.backends.contains(&change.backend) {
            bytes += 2 * (state_cmd(&change.backend).len() + separator);
            bytes += backend_stat_cmd(&change.backend).len() + separator;
        }
        let fits = self.bytes + bytes <= MAX_LINE_BYTES && !self.servers.contains(&key(change));
        if fits || self.items.is_empty() {
            self.bytes += bytes;
            self.servers.insert(key(change));
            self.backends.insert(change.backend.clone());
            return true;
        }
        false
    }

    fn take(&mut self) -> Vec<usize> {
        std::mem::take(self).items
    }
}

/// One backend's rows, by server name, or why there are none.
type Rows = Result<HashMap<String, ServerStateRow>, RuntimeError>;

/// The replies of one connection, parsed.
struct Replies<'a> {
    exchange: &'a Exchange,
    before: Vec<Rows>,
    sets: &'a [String],
    after: Vec<Rows>,
    stats: HashMap<(String, String), StatRow>,
}

/// One change's rows.
struct Read {
    before: u32,
    after: ServerStateRow,
    stat: Option<StatRow>,
}

impl<'a> Replies<'a> {
    fn read(exchange: &'a Exchange, changes: &[Change], replies: &'a [String]) -> Self {
        let (backends, items) = (exchange.backends.len(), exchange.items.len());
        let part = |from: usize, len: usize| replies.get(from..from + len).unwrap_or_default();
        let rows = |from: usize| -> Vec<Rows> {
            let replies = part(from, backends);
            (0..backends)
                .map(|j| {
                    let reply = replies.get(j).map_or("", String::as_str);
                    backend_rows(reply, exchange, changes, j)
                })
                .collect()
        };
        let stats = replies
            .get(2 * backends + items..)
            .unwrap_or_default()
            .iter()
            .filter_map(|reply| show_stat::parse(reply).ok())
            .flatten()
            .filter(|r| r.kind == StatKind::Server)
            .map(|r| ((r.proxy.clone(), r.name.clone()), r))
            .collect();
        Self {
            exchange,
            before: rows(0),
            sets: part(backends, items),
            after: rows(backends + items),
            stats,
        }
    }

    /// The rows of the `k`-th change of the exchange.
    fn of(&self, k: usize, change: &Change) -> Result<Read, RuntimeError> {
        let j = self
            .exchange
            .backends
            .iter()
            .position(|b| *b == change.backend)
            .unwrap_or_default();
        let row = |rows: Option<&Rows>| -> Result<ServerStateRow, RuntimeError> {
            let rows = rows.ok_or_else(|| RuntimeError::Unreadable("no reply".into()))?;
            rows.as_ref()
                .map_err(Clone::clone)?
                .get(change.server.as_str())
                .cloned()
                .ok_or_else(|| super::no_such_server(&change.backend, &change.server))
        };
        let before = row(self.before.get(j))?;
        let set_reply = self.sets.get(k).map_or("", String::as_str);
        check_set_reply(set_reply, &change.backend, &change.server)?;
        Ok(Read {
            before: before.admin_bits,
            after: row(self.after.get(j))?,
            stat: self.stats.get(&key(change)).cloned(),
        })
    }
}

/// The rows of the `j`-th backend's servers that the exchange changes.
fn backend_rows(reply: &str, exchange: &Exchange, changes: &[Change], j: usize) -> Rows {
    let Some(backend) = exchange.backends.get(j) else {
        return Ok(HashMap::new());
    };
    let servers: HashSet<&str> = exchange
        .items
        .iter()
        .map(|i| &changes[*i])
        .filter(|c| c.backend == *backend)
        .map(|c| c.server.as_str())
        .collect();
    super::rows_of(reply, backend, &servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(backend: &str, server: &str, state: AdminState) -> Change {
        Change {
            backend: BackendName::parse(backend).expect("name"),
            server: ServerName::parse(server).expect("name"),
            state,
        }
    }

    fn lines(changes: &[Change], ids: &[Option<(u32, u32)>]) -> Vec<Vec<String>> {
        plan(changes, ids)
            .iter()
            .map(|e| e.lines(changes))
            .collect()
    }

    #[test]
    fn one_change_sends_the_commands_of_the_single_path() {
        let one = [change("web", "s1", AdminState::Drain)];
        assert_eq!(
            lines(&one, &[None]),
            [[
                "show servers state web",
                "set server web/s1 state drain",
                "show servers state web",
                "show stat web 4 -1",
            ]]
        );
        assert_eq!(lines(&one, &[Some((3, 7))])[0][3], "show stat 3 4 7");
    }

    #[test]
    fn each_backend_is_read_once_before_and_once_after() {
        let changes = [
            change("web", "s1", AdminState::Drain),
            change("api", "a1", AdminState::Maint),
            change("web", "s2", AdminState::Ready),
        ];
        let ids = [Some((3, 1)), Some((4, 1)), None];
        assert_eq!(
            lines(&changes, &ids),
            [[
                "show servers state api",
                "show servers state web",
                "set server api/a1 state maint",
                "set server web/s1 state drain",
                "set server web/s2 state ready",
                "show servers state api",
                "show servers state web",
                "show stat 4 4 1",
                // s2's ids are unknown: one read of the backend serves both.
                "show stat web 4 -1",
            ]]
        );
    }

    #[test]
    fn a_server_changed_twice_is_changed_on_a_second_connection_in_order() {
        let changes = [
            change("web", "s1", AdminState::Drain),
            change("web", "s2", AdminState::Drain),
            change("web", "s1", AdminState::Maint),
        ];
        let exchanges = plan(&changes, &[None; 3]);
        let items: Vec<&[usize]> = exchanges.iter().map(|e| e.items.as_slice()).collect();
        assert_eq!(items, [&[0, 1][..], &[2]]);
    }

    #[test]
    fn long_groups_are_split_into_lines_that_fit() {
        let changes: Vec<Change> = (0..500)
            .map(|i| {
                change(
                    &format!("b{}", i % 7),
                    &format!("server-{i:04}"),
                    AdminState::Maint,
                )
            })
            .collect();
        let ids: Vec<Option<(u32, u32)>> = (0..500u32)
            .map(|i| (i % 2 == 0).then_some((i, i)))
            .collect();
        let exchanges = plan(&changes, &ids);
        assert!(exchanges.len() > 1, "{} exchanges", exchanges.len());
        let mut seen: Vec<usize> = Vec::new();
        for exchange in &exchanges {
            let line = exchange.lines(&changes).join("; ");
            assert!(line.len() <= MAX_LINE_BYTES, "{} bytes", line.len());
            seen.extend(&exchange.items);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
    }
}
