"""send_campaign ID [--wait] | --pause | --resume [--acknowledge] | --cancel | --schedule TIME"""

import time

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from delivery import lifecycle
from delivery.lifecycle import LifecycleError

DONE = ("sent", "bounced", "failed", "cancelled", "skipped")


class Command(BaseCommand):
    help = "Start sending a campaign (snapshot its audience and enqueue it), or pause, resume, cancel or schedule it."

    def add_arguments(self, parser):
        parser.add_argument("campaign_id", type=int)
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--pause", action="store_true", help="Pause a sending campaign.")
        action.add_argument("--resume", action="store_true", help="Resume a paused campaign.")
        action.add_argument("--cancel", action="store_true", help="Cancel: unsent recipients are not mailed.")
        action.add_argument("--schedule", metavar="TIME", help="Send at an ISO 8601 time with a zone, e.g. 2030-01-01T09:00Z.")
        action.add_argument("--progress", action="store_true", help="Show progress only.")
        parser.add_argument("--acknowledge", action="store_true",
                            help="With --resume: acknowledge the figures of a circuit breaker's pause.")
        parser.add_argument("--wait", action="store_true", help="Show a progress bar until the campaign is done.")
        parser.add_argument("--interval", type=float, default=1.0, help="Seconds between progress updates (default 1).")

    def handle(self, campaign_id, **opts):
        try:
            if opts["pause"]:
                campaign = lifecycle.pause_campaign(campaign_id, reason="paused from the command line")
            elif opts["resume"]:
                campaign = lifecycle.resume_campaign(campaign_id, acknowledge=opts["acknowledge"])
            elif opts["cancel"]:
                campaign = lifecycle.cancel_campaign(campaign_id)
            elif opts["schedule"]:
                at = parse_datetime(opts["schedule"])
                if at is None:
                    raise CommandError(f"--schedule {opts['schedule']!r} is not an ISO 8601 time")
                campaign = lifecycle.schedule_campaign(campaign_id, at)
            elif opts["progress"]:
                campaign = None
            else:
                campaign = lifecycle.start_campaign(campaign_id)
                self.stdout.write(f"Campaign {campaign.pk} “{campaign.name}”: sending to {campaign.total} recipients.")
        except LifecycleError as exc:
            raise CommandError(str(exc)) from None
        if campaign is not None and not opts["wait"]:
            self.stdout.write(f"Campaign {campaign.pk} is {campaign.status}.")
        if opts["wait"] or opts["progress"]:
            self.follow(campaign_id, opts["interval"], once=not opts["wait"])

    def follow(self, campaign_id, interval, once=False):
        while True:
            data = lifecycle.progress(campaign_id)
            self.stdout.write("\r" + self.bar(data), ending="")
            self.stdout.flush()
            if once or data["status"] not in ("starting", "sending", "scheduled"):
                break
            time.sleep(interval)
        self.stdout.write("")
        if not once and data["status"] == "paused" and data["status_reason"]:
            raise CommandError(f"campaign {campaign_id} paused: {data['status_reason']}")

    @staticmethod
    def bar(data, width=30):
        counts = data["counts"]
        total = counts["total"] or 1
        done = sum(counts[k] for k in DONE)
        filled = int(width * done / total)
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{counts['total']} {data['status']}"
            f" (sent {counts['sent']}, deferred {counts['deferred']}, bounced {counts['bounced']}, failed {counts['failed']})"
        )
