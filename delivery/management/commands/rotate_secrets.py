"""Re-encrypt every stored secret under the newest key.

    python manage.py rotate_secrets

After putting a new key in front of HERALD_ENCRYPTION_KEY (new,old), this
rewrites every value of every encrypted field (relay passwords, DKIM keys, and
whatever else uses herald.fields.EncryptedTextField) under the new key, and
encrypts values that older versions of Herald left in plain text. Running it
again changes nothing. When it reports no failures, the old key can go.
"""

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import models, transaction
from django.db.models.functions import Cast

from herald import fields


class Command(BaseCommand):
    help = "Re-encrypt every stored secret (relay passwords, DKIM keys, ...) under the newest HERALD_ENCRYPTION_KEY."

    def handle(self, *args, **options):
        totals = {"re-encrypted": 0, "already current": 0, "failed": 0}
        for model in apps.get_models():
            for field in model._meta.concrete_fields:
                if isinstance(field, fields.EncryptedTextField):
                    counts = self.rotate(model, field)
                    for name, count in counts.items():
                        totals[name] += count
                    self.stdout.write(f"{model._meta.label}.{field.name}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
        self.stdout.write("Total: " + ", ".join(f"{n} {k}" for k, n in totals.items()))
        if totals["failed"]:
            raise CommandError(f"{totals['failed']} stored secret(s) could not be decrypted with any key in "
                               "HERALD_ENCRYPTION_KEY (or SECRET_KEY): add the key they were written with and run again")

    def rotate(self, model, field):
        counts = {"re-encrypted": 0, "already current": 0, "failed": 0}
        manager = model._base_manager
        # The stored text as it is, without the field decrypting it.
        raw = Cast(field.attname, output_field=models.TextField())
        pks = manager.exclude(**{field.attname: ""}).exclude(**{f"{field.attname}__isnull": True}) \
            .order_by("pk").values_list("pk", flat=True)
        for pk in pks.iterator():
            # One row at a time, locked: an operator may be changing the same secret meanwhile.
            with transaction.atomic():
                stored = manager.select_for_update().filter(pk=pk).annotate(stored=raw).values_list("stored", flat=True).first()
                if not stored:
                    continue
                if fields.under_newest_key(stored):
                    counts["already current"] += 1
                    continue
                try:
                    value = fields.decrypt(stored)
                except ValueError:
                    counts["failed"] += 1
                    self.stderr.write(f"{model._meta.label}.{field.name} of #{pk}: cannot be decrypted with any key")
                    continue
                # update() saves the value through the field, which encrypts it under the newest key.
                manager.filter(pk=pk).update(**{field.attname: value})
                counts["re-encrypted"] += 1
        return counts
