#!/usr/bin/env bash
# Sets up and runs haproxy-control locally: a demo HAProxy in front of three
# real HTTP backends, the reference fagent in front of that HAProxy, the
# database (created and migrated), and `serve` (worker, scheduler and the HTTP
# API on 127.0.0.1:8088, tokens in $DEMO_DIR/api.tokens), with the demo
# HAProxy registered as instance `demo-lb` and a few demo AC rows (hosts,
# applications, an ApplicationGroup) its servers are linked to.
#   deploy/quickstart.sh         start (stops a previous demo first)
#   deploy/quickstart.sh stop    stop everything it started
#   deploy/quickstart.sh reload  reload the demo HAProxy gracefully (haproxy -sf):
#                                drains and maints survive it through the
#                                server-state file the fagent keeps
# Everything lives in $DEMO_DIR (default: .demo in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO_DIR=${DEMO_DIR:-$ROOT/.demo}
FRONTEND_PORT=${DEMO_FRONTEND_PORT:-8080}
FAGENT_PORT=${DEMO_FAGENT_PORT:-9100}
API_PORT=${DEMO_API_PORT:-8088}
BACKEND_PORTS=(${DEMO_BACKEND_PORTS:-18081 18082 18083})
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/haproxy_control}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

stop_all() {
  for pidfile in "$DEMO_DIR"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

if [ "${1:-}" = "stop" ]; then
  stop_all
  echo "demo stopped"
  exit 0
fi

# A graceful reload, as `systemctl reload haproxy` does: a new process reads
# the config and the server-state file, takes the sockets over, and tells
# the old one to finish (-sf).
if [ "${1:-}" = "reload" ]; then
  old=$(cat "$DEMO_DIR/haproxy.pid")
  haproxy -c -q -f "$DEMO_DIR/haproxy.cfg"
  nohup haproxy -db -f "$DEMO_DIR/haproxy.cfg" -sf "$old" >> "$DEMO_DIR/haproxy.log" 2>&1 &
  echo $! > "$DEMO_DIR/haproxy.pid"
  echo "demo HAProxy reloaded: pid $old -> $(cat "$DEMO_DIR/haproxy.pid")"
  exit 0
fi

deploy/ensure-deps.sh
# jq: the HTTP API tour (docs/operations.md) picks ids out of answers with it.
command -v jq >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }
echo "building haproxy-control (debug profile, shared with the tests)"
cargo build -q --bin haproxy-control
BIN=$ROOT/target/debug/haproxy-control

mkdir -p "$DEMO_DIR"
stop_all

# Three demo applications, each answering with its own name.
for i in 1 2 3; do
  port=${BACKEND_PORTS[$((i - 1))]}
  mkdir -p "$DEMO_DIR/app$i"
  echo "app$i" > "$DEMO_DIR/app$i/index.html"
  nohup python3 -m http.server "$port" --bind 127.0.0.1 --directory "$DEMO_DIR/app$i" \
    > "$DEMO_DIR/app$i.log" 2>&1 &
  echo $! > "$DEMO_DIR/app$i.pid"
done

for port in "${BACKEND_PORTS[@]}"; do
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

# server-state-file + load-server-state-from-file: a reload starts every
# server from the state file the fagent keeps (--state-file), not from the
# config, so drains and maints survive it (docs/haproxy-reloads.md).
cat > "$DEMO_DIR/haproxy.cfg" <<CFG
global
  stats socket $DEMO_DIR/admin.sock mode 600 level admin
  stats timeout 30s
  server-state-file $DEMO_DIR/haproxy.state
defaults
  mode http
  load-server-state-from-file global
  timeout connect 1s
  timeout client 10s
  timeout server 10s
frontend demo
  bind 127.0.0.1:$FRONTEND_PORT
  default_backend web
backend web
  balance roundrobin
  option httpchk GET /
  server web1_shop_1 127.0.0.1:${BACKEND_PORTS[0]} check inter 1s
  server web2_shop_1 127.0.0.1:${BACKEND_PORTS[1]} check inter 1s
  server web3_shop_1 127.0.0.1:${BACKEND_PORTS[2]} check inter 1s
