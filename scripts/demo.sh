#!/usr/bin/env bash
# Runs Herald's demo end to end on the embedded defaults: a SQLite file (or the
# database DATABASE_URL names) and a local Redis (installed when missing), then
# scripts/demo_campaign.py, which starts the worker, beat, the
# bounce server and an SMTP sink, sends a campaign to 10,000 generated contacts,
# prints a summary and serves the admin until Ctrl-C.
# Options go to demo_campaign.py, e.g. --contacts 2000 or --no-serve.
source "$(dirname "$0")/common.sh"

ensure_venv
if [ -z "${REDIS_URL:-}" ] && ! redis_up 6379; then
  apt_install redis-server  # demo_campaign.py starts it on a private port
fi
exec "$VENV/bin/python" scripts/demo_campaign.py "$@"
