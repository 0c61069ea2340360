-- Issue 11, point 1: the module notices a reload of HAProxy.
-- The identity of the HAProxy process the last sync saw (from `show info`
-- through the agent: Pid, Start_time_sec on the HAProxy host's clock, used
-- only for equality), when the module last noticed a new process (the
-- database's clock), and whether states the module applied that a reload
-- reset are re-applied (HAProxy wins by default).
ALTER TABLE haproxy_instances
    ADD COLUMN IF NOT EXISTS haproxy_pid integer,
    ADD COLUMN IF NOT EXISTS haproxy_started_at timestamptz,
    ADD COLUMN IF NOT EXISTS last_reload_at timestamptz,
    ADD COLUMN IF NOT EXISTS restore_after_reload boolean NOT NULL DEFAULT false;
