"""Every model change has its migration: a field, an option or a help text changed without one would leave the
database (and the next makemigrations of whoever comes after) out of step with the code."""

import io

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_no_model_change_is_without_its_migration():
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exit:
        pytest.fail(f"makemigrations would write migrations (exit {exit.code}):\n{out.getvalue()}")
