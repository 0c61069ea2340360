-- Less write work per action (each index entry is written, and WAL-logged,
-- at the insert and again at every non-HOT update).

-- Most actions belong to no batch. Batch progress queries filter on
-- batch_id = $1, which implies IS NOT NULL, so they still use this index.
DROP INDEX IF EXISTS haproxy_actions_batch_id_status_idx;
CREATE INDEX haproxy_actions_batch_id_status_idx
    ON haproxy_actions (batch_id, status) WHERE batch_id IS NOT NULL;

-- No query reads it (metrics count by status over the table).
DROP INDEX IF EXISTS haproxy_actions_unfinished_requested_at_idx;

-- An action or a sync rewrites a server's state columns, none of them
-- indexed: with room left on each page the new row version stays on it
-- (a HOT update) and no index of the table is touched.
ALTER TABLE haproxy_servers SET (fillfactor = 85);
