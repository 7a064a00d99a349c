"""``manage.py remove_room_member``: take a member out of a room."""

from __future__ import annotations

from messaging import actions
from messaging.management.commands._common import OPERATOR, RoomMembershipCommand
from messaging.models import Room
from tenants.models import Member


class Command(RoomMembershipCommand):
    """Remove a member from a room (idempotent)."""

    help = "Remove a member from a room."
    done_state = "removed from"
    unchanged_state = "was not in"

    def change(self, room: Room, member: Member) -> bool:
        """Remove the member, audited."""
        return actions.do_remove_room_member(room, member, acting=OPERATOR)
