"""The admin pages an operator uses for SMTP credentials and submitted messages."""

import pytest
from django.contrib.auth.models import User

from delivery.models import Send
from submission.models import OutboundMessage, SmtpCredential
from tests.submission.conftest import make_credential

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")
    client.force_login(user)
    return client


def test_creating_a_credential_shows_its_secret_once(staff):
    response = staff.post("/admin/submission/smtpcredential/add/", {
        "username": "billing", "allowed_domains": "example.com", "rate_limit": 0, "rate_period": "minute",
        "default_tag": "", "enabled": "on",
    }, follow=True)
    assert response.status_code == 200
    row = SmtpCredential.objects.get(username="billing")
    shown = [str(m) for m in response.context["messages"] if "copy it now" in str(m)]
    assert len(shown) == 1
    secret = shown[0].split("<code>")[1].split("</code>")[0]
    assert row.check_secret(secret)
    again = staff.get(f"/admin/submission/smtpcredential/{row.pk}/change/")
    assert secret not in again.content.decode()


def test_bad_domain_list_is_explained(staff):
    response = staff.post("/admin/submission/smtpcredential/add/", {
        "username": "x", "allowed_domains": "exa mple", "rate_limit": 0, "rate_period": "minute", "enabled": "on",
    })
    assert "Not a domain name: exa, mple" in response.content.decode()


def test_credential_list_shows_per_credential_statistics(staff):
    shop = make_credential("shop")
    message = OutboundMessage.objects.create(credential=shop, mail_from="a@example.com", raw=b"x", size=1, recipients=3)
    for email, status in (("a@d.test", "sent"), ("b@d.test", "sent"), ("c@d.test", "bounced")):
        Send.objects.create(email=email, domain="d.test", status=status, outbound_id=message.pk)
    page = staff.get("/admin/submission/smtpcredential/")
    row = page.context["cl"].result_list.get(pk=shop.pk)
    assert (row.messages_total, row.stat_sent, row.stat_bounced, row.stat_deferred) == (1, 2, 1, 0)
    detail = staff.get(f"/admin/submission/outboundmessage/{message.pk}/change/").content.decode()
    assert "c@d.test" in detail and "bounced" in detail
