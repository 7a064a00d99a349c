"""Signals sent by enrollment inside the approve and revoke transactions.

Both carry the keyword argument ``device`` (the ``Device`` after its status
changed). Receivers run inside the sending transaction and its tenant scope;
anything that must not happen for a rolled-back change goes through
``transaction.on_commit``.
"""

from django.dispatch import Signal

device_revoked = Signal()
device_approved = Signal()
