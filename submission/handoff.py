"""Handing committed sends to the engine, after the clients had their 250.

Each hand-off (``delivery.dispatch.enqueue_sends``) publishes one Celery task
per destination domain group: more Python work than storing the message. Done
in the server's own process it would hold the interpreter lock while the
event loop waits to answer clients, so the server runs it in a helper process
(``HandoffProcess``); tests and small set-ups may run it in a thread
(``Handoff``). Either way hand-offs happen at most once per ``window``
seconds: a lone message goes at once, and under load everything that piled up
in the meantime goes together, in fewer and fuller batch tasks.

Nothing is lost if a hand-off never happens (a crash just after the commit):
the rows are queued in the ledger. With ``leftovers``, the helper starts by
handing off what the last run stored and did not hand off, so a restarted
server delivers them within seconds (as Postfix's queue manager does when it
starts); the engine's sweeper is the backstop, minutes later.
"""

import logging
import multiprocessing
import queue
import threading
import time

from django.conf import settings
from django.db import connections

from submission import handoff_child
from submission.store import hand_off_leftovers, hand_to_engine

log = logging.getLogger(__name__)


def default_window() -> float:
    return getattr(settings, "HERALD_SUBMISSION_HANDOFF_WINDOW", 0.5)


class Handoff:
    """Collects send ids from the server and passes them on from one thread, at most once per window."""

    def __init__(self, window: float | None = None, leftovers: bool = False):
        self.window = default_window() if window is None else window
        self.leftovers = leftovers
        self.queue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="submission-handoff", daemon=True)
        self.thread.start()

    def put(self, send_ids):
        if send_ids:
            self.queue.put(send_ids)

    def deliver(self, send_ids):
        hand_to_engine(send_ids)

    def _run(self):
        if self.leftovers:
            hand_off_leftovers()
        last = 0.0
        while True:
            ids = self.queue.get()
            if ids is None:
                break
            wait = last + self.window - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            stopping = False
            while not self.queue.empty():
                more = self.queue.get()
                if more is None:
                    stopping = True
                    break
                ids = ids + more
            try:
                self.deliver(ids)
            except Exception:
                log.exception("hand-off of %d sends failed; the sweeper will enqueue them", len(ids))
            last = time.monotonic()
            if stopping:
                break
        self.finish()

    def finish(self):
        connections.close_all()

    def stop(self):
        self.queue.put(None)
        self.thread.join(timeout=60)


class HandoffProcess(Handoff):
    """The same, but the publishing runs in a child process; this thread only writes ids to a pipe."""

    def __init__(self, window: float | None = None, leftovers: bool = False):
        context = multiprocessing.get_context("spawn")
        reader, self.writer = context.Pipe(duplex=False)
        # The child imports only a module without models: it sets Django up itself.
        self.process = context.Process(target=handoff_child.run, args=(reader, leftovers), name="submission-handoff",
                                       daemon=True)
        self.process.start()
        reader.close()
        super().__init__(window)  # the child hands off the leftovers, not this thread

    def deliver(self, send_ids):
        self.writer.send(send_ids)

    def finish(self):
        try:
            self.writer.send(None)
        except OSError:
            pass
        self.process.join(timeout=60)
        self.writer.close()
