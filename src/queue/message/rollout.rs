//! The rollout's own messages: a tick (look at a rollout and move it on)
//! and a hook run (update one server). Internal to the module's workers;
//! published by the API and the workers, never by other teams.

use serde::{Deserialize, Serialize};

use super::{InvalidMessage, invalid};

/// "Look at rollout `rollout_id`": processed only while the rollout's
/// `tick_seq` is still `seq` (a duplicate is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutTick {
    pub rollout_id: i64,
    pub seq: i64,
}

/// "Run the update hook of rollout server row `server_row_id`" for its
/// `attempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutHookRun {
    pub rollout_id: i64,
    pub server_row_id: i64,
    pub attempt: i32,
}

/// Largest body accepted (both are a few numbers).
const MAX_BYTES: usize = 1024;

fn read<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<T, InvalidMessage> {
    if body.len() > MAX_BYTES {
        return Err(invalid(format!(
            "message is {} bytes; the limit is {MAX_BYTES}",
            body.len()
        )));
    }
    serde_json::from_slice(body).map_err(|e| invalid(format!("not a valid {what}: {e}")))
}

/// # Errors
/// [`InvalidMessage`].
pub fn parse_tick(body: &[u8]) -> Result<RolloutTick, InvalidMessage> {
    read(body, "rollout tick")
}

/// # Errors
/// [`InvalidMessage`].
pub fn parse_hook_run(body: &[u8]) -> Result<RolloutHookRun, InvalidMessage> {
    read(body, "rollout hook run")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_hook_runs_parse_and_garbage_does_not() {
        assert_eq!(
            parse_tick(br#"{"rollout_id":1,"seq":2}"#).ok(),
            Some(RolloutTick {
                rollout_id: 1,
                seq: 2
            })
        );
        assert!(parse_tick(br#"{"rollout_id":1}"#).is_err());
        assert!(parse_tick(br#"{"rollout_id":1,"seq":2,"x":3}"#).is_err());
        assert!(parse_hook_run(&[b' '; 2000]).is_err());
        assert!(parse_hook_run(br#"{"rollout_id":1,"server_row_id":2,"attempt":0}"#).is_ok());
    }
}
