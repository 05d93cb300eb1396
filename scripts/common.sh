# Shared by the set-up scripts: a virtual environment and the local services.
# Works as root on a fresh Debian machine; installs only what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"

# Packages install with their system services neither started nor enabled:
# the tests and the demo run private instances on loopback, and a host that
# only runs Herald's tests must not gain a public mail or IMAP server.
SERVICES_KEPT_OFF=(postfix dovecot redis-server)

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then echo "Herald needs these Debian packages: ${missing[*]} (run as root to install them)" >&2; exit 1; fi
  echo "Installing ${missing[*]}"
  [ -n "${HERALD_APT_UPDATED:-}" ] || { apt-get update -qq; export HERALD_APT_UPDATED=1; }
  # Postfix as "No configuration": no main.cf listening on every interface.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  local policy=/usr/sbin/policy-rc.d own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
  fi
  local status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
  [ -z "$own_policy" ] || rm -f "$policy"
  [ $status -eq 0 ] || return $status
  local unit
  for unit in "${SERVICES_KEPT_OFF[@]}"; do
    [ -e "/lib/systemd/system/$unit.service" ] || [ -e "/etc/init.d/$unit" ] || continue
    if command -v systemctl >/dev/null; then systemctl disable --quiet "$unit" >/dev/null 2>&1 || true; fi
    update-rc.d "$unit" disable >/dev/null 2>&1 || true
  done
}

test_packages() {  # the Debian packages scripts/test-packages.txt names, one a line
  sed -e 's/#.*//' -e 's/:.*//' -e '/^[[:space:]]*$/d' "$ROOT/scripts/test-packages.txt" | tr -d ' \t'
}

ensure_venv() {
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then apt_install python3-venv; fi
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  local stamp="$VENV/.requirements.sha"
  local want
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
    echo "$want" >"$stamp"
  fi
}

redis_up() {  # redis_up PORT
  "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
}

ensure_redis() {  # ensure_redis [PORT]: start a loopback Redis unless one answers
  local port=${1:-6379}
  redis_up "$port" && return 0
  apt_install redis-server
  mkdir -p "$ROOT/var"
  STARTED_REDIS="$ROOT/var/redis-$port.pid"
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
    --dir "$ROOT/var" --pidfile "$ROOT/var/redis-$port.pid" --logfile "$ROOT/var/redis-$port.log"
  for _ in $(seq 50); do redis_up "$port" && return 0; sleep 0.1; done
  echo "Redis did not start on 127.0.0.1:$port (see var/redis-$port.log)" >&2; exit 1
}

ensure_postgres() {  # a loopback PostgreSQL with a role 'herald' that may create databases
  apt_install postgresql
  local version
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  if ! pg_lsclusters -h | grep -q "^$version main .* online"; then
    pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
    pg_ctlcluster "$version" main start
    STARTED_POSTGRES="$version main"
  fi
  for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 && break; sleep 0.1; done
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='herald'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"CREATE ROLE herald LOGIN SUPERUSER PASSWORD 'herald'\""
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='herald'\"" | grep -q 1 ||
    su postgres -c "createdb -O herald herald"
}

stop_started_services() {  # stops the Redis and PostgreSQL that this run started, and only those
  if [ -n "${STARTED_REDIS:-}" ] && [ -f "$STARTED_REDIS" ]; then
    kill "$(cat "$STARTED_REDIS")" 2>/dev/null || true
    STARTED_REDIS=
  fi
  if [ -n "${STARTED_POSTGRES:-}" ]; then
    # shellcheck disable=SC2086
    pg_ctlcluster $STARTED_POSTGRES stop 2>/dev/null || true
    STARTED_POSTGRES=
  fi
}
