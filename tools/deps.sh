#!/usr/bin/env bash
# Installs what the harness needs on a Debian 12 machine, and nothing twice.
# Idempotent: when every package is present and the venv is current it only checks (a few seconds),
# and it never runs `apt-get update` then.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# Debian packages: the system under test, and what starts it.
PKGS=(
  postgresql-15 postgresql-client-15
  patroni python3-psycopg2 python3-etcd
  etcd-server
  redis-server redis-tools
  haproxy
  pgbouncer
  pgbackrest
  prometheus
  prometheus-postgres-exporter
  prometheus-redis-exporter
  python3-venv
  procps
  # The services' malloc (env/commands.py `allocator`): glibc's fragments under a long soak.
  libjemalloc2
  # The containers runtime: Debian's Docker engine (started only when none answers) and what
  # builds the base image where no registry can be reached (env/engine.py, env/images.py).
  docker.io debootstrap
  # The distributed-fleet test: workers in network namespaces of their own (ip netns, veth,
  # a DNAT rule inside each namespace).
  iproute2 iptables
  # The test that opens every report.html as a reader would (headless, over DevTools).
  chromium fonts-dejavu-core
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "deps: installing Debian packages: ${missing[*]}" >&2
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps: installing packages needs root (apt-get); run 'sudo make deps' once" >&2
    exit 1
  fi
  # Packages would start their own system services (redis on 6379, prometheus on 9090, ...) on
  # machines with an init system; the harness runs its own instances, so keep those from starting.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  trap '[[ $created_policy == 1 ]] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's postgresql package creates and starts a 'main' cluster on 5432 where it can; the
  # harness does not use it.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | awk '$4=="online"{print $1, $2}' | while read -r v c; do
      pg_ctlcluster "$v" "$c" stop || true
    done
  fi
fi

# The unprivileged account the environment runs its components as (all but PostgreSQL, which
# runs as 'postgres'); see env/users.py. Only root can create it, and only root needs it.
SERVICE_USER=${CWH_SERVICE_OS_USER:-cwh}
if [[ $(id -u) -eq 0 ]] && ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
  echo "deps: creating system user $SERVICE_USER" >&2
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$SERVICE_USER"
fi

# The virtual environment, reinstalled only when pyproject.toml changed.
if [[ ! -x $VENV/bin/python ]]; then
  echo "deps: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
# Inside the venv: a venv made afresh (deleted, or replaced) is installed into whatever the stamp
# of the one before said.
stamp=$VENV/.deps-stamp
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "deps: installing the project into $VENV" >&2
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e '.[dev]' >&2  # progress is not a listing's output (make chaos | ...)
  touch "$stamp"
fi
