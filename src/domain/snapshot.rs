//! One HAProxy's backends and servers as the module sees them: the join of
//! `show stat` (status, sessions, checks) and `show servers state` (admin
//! bits, operational state, weight) by backend and server name.

use std::collections::HashMap;

use super::servers_state::ServerStateRow;
use super::show_stat::{StatKind, StatRow, split_addr};
use super::state::{AdminState, OpState};

/// One server as read from HAProxy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerSnapshot {
    pub name: String,
    pub address: String,
    pub port: Option<u16>,
    pub admin_state: AdminState,
    pub op_state: OpState,
    pub weight: u32,
    pub current_sessions: u64,
    pub check_status: Option<String>,
}

/// One backend and its servers, in HAProxy's order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendSnapshot {
    pub name: String,
    pub servers: Vec<ServerSnapshot>,
}

/// Builds the view of one server from its `show stat` row and, when present,
/// its `show servers state` row. The bit mask is the precise source of the
/// admin state (a DOWN server in drain shows `DOWN` in `show stat`); the
/// status prefix adds what only it knows (`DRAIN (agent)`).
pub fn server_snapshot(stat: &StatRow, state: Option<&ServerStateRow>) -> ServerSnapshot {
    let from_status = AdminState::from_stat_status(&stat.status);
    let (admin_state, op_state) = match state {
        Some(s) => (
            AdminState::from_admin_bits(s.admin_bits).strongest(from_status),
            OpState::from_op_code(s.op_code, &stat.status),
        ),
        None => (from_status, OpState::from_stat_status(&stat.status)),
    };
    let (address, port) = match state {
        Some(s) => (s.addr.clone(), s.port),
        None => match stat.addr.as_deref().and_then(split_addr) {
            Some((a, p)) => (a, Some(p)),
            None => (String::new(), None),
        },
    };
    ServerSnapshot {
        name: stat.name.clone(),
        address,
        port,
        admin_state,
        op_state,
        weight: state
            .map(|s| s.user_weight)
            .or(stat.weight)
            .unwrap_or_default(),
        current_sessions: stat.current_sessions.unwrap_or_default(),
        check_status: stat.check_status.clone(),
    }
}

/// Joins a full `show stat` with a full `show servers state`. Every backend
/// appears, also one without servers; frontends and listeners do not.
pub fn join(stats: &[StatRow], states: &[ServerStateRow]) -> Vec<BackendSnapshot> {
    let by_name: HashMap<(&str, &str), &ServerStateRow> = states
        .iter()
        .map(|s| ((s.backend.as_str(), s.server.as_str()), s))
        .collect();
    let mut backends: Vec<BackendSnapshot> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for row in stats {
        if !matches!(row.kind, StatKind::Backend | StatKind::Server) {
            continue;
        }
        let at = *index.entry(row.proxy.as_str()).or_insert_with(|| {
            backends.push(BackendSnapshot {
                name: row.proxy.clone(),
                servers: Vec::new(),
            });
            backends.len() - 1
        });
        if row.kind == StatKind::Server {
            let state = by_name
                .get(&(row.proxy.as_str(), row.name.as_str()))
                .copied();
            backends[at].servers.push(server_snapshot(row, state));
        }
    }
    backends
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{servers_state, show_stat};

    fn fixture() -> Vec<BackendSnapshot> {
        let stats = show_stat::parse(include_str!(
            "../../tests/fixtures/haproxy-2.6/show_stat.csv"
        ))
        .expect("stat");
        let states = servers_state::parse(include_str!(
            "../../tests/fixtures/haproxy-2.6/show_servers_state.txt"
        ))
        .expect("state");
        join(&stats, &states)
    }

    fn server<'a>(b: &'a [BackendSnapshot], backend: &str, name: &str) -> &'a ServerSnapshot {
        b.iter()
            .find(|x| x.name == backend)
            .and_then(|x| x.servers.iter().find(|s| s.name == name))
            .unwrap_or_else(|| panic!("{backend}/{name}"))
    }

    #[test]
    fn every_backend_is_listed_and_frontends_are_not() {
        let b = fixture();
        let names: Vec<&str> = b.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["web", "tracking", "nolb", "empty"]);
        assert!(b[3].servers.is_empty());
        assert_eq!(b[0].servers.len(), 6);
    }

    #[test]
    fn every_captured_state_maps_as_the_fixture_readme_says() {
        use AdminState::*;
        use OpState::*;
        let b = fixture();
        let expect = [
            ("web", "web1_shop_1", Drain, Up, 1),
            ("web", "web2_shop_1", Maint, Down, 1),
            ("web", "web3_shop_1", Ready, Up, 0),
            ("web", "web4_shop_1", Ready, Down, 1),
            ("web", "web5_shop_1", Ready, NoCheck, 1),
            ("web", "web6_shop_1", Ready, Down, 50),
            ("tracking", "t1_shop_2", Drain, Up, 1),
            ("tracking", "t2_shop_2", Maint, Down, 1),
            ("nolb", "n1_api_1", Ready, Stopping, 1),
        ];
        for (backend, name, admin, op, weight) in expect {
            let s = server(&b, backend, name);
            assert_eq!(
                (s.admin_state, s.op_state, s.weight),
                (admin, op, weight),
                "{backend}/{name}"
            );
        }
        let v6 = server(&b, "web", "web6_shop_1");
        assert_eq!((v6.address.as_str(), v6.port), ("::1", Some(19101)));
    }

    #[test]
    fn without_servers_state_the_status_prefix_decides() {
        let stats = show_stat::parse(include_str!(
            "../../tests/fixtures/haproxy-2.6/show_stat.csv"
        ))
        .expect("stat");
        let b = join(&stats, &[]);
        let t2 = server(&b, "tracking", "t2_shop_2");
        assert_eq!(
            (t2.admin_state, t2.op_state),
            (AdminState::Maint, OpState::Down)
        );
        let v6 = server(&b, "web", "web6_shop_1");
        assert_eq!((v6.address.as_str(), v6.port), ("::1", Some(19101)));
    }

    #[test]
    fn agent_drain_shows_as_drain_even_with_no_admin_bit() {
        let stat = StatRow {
            proxy: "web".into(),
            name: "a".into(),
            kind: StatKind::Server,
            status: "DRAIN (agent)".into(),
            weight: Some(0),
            current_sessions: Some(3),
            check_status: None,
            addr: Some("10.0.0.1:80".into()),
            proxy_id: Some(1),
            server_id: Some(1),
        };
        let s = server_snapshot(&stat, None);
        assert_eq!((s.admin_state, s.current_sessions), (AdminState::Drain, 3));
    }
}
