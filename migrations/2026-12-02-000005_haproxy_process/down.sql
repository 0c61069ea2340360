ALTER TABLE haproxy_instances
    DROP COLUMN IF EXISTS restore_after_reload,
    DROP COLUMN IF EXISTS last_reload_at,
    DROP COLUMN IF EXISTS haproxy_started_at,
    DROP COLUMN IF EXISTS haproxy_pid;
