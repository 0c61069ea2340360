-- The module's own tables. All ids are BIGSERIAL, all times TIMESTAMPTZ, every state is TEXT
-- with a CHECK constraint listing the allowed values.

-- One row per HAProxy node, reached through the FAgent that runs next to it. The circuit
-- breaker lives here so that every worker and the API share it.
CREATE TABLE haproxy_instances (
    id                   BIGSERIAL PRIMARY KEY,
    server_id            BIGINT NULL REFERENCES servers (id) ON DELETE SET NULL,
    name                 TEXT NOT NULL,
    fagent_url           TEXT NOT NULL,
    -- A reference to the FAgent token, never the token itself unless spelled `token:...`:
    -- `env:VAR`, `file:/path` or `token:literal`.
    fagent_token_ref     TEXT NOT NULL,
    is_active            BOOLEAN NOT NULL DEFAULT true,
    breaker_state        TEXT NOT NULL DEFAULT 'closed',
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    opened_at            TIMESTAMPTZ NULL,
    probe_started_at     TIMESTAMPTZ NULL,
    last_sync_at         TIMESTAMPTZ NULL,
    last_sync_result     TEXT NULL,
    last_sync_error      TEXT NULL,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT haproxy_instances_name_key UNIQUE (name),
    CONSTRAINT haproxy_instances_fagent_token_ref_check
        CHECK (fagent_token_ref ~ '^(env|file|token):.'),
    CONSTRAINT haproxy_instances_breaker_state_check
        CHECK (breaker_state IN ('closed', 'open', 'half_open')),
    CONSTRAINT haproxy_instances_consecutive_failures_check
        CHECK (consecutive_failures >= 0)
);

-- At most one HAProxy instance per AC server.
CREATE UNIQUE INDEX haproxy_instances_server_id_key
    ON haproxy_instances (server_id) WHERE server_id IS NOT NULL;

CREATE TABLE haproxy_backends (
    id           BIGSERIAL PRIMARY KEY,
    haproxy_id   BIGINT NOT NULL REFERENCES haproxy_instances (id) ON DELETE CASCADE,
    backend_name TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NULL,
    removed_at   TIMESTAMPTZ NULL,
    CONSTRAINT haproxy_backends_haproxy_id_backend_name_key UNIQUE (haproxy_id, backend_name)
);

CREATE TABLE haproxy_servers (
    id                BIGSERIAL PRIMARY KEY,
    backend_id        BIGINT NOT NULL REFERENCES haproxy_backends (id) ON DELETE CASCADE,
    server_name       TEXT NOT NULL,
    address           TEXT NOT NULL DEFAULT '',
    port              INTEGER NULL,
    admin_state       TEXT NOT NULL,
    op_state          TEXT NOT NULL,
    weight            INTEGER NOT NULL DEFAULT 1,
    current_sessions  BIGINT NOT NULL DEFAULT 0,
    check_status      TEXT NULL,
    application_id    BIGINT NULL REFERENCES applications (id) ON DELETE SET NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at      TIMESTAMPTZ NULL,
    removed_at        TIMESTAMPTZ NULL,
    state_changed_at  TIMESTAMPTZ NULL,
    -- When an action or a sync last wrote admin/op state. A sync snapshot taken before this
    -- instant must not overwrite the state.
    state_written_at  TIMESTAMPTZ NULL,
    -- requested_at of the newest action applied to this server: an older command is superseded.
    last_requested_at TIMESTAMPTZ NULL,
    CONSTRAINT haproxy_servers_backend_id_server_name_key UNIQUE (backend_id, server_name),
    CONSTRAINT haproxy_servers_admin_state_check
        CHECK (admin_state IN ('ready', 'drain', 'maint')),
    CONSTRAINT haproxy_servers_op_state_check
        CHECK (op_state IN ('up', 'down', 'no_check', 'stopping', 'starting'))
);

CREATE INDEX haproxy_servers_application_id_idx ON haproxy_servers (application_id);
-- Keyset pagination of a backend's servers.
CREATE INDEX haproxy_servers_backend_id_id_idx ON haproxy_servers (backend_id, id);

