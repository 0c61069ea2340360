//! The sync's diff (DESIGN.md rules 6 and 7): what must be written so that the
//! stored backends and servers of one HAProxy instance match a snapshot of it.
//!
//! HAProxy wins, with one exception: a snapshot never overwrites an admin/op
//! state that an action wrote after the snapshot was taken. The plan is pure
//! data, so the sync can apply it with a handful of bulk statements.
//!
//! Backends are matched by name and servers by (backend name, server name),
//! with hash indexes, so a plan is O(stored + snapshot).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::event::StatePair;
use super::snapshot::{BackendSnapshot, ServerSnapshot};
use super::state::{AdminState, OpState};

/// A `haproxy_backends` row of the instance being synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBackend {
    pub id: i64,
    pub name: String,
    pub removed: bool,
}

/// A `haproxy_servers` row of the instance being synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredServer {
    pub id: i64,
    pub backend_id: i64,
    pub name: String,
    pub address: String,
    pub port: Option<i32>,
    pub admin_state: AdminState,
    pub op_state: OpState,
    pub weight: i32,
    pub current_sessions: i64,
    pub check_status: Option<String>,
    pub removed: bool,
    /// Last time an action (or a sync) wrote `admin_state`/`op_state`.
    pub state_written_at: Option<DateTime<Utc>>,
}

/// Where a new server goes: a backend row that exists (live or removed) or
/// one created by this plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendRef {
    Existing(i64),
    New(String),
}

/// A server seen for the first time (`server.discovered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewServer {
    pub backend: BackendRef,
    pub server: ServerSnapshot,
}

/// The new values of one stored server row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUpdate {
    pub id: i64,
    pub address: String,
    pub port: Option<i32>,
    pub weight: i32,
    pub current_sessions: i64,
    pub check_status: Option<String>,
    /// The admin/op state to store (the stored one when the snapshot is older
    /// than the last write).
    pub admin_state: AdminState,
    pub op_state: OpState,
    /// `Some((previous, current))` when the stored state changes: a history
    /// row with source `sync` and a `server.state_changed` event.
    pub state_change: Option<(StatePair, StatePair)>,
    /// The snapshot's state differed but was older than `state_written_at`,
    /// so it was not applied.
    pub state_kept: bool,
    /// The row was removed and comes back (`removed_at` cleared;
    /// `server.discovered` again).
    pub revived: bool,
}

/// Everything one sync must write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Backend names to insert, in snapshot order.
    pub new_backends: Vec<String>,
    /// Removed backend rows that are back (`removed_at` cleared).
    pub revived_backends: Vec<i64>,
    /// Live backend rows absent from the snapshot.
    pub removed_backends: Vec<i64>,
    pub new_servers: Vec<NewServer>,
    pub updates: Vec<ServerUpdate>,
    /// Live server rows absent from the snapshot, including every live server
    /// of a vanished backend.
    pub removed_servers: Vec<i64>,
    /// Live servers that need no write at all: identical to the snapshot, or
    /// differing only by a state that was kept (those are also in
    /// `kept_states`).
    pub unchanged: usize,
    /// Servers whose snapshot state differed from the stored one but was not
    /// applied, because an action wrote the state after the snapshot was
    /// taken. Counts both the ones that need no write (also in `unchanged`)
    /// and the ones updated for other fields (`updates` with `state_kept`).
    pub kept_states: usize,
}

impl Plan {
    /// True when the sync has nothing to write.
    pub fn is_empty(&self) -> bool {
        self.new_backends.is_empty()
            && self.revived_backends.is_empty()
            && self.removed_backends.is_empty()
            && self.new_servers.is_empty()
            && self.updates.is_empty()
            && self.removed_servers.is_empty()
    }
}

/// The snapshot's fields in the stored types, converted without panicking
/// (saturating where the stored type is narrower).
struct Fetched<'a> {
    address: &'a str,
    port: Option<i32>,
    weight: i32,
    current_sessions: i64,
    check_status: Option<&'a str>,
    state: StatePair,
}

impl<'a> Fetched<'a> {
    fn of(s: &'a ServerSnapshot) -> Self {
        Fetched {
            address: &s.address,
            port: s.port.map(i32::from),
            weight: i32::try_from(s.weight).unwrap_or(i32::MAX),
            current_sessions: i64::try_from(s.current_sessions).unwrap_or(i64::MAX),
            check_status: s.check_status.as_deref(),
            state: StatePair {
                admin_state: s.admin_state,
                op_state: s.op_state,
            },
        }
    }

