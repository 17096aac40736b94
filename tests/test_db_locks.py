"""Advisory locks: one key layout, and a session lock that a second holder cannot take."""

import pytest
from django.db import transaction

from controlplane import db


def test_lock_key_puts_space_high_and_id_low_when_id_is_wider_than_32_bits():
    key = db.lock_key(db.LockSpace.RECONCILE, (1 << 40) + 7)
    assert key >> 32 == db.LockSpace.RECONCILE
    assert key & 0xFFFFFFFF == 7


def test_lock_spaces_are_distinct_when_listed():
    values = [space.value for space in db.LockSpace]
    assert len(values) == len(set(values))


@pytest.mark.django_db(transaction=True)
def test_session_lock_refuses_second_holder_when_first_still_holds_it():
    with db.session_try_lock(db.LockSpace.RECONCILE, 42) as first:
        assert first
        with db.session_try_lock(db.LockSpace.RECONCILE, 42) as second:
            assert not second
        with db.session_try_lock(db.LockSpace.RECONCILE, 43) as other:
            assert other
    with db.session_try_lock(db.LockSpace.RECONCILE, 42) as again:
        assert again


@pytest.mark.django_db
def test_session_lock_is_free_the_moment_its_block_ends_when_the_next_try_comes_at_once():
    # Closing the lock's connection only asks the server to end that backend; a lock left to go with it would still
    # be held for a moment, and a poll right after the last one was refused as "busy" on a loaded machine.
    from django.db import connection

    peering_id = 2_000_000_007  # an id no other test's peering has (pg_locks shows every database's locks)
    key = db.lock_key(db.LockSpace.VPC_PEERING, peering_id)
    still_held = 0
    for _ in range(100):
        with db.session_try_lock(db.LockSpace.VPC_PEERING, peering_id) as held:
            assert held
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND ((classid::bigint << 32) | objid::bigint) = %s",
                [key],
            )
            still_held += cursor.fetchone()[0]
    assert still_held == 0


@pytest.mark.django_db(transaction=True)
def test_xact_lock_needs_a_transaction_when_called_outside_one():
    with pytest.raises(RuntimeError):
        db.xact_lock(db.LockSpace.INVOICE_CLOSE, 202604)
    with transaction.atomic():
        db.xact_lock(db.LockSpace.INVOICE_CLOSE, 202604)
        assert db.xact_try_lock(db.LockSpace.INVOICE_CLOSE, 202605)


@pytest.mark.django_db(transaction=True)
def test_shared_holders_coexist_and_exclusive_waits_when_the_lock_is_taken_shared():
    from django.db import DEFAULT_DB_ALIAS, connections

    other = connections.create_connection(DEFAULT_DB_ALIAS)
    key = db.lock_key(db.LockSpace.METERING, 1)
    try:
        with transaction.atomic():
            db.xact_lock_shared(db.LockSpace.METERING, 1)
            with other.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock_shared(%s)", [key])
                assert cursor.fetchone()[0] is True  # a second sample alongside
                cursor.execute("SELECT pg_advisory_unlock_shared(%s)", [key])
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
                assert cursor.fetchone()[0] is False  # the close waits for every sample
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            assert cursor.fetchone()[0] is True
    finally:
        other.close()
    with pytest.raises(RuntimeError):
        db.xact_lock_shared(db.LockSpace.METERING, 1)
