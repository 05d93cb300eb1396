"""Celery tasks of the audience: imports run here when they come from the admin or the API."""

from celery import shared_task

from campaigns.imports import run_import
from campaigns.models import Import


@shared_task(name="campaigns.run_import")
def run_import_task(import_id: int) -> str:
    imp = Import.objects.select_related("mailing_list").filter(pk=import_id).first()
    if imp is None:
        return "missing"
    if imp.status not in (Import.Status.PENDING, Import.Status.RUNNING):
        return imp.status  # already finished: a redelivered task does nothing
    return run_import(imp).status


def enqueue_import(imp: Import) -> None:
    """Start the import once the row is committed, so the worker can see it."""
    from django.db import transaction

    transaction.on_commit(lambda: run_import_task.delay(imp.pk))


@shared_task(name="campaigns.run_bulk_job", acks_late=True)
def run_bulk_job(job_id: int) -> str:
    from campaigns import bulk
    from campaigns.models import BulkJob

    try:
        return bulk.run(job_id).status
    except BulkJob.DoesNotExist:
        return "missing"
    except Exception as exc:
        BulkJob.objects.filter(pk=job_id).update(status=BulkJob.Status.FAILED, error=str(exc)[:2000])
        raise


def enqueue_bulk_job(job) -> None:
    from django.db import transaction

    transaction.on_commit(lambda: run_bulk_job.delay(job.pk))
