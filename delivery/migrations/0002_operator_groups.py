"""Two operator groups: people who edit content, and people who may also send it."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

EDIT = [
    (model, action)
    for model in ("template", "campaign", "mailinglist", "contact", "subscription", "import")
    for action in ("add", "change", "view")
]
GROUPS = {
    "Content editors": [f"{action}_{model}" for model, action in EDIT],
    "Senders": [f"{action}_{model}" for model, action in EDIT] + ["send_campaign"],
}


def create_groups(apps, schema_editor):
    # Permissions are normally created after all migrations ran; make sure those
    # of the campaigns app exist now.
    campaigns = apps.get_app_config("campaigns")
    campaigns.models_module = True
    create_permissions(campaigns, apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        perms = Permission.objects.filter(content_type__app_label="campaigns", codename__in=codenames)
        missing = set(codenames) - set(perms.values_list("codename", flat=True))
        if missing:
            raise RuntimeError(f"permissions missing for group {name!r}: {sorted(missing)}")
        group.permissions.add(*perms)


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("campaigns", "0001_initial"),
        ("delivery", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
