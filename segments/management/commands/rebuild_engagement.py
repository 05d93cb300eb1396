"""python manage.py rebuild_engagement [--check]: each contact's latest open and click, written afresh from the events."""

import time

from django.core.management.base import BaseCommand, CommandError

from segments import engagement


class Command(BaseCommand):
    help = ("Write each contact's latest open and click (what segments read for opens, clicks and last activity) "
            "afresh from the events. Events wait meanwhile: about a minute for twenty million.")

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true",
                            help="only count the contacts whose row differs from their events; exit 1 if any does")

    def handle(self, *args, check=False, verbosity=1, **options):
        started = time.monotonic()
        if check:
            wrong = engagement.differences()
            if wrong:
                raise CommandError(f"{wrong} contact(s) differ from their events: run rebuild_engagement")
            if verbosity:
                self.stdout.write(f"Every contact's latest open and click matches the events "
                                  f"({time.monotonic() - started:.1f} s).")
            return
        rows = engagement.rebuild()
        if verbosity:
            self.stdout.write(f"{rows} contact(s) with opens or clicks written in {time.monotonic() - started:.1f} s.")
