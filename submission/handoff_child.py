"""The submission server's helper process: it enqueues committed sends with the engine.

Kept apart from handoff.py because a spawned process imports this module
before Django is set up, so nothing here may import models at the top.
"""

import signal


def run(reader, leftovers=False):
    """Enqueue whatever arrives on ``reader``, until the server says stop (None) or goes away.

    With ``leftovers``, first what an earlier run of the server stored but did not hand off.
    """
    import django

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when its helper stops
    django.setup()
    from submission.store import hand_off_leftovers, hand_to_engine

    if leftovers:
        hand_off_leftovers()

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
