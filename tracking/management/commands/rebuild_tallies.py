import time

from django.core.management.base import BaseCommand

from tracking import rollups


class Command(BaseCommand):
    help = ("Count the campaigns' statistics afresh from their sends and events (the tallies the reports read). "
            "Sends and events wait meanwhile: about a minute for ten million events.")

    def add_arguments(self, parser):
        parser.add_argument("--campaign", type=int, action="append", dest="campaigns",
                            help="Only this campaign (repeatable); all campaigns by default.")

    def handle(self, *args, campaigns=None, verbosity=1, **options):
        started = time.monotonic()
        rows = rollups.rebuild(campaigns)
        if verbosity:
            self.stdout.write(f"{rows} tally row(s) written in {time.monotonic() - started:.1f} s.")
