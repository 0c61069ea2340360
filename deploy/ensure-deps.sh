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
# initdb and pg_ctl: the connections test runs a PostgreSQL server of its own.
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
# The Debian package test: `systemd-analyze verify` on the units, and what
# the package depends on (dpkg -i installs no dependency).
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v adduser >/dev/null 2>&1 || need_apt+=(adduser)
dpkg -s libpq5 >/dev/null 2>&1 || need_apt+=(libpq5)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
# cargo-deb builds the Debian package (docs/install.md); the package test
# packs the dev build with it (`--no-build --profile dev`), which 3.x allows.
if ! cargo deb --version 2>/dev/null | grep -q '^cargo-deb 3\.'; then
  cargo install --locked cargo-deb --version '^3.8'
fi

# promtool: the alert rules in deploy/prometheus are checked and unit-tested
# with the real tool. Only the binaries are wanted: no recommended exporters,
# and the package's own service is stopped where systemd started it.
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing: prometheus (for promtool)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

# RabbitMQ from the distribution: the broker on 5672, and the scripts
# deploy/rabbitmq-cluster.sh starts a lab or test cluster with
# (/usr/lib/rabbitmq/bin). The package's postinst would start its own
# service on 5672, where a broker may already run (then that start, and so
# the install, fails; or two brokers compete): no service is started during
# the install (policy-rc.d says 101), and the broker is started below only if
# nothing answers on 5672. Where one already answered, the package's service
# is not left enabled to clash with it at the next boot.
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  echo "installing: rabbitmq-server"
  broker_before=no
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && broker_before=yes
  policy=/usr/sbin/policy-rc.d
  saved_policy=""
  if [ -e "$policy" ]; then
    saved_policy="$(mktemp)"
    cp -p "$policy" "$saved_policy"
  fi
  printf '#!/bin/sh\n# ensure-deps.sh: no service starts while rabbitmq-server installs\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  rc=0
  { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null; } || rc=$?
  if [ -n "$saved_policy" ]; then mv "$saved_policy" "$policy"; else rm -f "$policy"; fi
  [ "$rc" -eq 0 ] || { echo "installing rabbitmq-server failed ($rc)" >&2; exit "$rc"; }
  if [ "$broker_before" = yes ] && [ -d /run/systemd/system ]; then
    systemctl disable rabbitmq-server >/dev/null 2>&1 || true
  fi
fi

if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached
  rabbitmqctl await_startup >/dev/null
fi

# Ansible for the rollouts' `ansible` update hook and its tests: ansible-core
# from PyPI in the project's own venv, .venv/ansible under the repository root
# (the tests and the `[rollout]` config point at .venv/ansible/bin/ansible-playbook).
# Debian's python3 needs python3-venv for `python3 -m venv`.
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
ansible_venv="$repo_root/.venv/ansible"
if [ ! -x "$ansible_venv/bin/ansible-playbook" ]; then
  py=/usr/bin/python3
  [ -x "$py" ] || py="$(command -v python3)"
  if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "installing: python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  echo "installing: ansible-core into $ansible_venv"
  "$py" -m venv "$ansible_venv"
  "$ansible_venv/bin/pip" install --quiet 'ansible-core>=2.19,<2.20'
fi
# community.general (its haproxy module is the benchmark's reference): the
# `ansible` package bundles it; about 25 s and 480 MB more.
if ! ls -d "$ansible_venv"/lib/python3*/site-packages/ansible_collections/community/general >/dev/null 2>&1; then
  echo "installing: ansible (collections, community.general among them) into $ansible_venv"
  "$ansible_venv/bin/pip" install --quiet 'ansible>=12,<13' 'ansible-core>=2.19,<2.20'
fi
echo "ansible-playbook: $ansible_venv/bin/ansible-playbook ($("$ansible_venv/bin/ansible-playbook" --version | sed -n 1p))"

# The webhook tests' independent verifier (tests/fixtures/webhooks/receiver.py)
# checks every delivery with the `standardwebhooks` package from PyPI, in its
# own venv .venv/webhooks beside .venv/ansible (python3-venv is in place above).
webhooks_venv="$repo_root/.venv/webhooks"
if ! "$webhooks_venv/bin/python" -c 'import standardwebhooks' >/dev/null 2>&1; then
  py=/usr/bin/python3
  [ -x "$py" ] || py="$(command -v python3)"
  echo "installing: standardwebhooks into $webhooks_venv"
  "$py" -m venv "$webhooks_venv"
  "$webhooks_venv/bin/pip" install --quiet 'standardwebhooks>=1.0.0,<2'
fi
echo "standardwebhooks: $webhooks_venv ($("$webhooks_venv/bin/pip" show standardwebhooks 2>/dev/null | sed -n 's/^Version: //p'))"

# The operator's page is tested in a real browser: Debian's chromium, driven
# by Playwright from PyPI in the project's venv .venv/playwright (pointed at
# /usr/bin/chromium: no browser download).
command -v chromium >/dev/null 2>&1 || {
  echo "installing: chromium (for the page's browser tests)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
}
playwright_venv="$repo_root/.venv/playwright"
if ! "$playwright_venv/bin/python" -c 'import playwright' >/dev/null 2>&1; then
  echo "installing: playwright into $playwright_venv"
  /usr/bin/python3 -m venv "$playwright_venv"
  "$playwright_venv/bin/pip" install --quiet 'playwright>=1.49,<2'
fi
echo "chromium: $(chromium --version 2>/dev/null | sed -n 1p); playwright: $("$playwright_venv/bin/python" -c 'import importlib.metadata as m; print(m.version("playwright"))')"
