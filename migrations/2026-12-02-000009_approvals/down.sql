DROP INDEX IF EXISTS haproxy_rollouts_active_idx;
UPDATE haproxy_rollouts SET status = 'aborted' WHERE status IN ('awaiting_approval', 'rejected');
ALTER TABLE haproxy_rollouts DROP CONSTRAINT IF EXISTS haproxy_rollouts_status_check;
ALTER TABLE haproxy_rollouts ADD CONSTRAINT haproxy_rollouts_status_check
    CHECK (status IN ('running', 'paused', 'halted', 'aborting', 'aborted', 'completed'));
CREATE INDEX IF NOT EXISTS haproxy_rollouts_active_idx
    ON haproxy_rollouts (id) WHERE status IN ('running', 'paused', 'halted', 'aborting');

ALTER TABLE haproxy_batches DROP CONSTRAINT IF EXISTS haproxy_batches_status_check;
ALTER TABLE haproxy_batches DROP COLUMN IF EXISTS status_detail;
ALTER TABLE haproxy_batches DROP COLUMN IF EXISTS status;

UPDATE haproxy_actions SET status = 'rejected' WHERE status = 'awaiting_approval';
ALTER TABLE haproxy_actions DROP CONSTRAINT IF EXISTS haproxy_actions_status_check;
ALTER TABLE haproxy_actions ADD CONSTRAINT haproxy_actions_status_check
    CHECK (status IN ('pending', 'running', 'success', 'failed', 'superseded', 'rejected'));

DROP TABLE IF EXISTS haproxy_approvals;
DROP TABLE IF EXISTS haproxy_settings;
