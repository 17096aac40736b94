"""The overdue run reads each overdue organization's billing account once, not once per deployment it stops: the
queries that touch billing accounts do not grow with the deployments stopped."""

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing import services
from deployments.models import Deployment
from tests.billing.conftest import at
from tests.billing.test_payments import issue_march_invoice
from tests.factories import make_organization

pytestmark = pytest.mark.django_db


def _overdue_org(make_deployment, history, running: int):
    """An organization with an overdue March invoice (its deployment, still running, is one of `running`)."""
    org = make_organization()
    invoice = issue_march_invoice(org, make_deployment, history)
    for i in range(running - 1):
        plant = make_deployment(org.default_project, name=f"live-{i}")
        history(plant, [("running", at(2026, 4, 1), None)])
    return org, invoice


def _account_queries(now) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as captured:
        counts = services.overdue_process(now=now)
    return sum("billing_billingaccount" in q["sql"] for q in captured.captured_queries), counts


def test_billing_accounts_read_a_fixed_number_of_times_when_more_deployments_are_stopped(
    make_deployment, history, django_capture_on_commit_callbacks
):
    one, invoice = _overdue_org(make_deployment, history, running=1)
    past_grace = invoice.due_at + datetime.timedelta(days=15)
    with django_capture_on_commit_callbacks():
        few, counts = _account_queries(past_grace)
    assert counts["stopped"] == 1
    six, _ = _overdue_org(make_deployment, history, running=6)
    with django_capture_on_commit_callbacks():
        many, counts = _account_queries(past_grace)
    assert counts["stopped"] == 6
    assert many <= few
    stopped = Deployment.objects.filter(status_reason="billing", desired_state="stopped")
    assert stopped.filter(project__organization=one.organization).count() == 1
    assert stopped.filter(project__organization=six.organization).count() == 6
