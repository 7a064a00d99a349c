"""What every API input serializer shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers


class StrictInputSerializer(serializers.Serializer[Any]):
    """An input body whose unknown keys are refused, not ignored.

    A misspelt optional key (``member_ids`` for ``members``) would otherwise
    be dropped and the request carried out without it.
    """

    def to_internal_value(self, data: Any) -> Any:
        """Refuse keys the serializer does not declare, then validate."""
        if isinstance(data, Mapping):
            unknown = sorted(str(key) for key in data if key not in self.fields)
            if unknown:
                raise serializers.ValidationError(
                    {key: ["Unknown field."] for key in unknown}
                )
        return super().to_internal_value(data)
