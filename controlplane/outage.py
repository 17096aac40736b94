"""Per-process memory that a dependency (Redis, the Celery broker) has just failed, so that the next calls skip it for a
few seconds instead of each waiting out a timeout, then try it again.

It only remembers and answers "try it now?"; what to do instead (local rate-limit buckets, leaving work to a sweep)
is the caller's decision. It never sleeps and never retries by itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Breaker:
    """Open for `open_seconds` after a failure; the first call after that is a trial that closes or re-opens it."""

    def __init__(self, name: str, *, open_seconds: Callable[[], float]) -> None:
        self.name = name
        self._open_seconds = open_seconds
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._failing = False

    @property
    def failing(self) -> bool:
        """True from a failure until the next success: the dependency is treated as down."""
        return self._failing

    def allow(self) -> bool:
        """Whether to call the dependency now (always while it works; once per open period while it fails)."""
        with self._lock:
            return time.monotonic() >= self._open_until

    def failed(self) -> bool:
        """Record a failure; True when it turns a working dependency into a failing one (log that once)."""
        with self._lock:
            self._open_until = time.monotonic() + self._open_seconds()
            turned, self._failing = not self._failing, True
            return turned

    def succeeded(self) -> bool:
        """Record a success; True when it ends a failure (log that once)."""
        with self._lock:
            self._open_until = 0.0
            turned, self._failing = self._failing, False
            return turned

    def reset(self) -> None:
        with self._lock:
            self._open_until, self._failing = 0.0, False
