//! Server states as the module speaks of them, and the mapping from what
//! HAProxy prints to them.

use std::fmt;
use std::str::FromStr;

/// What an operator decided for a server: in balancing, draining, or out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

/// HAProxy's own view of a server's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    Up,
    Down,
    NoCheck,
    Stopping,
    Starting,
}

/// Who wrote a state change (`haproxy_server_status_history.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistorySource {
    Action,
    Sync,
}

impl HistorySource {
    pub const ALL: [HistorySource; 2] = [HistorySource::Action, HistorySource::Sync];

    pub fn as_str(self) -> &'static str {
        match self {
            HistorySource::Action => "action",
            HistorySource::Sync => "sync",
        }
    }
}

impl FromStr for HistorySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        super::action::find(
            &HistorySource::ALL,
            s,
            HistorySource::as_str,
            "history source",
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {found:?}; expected one of {expected}")]
pub struct StateParseError {
    kind: &'static str,
    found: String,
    expected: &'static str,
}

impl AdminState {
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    /// Maps `srv_admin_state` from `show servers state`, a decimal bit mask.
    /// Any maintenance bit wins over drain; inherited bits (IMAINT, IDRAIN)
    /// count like forced ones, because the server is out of balancing either way.
    pub fn from_admin_bits(bits: u32) -> AdminState {
        const FMAINT: u32 = 0x01;
        const IMAINT: u32 = 0x02;
        const CMAINT: u32 = 0x04;
        const FDRAIN: u32 = 0x08;
        const IDRAIN: u32 = 0x10;
        const RMAINT: u32 = 0x20;
        const HMAINT: u32 = 0x40;
        if bits & (FMAINT | IMAINT | CMAINT | RMAINT | HMAINT) != 0 {
            AdminState::Maint
        } else if bits & (FDRAIN | IDRAIN) != 0 {
            AdminState::Drain
        } else {
            AdminState::Ready
        }
    }

    /// Maps the `status` column of `show stat` by prefix: `MAINT`,
    /// `MAINT (via b/s)`, `MAINT (resolution)`, `DRAIN`, `DRAIN (agent)`, …
    /// Anything else (`UP 1/3`, `NOLB`, `DOWN`, `no check`) is `ready`: the
    /// operator has not taken the server out.
    pub fn from_stat_status(status: &str) -> AdminState {
        if status.starts_with("MAINT") {
            AdminState::Maint
        } else if status.starts_with("DRAIN") {
            AdminState::Drain
        } else {
            AdminState::Ready
        }
    }

    /// The stronger of two readings: maint over drain over ready.
    pub fn strongest(self, other: AdminState) -> AdminState {
        fn rank(s: AdminState) -> u8 {
            match s {
                AdminState::Ready => 0,
                AdminState::Drain => 1,
                AdminState::Maint => 2,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl OpState {
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Up => "up",
            OpState::Down => "down",
            OpState::NoCheck => "no_check",
            OpState::Stopping => "stopping",
            OpState::Starting => "starting",
        }
    }

    /// Maps `srv_op_state` from `show servers state` (0 stopped, 1 starting,
    /// 2 running, 3 stopping), refined by the `show stat` status, which is the
    /// only place that says a running server has no health check.
    pub fn from_op_code(code: u32, stat_status: &str) -> OpState {
        match code {
            0 => OpState::Down,
            1 => OpState::Starting,
            3 => OpState::Stopping,
            _ if stat_status.starts_with("no check") => OpState::NoCheck,
            _ => OpState::Up,
        }
    }

    /// Maps the `show stat` status alone, for when `show servers state` is
    /// not at hand.
    pub fn from_stat_status(status: &str) -> OpState {
        let head = status.split_whitespace().next().unwrap_or("");
        match head {
            "UP" | "DRAIN" => OpState::Up,
            "NOLB" => OpState::Stopping,
            "no" if status.starts_with("no check") => OpState::NoCheck,
            _ if status.contains("going up") => OpState::Starting,
            _ => OpState::Down,
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for OpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AdminState {
    type Err = StateParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ready" => Ok(AdminState::Ready),
            "drain" => Ok(AdminState::Drain),
            "maint" => Ok(AdminState::Maint),
            other => Err(StateParseError {
                kind: "state",
                found: other.chars().take(64).collect(),
                expected: "ready, drain, maint",
            }),
        }
    }
}

impl FromStr for OpState {
    type Err = StateParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "up" => Ok(OpState::Up),
            "down" => Ok(OpState::Down),
            "no_check" => Ok(OpState::NoCheck),
            "stopping" => Ok(OpState::Stopping),
            "starting" => Ok(OpState::Starting),
            other => Err(StateParseError {
                kind: "op state",
                found: other.chars().take(64).collect(),
                expected: "up, down, no_check, stopping, starting",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_bits_map_every_flag() {
        assert_eq!(AdminState::from_admin_bits(0), AdminState::Ready);
        assert_eq!(AdminState::from_admin_bits(0x01), AdminState::Maint); // FMAINT
        assert_eq!(AdminState::from_admin_bits(0x02), AdminState::Maint); // IMAINT
        assert_eq!(AdminState::from_admin_bits(0x04), AdminState::Maint); // CMAINT
        assert_eq!(AdminState::from_admin_bits(0x08), AdminState::Drain); // FDRAIN
        assert_eq!(AdminState::from_admin_bits(0x10), AdminState::Drain); // IDRAIN
        assert_eq!(AdminState::from_admin_bits(0x20), AdminState::Maint); // RMAINT
        assert_eq!(AdminState::from_admin_bits(0x40), AdminState::Maint); // HMAINT
        assert_eq!(AdminState::from_admin_bits(0x08 | 0x01), AdminState::Maint);
        assert_eq!(AdminState::from_admin_bits(0x10 | 0x08), AdminState::Drain);
    }

    #[test]
    fn stat_status_matches_by_prefix() {
        for (status, admin) in [
            ("UP", AdminState::Ready),
            ("UP 1/3", AdminState::Ready),
            ("DOWN 1/2", AdminState::Ready),
            ("NOLB", AdminState::Ready),
            ("no check", AdminState::Ready),
            ("DRAIN", AdminState::Drain),
            ("DRAIN (agent)", AdminState::Drain),
            ("MAINT", AdminState::Maint),
            ("MAINT (via web/web2_shop_1)", AdminState::Maint),
            ("MAINT (resolution)", AdminState::Maint),
        ] {
            assert_eq!(AdminState::from_stat_status(status), admin, "{status}");
        }
    }

    #[test]
    fn op_codes_map_and_no_check_comes_from_the_status() {
        assert_eq!(OpState::from_op_code(0, "MAINT"), OpState::Down);
        assert_eq!(OpState::from_op_code(1, "UP 1/3"), OpState::Starting);
        assert_eq!(OpState::from_op_code(2, "UP"), OpState::Up);
        assert_eq!(OpState::from_op_code(2, "no check"), OpState::NoCheck);
        assert_eq!(OpState::from_op_code(3, "NOLB"), OpState::Stopping);
        assert_eq!(OpState::from_stat_status("NOLB 1/2"), OpState::Stopping);
        assert_eq!(OpState::from_stat_status("DOWN (agent)"), OpState::Down);
        assert_eq!(OpState::from_stat_status("no check"), OpState::NoCheck);
        assert_eq!(OpState::from_stat_status("DOWN 1/2"), OpState::Down);
    }

    #[test]
    fn states_round_trip_through_text_and_json() {
        for s in AdminState::ALL {
            assert_eq!(s.as_str().parse::<AdminState>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).ok(), Some(format!("\"{s}\"")));
        }
        assert!("sleepy".parse::<AdminState>().is_err());
        assert_eq!("no_check".parse::<OpState>(), Ok(OpState::NoCheck));
    }
}