    /// True when every field but the admin/op state equals the stored row.
    fn same_fields(&self, row: &StoredServer) -> bool {
        self.address == row.address
            && self.port == row.port
            && self.weight == row.weight
            && self.current_sessions == row.current_sessions
            && self.check_status == row.check_status.as_deref()
    }
}

fn stored_state(row: &StoredServer) -> StatePair {
    StatePair {
        admin_state: row.admin_state,
        op_state: row.op_state,
    }
}

/// What to do with one stored row that the snapshot reports.
enum Outcome {
    Unchanged { kept: bool },
    Update(ServerUpdate),
}

fn compare(row: &StoredServer, snap: &ServerSnapshot, fetched_at: DateTime<Utc>) -> Outcome {
    let fetched = Fetched::of(snap);
    let previous = stored_state(row);
    let state_differs = fetched.state != previous;
    // Rule 6: a write at or before the snapshot's time is overwritten; a
    // newer one (an action that ran while the snapshot was being read) wins.
    let snapshot_is_newer = row.state_written_at.is_none_or(|w| w <= fetched_at);
    let apply_state = state_differs && snapshot_is_newer;
    let state_kept = state_differs && !snapshot_is_newer;

    if !row.removed && !apply_state && fetched.same_fields(row) {
        return Outcome::Unchanged { kept: state_kept };
    }
    let current = if apply_state { fetched.state } else { previous };
    Outcome::Update(ServerUpdate {
        id: row.id,
        address: fetched.address.to_owned(),
        port: fetched.port,
        weight: fetched.weight,
        current_sessions: fetched.current_sessions,
        check_status: fetched.check_status.map(str::to_owned),
        admin_state: current.admin_state,
        op_state: current.op_state,
        state_change: apply_state.then_some((previous, current)),
        state_kept,
        revived: row.removed,
    })
}

