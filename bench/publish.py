"""What handing batches to Celery costs the process that enqueues them.

    .venv/bin/python bench/publish.py [--tasks 3000] [--batch 200]

Publishes ``--tasks`` send_batch tasks (each carrying ``--batch`` send ids) to
the Redis broker of REDIS_URL, twice in one run:

* baseline: ``apply_async`` per task with no producer, so each publish acquires
  a producer (and its connection) from the pool and gives it back,
* dispatch: ``delivery.dispatch._publish``, which sends every task of a call
  through one producer from ``app.producer_or_acquire()`` and gives Celery a
  short argsrepr instead of a saferepr of the ids,

and prints CPU and wall time per task for both. The tasks are routed to a
queue of their own (herald-bench-publish), which is deleted afterwards; no
worker runs them.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import benchlib  # noqa: F401  (sets a SECRET_KEY for benchmark processes)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402

from delivery import dispatch  # noqa: E402
from delivery.tasks import send_batch  # noqa: E402

QUEUE = "herald-bench-publish"
# Before the first publish: Celery builds its router once.
send_batch.app.conf.task_routes = {send_batch.name: {"queue": QUEUE}}


def baseline(payloads):
    for ids in payloads:
        send_batch.apply_async((ids,))


def shared(payloads):
    dispatch._publish([("bench.test", ids) for ids in payloads])


def measure(fn, payloads):
    cpu, wall = time.process_time(), time.perf_counter()
    fn(payloads)
    return time.process_time() - cpu, time.perf_counter() - wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    if args.tasks < 1 or args.batch < 1:
        parser.error("--tasks and --batch must be at least 1")
    client = redis.Redis.from_url(settings.REDIS_URL)
    payloads = [list(range(n * args.batch, (n + 1) * args.batch)) for n in range(args.tasks)]
    try:
        measure(shared, payloads[:50])  # warm up: connection, routing tables, serializer
        client.delete(QUEUE)
        results = {}
        for name, fn in (("baseline (apply_async per task)", baseline), ("dispatch._publish", shared)):
            results[name] = measure(fn, payloads)
            queued = client.llen(QUEUE)
            client.delete(QUEUE)
            print(f"{name:32s} {args.tasks} tasks: CPU {results[name][0] * 1e6 / args.tasks:7.1f} µs/task, "
                  f"wall {results[name][1] * 1e6 / args.tasks:7.1f} µs/task ({queued} on the queue)")
        (b_cpu, b_wall), (s_cpu, s_wall) = results.values()
        print(f"dispatch._publish: CPU x{b_cpu / s_cpu:.2f}, wall x{b_wall / s_wall:.2f} against the baseline")
    finally:
        client.delete(QUEUE, f"_kombu.binding.{QUEUE}", f"_kombu.binding_permanent.{QUEUE}")


if __name__ == "__main__":
    main()
