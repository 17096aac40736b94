"""Data made once for a whole test module, for the wide parametrized walks (every role or tenant against every API
operation) whose each case would otherwise build the same organizations and sample objects again.

The data lives in a transaction opened for the module and rolled back at its end; each test runs in a savepoint of
it (pytest-django's `db`), so what one test changes (a DELETE, a rotated key) is gone before the next one starts.
Its foreign keys are checked once, when it is made (see data_for_module).
Never for `transaction=True` tests, nor for tests whose code must see a commit (on_commit work never runs here).
"""

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from django.apps import apps
from django.db import connection, transaction

T = TypeVar("T")


@contextlib.contextmanager
def data_for_module(django_db_blocker, build: Callable[[], T]) -> Iterator[T]:
    """`build()`'s result, made in a transaction that stays open (and is rolled back) until the block ends."""
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
    try:
        with django_db_blocker.unblock():
            # A transactional test earlier in the run flushed the catalog its data migration seeded (plans, tiers,
            # prices, the local region): the data below needs it, and a module fixture runs before any per-test one.
            importlib.import_module("deployments.migrations.0002_seed_catalog").seed(apps, None)
            data = build()
            # Django's foreign keys are deferred: their checks wait, queued, for the end of the transaction, and a
            # test's end (SET CONSTRAINTS ALL IMMEDIATE, then the rollback of its savepoint) runs the module's queued
            # checks too and then puts them back in the queue, since a rolled-back savepoint undoes what ran in it.
            # Running them here, outside any test, checks the module's data once (a broken row fails the module at
            # once) and leaves each test only its own: the walks' tests ended about 30 ms of PostgreSQL time sooner.
            connection.check_constraints()
        yield data
    finally:
        with django_db_blocker.unblock():
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)
