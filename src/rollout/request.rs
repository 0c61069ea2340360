//! A rollout request as the API and the CLI take it, and its validation
//! into what is stored (`domain::rollout::RolloutSpec`). Every error is a
//! sentence naming the field, answered as a 422.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::action::BatchTargets;
use crate::domain::rollout::{OnTimeout, RolloutSpec, Timings, WaveSize};
use crate::domain::rollout_hook::HookPolicy;
use crate::queue::message::{parse_batch_targets_json, parse_reason, parse_transaction_id};

/// Longest wait any of a rollout's timings may ask for (24 hours).
pub const MAX_SECS: u64 = 86_400;

/// `POST /api/haproxy/rollouts`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    /// A UUID; the same one again with the same body answers the same.
    #[schema(value_type = Option<Uuid>)]
    pub transaction_id: Option<String>,
    /// As a batch's: exactly one of `server_ids`, `application_ids`,
    /// `application_group_id`; across instances.
    #[schema(value_type = Object)]
    pub targets: Value,
    pub wave: WaveBody,
    pub drain: Option<DrainBody>,
    /// `{"kind": "ansible", "playbook": …, "extra_vars": {…}}`,
    /// `{"kind": "command", "argv": […]}` or `{"kind": "manual"}`, with an
    /// optional `timeout_secs` (900). See docs/rollouts.md.
    #[schema(value_type = Object)]
    pub update: Value,
    /// `maint` after the drain, so checks stop while the application
    /// restarts (default true).
    pub maint_during_update: Option<bool>,
    pub health: Option<HealthBody>,
    /// Wait after each wave (default 0).
    pub soak_secs: Option<u64>,
    pub reason: Option<String>,
    /// Optional (issue 13): an http(s) URL that receives `rollout.completed`, `rollout.halted`
    /// or `rollout.aborted`, signed with the service's callback secret (docs/webhooks.md).
    /// Checked like a webhook URL (422). Not part of the stored spec.
    #[serde(default, skip_serializing)]
    pub callback_url: Option<String>,
}

/// Waves.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaveBody {
    /// Servers per wave: a number (`1`) or a share of the targets (`"25%"`).
    #[schema(value_type = Object)]
    pub size: Value,
    /// Servers of one backend out of `ready` at once because of this
    /// rollout (default 1).
    pub max_unavailable_per_backend: Option<u32>,
}

/// Waiting for sessions after the drain.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    /// Default 300.
    pub timeout_secs: Option<u64>,
    /// How often sessions are read (default 1000; ticks are 500 ms apart).
    pub poll_ms: Option<u64>,
    /// `halt` (default) or `shutdown_sessions`.
    pub on_timeout: Option<String>,
}

/// The health gate after the update.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthBody {
    /// HAProxy's check must say up this long (default 10).
    pub healthy_for_secs: Option<u64>,
    /// Give up after this long (default 300).
    pub timeout_secs: Option<u64>,
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct ValidRollout {
    pub transaction_id: Uuid,
    pub targets: BatchTargets,
    pub wave_size: WaveSize,
    pub spec: RolloutSpec,
    pub reason: Option<String>,
}

fn secs(field: &str, v: Option<u64>, default: u64, min: u64) -> Result<u64, String> {
    let v = v.unwrap_or(default);
    if v < min || v > MAX_SECS {
        return Err(format!("{field} must be {min} to {MAX_SECS}, not {v}"));
    }
    Ok(v)
}

/// Validates a request; `policy` says where update hooks may come from.
///
/// # Errors
/// A sentence naming the field.
pub fn validate(body: &RolloutBody, policy: &HookPolicy) -> Result<ValidRollout, String> {
    let transaction_id = match body.transaction_id.as_deref() {
        Some(t) => parse_transaction_id(t).map_err(|e| e.0)?,
        None => Uuid::new_v4(),
    };
    let targets = parse_batch_targets_json(&body.targets).map_err(|e| e.0)?;
    let wave_size = WaveSize::parse(&body.wave.size)?;
    let max_unavailable = body.wave.max_unavailable_per_backend.unwrap_or(1);
    if max_unavailable == 0 {
        return Err("wave.max_unavailable_per_backend must be at least 1".into());
    }
    crate::rollout::hook::validate_update(&body.update, policy)?;
    let drain = body.drain.clone().unwrap_or(DrainBody {
        timeout_secs: None,
        poll_ms: None,
        on_timeout: None,
    });
    let on_timeout = match drain.on_timeout.as_deref() {
        None | Some("halt") => OnTimeout::Halt,
        Some("shutdown_sessions") => OnTimeout::ShutdownSessions,
        Some(other) => {
            return Err(format!(
                "drain.on_timeout must be \"halt\" or \"shutdown_sessions\", not {other:?}"
            ));
        }
    };
    let poll_ms = drain.poll_ms.unwrap_or(1000);
    if !(100..=60_000).contains(&poll_ms) {
        return Err(format!("drain.poll_ms must be 100 to 60000, not {poll_ms}"));
    }
    let health = body.health.clone().unwrap_or(HealthBody {
        healthy_for_secs: None,
        timeout_secs: None,
    });
    let timings = Timings {
        drain_timeout_secs: secs("drain.timeout_secs", drain.timeout_secs, 300, 1)?,
        drain_poll_ms: poll_ms,
        on_timeout,
        maint_during_update: body.maint_during_update.unwrap_or(true),
        healthy_for_secs: secs("health.healthy_for_secs", health.healthy_for_secs, 10, 0)?,
        health_timeout_secs: secs("health.timeout_secs", health.timeout_secs, 300, 1)?,
        soak_secs: secs("soak_secs", body.soak_secs, 0, 0)?,
        max_unavailable_per_backend: max_unavailable,
    };
    let reason = parse_reason(body.reason.clone()).map_err(|e| e.0)?;
    Ok(ValidRollout {
        transaction_id,
        targets,
        wave_size,
        spec: RolloutSpec {
            targets: body.targets.clone(),
            wave_size: body.wave.size.clone(),
            timings,
            update: body.update.clone(),
        },
        reason,
    })
}
