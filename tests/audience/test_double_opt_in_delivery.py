"""Double opt-in end to end: the confirmation mail goes out through a real worker to an SMTP sink, and its link confirms."""

import quopri

import pytest
from django.test import Client

from audience.models import SignupForm
from campaigns.models import MailingList, Subscription
from delivery import routing, tokens
from delivery.models import Relay, Send
from tests.audience.signup_support import confirm_link, post_signup
from tests.delivery.workers import Worker
from tests.support.smtp import Sink
from tests.support.wait import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_signup_confirmation_arrives_through_the_engine_and_its_link_confirms(redis_client, tmp_path):
    weekly = MailingList.objects.create(name="Weekly", optin=MailingList.OptIn.DOUBLE)
    form = SignupForm.objects.create(name="Weekly", slug="weekly", consent_text="Yes, weekly news please.",
                                     from_email="news@shop.example", from_name="Shop")
    form.lists.add(weekly)
    with Sink() as sink:
        Relay.objects.create(name="loopback", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
        routing.forget_relay()
        worker = Worker("signup", tmp_path).wait_ready()
        try:
            assert post_signup(Client(), form, "ann@example.org").status_code == 200
            sink.wait_for(1, timeout=60)
            wait_until(lambda: Send.objects.filter(status=Send.Status.SENT).exists(), timeout=30,
                       message="the confirmation recorded as sent")
        finally:
            worker.stop()
            routing.forget_relay()
    got = sink.received[0]
    send = Send.objects.get()
    assert got.rcpt_tos == ["ann@example.org"] and got.mail_from == tokens.verp_address(send.pk)
    assert got.message["Subject"] == "Please confirm your subscription"
    text = quopri.decodestring(got.data.split(b"\r\n\r\n", 1)[1]).decode()
    path = "/" + confirm_link(text).split("/", 3)[3]
    assert Subscription.objects.get().status == Subscription.Status.UNCONFIRMED
    Client().get(path)  # a link scanner
    assert Subscription.objects.get().status == Subscription.Status.UNCONFIRMED
    assert Client().post(path).status_code == 200
    sub = Subscription.objects.get()
    assert sub.status == Subscription.Status.CONFIRMED and sub.confirmed_at and sub.consent_text == "Yes, weekly news please."


def test_a_confirmation_owed_just_after_a_pass_is_sent_by_the_pass_that_follows_it(redis_client, tmp_path):
    """A signup that found the wake-up taken, and committed only after the pass had read, is not left waiting."""
    from django.utils import timezone

    from audience.models import ConfirmationDue
    from campaigns.models import Contact

    weekly = MailingList.objects.create(name="Weekly", optin=MailingList.OptIn.DOUBLE)
    form = SignupForm.objects.create(name="Weekly", slug="weekly", consent_text="Yes", from_email="news@shop.example")
    form.lists.add(weekly)
    with Sink() as sink:
        Relay.objects.create(name="loopback", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
        routing.forget_relay()
        worker = Worker("follow-up", tmp_path).wait_ready()
        try:
            assert post_signup(Client(), form, "ann@example.org").status_code == 200
            wait_until(lambda: not ConfirmationDue.objects.exists(), timeout=30, interval=0.02,
                       message="the woken pass stored Ann's mail")
            # Bob's signup commits now, with no wake-up of its own (it saw Ann's still taken).
            bob = Contact.objects.create(email="bob@example.org")
            Subscription.objects.create(contact=bob, mailing_list=weekly, status=Subscription.Status.UNCONFIRMED)
            ConfirmationDue.objects.create(contact=bob, form=form, list_ids=[weekly.pk], created_at=timezone.now())
            sink.wait_for(2, timeout=60)
        finally:
            worker.stop()
            routing.forget_relay()
    assert sorted(m.rcpt_tos[0] for m in sink.received) == ["ann@example.org", "bob@example.org"]
