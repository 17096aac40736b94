"""Collectors turn one broker's own figures into the vocabulary of alerts.metrics.

Owns the result shape and the counter-to-rate arithmetic shared by every collector. A collector never raises for
an unreachable broker and never writes to the database: it returns available=False and the caller records it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class CollectResult:
    values: dict[str, float] = field(default_factory=dict)
    # Where the next run resumes reading the broker log (bytes); 0 for collectors without a log.
    log_offset: int = 0
    # Opaque, JSON-serialisable; pass it back as `previous` on the next run so counters become rates.
    state: dict[str, Any] = field(default_factory=dict)
    available: bool = True
    error: str = ""


def counter_rate(*, current: float | None, previous: float | None, elapsed: float | None) -> float | None:
    """Per-second rate of a monotonic counter, or None when it cannot be known.

    A counter that went backwards means the broker restarted: the delta is unknown, so no rate rather than a
    negative or a huge one.
    """
    if current is None or previous is None or not elapsed or elapsed <= 0:
        return None
    delta = current - previous
    if delta < 0:
        return None
    return delta / elapsed


def counter_delta(*, current: float | None, previous: float | None) -> float | None:
    if current is None or previous is None or current < previous:
        return None
    return current - previous
