"""Telling a dead worker from a slow one: a heartbeat per worker process, and lease renewal on a timer.

Each process that claims sends has an id (host, pid and a random part, so a
reused pid is someone else) and a Redis key under that id with a short TTL.
A daemon thread refreshes the key every second and renews the leases of the
claims this process still holds once half a lease has passed, whatever the
main thread is doing (a message may legally spend twenty minutes in SMTP
timeouts). When the process dies the key expires within HEARTBEAT_TTL and the
sweeper hands its claims back; a process that is only slow keeps beating and
keeps its rows.
"""

import logging
import os
import secrets
import socket
import threading
import time

from django.db import connection

from delivery import throttle

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0
# Long enough to ride out a busy second or two, short enough that a dead
# worker's claims come back within seconds.
HEARTBEAT_TTL = 10
KEY = throttle.PREFIX + "worker:"
# Set by the first sweep that finds it missing: heartbeats younger than this
# marker plus a TTL may be missing only because Redis restarted empty.
SINCE_KEY = throttle.PREFIX + "heartbeats-since"


class Hold:
    """A claim this process holds: renewed by the timer until it is let go."""

    def __init__(self, rows, renew, lease):
        self.rows, self.renew, self.lease = rows, renew, lease
        self.renewed = time.monotonic()


class Heartbeat:
    def __init__(self):
        self.pid = None
        self.worker_id = ""
        self.holds = set()
        self.lock = threading.Lock()
        self.thread = None

    def _ensure(self):
        """Start (again after a fork) the timer of this process."""
        if self.pid == os.getpid() and self.thread is not None and self.thread.is_alive():
            return
        with self.lock:
            if self.pid != os.getpid():
                self.pid = os.getpid()
                self.worker_id = f"{socket.gethostname()[:60]}:{self.pid}:{secrets.token_hex(4)}"
                self.holds = set()
                self.thread = None
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="herald-heartbeat", daemon=True)
                self.thread.start()

    def beat(self) -> str:
        """Announce this process as alive now (before it claims anything); returns its id."""
        self._ensure()
        throttle.client().set(KEY + self.worker_id, "1", ex=HEARTBEAT_TTL)
        return self.worker_id

    def hold(self, rows, renew, lease) -> Hold:
        """Renew ``renew(rows)`` every ``lease / 2`` seconds until ``release(hold)``."""
        self._ensure()
        h = Hold(rows, renew, lease)
        with self.lock:
            self.holds.add(h)
        return h

    def release(self, h):
        with self.lock:
            self.holds.discard(h)

    def _run(self):
        while True:
            time.sleep(HEARTBEAT_INTERVAL)
            try:
                throttle.client().set(KEY + self.worker_id, "1", ex=HEARTBEAT_TTL)
            except Exception as exc:  # Redis restarting: the next beat tries again
                log.debug("heartbeat not recorded: %s", exc)
            self._renew_due()

    def _renew_due(self):
        now = time.monotonic()
        with self.lock:
            due = [h for h in self.holds if now - h.renewed >= h.lease / 2]
        if not due:
            return
        try:
            for h in due:
                h.renew(h.rows)
                h.renewed = now
        except Exception as exc:  # the database restarting: tried again next second
            log.warning("could not renew leases: %s", exc)
        finally:
            connection.close()  # this thread's own connection; renewals are rare


heartbeat = Heartbeat()


def dead(owners) -> set:
    """The worker ids among ``owners`` whose heartbeat has expired.

    After Redis lost its keys (a restart), nobody is declared dead until every
    live worker has had a TTL to beat again.
    """
    r = throttle.client()
    now = time.time()
    if r.set(SINCE_KEY, now, nx=True):
        return set()
    owners = [o for o in set(owners) if o]
    if not owners:
        return set()
    since = float(r.get(SINCE_KEY) or now)
    if now - since < HEARTBEAT_TTL + HEARTBEAT_INTERVAL:
        return set()
    alive = r.mget([KEY + o for o in owners])
    return {o for o, a in zip(owners, alive, strict=True) if a is None}