backend api
  server api1_shop_1 127.0.0.1:${BACKEND_PORTS[0]} check inter 1s
  server api2_shop_1 127.0.0.1:${BACKEND_PORTS[1]} check inter 1s
CFG
haproxy -c -q -f "$DEMO_DIR/haproxy.cfg"
# A fresh start begins from the config; only reloads carry states over.
rm -f "$DEMO_DIR/haproxy.state"
nohup haproxy -db -f "$DEMO_DIR/haproxy.cfg" > "$DEMO_DIR/haproxy.log" 2>&1 &
echo $! > "$DEMO_DIR/haproxy.pid"

TOKEN_FILE=$DEMO_DIR/fagent.token
[ -s "$TOKEN_FILE" ] || (head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$TOKEN_FILE")
chmod 600 "$TOKEN_FILE"
for _ in $(seq 1 50); do [ -S "$DEMO_DIR/admin.sock" ] && break; sleep 0.1; done
nohup "$BIN" --log-format text fagent \
  --listen "127.0.0.1:$FAGENT_PORT" \
  --haproxy-socket "$DEMO_DIR/admin.sock" \
  --token-file "$TOKEN_FILE" \
  --state-file "$DEMO_DIR/haproxy.state" > "$DEMO_DIR/fagent.log" 2>&1 &
echo $! > "$DEMO_DIR/fagent.pid"

TOKEN=$(cat "$TOKEN_FILE")
for _ in $(seq 1 100); do
  curl -fsS -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$FAGENT_PORT/v1/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$FAGENT_PORT/v1/health" >/dev/null

# The database, its schema, the demo instance, and the worker.
DB_NAME=${DATABASE_URL##*/}
DB_NAME=${DB_NAME%%\?*}
ADMIN_URL=${DATABASE_URL%/*}/postgres
if [ "$(psql "$ADMIN_URL" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != "1" ]; then
  psql "$ADMIN_URL" -qc "CREATE DATABASE \"$DB_NAME\""
fi
"$BIN" --log-format text migrate
# Demo AC rows: the LB node, one host per demo server, application `shop` on
# each (so `web1_shop_1` links to shop on host web1 by the name template), and
# the ApplicationGroup `shop-canary` (shop on web1 and on api1).
psql "$DATABASE_URL" -q <<'SQL'
INSERT INTO servers (id, hostname, ip) VALUES
  (9000, 'demo-lb-node', '127.0.0.1'), (9001, 'web1', '127.0.0.1'), (9002, 'web2', '127.0.0.1'),
  (9003, 'web3', '127.0.0.1'), (9004, 'api1', '127.0.0.1'), (9005, 'api2', '127.0.0.1')
  ON CONFLICT (id) DO NOTHING;
INSERT INTO applications (id, name, server_id, port, instance) VALUES
  (9101, 'shop', 9001, NULL, '1'), (9102, 'shop', 9002, NULL, '1'), (9103, 'shop', 9003, NULL, '1'),
  (9104, 'shop', 9004, NULL, '1'), (9105, 'shop', 9005, NULL, '1')
  ON CONFLICT (id) DO NOTHING;
INSERT INTO application_groups (id, name) VALUES (9201, 'shop-canary') ON CONFLICT (id) DO NOTHING;
INSERT INTO application_group_members (group_id, application_id) VALUES (9201, 9101), (9201, 9104)
  ON CONFLICT DO NOTHING;
SQL
"$BIN" --log-format text instance add --name demo-lb --fagent-url "http://127.0.0.1:$FAGENT_PORT" --token-file "$TOKEN_FILE"

# HTTP API tokens, one `role actor token` per line.
API_TOKENS=$DEMO_DIR/api.tokens
if [ ! -s "$API_TOKENS" ]; then
  {
    echo "# role actor token"
    for who in "viewer user:demo-viewer" "operator user:demo-operator" "admin user:demo-admin"; do
      echo "$who $(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
    done
  } > "$API_TOKENS"
fi
chmod 600 "$API_TOKENS"
API_TOKENS_FILE=$API_TOKENS API_LISTEN=127.0.0.1:$API_PORT \
  nohup "$BIN" --log-format text serve > "$DEMO_DIR/worker.log" 2>&1 &
echo $! > "$DEMO_DIR/worker.pid"
for _ in $(seq 1 100); do grep -q "consuming" "$DEMO_DIR/worker.log" && break; sleep 0.1; done
grep -q "consuming" "$DEMO_DIR/worker.log" || { echo "the worker did not start:"; tail "$DEMO_DIR/worker.log"; exit 1; }
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$API_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$API_PORT/readyz" >/dev/null || { echo "the API is not ready:"; tail "$DEMO_DIR/worker.log"; exit 1; }

OPERATOR_TOKEN=$(awk '$1 == "operator" {print $3}' "$API_TOKENS")
cat <<MSG

haproxy-control demo is running (logs and pids in $DEMO_DIR):
  Operator's page    http://127.0.0.1:$API_PORT/  sign in with the operator token:
                     $OPERATOR_TOKEN
                     (the viewer's and admin's are in $API_TOKENS; docs/page.md)
  HAProxy frontend   http://127.0.0.1:$FRONTEND_PORT/  (backends web, api; socket $DEMO_DIR/admin.sock)
  demo apps          127.0.0.1:${BACKEND_PORTS[*]}
  fagent             http://127.0.0.1:$FAGENT_PORT  (token in $TOKEN_FILE)
  worker, API        haproxy-control serve  (log $DEMO_DIR/worker.log)
  HTTP API           http://127.0.0.1:$API_PORT/api/  (tokens in $API_TOKENS: role actor token)
  database           $DATABASE_URL  (instance demo-lb registered)

Try (as AC would, through RabbitMQ):
  export DATABASE_URL=$DATABASE_URL
  $BIN events &          # status events as JSON lines
  $BIN action --instance demo-lb --backend web --server web2_shop_1 --state drain --reason demo
  for i in 1 2 3 4 5 6; do curl -s http://127.0.0.1:$FRONTEND_PORT/; done   # no app2 while drained
  echo "show servers state web" | socat - $DEMO_DIR/admin.sock      # or: curl the fagent below
  psql $DATABASE_URL -c "SELECT transaction_id, action, status, actor, attempts FROM haproxy_actions"
  psql $DATABASE_URL -c "SELECT server_id, previous_admin_state, new_admin_state, source, actor, changed_at FROM haproxy_server_status_history"
  deploy/quickstart.sh reload   # web2_shop_1 stays drained (the fagent keeps $DEMO_DIR/haproxy.state)
  $BIN action --instance demo-lb --backend web --server web2_shop_1 --state ready

Or straight to the fagent:
  TOKEN=\$(cat $TOKEN_FILE)
  curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$FAGENT_PORT/v1/backends
  curl -s -X PUT -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d "{\"state\":\"drain\",\"transaction_id\":\"\$(cat /proc/sys/kernel/random/uuid)\"}" \\
       http://127.0.0.1:$FAGENT_PORT/v1/backends/web/servers/web3_shop_1/state

Or through the HTTP API (the whole tour: docs/operations.md):
  API=http://127.0.0.1:$API_PORT
  H="Authorization: Bearer \$(awk '\$1 == "operator" {print \$3}' $API_TOKENS)"
  curl -s -H "\$H" \$API/api/haproxy/instances | jq
  LB=\$(curl -s -H "\$H" \$API/api/haproxy/instances | jq '.items[] | select(.name == "demo-lb") | .id')
  curl -s -H "\$H" \$API/api/haproxy/instances/\$LB/backends | jq
  curl -s \$API/metrics | grep '^haproxy_control'

Stop it all with: deploy/quickstart.sh stop
MSG
