"""Billing's notices reach the organization's notification channels as platform events (not only the billing
contact's email): payment failed, invoice overdue, deployment stopped for non-payment, annual renewal reminder and
VAT number invalid, each once, through a real webhook to a loopback receiver."""

import datetime

import pytest
from django.core import mail
from django.test import override_settings

from billing import annual, services
from billing.selectors import billing_account_for
from notifications.models import PlatformEvent
from tests.alerts.test_tasks import Receiver, eager, private_webhooks, webhook_channel  # noqa: F401 - fixtures
from tests.billing.conftest import ADDRESS, at
from tests.billing.test_payments import fake_stripe, issue_march_invoice  # noqa: F401 - fake_stripe is a fixture
from tests.fakes.vies import FakeVies

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver(owner_org, eager, private_webhooks):
    listening = Receiver()
    webhook_channel(owner_org.organization, listening.url)
    yield listening
    listening.stop()


def events(receiver) -> list[tuple[str, str]]:
    return [(body["event"], body["subject"]) for body in receiver.bodies()]


def us_account(owner_org):
    account = billing_account_for(organization=owner_org.organization)
    return services.billing_account_update(
        account=account, actor=None, country="US", email="ap@acme.example", postal_code="94105", **ADDRESS
    )


def test_overdue_reminders_and_billing_stop_reach_channels_once_each_when_invoice_stays_unpaid(
    owner_org, make_deployment, history, receiver, django_capture_on_commit_callbacks
):
    us_account(owner_org)
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    running = make_deployment(owner_org.default_project, name="live")
    history(running, [("running", at(2026, 4, 1), None)])
    due = invoice.due_at
    with django_capture_on_commit_callbacks(execute=True):
        services.overdue_process(now=due + datetime.timedelta(days=1, hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        services.overdue_process(now=due + datetime.timedelta(days=1, hours=2))  # nothing new to say
    with django_capture_on_commit_callbacks(execute=True):
        services.overdue_process(now=due + datetime.timedelta(days=14, hours=1))

    sent = events(receiver)
    assert sent.count(("platform.invoice_overdue", invoice.public_id)) == 2  # day 1, then days 3 and 7 at once
    assert ("platform.deployment_stopped_for_billing", running.public_id) in sent
    stopped = [body for body in receiver.bodies() if body["event"] == "platform.deployment_stopped_for_billing"]
    assert len(stopped) == 2 and {body["severity"] for body in stopped} == {"critical"}
    assert "live" in next(b["message"] for b in stopped if b["subject"] == running.public_id)
    # The billing contact is still written to as well.
    reminders = [m for m in mail.outbox if m.subject.startswith("Invoice ") and m.to == ["ap@acme.example"]]
    assert len(reminders) == 2


def test_failed_card_payment_reaches_channels_once_per_attempt_when_card_is_declined(
    fake_stripe, owner_org, make_deployment, history, receiver, django_capture_on_commit_callbacks
):
    account = us_account(owner_org)
    customer_id = services.billing_account_sync_stripe(account_id=account.pk)
    account.refresh_from_db()
    account.stripe_payment_method_id = fake_stripe.attach_card(customer_id)
    account.save()
    services.billing_account_set_default_card(account_id=account.pk)
    fake_stripe.decline_cards_of(customer_id, decline_code="insufficient_funds")
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.invoice_collect(invoice_id=invoice.pk) == "failed"
    with django_capture_on_commit_callbacks(execute=True):
        assert services.invoice_collect(invoice_id=invoice.pk) == "failed"

    failed = [body for body in receiver.bodies() if body["event"] == "platform.invoice_payment_failed"]
    assert [body["subject"] for body in failed] == [invoice.public_id, invoice.public_id]  # two attempts, two notices
    assert invoice.number in failed[0]["message"]


def test_renewal_reminder_reaches_channels_once_when_the_term_nears_its_end(
    owner_org, make_deployment, history, receiver, django_capture_on_commit_callbacks
):
    start = at(2026, 3, 1)
    deployment = make_deployment(owner_org.default_project, name="yearly")
    history(deployment, [("running", start, None)])
    annual.annual_subscription_start(deployment=deployment, actor=None, auto_renew=True, now=start)
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            annual.annual_renewals_process(now=at(2027, 2, 20))

    reminders = [body for body in receiver.bodies() if body["event"] == "platform.annual_renewal_reminder"]
    assert [body["subject"] for body in reminders] == [deployment.public_id]
    assert "renews automatically on 2027-03-01" in reminders[0]["message"]


def test_invalid_vat_number_reaches_channels_once_when_vies_does_not_know_it(
    owner_org, receiver, django_capture_on_commit_callbacks
):
    account = billing_account_for(organization=owner_org.organization)
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        services.billing_account_update(
            account=account,
            actor=None,
            country="FR",
            company="Exemple SAS",
            email="ap@exemple.example",
            tax_id="FR40303265045",
            postal_code="75001",
            **ADDRESS,
        )
        with django_capture_on_commit_callbacks(execute=True):
            assert services.billing_account_check_vat(account_id=account.pk) == "invalid"
        with django_capture_on_commit_callbacks(execute=True):
            services.vat_invalid_notify(account=billing_account_for(organization=owner_org.organization))  # a repeat

    invalid = [body for body in receiver.bodies() if body["event"] == "platform.vat_number_invalid"]
    assert len(invalid) == 1 and "FR40303265045" in invalid[0]["message"]
    assert PlatformEvent.objects.filter(kind="vat_number_invalid", organization=owner_org.organization).count() == 1
