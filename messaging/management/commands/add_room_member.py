"""``manage.py add_room_member``: put a member in a room."""

from __future__ import annotations

from messaging import actions
from messaging.management.commands._common import OPERATOR, RoomMembershipCommand
from messaging.models import Room
from tenants.models import Member


class Command(RoomMembershipCommand):
    """Add a member to a room (idempotent)."""

    help = "Add a member to a room."
    done_state = "added to"
    unchanged_state = "already in"

    def change(self, room: Room, member: Member) -> bool:
        """Add the member, audited."""
        return actions.do_add_room_member(room, member, acting=OPERATOR)
