"""Editors and senders build segments and aim campaigns at them, as they do with lists (deleting stays with
administrators, as for lists and campaigns)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GRANTS = {
    "Content editors": ["add_segment", "change_segment", "view_segment"],
    "Senders": ["add_segment", "change_segment", "view_segment"],
}


def grant(apps, schema_editor):
    # Permissions are normally created after all migrations ran; make sure these exist now.
    config = apps.get_app_config("campaigns")
    config.models_module = True
    create_permissions(config, apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GRANTS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*Permission.objects.filter(content_type__app_label="campaigns", codename__in=codenames))


def revoke(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    for group in apps.get_model("auth", "Group").objects.filter(name__in=GRANTS):
        group.permissions.remove(*Permission.objects.filter(content_type__app_label="campaigns",
                                                            codename__in=GRANTS[group.name]))


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("campaigns", "0010_segments_and_follow_ups"),
        ("delivery", "0002_operator_groups"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
