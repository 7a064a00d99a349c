"""Rooms, messages, per-device delivery queues and the relay consumer."""
