-- One row per sync command and instance: dedupes scheduler ticks and forced
-- syncs by transaction id (rule 1 applies to syncs too) and keeps their
-- outcome, counts and events for re-publication.
CREATE TABLE haproxy_sync_runs (
    id             BIGSERIAL PRIMARY KEY,
    transaction_id UUID NOT NULL,
    instance_id    BIGINT NOT NULL REFERENCES haproxy_instances (id) ON DELETE CASCADE,
    reason         TEXT NOT NULL,
    actor          TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'running',
    error          TEXT NULL,
    counts         JSONB NOT NULL DEFAULT '{}',
    events         JSONB NOT NULL DEFAULT '[]',
    requested_at   TIMESTAMPTZ NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ NULL,
    CONSTRAINT haproxy_sync_runs_transaction_id_key UNIQUE (transaction_id),
    CONSTRAINT haproxy_sync_runs_reason_check CHECK (reason IN ('schedule', 'force')),
    CONSTRAINT haproxy_sync_runs_status_check
        CHECK (status IN ('running', 'success', 'failed', 'skipped'))
);

CREATE INDEX haproxy_sync_runs_instance_started_idx
    ON haproxy_sync_runs (instance_id, started_at DESC);
CREATE INDEX haproxy_sync_runs_started_idx ON haproxy_sync_runs (started_at);
