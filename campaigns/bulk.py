"""Bulk work on contacts: one action on every contact a filter matches, run by a worker with its progress shown.

"All 100,000 matching" is a filter, not a list of ids: the job keeps the
filter (status, list, search words, or the few ids picked on one page) and
walks the contacts in id order, a chunk of ids at a time. Each chunk is one
set-based statement per table and commits with the job's progress, so a
worker lost in the middle is resumed where it stopped; nothing runs a query
per contact.
"""

from django.db import connection, transaction
from django.db.models import Max, Min, Q
from django.utils import timezone

from campaigns.models import BulkJob, Contact, Subscription, email_key

CHUNK = 20_000


def matching(spec: dict):
    """The contacts a job's filter matches, as the contact list in the admin shows them."""
    qs = Contact.objects.all()
    if spec.get("ids"):
        qs = qs.filter(pk__in=spec["ids"])
    if spec.get("status"):
        qs = qs.filter(status=spec["status"])
    if spec.get("list"):
        qs = qs.filter(subscriptions__mailing_list_id=int(spec["list"]))
    for word in (spec.get("q") or "").split():
        qs = qs.filter(Q(email_key__icontains=email_key(word)) | Q(first_name__icontains=word)
                       | Q(last_name__icontains=word))
    return qs.distinct() if spec.get("list") else qs


def _ids_sql(qs):
    sql, params = qs.values("id").query.sql_with_params()
    return sql, list(params)


def _apply(job, chunk, now):
    ids_sql, params = _ids_sql(chunk)
    with connection.cursor() as cur:
        if job.action == BulkJob.Action.ADD_TO_LIST:
            status = Subscription.Status.UNCONFIRMED if job.mailing_list.optin == "double" else Subscription.Status.CONFIRMED
            cur.execute(
                "INSERT INTO campaigns_subscription (contact_id, mailing_list_id, status, source, source_detail, "  # noqa: S608
                f"confirmed_at, created_at, updated_at) SELECT id, %s, %s, 'admin', %s, %s, %s, %s FROM ({ids_sql}) ids "
                "ON CONFLICT (contact_id, mailing_list_id) DO NOTHING",
                [job.mailing_list_id, status, f"bulk job {job.pk} by {job.created_by_name}"[:200],
                 now if status == Subscription.Status.CONFIRMED else None, now, now, *params])
        elif job.action == BulkJob.Action.REMOVE_FROM_LIST:
            # An unsubscribe stays as the record of it.
            cur.execute(f"DELETE FROM campaigns_subscription WHERE mailing_list_id = %s AND status <> 'unsubscribed' "  # noqa: S608
                        f"AND contact_id IN ({ids_sql})", [job.mailing_list_id, *params])
        elif job.action == BulkJob.Action.UNSUBSCRIBE:
            cur.execute(f"UPDATE campaigns_subscription SET status = 'unsubscribed', updated_at = %s "  # noqa: S608
                        f"WHERE contact_id IN ({ids_sql})", [now, *params])
            cur.execute(f"UPDATE campaigns_contact SET status = 'unsubscribed', updated_at = %s "  # noqa: S608
                        f"WHERE status = 'active' AND id IN ({ids_sql})", [now, *params])
        elif job.action == BulkJob.Action.BLOCKLIST:
            cur.execute(f"UPDATE campaigns_contact SET status = 'blocklisted', updated_at = %s "  # noqa: S608
                        f"WHERE id IN ({ids_sql})", [now, *params])
        elif job.action == BulkJob.Action.DELETE:
            # Through the ORM, whose cascade runs a statement per table for the whole chunk (subscriptions
            # go; sends and events of higher layers keep their counts, their contact set to null).
            Contact.objects.filter(pk__in=chunk.values("id")).delete()


def start(job: BulkJob) -> BulkJob:
    """Fix the job's extent (the contacts there are now) and count what it matches: the "all N" it promises."""
    extent = Contact.objects.aggregate(first=Min("id"), top=Max("id"))
    job.upto = extent["top"] or 0
    job.cursor = (extent["first"] or 1) - 1  # no empty chunks below the first contact
    job.total = matching(job.spec).filter(id__lte=job.upto).count()
    job.save(update_fields=["upto", "cursor", "total"])
    return job


def run(job_id: int, on_chunk=None) -> BulkJob:
    """Do what is left of a job, a committed chunk at a time; resumable and idempotent per chunk."""
    job = BulkJob.objects.select_related("mailing_list").get(pk=job_id)
    if job.status in (BulkJob.Status.DONE, BulkJob.Status.FAILED):
        return job
    BulkJob.objects.filter(pk=job.pk).update(status=BulkJob.Status.RUNNING)
    base = matching(job.spec)
    while job.cursor < job.upto:
        end = min(job.upto, job.cursor + CHUNK)
        now = timezone.now()
        with transaction.atomic():
            chunk = base.filter(id__gt=job.cursor, id__lte=end)
            done = chunk.count()
            _apply(job, chunk, now)
            job.cursor, job.processed = end, job.processed + done
            BulkJob.objects.filter(pk=job.pk).update(cursor=job.cursor, processed=job.processed, updated_at=now)
        if on_chunk:
            on_chunk(job)
    BulkJob.objects.filter(pk=job.pk).update(status=BulkJob.Status.DONE, finished_at=timezone.now())
    job.refresh_from_db()
    return job
