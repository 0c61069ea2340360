DROP TABLE IF EXISTS haproxy_sync_runs;
