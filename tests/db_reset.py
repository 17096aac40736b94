"""The end of a transactional test: the database as a flush leaves it, without flushing every table.

Django's flush truncates all of the control plane's tables, then sends post_migrate, which creates the content types
and permissions again and (tests/conftest.py) seeds the catalog again. Measured here: about 0.5 CPU-seconds of the
test process and as much of PostgreSQL per transactional test, while a test commits rows to a handful of tables.

`reset()` leaves the same database. The first reset of a process does the real flush and remembers, per table, what
it left: the tables it filled (content types, permissions, the catalog) by a digest of their rows. Every later reset
finds, in one query each, the tables that now hold rows and the digests of the filled ones. When every filled table
is as the flush left it, it deletes the rows of the other tables that hold some, in one transaction (Django's foreign
keys on PostgreSQL are DEFERRABLE INITIALLY DEFERRED, so the order does not matter and the commit checks them). When
a filled table changed (a test edited a price), it does the real flush again. Whatever fails on the short way (a
constraint that is not deferred) falls back to the flush too.
"""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.db import DatabaseError, connections, transaction

_TEARDOWN = "_fixture_teardown"  # the method of TransactionTestCase that flushes (django-stubs does not declare it)
# alias -> {table: digest of its rows} for the tables the last real flush left non-empty.
_filled: dict[str, dict[str, str]] = {}


def _tables(connection) -> list[str]:
    return sorted(connection.introspection.django_table_names(only_existing=True, include_views=False))


def _quote(connection, table: str) -> str:
    return connection.ops.quote_name(table)


def _non_empty(connection, tables: list[str]) -> set[str]:
    if not tables:
        return set()
    parts = [f"(SELECT %s FROM {_quote(connection, table)} LIMIT 1)" for table in tables]
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), tables)
        return {row[0] for row in cursor.fetchall()}


def _digests(connection, tables: list[str]) -> dict[str, str]:
    if not tables:
        return {}
    parts = [
        f"(SELECT %s, md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {_quote(connection, table)} t)"
        for table in tables
    ]
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), tables)
        return dict(cursor.fetchall())


def flush(alias: str) -> None:
    """Django's own flush (post_migrate included), then remember what it left."""
    call_command("flush", verbosity=0, interactive=False, database=alias, reset_sequences=False)
    connection = connections[alias]
    tables = _tables(connection)
    _filled[alias] = _digests(connection, sorted(_non_empty(connection, tables)))


def reset(alias: str) -> str:
    """Leave the database `alias` as a flush would; say how: "flush" or "delete"."""
    filled = _filled.get(alias)
    if filled is None:
        flush(alias)
        return "flush"
    connection = connections[alias]
    tables = _tables(connection)
    holding = _non_empty(connection, tables)
    if set(filled) - holding or _digests(connection, sorted(filled)) != filled:
        flush(alias)
        return "flush"
    stale = sorted(holding - set(filled))
    try:
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            for table in stale:
                cursor.execute(f"DELETE FROM {_quote(connection, table)}")
    except DatabaseError:
        flush(alias)
        return "flush"
    return "delete"


def install() -> Any:
    """Make TransactionTestCase (pytest-django's transactional_db and live_server) end through reset(); returns the
    method it replaced, for uninstall()."""
    from django.test import TransactionTestCase

    original = getattr(TransactionTestCase, _TEARDOWN)

    def _fixture_teardown(self):
        if self.available_apps is not None or self.serialized_rollback:
            return original(self)
        for alias in self._databases_names(include_mirrors=False):
            reset(alias)

    setattr(TransactionTestCase, _TEARDOWN, _fixture_teardown)
    return original


def uninstall(original: Any) -> None:
    from django.test import TransactionTestCase

    setattr(TransactionTestCase, _TEARDOWN, original)
    _filled.clear()
