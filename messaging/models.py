"""Rooms, their members, messages and the per-device delivery queues."""

from __future__ import annotations

import uuid

from django.db import models

from enrollment.models import Device
from tenants.models import Member, Tenant


class Room(models.Model):
    """A conversation between members; owner and agent make a two-member room."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.name


class RoomMembership(models.Model):
    """One member's place in one room."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    member = models.ForeignKey(
        Member, on_delete=models.CASCADE, related_name="room_memberships"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["room", "member"], name="roommembership_unique_member"
            )
        ]
        indexes = [
            models.Index(fields=["member", "room"], name="roommembership_member_idx")
        ]

    def __str__(self) -> str:
        return f"{self.member_id} in {self.room_id}"


class Message(models.Model):
    """One send: who sent it where, once per (sending device, client id).

    The message row holds no ciphertext; each recipient device gets its own
    ciphertext in its ``Delivery`` row.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    sender_device = models.ForeignKey(
        Device, on_delete=models.CASCADE, related_name="+"
    )
    sender_member = models.ForeignKey(
        Member, on_delete=models.CASCADE, related_name="+"
    )
    client_message_id = models.CharField(max_length=64)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["sender_device", "client_message_id"],
                name="message_unique_client_id",
            )
        ]
        indexes = [models.Index(fields=["created_at"], name="message_created_idx")]

    def __str__(self) -> str:
        return str(self.id)


class DeviceQueue(models.Model):
    """The delivery counter of one device: last sequence number and depth.

    Each delivery takes ``last_seq + 1`` with ``UPDATE ... RETURNING`` inside
    the sending transaction, so sequence numbers are gap-free per device and
    the row lock orders concurrent senders. ``depth`` counts the deliveries
    still queued; ``acked_seq`` is the highest sequence number acknowledged.
    ``connection_epoch`` grows by one per relay connection of the device, so
    the newest socket wins and older ones close (one live socket per device).
    The statements that change these rows are SQL functions
    (``messaging/store.py``).
    """

    device = models.OneToOneField(
        Device, on_delete=models.CASCADE, primary_key=True, related_name="queue"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    last_seq = models.BigIntegerField(default=0)
    acked_seq = models.BigIntegerField(default=0)
    depth = models.IntegerField(default=0)
    connection_epoch = models.BigIntegerField(default=0)
    # The wake-up channel of the process holding the device's newest socket
    # (``messaging.hub``); a stale one only costs a wake-up nobody reads.
    relay_channel = models.CharField(max_length=200, blank=True, db_default="")

    def __str__(self) -> str:
        return f"queue of {self.device_id} at {self.last_seq}"


class Delivery(models.Model):
    """One envelope waiting for one recipient device, in its sequence order."""

    id = models.BigAutoField(primary_key=True)
    # No index of their own on tenant or device: the (device, seq) index
    # serves every queue statement, and a tenant index only tempted the
    # planner into a bitmap scan over all of a tenant's deliveries, dead
    # ones included, which slowed every read as deliveries churned.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    seq = models.BigIntegerField()
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="deliveries"
    )
    # Copies of the message's fields, so reading a queue touches one table
    # through its (device, seq) index and nothing else.
    room_id = models.UUIDField()
    sender_device_id = models.UUIDField()
    sender_member_id = models.UUIDField()
    ciphertext = models.BinaryField()
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["device", "seq"]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "seq"], name="delivery_unique_device_seq"
            )
        ]
        indexes = [models.Index(fields=["created_at"], name="delivery_created_idx")]

    def __str__(self) -> str:
        return f"{self.device_id}#{self.seq}"
