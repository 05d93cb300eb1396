#!/usr/bin/env bash
# Runs Herald's whole test suite against real PostgreSQL, Redis and SMTP servers
# on loopback, installing whatever is missing first (the Debian packages listed
# in scripts/test-packages.txt). Redis and PostgreSQL servers that this run
# starts are stopped again at the end; the packages stay installed.
source "$(dirname "$0")/common.sh"

step() { printf '\n== %s ==\n' "$*"; }

step "Setting up: virtualenv, Debian packages, Redis, PostgreSQL"
ensure_venv
mapfile -t packages < <(test_packages)
apt_install "${packages[@]}"
trap stop_started_services EXIT
ensure_redis 6379
ensure_postgres

export DATABASE_URL=${DATABASE_URL:-postgres://herald:herald@127.0.0.1:5432/herald}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/15}

step "Lint (ruff)"
"$VENV/bin/ruff" check .
step "Migrations match the models"
DEBUG=true "$VENV/bin/python" manage.py makemigrations --check --dry-run >/dev/null ||
  { echo "Model changes without a migration: run manage.py makemigrations" >&2; exit 1; }
echo "No changes detected."
step "Tests (pytest)"
# Two processes by default (HERALD_TEST_PROCESSES=1 for one); each gets its own
# PostgreSQL test database and Redis database (tests/support/parallel.py).
"$VENV/bin/python" -m pytest -p tests.support.parallel -n "${HERALD_TEST_PROCESSES:-2}" --dist loadfile --durations=25 "$@"
