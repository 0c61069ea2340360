-- Most actions belong to no batch; an index entry for each of them (and a
-- new one at each status change) was write work for nothing. Batch
-- progress queries filter on batch_id = $1, which implies IS NOT NULL, so
-- they still use this index.
DROP INDEX IF EXISTS haproxy_actions_batch_id_status_idx;
CREATE INDEX haproxy_actions_batch_id_status_idx
    ON haproxy_actions (batch_id, status) WHERE batch_id IS NOT NULL;
