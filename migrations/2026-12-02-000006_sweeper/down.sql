DROP TABLE IF EXISTS haproxy_sweeps;
DROP INDEX IF EXISTS haproxy_batches_open_created_at_idx;
DROP INDEX IF EXISTS haproxy_actions_unfinished_created_at_idx;
ALTER TABLE haproxy_batches DROP COLUMN IF EXISTS swept_at;
ALTER TABLE haproxy_batches DROP COLUMN IF EXISTS sweeps;
ALTER TABLE haproxy_actions DROP COLUMN IF EXISTS swept_at;
ALTER TABLE haproxy_actions DROP COLUMN IF EXISTS sweeps;
