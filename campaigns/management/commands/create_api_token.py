"""python manage.py create_api_token USERNAME [--name NAME]: prints a new API token once."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from campaigns.models import ApiToken


class Command(BaseCommand):
    help = "Create a bearer token for the JSON API and print it (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what the token is for")
        parser.add_argument("--create-user", action="store_true", help="create the user when missing")

    def handle(self, *args, username, name, create_user, **options):
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            if not create_user:
                raise CommandError(f"No user named {username!r} (add --create-user to create one)")
            user = User.objects.create_user(username=username)
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive; its tokens would be refused")
        _, token = ApiToken.issue(user, name=name)
        self.stdout.write(token)
