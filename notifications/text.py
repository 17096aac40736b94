"""Text that ends up in a mail subject, a chat line or a pager summary: on one line.

Names customers give are refused with control characters (controlplane.validators); what is built from other text
(an alert's summary, a platform event's first line) is flattened here instead, so a subject is always one line.
"""

from __future__ import annotations

from controlplane.validators import CONTROL_CHARACTERS


def one_line(value: str, limit: int) -> str:
    """`value` on one line (every control character or line separator a space), cut to `limit` characters."""
    return CONTROL_CHARACTERS.sub(" ", value)[:limit]
