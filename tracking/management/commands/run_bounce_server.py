from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tracking.bounce_server import serve_forever


class Command(BaseCommand):
    help = (
        "Run the SMTP server that receives bounces, complaints and mailto unsubscribes "
        "for bounces+<token>@ and unsubscribe+<token>@ at HERALD_BOUNCE_DOMAIN."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=2525, help="Port to listen on (default 2525).")
        parser.add_argument("--max-size", type=int, default=settings.HERALD_BOUNCE_MAX_MESSAGE_SIZE,
                            help="Largest message accepted, in bytes.")
        parser.add_argument("--max-connections", type=int, default=settings.HERALD_BOUNCE_MAX_CONNECTIONS,
                            help="Simultaneous connections; more are answered 421.")

    def handle(self, *args, host, port, max_size, max_connections, **options):
        if not 0 < port < 65536:
            raise CommandError(f"--port {port} is not a TCP port (1-65535)")
        if max_size < 1024 or max_connections < 1:
            raise CommandError("--max-size must be at least 1024 and --max-connections at least 1")
        self.stdout.write(f"Bounce server on {host}:{port} for *@{settings.HERALD_BOUNCE_DOMAIN} (Ctrl-C stops it)")
        try:
            serve_forever(host, port, max_size=max_size, max_connections=max_connections)
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
