"""The operator's pages in the admin: campaign panel, schedule, duplicate, import preview, dashboard."""

import html
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from django.utils.html import strip_tags

from campaigns.models import Campaign, Contact, Import, MailingList
from delivery.models import Send
from herald.celery import app as celery_app
from tracking.models import Event

pytestmark = pytest.mark.django_db

CSV = (b"E-Mail;Vorname;Nachname;City;Plan\n"
       b"ann@example.com;Ann;Lee;Lisbon;gold\n"
       b"bob@example.com;Bob;Ray;Porto;free\n"
       b"not-an-address;Cy;Day;Faro;free\n")


@pytest.fixture
def operator(client, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path  # uploaded files
    user = User.objects.create_superuser("olga", "olga@herald.example", "a long passphrase 42")
    client.force_login(user)
    return user


@pytest.fixture
def eager_tasks():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def test_a_draft_offers_send_and_schedule_and_no_progress(client, operator, newsletter):
    page = client.get(f"/admin/campaigns/campaign/{newsletter.pk}/change/").content.decode()
    assert f"/admin/herald/campaigns/{newsletter.pk}/send/" in page
    assert 'name="scheduled_at"' in page
    assert 'id="herald-pause"' not in page and 'id="herald-bar"' not in page


def test_a_sending_campaign_shows_progress_pause_cancel_and_statistics(client, operator, newsletter):
    Campaign.objects.filter(pk=newsletter.pk).update(status=Campaign.Status.SENDING, total=3)
    page = client.get(f"/admin/campaigns/campaign/{newsletter.pk}/change/").content.decode()
    assert 'id="herald-bar"' in page and f"/admin/herald/campaigns/{newsletter.pk}/progress/" in page
    assert 'id="herald-pause"' in page and 'id="herald-cancel"' in page
    assert f"/admin/tracking/campaignstatistics/{newsletter.pk}/change/" in page
    assert f"/admin/herald/campaigns/{newsletter.pk}/send/" not in page


def test_send_now_answers_at_once_and_the_panel_shows_the_campaign_starting(client, operator, newsletter):
    response = client.post(f"/admin/herald/campaigns/{newsletter.pk}/send/", follow=True)

    newsletter.refresh_from_db()
    assert newsletter.status == Campaign.Status.STARTING
    assert not Send.objects.filter(campaign=newsletter).exists()  # a worker gathers the recipients
    page = response.content.decode()
    assert "is starting: its recipients are being gathered" in page
    assert 'id="herald-starting"' in page and 'id="herald-pause"' in page and 'id="herald-cancel"' in page
    assert 'name="subject"' not in page and "frozen when it started" in page
    progress = client.get(f"/admin/herald/campaigns/{newsletter.pk}/progress/").json()
    assert (progress["status"], progress["recipients"], progress["snapshot"]) == ("starting", 0, 0)

    client.post(f"/admin/herald/campaigns/{newsletter.pk}/pause/")
    newsletter.refresh_from_db()
    assert newsletter.status == Campaign.Status.PAUSED


def test_schedule_is_entered_in_the_operators_time_zone_and_stored_in_utc(client, operator, newsletter, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    response = client.post(f"/admin/herald/campaigns/{newsletter.pk}/schedule/", {"scheduled_at": "2031-07-01T09:30"},
                           follow=True)
    newsletter.refresh_from_db()
    assert newsletter.status == Campaign.Status.SCHEDULED
    assert newsletter.scheduled_at.isoformat() == "2031-07-01T07:30:00+00:00"
    assert "2031-07-01 09:30 (CEST)" in response.content.decode()


def test_a_time_in_the_past_or_garbage_is_refused_with_a_reason(client, operator, newsletter):
    past = (timezone.localtime() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    page = client.post(f"/admin/herald/campaigns/{newsletter.pk}/schedule/", {"scheduled_at": past}, follow=True)
    assert "That time has passed" in page.content.decode()
    page = client.post(f"/admin/herald/campaigns/{newsletter.pk}/schedule/", {"scheduled_at": "next tuesday"}, follow=True)
    assert "is not a date and time" in page.content.decode()
    newsletter.refresh_from_db()
    assert newsletter.status == Campaign.Status.DRAFT


def test_a_missed_campaign_says_why_and_can_be_sent_or_rescheduled(client, operator, newsletter):
    Campaign.objects.filter(pk=newsletter.pk).update(status=Campaign.Status.MISSED, scheduled_at=timezone.now(),
                                                     status_reason="Scheduled for … more than the 6.0 h cutoff")
    page = client.get(f"/admin/campaigns/campaign/{newsletter.pk}/change/").content.decode()
    assert "6.0 h cutoff" in page
    assert f"/admin/herald/campaigns/{newsletter.pk}/send/" in page and "Schedule" in page


def test_duplicate_makes_a_new_draft_with_the_same_content_and_lists(client, operator, newsletter):
    Campaign.objects.filter(pk=newsletter.pk).update(status=Campaign.Status.FINISHED, total=3)
    response = client.post(f"/admin/herald/campaigns/{newsletter.pk}/duplicate/")
    copy = Campaign.objects.exclude(pk=newsletter.pk).get()
    assert response["Location"] == f"/admin/campaigns/campaign/{copy.pk}/change/"
    assert copy.name == "Copy of Monthly news" and copy.status == Campaign.Status.DRAFT and copy.total == 0
    assert copy.html_body == newsletter.html_body and copy.subject == newsletter.subject
    assert list(copy.lists.all()) == list(newsletter.lists.all())


def test_import_shows_the_first_rows_and_the_mapping_before_anything_is_stored(
        client, operator, eager_tasks, django_capture_on_commit_callbacks):
    response = client.post("/admin/herald/imports/new/", {
        "file": SimpleUploadedFile("leads.csv", CSV, content_type="text/csv"), "new_list": "Leads", "mode": "upsert"})
    imp = Import.objects.get()
    assert response["Location"] == f"/admin/herald/imports/{imp.pk}/preview/"

    page = client.get(response["Location"]).content.decode()
    assert "columns separated by “;”" in page
    for column, target in (("E-Mail", "email"), ("Vorname", "first name"), ("Nachname", "last name"),
                           ("City", "attribute “City”")):
        assert f'<td>{column}</td><td class="target">{target}</td>' in page
    assert "<td>ann@example.com</td>" in page and "<td>not-an-address</td>" in page
    assert Contact.objects.count() == 0

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/admin/herald/imports/{imp.pk}/preview/")
    assert response["Location"] == f"/admin/herald/imports/{imp.pk}/"
    progress = client.get(f"/admin/herald/imports/{imp.pk}/progress.json").json()
    assert progress["status"] == "done"
    assert (progress["created"], progress["invalid"]) == (2, 1)
    report = client.get(progress["error_report"])
    assert b"not-an-address" in b"".join(report.streaming_content if report.streaming else [report.content])
    assert set(MailingList.objects.get(name="Leads").subscriptions.values_list("contact__email", flat=True)) == {
        "ann@example.com", "bob@example.com"}


def test_a_file_without_an_email_column_is_refused_at_the_preview(client, operator):
    client.post("/admin/herald/imports/new/", {
        "file": SimpleUploadedFile("x.csv", b"name,city\nAnn,Lisbon\n"), "new_list": "X", "mode": "upsert"})
    imp = Import.objects.get()
    response = client.get(f"/admin/herald/imports/{imp.pk}/preview/")
    assert response.status_code == 422
    assert "No email column" in response.content.decode()
    assert client.post(f"/admin/herald/imports/{imp.pk}/preview/").status_code == 422
    imp.refresh_from_db()
    assert imp.status == Import.Status.PENDING


def test_the_operator_fixes_the_mapping_in_the_preview_and_the_import_follows_it(
        client, operator, eager_tasks, django_capture_on_commit_callbacks):
    # No column is named as an address, and "Ort" would be kept under its German name.
    client.post("/admin/herald/imports/new/", {
        "file": SimpleUploadedFile("x.csv", b"Adresse,Vorname,Ort,Notiz\nann@example.com,Ann,Lisbon,call back\n"),
        "new_list": "Fixed", "mode": "upsert"})
    imp = Import.objects.get()
    preview = f"/admin/herald/imports/{imp.pk}/preview/"
    assert client.get(preview).status_code == 422

    chosen = {"col-0": "email", "col-1": "first_name", "col-2": "attribute", "name-2": "city", "col-3": "ignore"}
    # Two columns cannot both be the address: said, and nothing is imported.
    response = client.post(preview, {**chosen, "col-1": "email", "run": "1"})
    assert response.status_code == 422
    assert "Columns 'Adresse' and 'Vorname' both give the email" in html.unescape(response.content.decode())
    assert Contact.objects.count() == 0

    page = client.post(preview, {**chosen, "update": "1"}).content.decode()
    assert '<td>Ort</td><td class="target">attribute “city”</td>' in page
    assert '<td>Notiz</td><td class="target">ignored</td>' in page
    assert Contact.objects.count() == 0  # updating the preview imports nothing

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(preview, {**chosen, "run": "1"})
    assert response["Location"] == f"/admin/herald/imports/{imp.pk}/"
    ann = Contact.objects.get()
    assert (ann.email, ann.first_name, ann.attributes) == ("ann@example.com", "Ann", {"city": "Lisbon"})


def test_the_dashboard_shows_sending_campaigns_sends_per_hour_and_recent_bounces(client, operator, newsletter):
    Campaign.objects.filter(pk=newsletter.pk).update(status=Campaign.Status.SENDING, total=3,
                                                     started_at=timezone.now())
    now = timezone.now()
    for i, contact in enumerate(Contact.objects.all()):
        Send.objects.create(campaign=newsletter, contact=contact, email=contact.email, domain="example.com",
                            status=Send.Status.SENT if i < 2 else Send.Status.QUEUED, sent_at=now if i < 2 else None)
    Event.objects.create(type=Event.Type.BOUNCE, email="gone@example.com", campaign=newsletter, status="5.1.1",
                         diagnostic="550 5.1.1 no such user")
    Campaign.objects.create(name="Forgotten", subject="x", from_email="a@herald.example", status=Campaign.Status.MISSED,
                            scheduled_at=now - timedelta(days=1))

    page = client.get("/admin/").content.decode()
    dashboard = page[page.index('id="herald-dashboard"'):]
    shown = " ".join(strip_tags(dashboard).split())
    assert "Monthly news" in dashboard and "66% done · 3 recipients · delivered 2 · queued 1" in shown
    assert "Sent per hour, last 3 days (2 in all)" in dashboard
    assert "gone@example.com" in dashboard and "550 5.1.1 no such user" in dashboard
    assert "Forgotten" in dashboard and "missed" in dashboard
    assert "/admin/herald/imports/new/" in dashboard
