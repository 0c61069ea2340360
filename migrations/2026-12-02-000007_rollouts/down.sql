DROP INDEX IF EXISTS haproxy_actions_rollout_id_idx;
ALTER TABLE haproxy_actions DROP COLUMN IF EXISTS rollout_id;
DROP TABLE IF EXISTS haproxy_rollout_servers;
DROP TABLE IF EXISTS haproxy_rollouts;