/// Computes what one sync must write.
///
/// `backends` and `servers` are the instance's stored rows, live and removed;
/// `fetched_at` is a time the snapshot is newer than, from the database's
/// clock (read before the agent was asked), the clock `state_written_at`
/// comes from: rule 6 never compares two machines' clocks. Duplicate names
/// in the snapshot (which HAProxy does not produce) keep the first occurrence.
/// Outputs follow snapshot order for what the snapshot has and stored order
/// for what it lacks, so a plan is deterministic.
pub fn plan(
    backends: &[StoredBackend],
    servers: &[StoredServer],
    fetched_at: DateTime<Utc>,
    snapshot: &[BackendSnapshot],
) -> Plan {
    let mut backend_index: HashMap<&str, usize> = HashMap::with_capacity(backends.len());
    for (i, b) in backends.iter().enumerate() {
        backend_index.entry(b.name.as_str()).or_insert(i);
    }
    let mut server_index: HashMap<(i64, &str), usize> = HashMap::with_capacity(servers.len());
    for (i, s) in servers.iter().enumerate() {
        server_index
            .entry((s.backend_id, s.name.as_str()))
            .or_insert(i);
    }
    let mut backend_seen = vec![false; backends.len()];
    let mut server_seen = vec![false; servers.len()];
    let mut snapshot_backends: HashSet<&str> = HashSet::with_capacity(snapshot.len());
    let mut names_in_backend: HashSet<&str> = HashSet::new();
    let mut out = Plan::default();

    for fetched in snapshot {
        if !snapshot_backends.insert(fetched.name.as_str()) {
            continue;
        }
        names_in_backend.clear();
        let stored = backend_index.get(fetched.name.as_str()).copied();
        let backend_ref = match stored {
            Some(i) => {
                let b = &backends[i];
                backend_seen[i] = true;
                if b.removed {
                    out.revived_backends.push(b.id);
                }
                BackendRef::Existing(b.id)
            }
            None => {
                out.new_backends.push(fetched.name.clone());
                BackendRef::New(fetched.name.clone())
            }
        };
        for snap in &fetched.servers {
            if !names_in_backend.insert(snap.name.as_str()) {
                continue;
            }
            let row = stored.and_then(|i| {
                server_index
                    .get(&(backends[i].id, snap.name.as_str()))
                    .copied()
            });
            let Some(r) = row else {
                out.new_servers.push(NewServer {
                    backend: backend_ref.clone(),
                    server: snap.clone(),
                });
                continue;
            };
            server_seen[r] = true;
            match compare(&servers[r], snap, fetched_at) {
                Outcome::Unchanged { kept } => {
                    out.unchanged += 1;
                    out.kept_states += usize::from(kept);
                }
                Outcome::Update(u) => {
                    out.kept_states += usize::from(u.state_kept);
                    out.updates.push(u);
                }
            }
        }
    }

    out.removed_backends = backends
        .iter()
        .zip(&backend_seen)
        .filter(|(b, seen)| !b.removed && !**seen)
        .map(|(b, _)| b.id)
        .collect();
    out.removed_servers = servers
        .iter()
        .zip(&server_seen)
        .filter(|(s, seen)| !s.removed && !**seen)
        .map(|(s, _)| s.id)
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 5, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn backend(id: i64, name: &str) -> StoredBackend {
        StoredBackend {
            id,
            name: name.into(),
            removed: false,
        }
    }

    fn snap(name: &str) -> ServerSnapshot {
        ServerSnapshot {
            name: name.into(),
            address: "10.0.0.1".into(),
            port: Some(8080),
            admin_state: AdminState::Ready,
            op_state: OpState::Up,
            weight: 1,
            current_sessions: 0,
            check_status: Some("L4OK".into()),
        }
    }

    /// A stored row identical to `snap(name)`.
    fn row(id: i64, backend_id: i64, name: &str) -> StoredServer {
        StoredServer {
            id,
            backend_id,
            name: name.into(),
            address: "10.0.0.1".into(),
            port: Some(8080),
            admin_state: AdminState::Ready,
            op_state: OpState::Up,
            weight: 1,
            current_sessions: 0,
            check_status: Some("L4OK".into()),
            removed: false,
            state_written_at: Some(t0() - Duration::minutes(5)),
        }
    }

    fn bs(name: &str, servers: Vec<ServerSnapshot>) -> BackendSnapshot {
        BackendSnapshot {
            name: name.into(),
            servers,
        }
    }

    fn pair(admin_state: AdminState, op_state: OpState) -> StatePair {
        StatePair {
            admin_state,
            op_state,
        }
    }

    #[test]
    fn identical_rows_are_unchanged_and_the_plan_is_empty() {
        let p = plan(
            &[backend(1, "web")],
            &[row(10, 1, "a"), row(11, 1, "b")],
            t0(),
            &[bs("web", vec![snap("a"), snap("b")])],
        );
        assert!(p.is_empty());
        assert_eq!((p.unchanged, p.kept_states), (2, 0));
    }

    #[test]
    fn new_backend_brings_its_servers() {
        let p = plan(&[], &[], t0(), &[bs("api", vec![snap("a"), snap("b")])]);
        assert_eq!(p.new_backends, ["api"]);
        assert_eq!(p.new_servers.len(), 2);
        assert!(
            p.new_servers
                .iter()
                .all(|n| n.backend == BackendRef::New("api".into()))
        );
        assert_eq!(p.new_servers[1].server, snap("b"));
    }

    #[test]
    fn an_empty_new_backend_is_still_created() {
        let p = plan(&[], &[], t0(), &[bs("empty", vec![])]);
        assert_eq!(p.new_backends, ["empty"]);
        assert!(p.new_servers.is_empty());
    }

    #[test]
    fn new_server_in_an_existing_backend() {
        let p = plan(
            &[backend(1, "web")],
            &[row(10, 1, "a")],
            t0(),
            &[bs("web", vec![snap("a"), snap("b")])],
        );
        assert!(p.new_backends.is_empty());
        assert_eq!(
            p.new_servers,
            [NewServer {
                backend: BackendRef::Existing(1),
                server: snap("b")
            }]
        );
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn a_server_missing_from_the_snapshot_is_removed() {
        let mut gone = row(12, 1, "c");
        gone.removed = true; // already removed: not removed again
        let p = plan(
            &[backend(1, "web")],
            &[row(10, 1, "a"), row(11, 1, "b"), gone],
            t0(),
            &[bs("web", vec![snap("a")])],
        );
        assert_eq!(p.removed_servers, [11]);
        assert!(p.removed_backends.is_empty());
    }

    #[test]
    fn a_vanished_backend_takes_its_live_servers_with_it() {
        let mut old = backend(3, "old");
        old.removed = true;
        let mut dead = row(22, 2, "z");
        dead.removed = true;
        let p = plan(
            &[backend(1, "web"), backend(2, "api"), old],
            &[row(10, 1, "a"), row(20, 2, "x"), row(21, 2, "y"), dead],
            t0(),
            &[bs("web", vec![snap("a")])],
        );
        assert_eq!(p.removed_backends, [2]);
        assert_eq!(p.removed_servers, [20, 21]);
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn a_removed_server_that_returns_keeps_its_id() {
        let mut back = row(11, 1, "b");
        back.removed = true;
        let p = plan(
            &[backend(1, "web")],
            &[row(10, 1, "a"), back],
            t0(),
            &[bs("web", vec![snap("a"), snap("b")])],
        );
        assert!(p.new_servers.is_empty());
        assert_eq!(p.updates.len(), 1);
        let u = &p.updates[0];
        assert_eq!((u.id, u.revived, u.state_change), (11, true, None));
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn a_revived_server_records_its_state_change() {
        let mut back = row(11, 1, "b");
        back.removed = true;
        back.admin_state = AdminState::Maint;
        back.op_state = OpState::Down;
        let p = plan(
            &[backend(1, "web")],
            &[back],
            t0(),
            &[bs("web", vec![snap("b")])],
        );
        let u = &p.updates[0];
        assert!(u.revived);
        assert_eq!(
            u.state_change,
            Some((
                pair(AdminState::Maint, OpState::Down),
                pair(AdminState::Ready, OpState::Up)
            ))
        );
    }

    #[test]
    fn a_removed_backend_that_returns_is_revived_with_its_servers() {
        let mut web = backend(1, "web");
        web.removed = true;
        let mut a = row(10, 1, "a");
        a.removed = true;
        let p = plan(&[web], &[a], t0(), &[bs("web", vec![snap("a"), snap("b")])]);
        assert_eq!(p.revived_backends, [1]);
        assert!(p.new_backends.is_empty() && p.removed_backends.is_empty());
        assert_eq!(p.updates.len(), 1);
        assert_eq!((p.updates[0].id, p.updates[0].revived), (10, true));
        assert_eq!(
            p.new_servers,
            [NewServer {
                backend: BackendRef::Existing(1),
                server: snap("b")
            }]
        );
    }

    #[test]
    fn servers_match_only_within_their_backend() {
        // Same server name in two backends: each row matched to its own.
        let p = plan(
            &[backend(1, "web"), backend(2, "api")],
            &[row(10, 1, "a"), row(20, 2, "a")],
            t0(),
            &[bs("api", vec![snap("a")])],
        );
        assert_eq!(p.removed_servers, [10]);
        assert_eq!(p.removed_backends, [1]);
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn a_state_change_gives_previous_and_current() {
        let mut s = snap("a");
        s.admin_state = AdminState::Drain;
        let p = plan(
            &[backend(1, "web")],
            &[row(10, 1, "a")],
            t0(),
            &[bs("web", vec![s])],
        );
        let u = &p.updates[0];
        assert_eq!(
            u.state_change,
            Some((
                pair(AdminState::Ready, OpState::Up),
                pair(AdminState::Drain, OpState::Up)
            ))
        );
        assert_eq!(
            (u.admin_state, u.op_state),
            (AdminState::Drain, OpState::Up)
        );
        assert!(!u.state_kept && !u.revived);
        assert_eq!(p.kept_states, 0);
    }

    #[test]
    fn a_row_never_written_takes_the_snapshot_state() {
        let mut r = row(10, 1, "a");
        r.state_written_at = None;
        let mut s = snap("a");
        s.op_state = OpState::Down;
        let p = plan(&[backend(1, "web")], &[r], t0(), &[bs("web", vec![s])]);
        assert!(p.updates[0].state_change.is_some());
    }

    #[test]
    fn a_write_newer_than_the_snapshot_keeps_the_state() {
        // An action drained the server 1 s after the snapshot was read, which
        // still says ready: the drain stays, nothing is written.
        let mut r = row(10, 1, "a");
        r.admin_state = AdminState::Drain;
        r.state_written_at = Some(t0() + Duration::seconds(1));
        let p = plan(
            &[backend(1, "web")],
            &[r],
            t0(),
            &[bs("web", vec![snap("a")])],
        );
        assert!(p.updates.is_empty());
        assert_eq!((p.unchanged, p.kept_states), (1, 1));
    }

    #[test]
    fn a_kept_state_still_carries_the_other_fields() {
        let mut r = row(10, 1, "a");
        r.admin_state = AdminState::Maint;
        r.op_state = OpState::Down;
        r.state_written_at = Some(t0() + Duration::milliseconds(1));
        let mut s = snap("a");
        s.current_sessions = 7;
        let p = plan(&[backend(1, "web")], &[r], t0(), &[bs("web", vec![s])]);
        assert_eq!(p.updates.len(), 1);
        let u = &p.updates[0];
        assert_eq!(
            (u.admin_state, u.op_state),
            (AdminState::Maint, OpState::Down)
        );
        assert_eq!(
            (u.current_sessions, u.state_change, u.state_kept),
            (7, None, true)
        );
        assert_eq!((p.unchanged, p.kept_states), (0, 1));
    }

    #[test]
    fn a_write_at_the_snapshot_time_is_overwritten() {
        let mut r = row(10, 1, "a");
        r.admin_state = AdminState::Drain;
        r.state_written_at = Some(t0());
        let p = plan(
            &[backend(1, "web")],
            &[r],
            t0(),
            &[bs("web", vec![snap("a")])],
        );
        let u = &p.updates[0];
        assert_eq!((u.admin_state, u.state_kept), (AdminState::Ready, false));
        assert!(u.state_change.is_some());
        assert_eq!(p.kept_states, 0);
    }

    #[test]
    fn a_sessions_only_change_is_an_update_without_state_change() {
        let mut s = snap("a");
        s.current_sessions = 42;
        let p = plan(
            &[backend(1, "web")],
            &[row(10, 1, "a")],
            t0(),
            &[bs("web", vec![s])],
        );
        assert_eq!(p.updates.len(), 1);
        let u = &p.updates[0];
        assert_eq!((u.id, u.current_sessions), (10, 42));
        assert_eq!(
            (u.state_change, u.state_kept, u.revived),
            (None, false, false)
        );
        assert_eq!(p.unchanged, 0);
    }

    #[test]
    fn every_other_field_counts_as_a_change() {
        let stored = [backend(1, "web")];
        let rows = [row(10, 1, "a")];
        let changes: [fn(&mut ServerSnapshot); 5] = [
            |s| s.address = "10.0.0.2".into(),
            |s| s.port = None,
            |s| s.weight = 2,
            |s| s.current_sessions = 1,
            |s| s.check_status = None,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut s = snap("a");
            change(&mut s);
            let p = plan(&stored, &rows, t0(), &[bs("web", vec![s])]);
            assert_eq!((p.updates.len(), p.unchanged), (1, 0), "change {i}");
        }
    }

    #[test]
    fn huge_values_saturate() {
        let mut s = snap("a");
        s.weight = u32::MAX;
        s.current_sessions = u64::MAX;
        s.port = Some(u16::MAX);
        let p = plan(
            &[backend(1, "web")],
            &[row(10, 1, "a")],
            t0(),
            &[bs("web", vec![s])],
        );
        let u = &p.updates[0];
        assert_eq!(
            (u.weight, u.current_sessions, u.port),
            (i32::MAX, i64::MAX, Some(65535))
        );
    }

    #[test]
    fn duplicate_names_in_the_snapshot_keep_the_first() {
        let mut second = snap("a");
        second.weight = 9;
        let p = plan(
            &[backend(1, "web")],
            &[row(10, 1, "a")],
            t0(),
            &[
                bs("web", vec![snap("a"), second.clone()]),
                bs("web", vec![second, snap("b")]),
                bs("new", vec![snap("n"), snap("n")]),
                bs("new", vec![snap("m")]),
            ],
        );
        assert_eq!(p.unchanged, 1);
        assert!(p.updates.is_empty());
        assert_eq!(p.new_backends, ["new"]);
        let names: Vec<&str> = p
            .new_servers
            .iter()
            .map(|n| n.server.name.as_str())
            .collect();
        assert_eq!(names, ["n"]);
    }

    #[test]
    fn fifty_thousand_servers_with_one_percent_changed() {
        const BACKENDS: i64 = 100;
        const PER_BACKEND: i64 = 500;
        let backends: Vec<StoredBackend> = (0..BACKENDS)
            .map(|b| backend(b, &format!("be{b}")))
            .collect();
        let mut servers = Vec::new();
        let mut snapshot = Vec::new();
        for b in 0..BACKENDS {
            let mut snaps = Vec::new();
            for s in 0..PER_BACKEND {
                let id = b * PER_BACKEND + s;
                let name = format!("srv{s}");
                servers.push(row(id, b, &name));
                let mut x = snap(&name);
                // 1%: every 100th server; alternate a state and a sessions change.
                if id % 100 == 0 {
                    if id % 200 == 0 {
                        x.admin_state = AdminState::Drain;
                    } else {
                        x.current_sessions = 5;
                    }
                }
                snaps.push(x);
            }
            snapshot.push(bs(&format!("be{b}"), snaps));
        }
        assert_eq!(servers.len(), 50_000);
        let p = plan(&backends, &servers, t0(), &snapshot);
        assert_eq!(p.updates.len(), 500);
        assert_eq!(
            p.updates
                .iter()
                .filter(|u| u.state_change.is_some())
                .count(),
            250
        );
        assert_eq!(p.unchanged, 49_500);
        assert_eq!(p.kept_states, 0);
        assert!(p.new_backends.is_empty() && p.new_servers.is_empty());
        assert!(p.removed_backends.is_empty() && p.removed_servers.is_empty());
    }
}
