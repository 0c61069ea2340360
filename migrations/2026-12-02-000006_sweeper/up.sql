-- The sweeper (issue 11 point 4): actions and batches left unfinished are
-- re-published or finished by the scheduler after a grace period.

-- How often the sweeper took the row up, and when last (the database's
-- clock): a row is taken up again only a grace period after that, and at
-- most `sweeper.max_republishes` times.
ALTER TABLE haproxy_actions ADD COLUMN IF NOT EXISTS sweeps integer NOT NULL DEFAULT 0;
ALTER TABLE haproxy_actions ADD COLUMN IF NOT EXISTS swept_at timestamptz;
ALTER TABLE haproxy_batches ADD COLUMN IF NOT EXISTS sweeps integer NOT NULL DEFAULT 0;
ALTER TABLE haproxy_batches ADD COLUMN IF NOT EXISTS swept_at timestamptz;

-- The sweeper reads only unfinished rows: few, whatever the table's size.
-- A final status leaves the index (the status update is not HOT already:
-- status is in haproxy_actions_batch_id_status_idx).
CREATE INDEX IF NOT EXISTS haproxy_actions_unfinished_created_at_idx
    ON haproxy_actions (created_at) WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS haproxy_batches_open_created_at_idx
    ON haproxy_batches (created_at) WHERE completed_at IS NULL;

-- Items the sweeper took up, by kind: a counter shared by every scheduler
-- (the metric haproxy_control_swept_total).
CREATE TABLE IF NOT EXISTS haproxy_sweeps (
    kind text PRIMARY KEY,
    count bigint NOT NULL DEFAULT 0,
    last_at timestamptz
);
