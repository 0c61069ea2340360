#!/usr/bin/env bash
# A RabbitMQ cluster of N nodes on one machine, for a lab or a test:
#
#   deploy/rabbitmq-cluster.sh start  [NODES] [BASE_PORT] [DATA_DIR]
#   deploy/rabbitmq-cluster.sh status [NODES] [BASE_PORT] [DATA_DIR]
#   deploy/rabbitmq-cluster.sh stop   [NODES] [BASE_PORT] [DATA_DIR]
#
# Defaults: 3 nodes, base port 35672, data in /tmp/rabbitmq-cluster-<BASE_PORT>.
# Node i (1..N) is `hc<BASE_PORT>n<i>@localhost`, listens for AMQP on
# 127.0.0.1:BASE_PORT+i-1 and for Erlang distribution on BASE_PORT+100+i-1,
# keeps its data and logs in DATA_DIR/node<i>, with no plugins and its own
# configuration files (the machine's /etc/rabbitmq is not read). The nodes
# share one Erlang cookie (DATA_DIR/.erlang.cookie) and nodes 2..N join
# node 1 (`rabbitmqctl join_cluster`). The machine's own RabbitMQ
# (5672/25672) is left alone; epmd is shared.
#
# AMQP URLs of the cluster (`status` prints them, for AMQP_URLS):
#   amqp://guest:guest@127.0.0.1:BASE_PORT/%2f,…
# (guest may log in from loopback only, which is where the nodes listen.)
#
# `stop` stops every node (SIGKILL after 30 s) and deletes DATA_DIR.
# Single nodes: `node-stop I` / `node-start I` (for failover drills), and
# rabbitmqctl against node I: `ctl I NODES BASE_PORT DATA_DIR ARGS…`, e.g.
#   deploy/rabbitmq-cluster.sh node-stop 2 3 35672 /tmp/lab
#   deploy/rabbitmq-cluster.sh ctl 1 3 35672 /tmp/lab list_queues name leader
set -euo pipefail

usage() {
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

ACTION=${1:-}
case "$ACTION" in
node-stop | node-start | ctl)
    NODE_INDEX=${2:-}
    [[ "$NODE_INDEX" =~ ^[0-9]+$ ]] || usage
    shift 2
    ;;
