"""Run the authenticated SMTP submission server (port 587 with STARTTLS, or 465 with --implicit-tls)."""

import asyncio
import signal
import ssl
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from delivery.submission.server import SubmissionServer, tls_context


class Command(BaseCommand):
    help = "Accept mail from applications and mail clients over authenticated SMTP and send it through Herald."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=587)
        parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (port 465, RFC 8314).")
        parser.add_argument("--hostname", default="", help="Name in the greeting and EHLO reply.")
        parser.add_argument("--committers", type=int, default=2, help="Parallel database writers.")

    def handle(self, *args, **options):
        context = self._tls_context()
        server = SubmissionServer(
            options["host"], options["port"], context=context, implicit_tls=options["implicit_tls"],
            hostname=options["hostname"] or None, committers=max(1, options["committers"]),
        )
        try:
            asyncio.run(self._serve(server))
        except OSError as exc:
            raise CommandError(f"Cannot listen on {options['host']}:{options['port']}: {exc.strerror or exc}") from None

    async def _serve(self, server):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        mode = "implicit TLS" if server.implicit_tls else "STARTTLS"
        self.stdout.write(f"Submission server listening on {server.host}:{server.port} ({mode})", ending="\n")
        self.stdout.flush()
        try:
            await stop.wait()
        finally:
            await server.stop()

    def _tls_context(self) -> ssl.SSLContext:
        cert, key = settings.HERALD_TLS_CERT, settings.HERALD_TLS_KEY
        if not cert or not key:
            raise CommandError(
                "HERALD_TLS_CERT and HERALD_TLS_KEY must name a PEM certificate and its key: "
                "the submission server takes logins only over TLS."
            )
        for name, path in (("HERALD_TLS_CERT", cert), ("HERALD_TLS_KEY", key)):
            if not Path(path).is_file():
                raise CommandError(f"{name}={path!r}: no such file")
        try:
            return tls_context(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise CommandError(f"HERALD_TLS_CERT={cert!r} / HERALD_TLS_KEY={key!r} cannot be loaded: {exc}") from None
