DROP TABLE IF EXISTS haproxy_webhook_attempts;
DROP TABLE IF EXISTS haproxy_webhook_deliveries;
DROP TABLE IF EXISTS haproxy_webhook_events;
DROP TABLE IF EXISTS haproxy_webhook_callbacks;
DROP TABLE IF EXISTS haproxy_webhook_endpoints;
