//! Running one server's update hook. The hook runs under an advisory lock
//! of its rollout server row, held on a connection of its own for the whole
//! run: never twice at the same time for one server, and when the worker
//! dies the lock goes with its connection, so the redelivered message runs
//! the hook again (hooks must be idempotent; docs/rollouts.md).

use std::time::Duration;

use crate::db::locks::AdvisoryLocks;
use crate::db::rollouts::{self, TargetInfo};
use crate::db::{self};
use crate::domain::rollout::{RolloutSpec, hook_lock_key};
use crate::domain::rollout_hook::{
    HookTarget, UpdateHook, ansible_argv, check_ansible_host, command_argv,
};
use crate::queue::Disposition;
use crate::queue::message::{RolloutHookRun, RolloutTick};
use crate::rollout::hook::{self as runner, validate_update};
use crate::worker::{InfraError, WorkerContext};

/// Runs the hook of `r` if it is still to be run.
///
/// # Errors
/// [`InfraError`].
pub async fn run(ctx: &WorkerContext, r: RolloutHookRun) -> Result<Disposition, InfraError> {
    let Some(mut lock) = AdvisoryLocks::try_key(&ctx.pool, hook_lock_key(r.server_row_id)).await?
    else {
        tracing::info!("the hook of this server runs elsewhere");
        return Ok(Disposition::Ack);
    };
    let (row_id, rollout_id, attempt) = (r.server_row_id, r.rollout_id, r.attempt);
    let loaded = lock
        .run(move |c| {
            let Some(rollout) = rollouts::get(c, rollout_id)? else {
                return Ok(None);
            };
            let target = rollouts::target_infos(c, rollout_id)?
                .into_iter()
                .find(|t| t.row_id == row_id);
            let begun = rollouts::begin_hook(c, row_id, attempt)?;
            Ok(Some((rollout, target, begun)))
        })
        .await;
    let (rollout, target) = match loaded {
        Ok(Some((rollout, Some(target), true))) => (rollout, target),
        Ok(_) => {
            lock.release().await;
            return Ok(Disposition::Ack);
        }
        Err(e) => {
            lock.release().await;
            return Err(e.into());
        }
    };
    let Some((exit_code, output)) = execute(ctx, &rollout.spec, &target).await else {
        // A manual update: the operator's `continue` finishes it.
        lock.release().await;
        return Ok(Disposition::Ack);
    };
    let out = output.clone();
    let finished = lock
        .run(move |c| rollouts::finish_hook(c, row_id, attempt, exit_code, &out))
        .await;
    lock.release().await;
    finished?;
    tracing::info!(?exit_code, server = %target.server_name, "update hook finished");
    // Look at the rollout now rather than at its next tick; a duplicate of
    // the pending tick is dropped by its sequence number.
    let seq = db::run(&ctx.pool, move |c| {
        Ok(rollouts::get(c, rollout_id)?.map(|r| r.tick_seq))
    })
    .await?;
    if let Some(seq) = seq {
        let tick = RolloutTick { rollout_id, seq };
        ctx.publisher
            .publish_tick(&ctx.topology, &tick, false)
            .await?;
    }
    Ok(Disposition::Ack)
}

/// Runs the hook; its exit code (none when it was killed or could not
/// start) and output. `None` for a manual update: nothing runs, the
/// rollout waits for `continue`.
async fn execute(
    ctx: &WorkerContext,
    spec: &serde_json::Value,
    t: &TargetInfo,
) -> Option<(Option<i32>, String)> {
    let spec = match serde_json::from_value::<RolloutSpec>(spec.clone())
        .map_err(|e| e.to_string())
        .and_then(|s| validate_update(&s.update, &ctx.rollout.policy()))
    {
        Ok(s) => s,
        Err(e) => return Some((None, format!("the update hook cannot run: {e}"))),
    };
    let target = HookTarget {
        hostname: t.hostname.clone().unwrap_or_else(|| t.address.clone()),
        address: t.address.clone(),
        port: t.port,
        server: t.server_name.clone(),
        backend: t.backend_name.clone(),
        instance: t.instance_name.clone(),
        application: t.application.clone(),
    };
    let command = match &spec.hook {
        UpdateHook::Manual => return None,
        UpdateHook::Command { argv: a } => command_argv(a, &target),
        UpdateHook::Ansible {
            playbook,
            extra_vars,
        } => {
            if let Err(e) = check_ansible_host(&target.hostname) {
                return Some((None, format!("the update hook cannot run: {e}")));
            }
            ansible_argv(&ctx.rollout.ansible_playbook, playbook, extra_vars, &target)
        }
    };
    let timeout = Duration::from_secs(spec.timeout_secs);
    Some(match runner::run(&command, timeout, &[]).await {
        Ok(done) => {
            let mut output = done.output;
            if done.timed_out {
                output.push_str(&format!(
                    "\n[killed: the hook ran longer than its timeout of {} s]",
                    spec.timeout_secs
                ));
            }
            (done.exit_code.filter(|_| !done.timed_out), output)
        }
        Err(e) => (None, format!("the update hook could not start: {e}")),
    })
}
