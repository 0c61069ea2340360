-- Issue 12: rolling updates. A rollout is a durable state machine: one row
-- per rollout, one row per server with its step; every state change it makes
-- is an ordinary action (haproxy_actions.rollout_id says which rollout).

CREATE TABLE IF NOT EXISTS haproxy_rollouts (
    id                          BIGSERIAL PRIMARY KEY,
    transaction_id              UUID NOT NULL UNIQUE,
    actor                       TEXT NOT NULL,
    reason                      TEXT,
    status                      TEXT NOT NULL DEFAULT 'running',
    -- The request as validated (targets, wave, drain, update, health, ...).
    spec                        JSONB NOT NULL,
    total                       INTEGER NOT NULL,
    waves                       INTEGER NOT NULL,
    current_wave                INTEGER NOT NULL DEFAULT 0,
    -- When every server of the current wave was done (soak starts).
    wave_done_at                TIMESTAMPTZ,
    -- Ticks carry it: a tick older than the row's is a duplicate.
    tick_seq                    BIGINT NOT NULL DEFAULT 0,
    halted_reason               TEXT,
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at                 TIMESTAMPTZ,
    CONSTRAINT haproxy_rollouts_status_check
        CHECK (status IN ('running', 'paused', 'halted', 'aborting', 'aborted', 'completed'))
);
-- Listing newest first; the active ones for overlap checks and the sweeper.
CREATE INDEX IF NOT EXISTS haproxy_rollouts_active_idx
    ON haproxy_rollouts (id) WHERE status IN ('running', 'paused', 'halted', 'aborting');

CREATE TABLE IF NOT EXISTS haproxy_rollout_servers (
    id                BIGSERIAL PRIMARY KEY,
    rollout_id        BIGINT NOT NULL REFERENCES haproxy_rollouts (id) ON DELETE CASCADE,
    server_id         BIGINT NOT NULL REFERENCES haproxy_servers (id),
    backend_id        BIGINT NOT NULL REFERENCES haproxy_backends (id),
    wave              INTEGER NOT NULL,
    position          INTEGER NOT NULL,
    step              TEXT NOT NULL DEFAULT 'pending',
    -- The step a failed server failed in (resume retries it).
    failed_step       TEXT,
    -- Incremented by each resume: the step's transaction ids change with it.
    attempt           INTEGER NOT NULL DEFAULT 0,
    step_started_at   TIMESTAMPTZ,
    healthy_since     TIMESTAMPTZ,
    hook_runs         INTEGER NOT NULL DEFAULT 0,
    hook_started_at   TIMESTAMPTZ,
    hook_finished_at  TIMESTAMPTZ,
    hook_exit_code    INTEGER,
    hook_output       TEXT,
    error             TEXT,
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    UNIQUE (rollout_id, server_id),
    CONSTRAINT haproxy_rollout_servers_step_check CHECK (step IN
        ('pending', 'draining', 'drained', 'updating', 'updated', 'healthy', 'ready', 'failed', 'skipped'))
);
-- Overlap check: is this server in an active rollout?
CREATE INDEX IF NOT EXISTS haproxy_rollout_servers_server_id_idx
    ON haproxy_rollout_servers (server_id);

ALTER TABLE haproxy_actions ADD COLUMN IF NOT EXISTS rollout_id BIGINT
    REFERENCES haproxy_rollouts (id) ON DELETE SET NULL;
CREATE INDEX IF NOT EXISTS haproxy_actions_rollout_id_idx
    ON haproxy_actions (rollout_id) WHERE rollout_id IS NOT NULL;
