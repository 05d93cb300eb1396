"""The submission server's helper process: it enqueues committed sends with the engine.

Kept apart from handoff.py because a spawned process imports this module
before Django is set up, so nothing here may import models at the top.
"""

import signal


def run(reader):
    """Enqueue whatever arrives on ``reader``, until the server says stop (None) or goes away."""
    import django

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when its helper stops
    django.setup()
    from submission.store import hand_to_engine

    while True:
        try:
            ids = reader.recv()
        except (EOFError, OSError):
            return
        if ids is None:
            return
        stopping = False
        while not stopping and reader.poll():
            more = reader.recv()
            if more is None:
                stopping = True
            else:
                ids = ids + more
        hand_to_engine(ids)
        if stopping:
            return
