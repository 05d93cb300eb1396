"""Run the authenticated SMTP submission server (port 587 with STARTTLS, or 465 with --implicit-tls)."""

import asyncio
import os
import signal
import socket
import ssl
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from submission.server import SubmissionServer, tls_context


def _runner():
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


class Command(BaseCommand):
    help = "Accept mail from applications and mail clients over authenticated SMTP and send it through Herald."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=587)
        parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (port 465, RFC 8314).")
        parser.add_argument("--hostname", default="", help="Name in the greeting and EHLO reply.")
        parser.add_argument("--processes", type=int, default=1, help="Server processes sharing the port (one per core).")
        parser.add_argument("--committers", type=int, default=1,
                            help="Database writers per process; one makes the largest group commits.")

    def handle(self, *args, **options):
        self.options = options
        self.context = self._tls_context()
        try:
            sock = socket.create_server((options["host"], options["port"]), backlog=1024)
        except OSError as exc:
            raise CommandError(f"Cannot listen on {options['host']}:{options['port']}: {exc.strerror or exc}") from None
        port = sock.getsockname()[1]
        mode = "implicit TLS" if options["implicit_tls"] else "STARTTLS"
        processes = max(1, options["processes"])
        if processes == 1:
            self._announce(options["host"], port, mode, processes)
            with _runner() as runner:
                runner.run(self._serve(sock))
            return
        self._supervise(sock, processes, options["host"], port, mode)

    def _announce(self, host, port, mode, processes):
        self.stdout.write(f"Submission server listening on {host}:{port} ({mode}, {processes} process(es))")
        self.stdout.flush()

    def _server(self, leftovers):
        o = self.options
        return SubmissionServer(o["host"], o["port"], context=self.context, implicit_tls=o["implicit_tls"],
                                hostname=o["hostname"] or None, committers=max(1, o["committers"]), handoff_process=True,
                                leftovers=leftovers)

    async def _serve(self, sock, leftovers=True):
        """Serve until SIGINT or SIGTERM; with ``leftovers``, first hand off what the last run stored and did not."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server = self._server(leftovers)
        await server.start(sock=sock)
        try:
            await stop.wait()
        finally:
            await server.stop()

    def _supervise(self, sock, processes, host, port, mode):
        """Fork workers that accept on the one socket; forward stop signals; exit when they are gone."""
        connections.close_all()  # never share a database connection across fork
        children = []
        for n in range(processes):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    with _runner() as runner:
                        runner.run(self._serve(sock, leftovers=n == 0))  # one process looks for leftovers
                except BaseException as exc:  # a child must never return into the parent's code
                    print(f"submission worker {os.getpid()} failed: {exc!r}", file=sys.stderr)
                    code = 1
                finally:
                    os._exit(code)
            children.append(pid)
        sock.close()

        def forward(signum, _frame):
            for child in children:
                try:
                    os.kill(child, signum)
                except ProcessLookupError:
                    pass

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        self._announce(host, port, mode, processes)
        failed = False
        for child in children:
            _, status = os.waitpid(child, 0)
            if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM, -signal.SIGINT):
                failed = True
                forward(signal.SIGTERM, None)  # one worker down: stop the rest so a supervisor restarts all
        if failed:
            raise CommandError("a submission worker process failed; see the messages above")

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
