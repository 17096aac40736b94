"""tests/db_reset.py: a transactional test ends with the database Django's flush would leave, by the short way when
the flush's own rows are untouched and by the flush itself when they are not."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection

from deployments.models import Price
from organizations.models import Organization
from tests import db_reset

pytestmark = pytest.mark.django_db(transaction=True)


def _counts() -> dict[str, int]:
    counts = {}
    with connection.cursor() as cursor:
        for table in db_reset._tables(connection):
            cursor.execute(f"SELECT count(*) FROM {connection.ops.quote_name(table)}")
            counts[table] = cursor.fetchone()[0]
    return counts


def test_rows_a_test_committed_are_gone_and_the_flushs_rows_kept_when_the_short_way_resets(org_factory):
    db_reset.reset("default")  # the process's first reset flushes and remembers what the flush left
    left_by_flush = dict(db_reset._filled["default"])
    org_factory()
    org_factory()
    assert Organization.objects.count() == 2

    assert db_reset.reset("default") == "delete"

    assert Organization.objects.count() == 0
    assert db_reset._digests(connection, sorted(left_by_flush)) == left_by_flush
    after_delete = _counts()
    db_reset.flush("default")
    assert _counts() == after_delete  # table for table, the rows a real flush leaves


def test_an_edited_catalog_price_is_seeded_again_when_the_reset_finds_a_flushs_table_changed(org_factory):
    db_reset.reset("default")
    price = Price.objects.filter(kind="hourly", tier__isnull=False).order_by("pk").first()
    assert price is not None
    seeded, plan, tier = price.amount, price.plan.code, price.tier.code
    Price.objects.filter(pk=price.pk).update(amount=seeded + Decimal("1.00"))
    org_factory()

    assert db_reset.reset("default") == "flush"

    assert Organization.objects.count() == 0
    again = Price.objects.get(plan__code=plan, tier__code=tier, kind="hourly", currency=price.currency)
    assert again.amount == seeded


def test_a_flushs_table_emptied_by_the_test_is_filled_again_when_the_reset_runs():
    db_reset.reset("default")
    Price.objects.all().delete()

    assert db_reset.reset("default") == "flush"

    assert Price.objects.exists()
