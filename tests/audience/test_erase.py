"""GDPR: exporting a person's data, and erasing it so that no table holds anything of them."""

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test import Client

from audience.models import SignupForm
from campaigns import suppression
from campaigns.imports import import_contacts
from campaigns.models import AuditEntry, Campaign, Contact, MailingList, Subscription, Suppression
from delivery.models import Send
from tests.audience.signup_support import post_signup
from tracking import stats
from tracking.models import Event

pytestmark = pytest.mark.django_db

ADDRESS = "Annabelle.Quist@example.org"
MARKERS = ("annabelle.quist", "Quistgaard", "Kalkbrenner")


@pytest.fixture
def weekly(db):
    return MailingList.objects.create(name="Weekly", optin=MailingList.OptIn.DOUBLE)


@pytest.fixture
def annabelle(weekly, redis_client, admin_user):
    """A person with a history everywhere: a form signup and its confirmation mail, a campaign send with
    its SMTP reply, an open, a bounce with its raw notice, a suppression and an admin edit; an outgoing
    webhook told of every event, and a transactional message."""
    from automations.models import MessageTemplate, TransactionalSend
    from webhooks_out.models import Endpoint

    Endpoint.objects.create(url="https://hooks.example/herald", secret="whsec_dGVzdA==",
                            event_types=["opened", "bounced", "subscribed", "confirmed"])
    form = SignupForm.objects.create(name="Weekly", slug="weekly", consent_text="Yes please", from_email="n@shop.example",
                                     fields=[{"name": "last_name"}, {"name": "street"}])
    form.lists.add(weekly)
    post_signup(Client(), form, ADDRESS, last_name="Quistgaard", street="Kalkbrenner 3")
    contact = Contact.objects.get()
    Subscription.objects.update(status=Subscription.Status.CONFIRMED)
    campaign = Campaign.objects.create(name="Issue 1", subject="News", from_email="n@shop.example", html_body="<p>x</p>",
                                       status=Campaign.Status.FINISHED)
    campaign.lists.add(weekly)
    send = Send.objects.create(campaign=campaign, contact=contact, email=contact.email, domain="example.org",
                               status=Send.Status.BOUNCED, smtp_code=550,
                               smtp_reply=f"550 5.1.1 <{ADDRESS}>: mailbox unavailable")
    Event.objects.create(type=Event.Type.OPEN, send=send, contact=contact, campaign=campaign, email=contact.email,
                         user_agent="Mozilla (Quistgaard's phone)")
    bounce = Event.objects.create(type=Event.Type.BOUNCE, send=send, contact=contact, campaign=campaign,
                                  email=contact.email, status="5.1.1", diagnostic=f"smtp; 550 {ADDRESS} unknown",
                                  raw=f"Final-Recipient: rfc822; {ADDRESS}\n", key=f"bounce:{ADDRESS}")
    suppression.suppress(contact.email, Suppression.Reason.HARD_BOUNCE, f"550 for {ADDRESS}", bounce.pk)
    LogEntry.objects.create(user=admin_user, content_type=ContentType.objects.get_for_model(Contact),
                            object_id=str(contact.pk), object_repr=str(contact), action_flag=CHANGE,
                            change_message=f"Changed first name of {ADDRESS}")
    receipt = MessageTemplate.objects.create(name="Receipt", slug="receipt", subject="Your receipt",
                                             from_email="n@shop.example", text_body="Thanks")
    TransactionalSend.objects.create(key="order-1", user_id=admin_user.pk, template=receipt, to=ADDRESS)
    return contact


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests")


@pytest.fixture
def api(admin_user):
    from campaigns.models import ApiToken

    return Client(headers={"Authorization": f"Bearer {ApiToken.issue(admin_user)[1]}"})


def places_holding(text: str) -> list[str]:
    """Every (table.column) of any text, JSON or binary column in the database whose value contains ``text``."""
    found = []
    with connection.cursor() as cur:
        cur.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'json', 'jsonb', "
                    "'bytea', 'inet')")
        for table, column, kind in cur.fetchall():
            column = connection.ops.quote_name(column)
            value = f"convert_from({column}, 'UTF8')" if kind == "bytea" else f"{column}::text"
            cur.execute(f'SELECT count(*) FROM "{table}" WHERE {value} ILIKE %s', [f"%{text}%"])  # noqa: S608
            if cur.fetchone()[0]:
                found.append(f"{table}.{column}")
    return found


def test_the_export_holds_the_contact_its_consent_its_sends_and_events(annabelle, api):
    data = api.get(f"/api/v1/contacts/{annabelle.pk}/export").json()
    assert data["contact"]["email"] == ADDRESS and data["contact"]["last_name"] == "Quistgaard"
    [sub] = data["subscriptions"]
    assert sub["source"] == "form" and sub["consent_text"] == "Yes please" and sub["consent_ip"] == "198.51.100.7"
    assert {s["status"] for s in data["sends"]} >= {"bounced"}
    assert {e["type"] for e in data["events"]} == {"open", "bounce"}
    assert data["suppressions"][0]["reason"] == "hard_bounce"


def test_erasing_leaves_no_personal_data_in_any_table(annabelle, api):
    assert all(places_holding(marker) for marker in MARKERS)  # the search finds them before
    campaign = Campaign.objects.get()
    before = stats.campaign_stats(campaign)
    assert api.post(f"/api/v1/contacts/{annabelle.pk}/erase").status_code == 204
    for marker in MARKERS:
        assert places_holding(marker) == [], marker
    assert places_holding("198.51.100.7") == []
    after = stats.campaign_stats(campaign)
    assert after["engagement"] == before["engagement"] and after["recipients"] == before["recipients"]
    assert after["domains"] == before["domains"]
    # Recorded: who erased, when; not whom.
    entry = AuditEntry.objects.get(action="contact.erase")
    assert entry.actor == "root" and entry.object_id == "" and entry.object_repr == ""


def test_an_erased_address_imported_again_is_never_mailed(annabelle, api, weekly, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    api.post(f"/api/v1/contacts/{annabelle.pk}/erase")
    assert Suppression.objects.get().email == "" and Suppression.objects.get().reason == "erased"
    import io

    import_contacts(io.BytesIO(f"email\n{ADDRESS.upper()}\nother@example.org\n".encode()), weekly, confirmed=True)
    statuses = dict(Contact.objects.values_list("email_key", "status"))
    assert statuses == {ADDRESS.lower(): "blocklisted", "other@example.org": "active"}
    created = api.post("/api/v1/contacts", {"email": ADDRESS, "lists": [weekly.pk]}, content_type="application/json")
    assert created.status_code == 409  # already there (blocklisted) from the import
    Contact.objects.all().delete()
    created = api.post("/api/v1/contacts", {"email": ADDRESS, "lists": [weekly.pk]}, content_type="application/json")
    assert created.json()["status"] == "blocklisted"
