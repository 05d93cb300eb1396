"""A worker SIGKILLed every few seconds, under the production batch and chunk sizes, loses nobody.

Two workers of two processes each send a campaign of a few thousand
recipients to a relay; one of them is killed every few seconds and started
again. Each kill can leave unrecorded only the messages on the wire: those the
relay took whose outcome the ledger does not have yet. Measured at each kill,
their sum bounds the duplicates the relay may see, and each is bounded by
what the engine promises: one write-back chunk (and the message pipelined
behind it) per process.
"""

import pytest

from delivery import engine
from delivery.models import Relay, Send
from tests.resilience.conftest import account, addresses, finished, make_campaign, relay_to
from tests.resilience.relay import FaultRelay
from tests.support.wait import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

RECIPIENTS = 3000
PROCESSES = 2  # per worker
# Production sizes: a batch of 200 sends, outcomes written back every 10
# messages or second (engine.WRITE_CHUNK), and a lease long enough that only
# the workers' heartbeats bring a dead worker's claims back.
PRODUCTION = {"HERALD_BATCH_SIZE": 200, "HERALD_SEND_LEASE": 1800}
KILLS = 5


def on_the_wire(relay):
    """Recipients the relay has taken whose outcome the ledger does not hold (read in that order, so
    a message recorded meanwhile by a live worker is counted, never one missed)."""
    taken = set(relay.recipients())
    recorded = set(Send.objects.filter(status=Send.Status.SENT).values_list("email", flat=True))
    return taken - recorded


def test_a_worker_sigkilled_every_few_seconds_loses_nobody_and_duplicates_only_what_was_on_the_wire(stack):
    stack.env.update({k: str(v) for k, v in PRODUCTION.items()})
    expected = addresses(RECIPIENTS)
    per_kill_bound = 2 * PROCESSES * (engine.WRITE_CHUNK + 1)  # every process of both workers, chunk plus one
    injected, wire, fresh, counted = [], [], [], set()
    with FaultRelay(reply_delay=0.005) as relay:
        relay_to(relay.port)
        Relay.objects.update(max_connections=Relay._meta.get_field("max_connections").default)
        campaign = make_campaign(expected)
        stack.start_workers("a", "b", concurrency=PROCESSES)
        stack.start(campaign)
        for n in range(KILLS):
            victim = "ab"[n % 2]
            stack.workers[victim].wait_ready()
            mark = len(relay.recipients())
            wait_until(lambda mark=mark: len(relay.recipients()) >= mark + 150, timeout=60, message="sending after a restart")
            stack.workers[victim].kill()
            flying = on_the_wire(relay)
            # A dead worker's rows are unrecorded until they are sent again: a
            # kill soon after counts them again (sound for the duplicate
            # bound), but only the new ones were put on the wire since.
            wire.append(len(flying))
            fresh.append(len(flying - counted))
            counted |= flying
            injected.append(f"SIGKILL worker {victim} after {len(relay.recipients())} delivered "
                            f"({len(flying)} on the wire, {fresh[-1]} since the last kill)")
            stack.worker(victim, concurrency=PROCESSES)  # started again at once; ready in a few seconds
        wait_until(lambda: finished(campaign), timeout=60, message="campaign finished")
        account(campaign, expected, relay.recipients(), injected, bound=sum(wire))
    assert all(n <= per_kill_bound for n in fresh), fresh
