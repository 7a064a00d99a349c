"""Invites, enrollment, approval, device authentication and prekeys."""
