-- Drops the module's own tables only. AC's tables (servers, applications, application_groups,
-- application_group_members) are never dropped here: they hold AC's data.
DROP TABLE IF EXISTS haproxy_application_links;
DROP TABLE IF EXISTS haproxy_server_status_history;
DROP TABLE IF EXISTS haproxy_actions;
DROP TABLE IF EXISTS haproxy_batches;
DROP TABLE IF EXISTS haproxy_servers;
DROP TABLE IF EXISTS haproxy_backends;
DROP TABLE IF EXISTS haproxy_instances;
