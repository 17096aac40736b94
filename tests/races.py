"""Two requests at once, made deterministic: the second one runs in another thread on its own database connection (as
a second web worker would), at a point of the first chosen by wrapping a function the first calls there."""

from __future__ import annotations

import threading
import time

from django.db import connection


def _start(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                box["pid"] = cursor.fetchone()[0]
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            box["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def _outcome(thread: threading.Thread, box: dict):
    thread.join(60)
    assert not thread.is_alive(), "the second request hung"
    if "error" in box:
        raise box["error"]
    return box.get("result")


def run_elsewhere(fn):
    """Run `fn` to completion on another connection; return what it returned or raise what it raised."""
    return _outcome(*_start(fn))


def run_elsewhere_until_blocked(fn):
    """Start `fn` on another connection and come back once it has finished or waits on a lock this connection holds.
    Returns a function that waits for `fn` to finish (call it after this connection commits) and gives its result."""
    thread, box = _start(fn)
    deadline = time.monotonic() + 30
    while thread.is_alive():
        pid = box.get("pid")
        if pid is not None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted)", [pid])
                if cursor.fetchone()[0]:
                    break
        assert time.monotonic() < deadline, "the second request neither finished nor waited on a lock"
        time.sleep(0.02)
    return lambda: _outcome(thread, box)


def once(original, interloper):
    """A wrapper of `original` that calls `interloper()` the first time it is called, then the original."""
    state = {"done": False}

    def wrapper(*args, **kwargs):
        if not state["done"]:
            state["done"] = True
            interloper()
        return original(*args, **kwargs)

    return wrapper
