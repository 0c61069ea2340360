//! HAProxy's `show info`: `Name: value` lines, of which the agent reads the
//! version and the identity of the process.

use chrono::{DateTime, Utc};

use crate::fagent::wire::HaproxyProcess;

/// What the agent reads from `show info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowInfo {
    /// `Version`.
    pub version: Option<String>,
    /// `Pid`, `Start_time_sec`, `Uptime_sec`; None without a `Pid` line.
    pub process: Option<HaproxyProcess>,
}

/// Parses the reply of `show info`. Unknown or malformed lines are skipped:
/// a field that cannot be read is absent, never a guess.
pub fn parse(reply: &str) -> ShowInfo {
    let field = |name: &str| {
        reply.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(key, _)| *key == name)
                .map(|(_, value)| value.trim())
        })
    };
    let version = field("Version")
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let started_at = field("Start_time_sec")
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|secs| DateTime::<Utc>::from_timestamp(secs, 0));
    let uptime_secs = field("Uptime_sec").and_then(|v| v.parse::<u64>().ok());
    let process = field("Pid")
        .and_then(|v| v.parse::<u32>().ok())
        .map(|pid| HaproxyProcess {
            pid,
            started_at,
            uptime_secs,
        });
    ShowInfo { version, process }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of HAProxy 2.6.12's `show info`.
    const INFO: &str = "Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nRelease_date: 2026/10/17\n\
        Nbthread: 2\nPid: 19640\nUptime: 0d 0h00m01s\nUptime_sec: 1\n\
        Build info: 2.6.12-1+deb12u4\nStart_time_sec: 1796171629\nTainted: 0\n";

    #[test]
    fn reads_version_and_process_identity() {
        let info = parse(INFO);
        assert_eq!(info.version.as_deref(), Some("2.6.12-1+deb12u4"));
        let process = info.process.expect("a process");
        assert_eq!(process.pid, 19640);
        assert_eq!(process.uptime_secs, Some(1));
        assert_eq!(
            process.started_at.map(|t| t.to_rfc3339()),
            Some("2026-12-02T00:33:49+00:00".to_owned())
        );
    }

    #[test]
    fn missing_or_malformed_fields_are_absent() {
        let info = parse("Name: HAProxy\nVersion: 2.4.0\nPid: 12\nUptime_sec: x\n");
        assert_eq!(
            info.process,
            Some(HaproxyProcess {
                pid: 12,
                started_at: None,
                uptime_secs: None
            })
        );
        assert_eq!(parse("Pid: -1\n").process, None);
        assert_eq!(parse("garbage").version, None);
        // A prefix of a name is not the name.
        assert_eq!(parse("Pidfile: 3\n").process, None);
    }
}
