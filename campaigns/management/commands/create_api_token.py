"""python manage.py create_api_token USERNAME [--name NAME] [--scope S ...] [--expires-in DAYS]: prints a token once."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from campaigns.models import ApiToken


def _is_permission(name):
    app_label, _, codename = name.partition(".")
    return Permission.objects.filter(content_type__app_label=app_label, codename=codename).exists()


class Command(BaseCommand):
    help = "Create a bearer token for the JSON API and print it (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what the token is for")
        parser.add_argument("--create-user", action="store_true", help="create the user when missing")
        parser.add_argument("--scope", action="append", dest="scopes", metavar="SCOPE",
                            help='"*" (default: all the user may do), "read" (read-only), or a permission such as '
                                 '"campaigns.view_campaign"; repeat for several')
        parser.add_argument("--expires-in", type=int, metavar="DAYS", help="refuse the token after this many days")

    def handle(self, *args, username, name, create_user, scopes, expires_in, **options):
        scopes = scopes or [ApiToken.FULL]
        for scope in scopes:
            if scope not in (ApiToken.FULL, ApiToken.READ) and not _is_permission(scope):
                raise CommandError(f"--scope {scope!r} is neither '*', 'read' nor an existing permission (app.codename)")
        if expires_in is not None and expires_in < 1:
            raise CommandError(f"--expires-in {expires_in}: give a number of days of at least 1")
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            if not create_user:
                raise CommandError(f"No user named {username!r} (add --create-user to create one)")
            user = User.objects.create_user(username=username)
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive; its tokens would be refused")
        expires_at = timezone.now() + timedelta(days=expires_in) if expires_in else None
        _, token = ApiToken.issue(user, name=name, scopes=scopes, expires_at=expires_at)
        self.stdout.write(token)
