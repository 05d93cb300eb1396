"""The beat process, fast: start a campaign, then return due retries and expired leases every half second.

    python -m tests.resilience.ticker [--start CAMPAIGN_ID]
    python -m tests.resilience.ticker --setup RECIPIENTS --relay-port PORT   (prints the campaign id)

Run by the resilience tests with the workers' environment (the same Redis and
PostgreSQL, short leases and retry delays), so that faults in Redis or
PostgreSQL hit it as they hit beat. A failing tick is logged and retried.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--start", type=int)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--setup", type=int, help="create a campaign of this many recipients and a relay, then exit")
    parser.add_argument("--relay-port", type=int)
    args = parser.parse_args()

    import django

    django.setup()
    if args.setup:
        from tests.resilience.conftest import addresses, make_campaign, relay_to

        relay_to(args.relay_port)
        print(make_campaign(addresses(args.setup)).pk, flush=True)
        return
    from django.db import close_old_connections, connection

    from delivery import lifecycle, tasks

    if args.start:
        lifecycle.start_campaign(args.start)
        print(f"started campaign {args.start}", flush=True)
    ticks = 0
    while True:
        try:
            close_old_connections()
            tasks.due_retries()  # what beat runs, in this process
            if ticks % 4 == 0:
                tasks.sweep()
        except Exception as exc:  # Redis or PostgreSQL away: the next tick tries again
            print(f"tick failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            connection.close()
        ticks += 1
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
