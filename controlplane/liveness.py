"""Liveness files: a long-running loop (Celery beat, the platform agent) touches its file on every pass, and the
chart's liveness probe, a shell test of the file's age, restarts a process whose loop hangs. Touching never raises: a
file that cannot be written goes stale, and the probe restarts the process, which is what a hang gets too."""

import logging
import os

logger = logging.getLogger(__name__)
_failed: set[str] = set()


def touch(path: str) -> None:
    try:
        with open(path, "a"):
            os.utime(path)
    except OSError as exc:
        if path not in _failed:  # once per file, not once per tick
            _failed.add(path)
            logger.warning("cannot touch the liveness file %s: %s", path, exc, extra={"path": path, "error": str(exc)})
        return
    _failed.discard(path)
