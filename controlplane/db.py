"""PostgreSQL advisory locks, in one style: a named key space in the high half of the key, an id in the low half.

Every advisory lock the control plane takes goes through here, so two features can never collide on a key. Nothing
here decides what to lock; callers do.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections


class LockSpace(enum.IntEnum):
    """The key spaces. Values are part of the running system's contract with itself: never reuse or renumber one."""

    RECONCILE = 0x4D515454  # "MQTT": one reconcile of a deployment at a time
    INVOICE_CLOSE = 0x494E5643  # "INVC": one month close at a time, keyed by YYYYMM
    METERING = 0x4D455452  # "METR": one metering run at a time
    AGENT_LEASE = 0x4147454E  # "AGEN": platform agent leases, keyed by deployment id
    CERTIFICATE_AUTHORITY = 0x544C5343  # "TLSC": creating the control plane's own CA, once (key 0)
    VPC_PEERING = 0x56504350  # "VPCP": one poll of a VPC peering at a time, keyed by peering id
    PREMIUM_TRIAL = 0x5452494C  # "TRIL": one sweep of a Premium trial at a time, keyed by trial id


def lock_key(space: LockSpace, key: int) -> int:
    """The signed 64-bit key PostgreSQL takes: the space in the high 32 bits, the low 32 bits of `key` below."""
    value = (int(space) << 32) | (key & 0xFFFFFFFF)
    return value - (1 << 64) if value >= 1 << 63 else value


def xact_lock(space: LockSpace, key: int) -> None:
    """Wait for the lock and hold it until the current transaction ends. Call inside `transaction.atomic()`."""
    if not connection.in_atomic_block:
        raise RuntimeError("xact_lock needs an open transaction: it is released when the transaction ends")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(space, key)])


def xact_try_lock(space: LockSpace, key: int) -> bool:
    """Take the lock for the current transaction if it is free; False at once if another session holds it."""
    if not connection.in_atomic_block:
        raise RuntimeError("xact_try_lock needs an open transaction: it is released when the transaction ends")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [lock_key(space, key)])
        return bool(cursor.fetchone()[0])


@contextlib.contextmanager
def session_try_lock(space: LockSpace, key: int) -> Iterator[bool]:
    """Yields whether this process now holds the lock, on a connection of its own.

    The lock is held across work that keeps no transaction open (a driver call, an HTTP request), and PostgreSQL drops
    it the moment that connection dies: a SIGKILLed process strands nothing. Closing the connection releases it.
    """
    lock_connection = connections.create_connection(DEFAULT_DB_ALIAS)
    acquired = False
    try:
        with lock_connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [lock_key(space, key)])
            acquired = bool(cursor.fetchone()[0])
        yield acquired
    finally:
        # Unlocked before the connection closes: closing only asks the server's backend to exit, and until it has,
        # the lock is still held, so the caller's next try (or another process's) could be refused for nothing.
        if acquired:
            try:
                with lock_connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_key(space, key)])
            except DatabaseError:
                pass  # the connection is gone, and the lock with it
        lock_connection.close()


def xact_lock_shared(space: LockSpace, key: int) -> None:
    """Wait for the lock in shared mode until the current transaction ends: any number of shared holders together,
    none while someone holds it exclusively (`xact_lock`)."""
    if not connection.in_atomic_block:
        raise RuntimeError("xact_lock_shared needs an open transaction: it is released when the transaction ends")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [lock_key(space, key)])
