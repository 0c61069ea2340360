DROP INDEX IF EXISTS haproxy_actions_batch_id_status_idx;
CREATE INDEX haproxy_actions_batch_id_status_idx ON haproxy_actions (batch_id, status);
