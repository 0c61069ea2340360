-- Issue 13, part 2: four-eyes approval for critical requests. A request the
-- approval policy matches is recorded with status `awaiting_approval` and an
-- approval row, in one transaction; approving it re-enters the normal path
-- under its original transaction id.

-- Service-wide settings, one JSON document per name (`approval`: the policy).
CREATE TABLE IF NOT EXISTS haproxy_settings (
    name        TEXT PRIMARY KEY,
    value       JSONB NOT NULL,
    updated_by  TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS haproxy_approvals (
    id              BIGSERIAL PRIMARY KEY,
    -- What waits: an action, a batch or a rollout, by its transaction id.
    kind            TEXT NOT NULL,
    transaction_id  UUID NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    requester       TEXT NOT NULL,
    -- What was asked, for the approver (action, targets, force, reason, ...).
    summary         JSONB NOT NULL,
    -- The policy rules the request matched, each with why.
    matched_rules   JSONB NOT NULL,
    requested_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL,
    decided_by      TEXT,
    decided_at      TIMESTAMPTZ,
    comment         TEXT,
    UNIQUE (kind, transaction_id),
    CONSTRAINT haproxy_approvals_kind_check CHECK (kind IN ('action', 'batch', 'rollout')),
    CONSTRAINT haproxy_approvals_status_check
        CHECK (status IN ('pending', 'approved', 'rejected', 'expired'))
);
-- Listing by status, newest first; the sweeper's expiry scan.
CREATE INDEX IF NOT EXISTS haproxy_approvals_status_id_idx ON haproxy_approvals (status, id);
CREATE INDEX IF NOT EXISTS haproxy_approvals_expiry_idx
    ON haproxy_approvals (expires_at) WHERE status = 'pending';

ALTER TABLE haproxy_actions DROP CONSTRAINT IF EXISTS haproxy_actions_status_check;
ALTER TABLE haproxy_actions ADD CONSTRAINT haproxy_actions_status_check
    CHECK (status IN ('awaiting_approval', 'pending', 'running', 'success', 'failed',
                      'superseded', 'rejected'));

-- A batch waits as a whole (no action of it is recorded while it waits).
ALTER TABLE haproxy_batches ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'accepted';
ALTER TABLE haproxy_batches ADD COLUMN IF NOT EXISTS status_detail TEXT;
ALTER TABLE haproxy_batches DROP CONSTRAINT IF EXISTS haproxy_batches_status_check;
ALTER TABLE haproxy_batches ADD CONSTRAINT haproxy_batches_status_check
    CHECK (status IN ('awaiting_approval', 'accepted', 'rejected'));

ALTER TABLE haproxy_rollouts DROP CONSTRAINT IF EXISTS haproxy_rollouts_status_check;
ALTER TABLE haproxy_rollouts ADD CONSTRAINT haproxy_rollouts_status_check
    CHECK (status IN ('awaiting_approval', 'running', 'paused', 'halted', 'aborting',
                      'aborted', 'completed', 'rejected'));
DROP INDEX IF EXISTS haproxy_rollouts_active_idx;
CREATE INDEX IF NOT EXISTS haproxy_rollouts_active_idx
    ON haproxy_rollouts (id)
    WHERE status IN ('awaiting_approval', 'running', 'paused', 'halted', 'aborting');
