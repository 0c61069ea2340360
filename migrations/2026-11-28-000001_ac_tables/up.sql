-- AC's own tables.
--
-- On a fresh database these statements create them; on AC's database they already exist and
-- belong to AC, so every table is created only where absent and every column the module reads is
-- added only where missing (ADD COLUMN IF NOT EXISTS). Columns AC has beyond these are left
-- alone. Added NOT NULL columns carry a default so that existing rows stay valid.

CREATE TABLE IF NOT EXISTS servers (
    id              BIGSERIAL PRIMARY KEY,
    hostname        TEXT NOT NULL,
    ip              TEXT NULL,
    is_haproxy_node BOOLEAN NOT NULL DEFAULT false
);

ALTER TABLE servers
    ADD COLUMN IF NOT EXISTS hostname        TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS ip              TEXT NULL,
    ADD COLUMN IF NOT EXISTS is_haproxy_node BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE IF NOT EXISTS applications (
    id        BIGSERIAL PRIMARY KEY,
    name      TEXT NOT NULL,
    server_id BIGINT NULL REFERENCES servers (id),
    port      INTEGER NULL,
    instance  TEXT NULL
);

ALTER TABLE applications
    ADD COLUMN IF NOT EXISTS name      TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS server_id BIGINT NULL REFERENCES servers (id),
    ADD COLUMN IF NOT EXISTS port      INTEGER NULL,
    ADD COLUMN IF NOT EXISTS instance  TEXT NULL;

-- Application mapping looks applications up by server and by port.
CREATE INDEX IF NOT EXISTS applications_server_id_idx ON applications (server_id);
CREATE INDEX IF NOT EXISTS applications_port_idx ON applications (port);

CREATE TABLE IF NOT EXISTS application_groups (
    id   BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL
);

ALTER TABLE application_groups
    ADD COLUMN IF NOT EXISTS name TEXT NOT NULL DEFAULT '';

CREATE TABLE IF NOT EXISTS application_group_members (
    group_id       BIGINT NOT NULL REFERENCES application_groups (id) ON DELETE CASCADE,
    application_id BIGINT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, application_id)
);

-- The primary key serves lookups by group; this one serves "groups of an application" and the
-- ON DELETE CASCADE from applications.
CREATE INDEX IF NOT EXISTS application_group_members_application_id_idx
    ON application_group_members (application_id);
