# The app moved out of delivery/ and kept its label, so its tables and its rows
# in django_migrations are the ones an existing install already has. The table
# names are pinned in the models from now on; nothing changes in the database.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('submission', '0002_outbound_from_domain'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterModelTable(name='outboundmessage', table='submission_outboundmessage'),
                migrations.AlterModelTable(name='smtpcredential', table='submission_smtpcredential'),
            ],
            database_operations=[],
        ),
    ]
