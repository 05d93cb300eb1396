"""Real workers, a fast beat stand-in and a ledger check shared by the fault tests."""

import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from campaigns.models import Campaign, Contact, MailingList, Subscription
from delivery import lifecycle
from delivery.models import Relay, Send
from tests.delivery.workers import ROOT, Worker, test_database_url

# Short leases, retries and SMTP timeouts so that a fault and the recovery from
# it fit in seconds; every value goes through the settings' own env readers.
FAST = {
    "HERALD_SEND_LEASE": 10,
    "HERALD_ORPHAN_GRACE": 10,
    "HERALD_RETRY_FIRST_DELAY": 1,
    "HERALD_RETRY_MAX_DELAY": 2,
    "HERALD_GIVE_UP_AFTER": 900,
    "HERALD_SMTP_TIMEOUT": 2,
    "HERALD_BATCH_SIZE": 20,
}
BATCH = FAST["HERALD_BATCH_SIZE"]


class Stack:
    """Workers and the ticker (beat) on one environment; everything stopped at the end."""

    def __init__(self, tmp_path, **env):
        self.tmp_path = tmp_path
        self.env = {k: str(v) for k, v in (FAST | env).items()}
        self.workers = {}
        self.ticker = None
        self.restarts = Counter()

    def worker(self, name, concurrency=1):
        self.restarts[name] += 1
        w = Worker(f"{name}-{self.restarts[name]}", self.tmp_path, concurrency=concurrency, **self.env)
        self.workers[name] = w
        return w

    def start_workers(self, *names, concurrency=1):
        started = [self.worker(n, concurrency) for n in names]
        for w in started:
            w.wait_ready()
        return started

    def start(self, campaign):
        """Start the campaign from the ticker process, which then keeps ticking like beat."""
        env = dict(os.environ, DATABASE_URL=self.env.get("DATABASE_URL", test_database_url()), PYTHONUNBUFFERED="1")
        env.update(self.env)
        self.ticker_log = self.tmp_path / "ticker.log"
        self.ticker = subprocess.Popen(
            [sys.executable, "-m", "tests.resilience.ticker", "--start", str(campaign.pk)],
            cwd=ROOT, env=env, stdout=self.ticker_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )

    def stop(self):
        # The campaign is over (or the test failed): no need to wait for a warm shutdown.
        for w in self.workers.values():
            w.kill()
        if self.ticker is not None and self.ticker.poll() is None:
            os.killpg(self.ticker.pid, signal.SIGKILL)
            self.ticker.wait(10)


@pytest.fixture
def stack(tmp_path, redis_client):
    s = Stack(tmp_path)
    yield s
    s.stop()


def make_campaign(addresses, name="Resilience"):
    lst = MailingList.objects.create(name=f"{name} list")
    Contact.objects.bulk_create([Contact(email=a, email_key=a.lower(), first_name=a.split("@")[0]) for a in addresses])
    contacts = Contact.objects.filter(email_key__in=[a.lower() for a in addresses])
    Subscription.objects.bulk_create([Subscription(contact=c, mailing_list=lst) for c in contacts])
    campaign = Campaign.objects.create(
        name=name, subject="Hello {{ contact.first_name }}", from_email="news@herald.example",
        html_body="<p>Hi {{ contact.first_name }}</p>", text_body="Hi {{ contact.first_name }}",
    )
    campaign.lists.add(lst)
    return campaign


def addresses(n, domains=5):
    return [f"r{i}@d{i % domains}.example" for i in range(n)]


def relay_to(port, **fields):
    fields.setdefault("security", Relay.Security.NONE)
    return Relay.objects.create(name="fault relay", host="127.0.0.1", port=port, max_connections=4, **fields)


def status_of(campaign):
    campaign.refresh_from_db()
    return campaign.status


def finished(campaign):
    return status_of(campaign) == Campaign.Status.FINISHED


def in_flight():
    return Send.objects.filter(status=Send.Status.SENDING).count()


def account(campaign, expected, received, injected, bound):
    """Print what was injected and counted; check nobody is missing and duplicates stay within ``bound``."""
    counts = lifecycle.counts(campaign.pk)
    seen = Counter(received)
    missing = sorted(set(expected) - set(seen))
    strangers = sorted(set(seen) - set(expected))
    duplicates = sum(n - 1 for n in seen.values())
    print(f"\ninjected: {'; '.join(injected)}")
    print(f"campaign {campaign.status} ({campaign.status_reason or 'no reason given'}); counts {counts}")
    print(f"receiving server: {len(received)} messages, {len(seen)} recipients of {len(expected)}, "
          f"{len(missing)} missing, {duplicates} duplicates (bound {bound})")
    assert counts["total"] == len(expected) == Send.objects.filter(campaign=campaign).values("contact").distinct().count()
    assert counts["sent"] == len(expected), counts
    assert not missing, f"never received: {missing[:10]}"
    assert not strangers
    assert duplicates <= bound
    return duplicates
