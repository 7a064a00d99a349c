"""Tenancy checks."""
