"""Tenants, their members and the row-level-security machinery."""
