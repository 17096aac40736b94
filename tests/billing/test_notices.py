"""Billing's notices reach the organization's notification channels as platform events (not only the billing
contact's email): payment failed, invoice overdue, deployment stopped for non-payment, annual renewal reminder and
VAT number invalid, each once, through a real webhook to a loopback receiver. The billing contact's email goes through
the notifications app's retried email task: an SMTP failure is tried again, one that outlasts the retries is logged
and counted, and with Redis down the committing process sends it at once."""

import datetime

import pytest
from django.core import mail
from django.test import override_settings

from billing import annual, services
from billing.selectors import billing_account_for
from notifications.models import PlatformEvent
from notifications.tasks import EMAIL_RETRIES
from tests.alerts.test_tasks import Receiver, eager, private_webhooks, webhook_channel  # noqa: F401 - fixtures
from tests.billing.conftest import ADDRESS, at
from tests.billing.test_payments import fake_stripe, issue_march_invoice  # noqa: F401 - fake_stripe is a fixture
from tests.fakes.vies import FakeVies
from tests.notifications.test_services import FlakySmtp
from tests.outage import redis_unreachable

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


def _overdue_reminder(owner_org, make_deployment, history):
    """An unpaid March invoice one day past due: the overdue run writes its first reminder to the billing contact."""
    us_account(owner_org)
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    services.overdue_process(now=invoice.due_at + datetime.timedelta(days=1, hours=1))
    return invoice


@pytest.mark.parametrize(("failures", "delivered"), [(2, True), (EMAIL_RETRIES + 1, False)])
def test_billing_contact_email_is_retried_then_counted_and_logged_never_silent_when_smtp_fails(
    owner_org,
    make_deployment,
    history,
    receiver,
    settings,
    caplog,
    django_capture_on_commit_callbacks,
    failures,
    delivered,
):
    # The receiver takes the platform event, so the billing contact's reminder is the only email sent.
    from controlplane.metrics import NOTIFICATION_FAILURES

    settings.EMAIL_BACKEND = "tests.notifications.test_services.FlakySmtp"
    FlakySmtp.failures = failures
    counted = NOTIFICATION_FAILURES.labels(channel_type="email")._value.get()
    with django_capture_on_commit_callbacks(execute=True):
        invoice = _overdue_reminder(owner_org, make_deployment, history)

    sent = [m for m in mail.outbox if m.to == ["ap@acme.example"]]
    assert [m.subject for m in sent] == ([f"Invoice {invoice.number} is overdue"] if delivered else [])
    assert FlakySmtp.failures == 0  # every failed attempt was tried again
    assert NOTIFICATION_FAILURES.labels(channel_type="email")._value.get() == counted + (0 if delivered else 1)
    assert (f"Invoice {invoice.number} is overdue" in caplog.text and "not sent" in caplog.text) is not delivered


def test_billing_contact_email_is_sent_at_once_when_redis_is_down_at_commit(
    owner_org, make_deployment, history, django_capture_on_commit_callbacks
):
    """A real unreachable broker (a closed port): the reminder cannot be queued, so the committing process sends it."""
    from controlplane import tasks as publishing

    with redis_unreachable():
        with django_capture_on_commit_callbacks(execute=True):
            invoice = _overdue_reminder(owner_org, make_deployment, history)
        assert publishing.broker.failing  # it was not queued: the broker refused
    sent = [m for m in mail.outbox if m.to == ["ap@acme.example"]]
    assert [m.subject for m in sent] == [f"Invoice {invoice.number} is overdue"]
