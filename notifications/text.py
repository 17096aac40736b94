"""Text that ends up in a mail subject, a chat line or a pager summary: one line, no control characters.

Owns the check that services run on the names customers give (channels, alert rules) and the one-line form of a
derived subject. Stored text is never altered silently: a bad name is refused; only derived subjects are flattened.
"""

from __future__ import annotations

import unicodedata

# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: each one breaks a line somewhere.
_BREAKING = {"Cc", "Zl", "Zp"}


def has_control_characters(value: str) -> bool:
    return any(unicodedata.category(c) in _BREAKING for c in value)


def name_problem(value: object) -> str | None:
    """Why this is not an acceptable name, or None. A `\\r` in a name once broke every email its channel sent."""
    if not isinstance(value, str) or not value.strip():
        return "A name is required."
    if has_control_characters(value):
        return "A name is one line of text without control characters (line breaks, tabs…)."
    return None


def one_line(value: str, limit: int) -> str:
    """`value` on one line (every control character or separator a space), cut to `limit` characters."""
    flat = "".join(" " if unicodedata.category(c) in _BREAKING else c for c in value)
    return flat[:limit]


def validate_name(value: str) -> None:
    """Model-field validator: the same rule, for writes that go through full_clean (the admin's forms)."""
    from django.core.exceptions import ValidationError

    problem = name_problem(value)
    if problem:
        raise ValidationError(problem, code="control_characters")
