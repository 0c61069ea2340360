#!/usr/bin/env bash
# Installs and starts what haproxy-control and its tests need on a machine of
# this kind (Debian, root): HAProxy from the distribution, libpq for Diesel,
# and running PostgreSQL and RabbitMQ. Safe to run again.
set -euo pipefail

need_apt=()
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
dpkg -s libpq-dev >/dev/null 2>&1 || need_apt+=(libpq-dev)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# libfaketime: the clock-skew tests run the fagent with its clock 5 minutes off.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need_apt+=(faketime)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached
  rabbitmqctl await_startup >/dev/null
fi