CREATE TABLE haproxy_batches (
    id             BIGSERIAL PRIMARY KEY,
    transaction_id UUID NOT NULL,
    action         TEXT NOT NULL,
    actor          TEXT NOT NULL,
    reason         TEXT NULL,
    force          BOOLEAN NOT NULL DEFAULT false,
    targets        JSONB NOT NULL,
    total          INTEGER NOT NULL DEFAULT 0,
    requested_at   TIMESTAMPTZ NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at   TIMESTAMPTZ NULL,
    CONSTRAINT haproxy_batches_transaction_id_key UNIQUE (transaction_id),
    CONSTRAINT haproxy_batches_action_check CHECK (action IN ('ready', 'drain', 'maint')),
    CONSTRAINT haproxy_batches_total_check CHECK (total >= 0)
);

CREATE TABLE haproxy_actions (
    id             BIGSERIAL PRIMARY KEY,
    transaction_id UUID NOT NULL,
    server_id      BIGINT NULL REFERENCES haproxy_servers (id) ON DELETE SET NULL,
    batch_id       BIGINT NULL REFERENCES haproxy_batches (id) ON DELETE SET NULL,
    action         TEXT NOT NULL,
    status         TEXT NOT NULL,
    actor          TEXT NOT NULL,
    reason         TEXT NULL,
    force          BOOLEAN NOT NULL DEFAULT false,
    requested_at   TIMESTAMPTZ NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    -- An error code such as 'agent_unreachable'; the human-readable text is in error_detail.
    error          TEXT NULL,
    error_detail   TEXT NULL,
    -- The final events, published again verbatim when a duplicate of the action arrives.
    events         JSONB NOT NULL DEFAULT '[]'::jsonb,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at     TIMESTAMPTZ NULL,
    finished_at    TIMESTAMPTZ NULL,
    CONSTRAINT haproxy_actions_transaction_id_key UNIQUE (transaction_id),
    CONSTRAINT haproxy_actions_action_check CHECK (action IN ('ready', 'drain', 'maint')),
    CONSTRAINT haproxy_actions_status_check
        CHECK (status IN ('pending', 'running', 'success', 'failed', 'superseded', 'rejected')),
    CONSTRAINT haproxy_actions_attempts_check CHECK (attempts >= 0)
);

CREATE INDEX haproxy_actions_server_id_requested_at_idx
    ON haproxy_actions (server_id, requested_at DESC);
CREATE INDEX haproxy_actions_batch_id_status_idx ON haproxy_actions (batch_id, status);
-- Unfinished actions (stuck-action recovery, metrics).
CREATE INDEX haproxy_actions_unfinished_requested_at_idx
    ON haproxy_actions (requested_at) WHERE status IN ('pending', 'running');

CREATE TABLE haproxy_server_status_history (
    id                   BIGSERIAL PRIMARY KEY,
    server_id            BIGINT NOT NULL REFERENCES haproxy_servers (id) ON DELETE CASCADE,
    previous_admin_state TEXT NULL,
    new_admin_state      TEXT NOT NULL,
    previous_op_state    TEXT NULL,
    new_op_state         TEXT NOT NULL,
    source               TEXT NOT NULL,
    actor                TEXT NOT NULL,
    action_id            BIGINT NULL REFERENCES haproxy_actions (id) ON DELETE SET NULL,
    changed_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT haproxy_server_status_history_source_check CHECK (source IN ('action', 'sync'))
);

-- A server's history, newest first, keyset-paginated.
CREATE INDEX haproxy_server_status_history_server_id_changed_at_idx
    ON haproxy_server_status_history (server_id, changed_at DESC, id DESC);
-- Retention: DELETE ... WHERE changed_at < now() - history_retention.
CREATE INDEX haproxy_server_status_history_changed_at_idx
    ON haproxy_server_status_history (changed_at);
-- So that deleting old actions (ON DELETE SET NULL) does not scan the whole history.
CREATE INDEX haproxy_server_status_history_action_id_idx
    ON haproxy_server_status_history (action_id) WHERE action_id IS NOT NULL;

-- Mapping cache: which AC application a server seen on an instance belongs to, keyed by what
-- survives a backend rename (address, port, server name).
CREATE TABLE haproxy_application_links (
    id             BIGSERIAL PRIMARY KEY,
    haproxy_id     BIGINT NOT NULL REFERENCES haproxy_instances (id) ON DELETE CASCADE,
    address        TEXT NOT NULL,
    port           INTEGER NOT NULL DEFAULT 0,
    server_name    TEXT NOT NULL,
    application_id BIGINT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT haproxy_application_links_key UNIQUE (haproxy_id, address, port, server_name)
);

-- For the ON DELETE CASCADE from applications.
CREATE INDEX haproxy_application_links_application_id_idx
    ON haproxy_application_links (application_id);
