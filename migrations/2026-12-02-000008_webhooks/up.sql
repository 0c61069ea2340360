-- Issue 13, part 1: webhooks. Endpoints people configure, the events the
-- dispatcher took from haproxy.events for them, one delivery per (event,
-- endpoint) or (event, callback URL), and every attempt of each.

CREATE TABLE IF NOT EXISTS haproxy_webhook_endpoints (
    id                     BIGSERIAL PRIMARY KEY,
    url                    TEXT NOT NULL,
    -- Routing-key patterns (`*` one word, `#` any number), as on the topic exchange.
    events                 TEXT[] NOT NULL,
    description            TEXT,
    active                 BOOLEAN NOT NULL DEFAULT true,
    -- `whsec_` + base64 of 32 random bytes; never answered but on create and rotate.
    secret                 TEXT NOT NULL,
    -- The secret before the last rotation, still signing until previous_secret_until.
    previous_secret        TEXT,
    previous_secret_until  TIMESTAMPTZ,
    disabled_at            TIMESTAMPTZ,
    disabled_reason        TEXT,
    -- Set when webhook.disabled for disabled_at has been published (outbox).
    disabled_notified      BOOLEAN NOT NULL DEFAULT false,
    -- Since when every attempt failed (null after a success).
    failing_since          TIMESTAMPTZ,
    created_by             TEXT NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS haproxy_webhook_endpoints_to_notify_idx
    ON haproxy_webhook_endpoints (id) WHERE disabled_at IS NOT NULL AND NOT disabled_notified;

-- A request's callback URL, by the request's transaction id (actions,
-- batches and rollouts alike): the final event with that transaction id
-- goes there.
CREATE TABLE IF NOT EXISTS haproxy_webhook_callbacks (
    transaction_id  UUID PRIMARY KEY,
    kind            TEXT NOT NULL,
    url             TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT haproxy_webhook_callbacks_kind_check CHECK (kind IN ('action', 'batch', 'rollout'))
);

-- An event some delivery needs, with its body exactly as published.
CREATE TABLE IF NOT EXISTS haproxy_webhook_events (
    event_id     UUID PRIMARY KEY,
    event_type   TEXT NOT NULL,
    body         TEXT NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS haproxy_webhook_deliveries (
    id                BIGSERIAL PRIMARY KEY,
    event_id          UUID NOT NULL REFERENCES haproxy_webhook_events (event_id) ON DELETE CASCADE,
    endpoint_id       BIGINT REFERENCES haproxy_webhook_endpoints (id) ON DELETE CASCADE,
    callback_url      TEXT,
    event_type        TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'pending',
    -- Attempts made so far (the next one is attempts + 1).
    attempts          INTEGER NOT NULL DEFAULT 0,
    -- Where the retry schedule starts (a redelivery starts it again).
    schedule_from     INTEGER NOT NULL DEFAULT 0,
    -- Due time; while an attempt is under way, the end of its lease.
    next_attempt_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The dispatcher that holds the lease (a late answer of a lost lease is not recorded).
    claimed_by        UUID,
    last_status_code  INTEGER,
    last_error        TEXT,
    last_duration_ms  INTEGER,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at      TIMESTAMPTZ,
    CONSTRAINT haproxy_webhook_deliveries_status_check
        CHECK (status IN ('pending', 'delivered', 'failed')),
    CONSTRAINT haproxy_webhook_deliveries_target_check
        CHECK ((endpoint_id IS NULL) <> (callback_url IS NULL))
);
-- One delivery per event and endpoint, and per event and callback: a
-- redelivered event adds nothing.
CREATE UNIQUE INDEX IF NOT EXISTS haproxy_webhook_deliveries_endpoint_uq
    ON haproxy_webhook_deliveries (event_id, endpoint_id) WHERE endpoint_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS haproxy_webhook_deliveries_callback_uq
    ON haproxy_webhook_deliveries (event_id) WHERE callback_url IS NOT NULL;
-- What the delivery loop claims.
CREATE INDEX IF NOT EXISTS haproxy_webhook_deliveries_due_idx
    ON haproxy_webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- An endpoint's deliveries, newest first.
CREATE INDEX IF NOT EXISTS haproxy_webhook_deliveries_endpoint_idx
    ON haproxy_webhook_deliveries (endpoint_id, id);

CREATE TABLE IF NOT EXISTS haproxy_webhook_attempts (
    id               BIGSERIAL PRIMARY KEY,
    delivery_id      BIGINT NOT NULL REFERENCES haproxy_webhook_deliveries (id) ON DELETE CASCADE,
    attempt          INTEGER NOT NULL,
    attempted_at     TIMESTAMPTZ NOT NULL,
    status_code      INTEGER,
    duration_ms      INTEGER NOT NULL,
    error            TEXT,
    -- When the next attempt is due (null: none, delivered or given up).
    next_attempt_at  TIMESTAMPTZ,
    UNIQUE (delivery_id, attempt)
);
