"""Request body parsers for the API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class SafeJSONParser(JSONParser):
    """Parse JSON bodies; a body nested too deeply to parse is malformed.

    The standard library's decoder recurses once per nesting level, so a
    body such as ``[[[[...]]]]`` a few tens of thousands of levels deep
    raises ``RecursionError`` instead of ``ValueError``. DRF only converts
    the latter, which left such a body as a 500.
    """

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Return the parsed body or raise ``ParseError``."""
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
