ALTER TABLE haproxy_servers RESET (fillfactor);
CREATE INDEX IF NOT EXISTS haproxy_actions_unfinished_requested_at_idx
    ON haproxy_actions (requested_at) WHERE status IN ('pending', 'running');
DROP INDEX IF EXISTS haproxy_actions_batch_id_status_idx;
CREATE INDEX haproxy_actions_batch_id_status_idx ON haproxy_actions (batch_id, status);