start | stop | status) shift ;;
*) usage ;;
esac
NODES=${1:-3}
BASE_PORT=${2:-35672}
DATA_DIR=${3:-/tmp/rabbitmq-cluster-$BASE_PORT}
shift $(($# < 3 ? $# : 3))
[[ "$NODES" =~ ^[0-9]+$ && "$NODES" -ge 1 ]] || { echo "NODES must be a number >= 1" >&2; exit 2; }
[[ "$BASE_PORT" =~ ^[0-9]+$ && "$BASE_PORT" -ge 1024 && $((BASE_PORT + 100 + NODES)) -lt 65536 ]] ||
    { echo "BASE_PORT must be a number from 1024 leaving room for 100 + NODES ports" >&2; exit 2; }
if ((BASE_PORT <= 5672 + 100 && BASE_PORT + 100 + NODES > 5672)) ||
    ((BASE_PORT <= 25672 && BASE_PORT + 100 + NODES > 25672 - 100)); then
    echo "BASE_PORT $BASE_PORT would touch the machine's RabbitMQ ports (5672, 25672)" >&2
    exit 2
fi

# The real scripts: Debian's /usr/sbin wrappers switch to user rabbitmq and
# its home, which would share the machine's cookie.
RABBITMQ_BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
[[ -x "$RABBITMQ_BIN/rabbitmq-server" ]] || {
    echo "no $RABBITMQ_BIN/rabbitmq-server: install rabbitmq-server (deploy/ensure-deps.sh) or set RABBITMQ_BIN" >&2
    exit 3
}

node_name() { echo "hc${BASE_PORT}n$1@localhost"; }
amqp_port() { echo $((BASE_PORT + $1 - 1)); }
dist_port() { echo $((BASE_PORT + 100 + $1 - 1)); }

# Runs a RabbitMQ tool for node $1 with the cluster's environment.
with_env() {
    local i=$1
    shift
    env HOME="$DATA_DIR" \
        RABBITMQ_NODENAME="$(node_name "$i")" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$(amqp_port "$i")" \
        RABBITMQ_DIST_PORT="$(dist_port "$i")" \
        RABBITMQ_MNESIA_BASE="$DATA_DIR/node$i/mnesia" \
        RABBITMQ_LOG_BASE="$DATA_DIR/node$i/log" \
        RABBITMQ_PID_FILE="$DATA_DIR/node$i/rabbit.pid" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$DATA_DIR/enabled_plugins" \
        RABBITMQ_CONFIG_FILE="$DATA_DIR/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$DATA_DIR/advanced.config" \
        RABBITMQ_CONF_ENV_FILE="$DATA_DIR/rabbitmq-env.conf" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        "$@"
}

ctl() {
    local i=$1
    shift
    with_env "$i" "$RABBITMQ_BIN/rabbitmqctl" -n "$(node_name "$i")" "$@"
}

# Starts node $1 in the background (a session of its own).
launch_node() {
    local i=$1
    mkdir -p "$DATA_DIR/node$i/mnesia" "$DATA_DIR/node$i/log"
    with_env "$i" setsid "$RABBITMQ_BIN/rabbitmq-server" \
        >"$DATA_DIR/node$i/log/stdout.log" 2>&1 </dev/null &
}

# Waits until node $1 accepts AMQP connections (its listener opens last in
# the boot), at most 90 s.
await_node() {
    local i=$1 port
    port=$(amqp_port "$i")
    for _ in $(seq 900); do
        if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "node $(node_name "$i") did not start within 90 s; its log:" >&2
    tail -n 30 "$DATA_DIR/node$i/log/stdout.log" >&2 || true
    return 1
}

start_node() {
    launch_node "$1"
    await_node "$1"
}

stop_node() {
    local i=$1 pid
    [[ -f "$DATA_DIR/node$i/rabbit.pid" ]] || return 0
    pid=$(cat "$DATA_DIR/node$i/rabbit.pid" 2>/dev/null || true)
    ctl "$i" stop "$DATA_DIR/node$i/rabbit.pid" >/dev/null 2>&1 &
    local stopper=$!
    for _ in $(seq 300); do
        [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        # The node's own process group (setsid): beam and its helpers.
        local group
        group=$(ps -o pgid= -p "$pid" | tr -d ' ')
        kill -9 -- "-${group:-$pid}" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    fi
    # rabbitmqctl returns once the node is gone (or failed to reach it).
    wait "$stopper" 2>/dev/null || true
    rm -f "$DATA_DIR/node$i/rabbit.pid"
}

case "$ACTION" in
start)
    mkdir -p "$DATA_DIR"
    if [[ ! -f "$DATA_DIR/.erlang.cookie" ]]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DATA_DIR/.erlang.cookie")
        chmod 400 "$DATA_DIR/.erlang.cookie"
    fi
    echo "[]." >"$DATA_DIR/enabled_plugins"
    # Queues of a test or lab cluster: short ticks so a lost node is noticed
    # quickly; loopback only.
    cat >"$DATA_DIR/rabbitmq.conf" <<'EOF'
loopback_users.guest = true
cluster_partition_handling = ignore
EOF
    echo "[]." >"$DATA_DIR/advanced.config"
    : >"$DATA_DIR/rabbitmq-env.conf"
    for i in $(seq 1 "$NODES"); do
        launch_node "$i"
    done
    for i in $(seq 1 "$NODES"); do
        await_node "$i"
    done
    for i in $(seq 2 "$NODES"); do
        {
            ctl "$i" stop_app &&
                ctl "$i" join_cluster "$(node_name 1)" &&
                ctl "$i" start_app
        } >>"$DATA_DIR/node$i/log/join.log" 2>&1 || {
            echo "node $(node_name "$i") could not join $(node_name 1):" >&2
            cat "$DATA_DIR/node$i/log/join.log" >&2
            exit 1
        }
        await_node "$i"
    done
    "$0" status "$NODES" "$BASE_PORT" "$DATA_DIR"
    ;;
status)
    urls=()
    running=0
    for i in $(seq 1 "$NODES"); do
        if ctl "$i" status >/dev/null 2>&1; then
            state=running
            running=$((running + 1))
        else
            state=stopped
        fi
        echo "node $i $(node_name "$i") amqp 127.0.0.1:$(amqp_port "$i") dist $(dist_port "$i") $state"
        urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$i")/%2f")
    done
    echo "AMQP_URLS=$(IFS=,; echo "${urls[*]}")"
    [[ $running -gt 0 ]]
    ;;
node-stop)
    stop_node "$NODE_INDEX"
    ;;
node-start)
    start_node "$NODE_INDEX"
    ;;
ctl)
    ctl "$NODE_INDEX" "$@"
    ;;
stop)
    for i in $(seq 1 "$NODES"); do
        stop_node "$i" &
    done
    wait
    # Forget the nodes' names in the shared epmd (they unregister on exit).
    rm -rf "$DATA_DIR"
    ;;
esac
