"""Data made once for a whole test module, for the wide parametrized walks (every role or tenant against every API
operation) whose each case would otherwise build the same organizations and sample objects again.

The data lives in a transaction opened for the module and rolled back at its end; each test runs in a savepoint of
it (pytest-django's `db`), so what one test changes (a DELETE, a rotated key) is gone before the next one starts.
Never for `transaction=True` tests, nor for tests whose code must see a commit (on_commit work never runs here).
"""

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from django.apps import apps
from django.db import transaction

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
        yield data
    finally:
        with django_db_blocker.unblock():
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)
