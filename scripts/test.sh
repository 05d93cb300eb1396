#!/usr/bin/env bash
# Runs Herald's whole test suite against real PostgreSQL, Redis and SMTP servers
# on loopback, installing whatever is missing first.
source "$(dirname "$0")/common.sh"

ensure_venv
apt_install postfix swaks libsasl2-modules chromium redis-server
ensure_redis 6379
ensure_postgres

export DATABASE_URL=${DATABASE_URL:-postgres://herald:herald@127.0.0.1:5432/herald}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/15}

"$VENV/bin/ruff" check .
"$VENV/bin/python" manage.py makemigrations --check --dry-run >/dev/null ||
  { echo "Model changes without a migration: run manage.py makemigrations" >&2; exit 1; }
exec "$VENV/bin/pytest" "$@"
