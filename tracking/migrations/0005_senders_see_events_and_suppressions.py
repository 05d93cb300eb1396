"""Senders may see what came back (events) and who may not be mailed (suppressions), and suppress an
address someone asked to be left out; lifting a suppression stays with administrators."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GRANTS = [("tracking", "view_event"), ("campaigns", "view_suppression"), ("campaigns", "add_suppression")]


def grant(apps, schema_editor):
    # Permissions are normally created after all migrations ran; make sure these exist now.
    for label in ("campaigns", "tracking"):
        config = apps.get_app_config(label)
        config.models_module = True
        create_permissions(config, apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    senders, _ = Group.objects.get_or_create(name="Senders")
    for app_label, codename in GRANTS:
        senders.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def revoke(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    senders = apps.get_model("auth", "Group").objects.filter(name="Senders").first()
    if senders:
        for app_label, codename in GRANTS:
            senders.permissions.remove(*Permission.objects.filter(content_type__app_label=app_label, codename=codename))


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("delivery", "0002_operator_groups"),
        ("tracking", "0004_fewer_event_indexes"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
