# Copies of the message's room and sender on each delivery, so a device's
# queue is read from one table. Rows queued before this migration (only on
# pre-release development databases) get the nil UUID in the new columns:
# the owner role that migrates cannot see tenant rows to copy the values.

import uuid

from django.db import migrations, models

NIL = uuid.UUID(int=0)


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0002_queue_connection_epoch"),
    ]

    operations = [
        migrations.AddField(
            model_name="delivery",
            name="room_id",
            field=models.UUIDField(default=NIL),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="delivery",
            name="sender_device_id",
            field=models.UUIDField(default=NIL),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="delivery",
            name="sender_member_id",
            field=models.UUIDField(default=NIL),
            preserve_default=False,
        ),
    ]
