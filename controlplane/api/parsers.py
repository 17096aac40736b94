"""The API's JSON parser: DRF's, with bounds on what a body may make the server do before any field sees it.

Nesting deeper than MAX_DEPTH, non-finite numbers (NaN, Infinity, 1e400) and integers longer than any column could
hold are refused with a 400 problem. Depth is measured by a linear scan before `json.loads` runs, so a body of
100,000 `[` never reaches the recursive decoder. It never decides whether a value is valid for a field: fields do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 32
# The widest integer column (bigint) holds 19 digits. Integers up to 40 digits still reach the serializer, so that a
# field's own bounds answer with the field's name (`max_conn_rate: 10**30`); longer ones are refused here, before
# Python converts them.
MAX_INTEGER_DIGITS = 40

# A JSON string (possessive: no backtracking into it) or a bracket; everything else is skipped by finditer.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]', re.DOTALL)


def nesting_depth_exceeds(text: str, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit`, brackets inside strings not counted. Linear, no recursion."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        elif token in "]}":
            depth -= 1
    return False


def _integer(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise ValueError(f"the integer {literal[:20]}… has more than {MAX_INTEGER_DIGITS} digits")
    return int(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {literal[:20]}{'…' if len(literal) > 20 else ''} is too large")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class BoundedJSONParser(JSONParser):
    """The default parser of every API view (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"])."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding)
        except UnicodeDecodeError as exc:
            raise ParseError(f"JSON parse error - the body is not valid {encoding}") from exc
        if nesting_depth_exceeds(text, MAX_DEPTH):
            raise ParseError(f"JSON parse error - arrays and objects nest deeper than {MAX_DEPTH} levels")
        try:
            return json.loads(text, parse_int=_integer, parse_float=_finite_float, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
