//! Rollouts in the worker (issue 12): a tick looks at one rollout and moves
//! it on ([`tick`]); a hook run updates one server ([`hook`]). Both are
//! messages any worker may take; waiting is a tick re-published through
//! the wait queue, never a sleeping worker.

pub mod events;
pub mod hook;
pub mod tick;

use std::sync::Arc;
use std::time::Duration;

use super::{InfraError, WorkerContext};
use crate::queue::message::{
    InvalidMessage, RolloutHookRun, RolloutTick, parse_hook_run, parse_tick,
};
use crate::queue::{Disposition, InfraRetryPolicy, MessageHandler};

/// Ticks: short, one rollout at a time each.
pub struct TickHandler {
    ctx: Arc<WorkerContext>,
}

impl TickHandler {
    pub fn new(ctx: Arc<WorkerContext>) -> Self {
        Self { ctx }
    }
}

impl MessageHandler for TickHandler {
    type Request = RolloutTick;
    type InfraError = InfraError;

    const INFRA_RETRY: InfraRetryPolicy = InfraRetryPolicy {
        retries: &[],
        pause_before_requeue: Duration::from_secs(1),
    };

    fn parse(&self, data: &[u8]) -> Result<RolloutTick, InvalidMessage> {
        parse_tick(data)
    }

    fn span(&self, t: &RolloutTick) -> tracing::Span {
        tracing::info_span!("rollout_tick", rollout_id = t.rollout_id, seq = t.seq)
    }

    async fn process(&self, t: &RolloutTick) -> Result<Disposition, InfraError> {
        tick::run(&self.ctx, *t).await
    }
}

/// Hook runs: long (up to the hook's timeout), so on a queue of their own.
pub struct HookHandler {
    ctx: Arc<WorkerContext>,
}

impl HookHandler {
    pub fn new(ctx: Arc<WorkerContext>) -> Self {
        Self { ctx }
    }
}

impl MessageHandler for HookHandler {
    type Request = RolloutHookRun;
    type InfraError = InfraError;

    const INFRA_RETRY: InfraRetryPolicy = InfraRetryPolicy {
        retries: &[],
        pause_before_requeue: Duration::from_secs(1),
    };

    fn parse(&self, data: &[u8]) -> Result<RolloutHookRun, InvalidMessage> {
        parse_hook_run(data)
    }

    fn span(&self, r: &RolloutHookRun) -> tracing::Span {
        tracing::info_span!(
            "rollout_hook",
            rollout_id = r.rollout_id,
            server_row_id = r.server_row_id,
            attempt = r.attempt
        )
    }

    async fn process(&self, r: &RolloutHookRun) -> Result<Disposition, InfraError> {
        hook::run(&self.ctx, *r).await
    }
}
