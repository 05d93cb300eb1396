"""Bulk actions on "all N matching" contacts: a background job, set-based a chunk at a time, with its progress."""

import pytest
from django.db import connection
from django.test import Client

from campaigns import bulk
from campaigns.models import BulkJob, Contact, MailingList, Subscription

pytestmark = pytest.mark.django_db

MANY = 100_000


def insert_contacts(n):
    """``n`` contacts, every tenth blocklisted, inserted in one statement (PostgreSQL)."""
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO campaigns_contact (email, email_key, first_name, last_name, attributes, status, created_at, "
            "updated_at) SELECT 'u' || g || '@example.com', 'u' || g || '@example.com', '', '', '{}', "
            "CASE WHEN g %% 10 = 0 THEN 'blocklisted' ELSE 'active' END, now(), now() FROM generate_series(1, %s) g",
            [n])
        # As autovacuum would soon after a real import: without statistics the planner takes the table for empty.
        cur.execute("ANALYZE campaigns_contact")
    return n


@pytest.fixture
def many_contacts(db):
    return insert_contacts(MANY)


@pytest.fixture
def staff(admin_user):
    client = Client()
    client.force_login(admin_user)
    return client


def test_adding_all_matching_contacts_to_a_list_runs_in_chunks_not_per_contact(many_contacts, readers,
                                                                              django_assert_max_num_queries):
    job = bulk.start(BulkJob.objects.create(action=BulkJob.Action.ADD_TO_LIST, mailing_list=readers,
                                            spec={"status": "active"}))
    assert job.total == MANY * 9 // 10
    progress = []
    chunks = -(-(job.upto - job.cursor) // bulk.CHUNK)
    assert chunks == -(-MANY // bulk.CHUNK)
    # A handful per chunk of 20,000 (its count, one statement, the progress, the transaction); never per contact.
    with django_assert_max_num_queries(10 * chunks):
        job = bulk.run(job.pk, on_chunk=lambda j: progress.append(round(j.share, 2)))
    assert job.status == "done" and job.processed == job.total
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) == chunks
    subs = Subscription.objects.filter(mailing_list=readers)
    added = set(subs.values_list("contact_id", flat=True))
    assert len(added) == MANY * 9 // 10
    assert added.isdisjoint(Contact.objects.filter(status="blocklisted").values_list("id", flat=True))
    assert subs.filter(source="admin").count() == subs.count()


def test_the_admin_confirms_all_matching_then_shows_the_jobs_progress(staff, readers):
    weekly = MailingList.objects.create(name="Weekly")
    for i in range(150):
        Contact.objects.create(email=f"p{i}@example.com", status="blocklisted" if i % 3 == 0 else "active")
    url = "/admin/campaigns/contact/?status__exact=active"
    confirm = staff.post(url, {"action": "bulk_add_to_list", "select_across": "1", "index": "0",
                               "_selected_action": ["1"]})
    assert confirm.status_code == 200 and b"<strong>100</strong>" in confirm.content
    started = staff.post(url, {"action": "bulk_add_to_list", "select_across": "1", "index": "0", "_selected_action": ["1"],
                               "confirmed": "1", "mailing_list": str(weekly.pk)})
    job = BulkJob.objects.get()
    assert started.status_code == 302 and started["Location"].endswith(f"/bulkjob/{job.pk}/change/")
    assert job.total == 100 and job.spec == {"status": "active"}
    page = staff.get(started["Location"])
    assert page.status_code == 200 and page["Refresh"] == "2"
    bulk.run(job.pk)  # what the worker does
    assert Subscription.objects.filter(mailing_list=weekly).count() == 100
    assert "Refresh" not in staff.get(started["Location"])


def test_blocklisting_and_deleting_what_a_search_matches(staff, readers):
    for name in ("ann", "anna", "bob"):
        contact = Contact.objects.create(email=f"{name}@example.com")
        Subscription.objects.create(contact=contact, mailing_list=readers)
    job = bulk.start(BulkJob.objects.create(action=BulkJob.Action.BLOCKLIST, spec={"q": "ann"}))
    bulk.run(job.pk)
    assert dict(Contact.objects.values_list("email", "status")) == {
        "ann@example.com": "blocklisted", "anna@example.com": "blocklisted", "bob@example.com": "active"}
    job = bulk.start(BulkJob.objects.create(action=BulkJob.Action.DELETE, spec={"status": "blocklisted"}))
    bulk.run(job.pk)
    assert list(Contact.objects.values_list("email", flat=True)) == ["bob@example.com"]
    assert Subscription.objects.count() == 1
