#!/usr/bin/env bash
# Runs Herald's demo end to end on the embedded defaults: a SQLite file (or the
# database DATABASE_URL names) and a Redis of its own (installed when missing),
# then scripts/demo_campaign.py, which starts the worker, beat, the web server,
# the bounce server and an SMTP sink, sends a campaign to 10,000 generated
# contacts, plays recipients opening and clicking, prints a summary and serves
# the admin until Ctrl-C. Each run starts afresh (--keep reuses var/demo).
# Options go to demo_campaign.py, e.g. --contacts 2000, --no-serve or --keep.
source "$(dirname "$0")/common.sh"

# Ctrl-C is how the demo ends: the Python side stops every process it started,
# and the demo exits 0 (make would otherwise report "Error 130"). Bash runs
# this trap once the command in the foreground has finished.
trap 'exit 0' INT

ensure_venv
if [ -z "${REDIS_URL:-}" ] && ! command -v redis-server >/dev/null; then
  apt_install redis-server  # demo_campaign.py starts it on a private port
fi
"$VENV/bin/python" scripts/demo_campaign.py "$@"
