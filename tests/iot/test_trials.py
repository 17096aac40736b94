"""Premium trials on real PostgreSQL with a frozen clock (`now=` passed to the services, as billing's tests do): the
staff's grant (command, admin, service), what the organization sees, the reminders, conversion to the annual plan
without an hour billed, the stop at the end and the deletion after the retention, and bad input."""

import datetime
import io
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from billing import annual, metering
from billing.models import TrafficRecord, UsageRecord
from billing.traffic import traffic_counters_record
from controlplane.errors import Conflict, PermissionDenied, ValidationFailed
from deployments import services as deployment_services
from deployments.models import Deployment, StatusInterval
from iot import trials
from iot.management.commands.grant_premium_trial import Command
from iot.trials_models import PremiumTrial, TrialDeployment
from notifications.models import Delivery, PlatformEvent
from organizations.access import Principal
from tests.alerts.test_tasks import Receiver, eager, private_webhooks, webhook_channel  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db
DAY = datetime.timedelta(days=1)
ADDRESS = {"address": "1 Main St", "city": "Springfield"}


def trial_url(org):
    return f"/api/v1/organizations/{org.id}/premium-trial"


def deployments_url(org):
    return f"/api/v1/organizations/{org.id}/projects/{org.default_project.public_id}/deployments"


def create_premium(org, name):
    deployment, _ = deployment_services.deployment_create(
        project=org.default_project, actor=None, name=name, plan="premium", tier="1k", region="local"
    )
    return deployment


def settle_running(deployment, since):
    """What the reconciler would write once the broker runs: status running and an open running interval."""
    deployment.operations.update(status="succeeded")
    Deployment.objects.filter(pk=deployment.pk).update(status="running", observed_generation=deployment.generation)
    StatusInterval.objects.create(deployment=deployment, status="running", tier=deployment.tier, started_at=since)
    deployment.refresh_from_db()


def settle_stopped(deployment, at):
    generation = Deployment.objects.get(pk=deployment.pk).generation
    Deployment.objects.filter(pk=deployment.pk).update(status="stopped", observed_generation=generation)
    StatusInterval.objects.filter(deployment=deployment, ended_at__isnull=True).update(ended_at=at)
    StatusInterval.objects.create(deployment=deployment, status="stopped", tier=deployment.tier, started_at=at)


def set_account(org):
    from billing import services as billing_services
    from billing.selectors import billing_account_for

    billing_services.billing_account_update(
        account=billing_account_for(organization=org.organization),
        actor=None,
        country="US",
        company="Acme Inc.",
        email="billing@acme.example",
        postal_code="94105",
        **ADDRESS,
    )


# -- grant --------------------------------------------------------------------------------------------------------


def test_organization_sees_trial_and_its_end_when_staff_grants_it_with_the_command(owner_org, key_client):
    out = io.StringIO()
    call_command(
        "grant_premium_trial", "--organization", owner_org.id, "--deployments", "2", "--days", "14", stdout=out
    )
    trial = PremiumTrial.objects.get(organization=owner_org.organization)
    assert trial.deployments == 2
    assert abs((trial.ends_at - timezone.now()) - 14 * DAY) < datetime.timedelta(minutes=1)
    assert trial.public_id in out.getvalue() and "2 trial deployment(s)" in out.getvalue()
    owner_org.organization.refresh_from_db()
    assert owner_org.organization.premium_trial_deployments == 2
    body = key_client(owner_org.owner_secret).get(trial_url(owner_org)).json()
    assert (body["status"], body["deployments"], body["used"]) == ("active", 2, 0)
    assert datetime.datetime.fromisoformat(body["ends_at"].replace("Z", "+00:00")) == trial.ends_at
    event = AuditEvent.objects.get(action="premium_trial.grant")
    assert event.organization_id == owner_org.organization.pk and event.summary["days"] == 14


def test_member_without_roles_sees_trial_and_other_organization_gets_404_when_asking(
    owner_org, org_factory, key_client
):
    trials.premium_trial_grant(organization=owner_org.organization, actor=None, deployments=1, days=3)
    auditor, _ = owner_org.add_member(roles=["auditor"])
    _, secret = owner_org.key_for(auditor, role="auditor")
    assert key_client(secret).get(trial_url(owner_org)).json()["deployments"] == 1
    other = org_factory()
    response = key_client(other.owner_secret).get(trial_url(owner_org))
    assert response.status_code == 404
    assert key_client(other.owner_secret).get(trial_url(other)).json()["status"] == "none"


def test_members_see_only_the_trial_deployments_of_projects_they_may_read_when_asking(owner_org, key_client):
    from projects.services import project_create

    trials.premium_trial_grant(organization=owner_org.organization, actor=None, deployments=2, days=3)
    create_premium(owner_org, "visible-plant")
    hidden = project_create(organization=owner_org.organization, actor=None, name="Hidden")
    deployment_services.deployment_create(
        project=hidden, actor=None, name="hidden-plant", plan="premium", tier="1k", region="local"
    )
    project_user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    _, user_secret = owner_org.key_for(project_user, role="project_user", projects=[owner_org.default_project])
    _, limited_secret = owner_org.key_for(owner_org.owner, role="owner", projects=[owner_org.default_project])
    for secret in (user_secret, limited_secret):
        body = key_client(secret).get(trial_url(owner_org)).json()
        assert [d["name"] for d in body["trial_deployments"]] == ["visible-plant"]
        assert body["used"] == 2  # the limit counts every Premium deployment of the organization
    everything = key_client(owner_org.owner_secret).get(trial_url(owner_org)).json()
    assert sorted(d["name"] for d in everything["trial_deployments"]) == ["hidden-plant", "visible-plant"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--organization", "org_doesnotexist"], "no organization 'org_doesnotexist'"),
        (["--organization", "org_\x00\x1b[31m"], "no organization 'org_\\x00\\x1b[31m'"),
        (["--deployments", "3"], "--deployments: A Premium trial has 1 to 2 trial deployments, not 3."),
        (["--deployments", "0"], "--deployments: A Premium trial has 1 to 2 trial deployments, not 0."),
        (["--days", "-5"], "--days: A Premium trial lasts 1 to 90 days, not -5."),
        (["--days", "0"], "--days: A Premium trial lasts 1 to 90 days, not 0."),
    ],
)
def test_command_refuses_with_message_when_input_is_bad(owner_org, args, message):
    base = ["--organization", owner_org.id]
    if args[0] == "--organization":
        base = []
    with pytest.raises(CommandError) as raised:
        call_command("grant_premium_trial", *base, *args)
    assert message in str(raised.value)
    assert not PremiumTrial.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="premium_trial").exists()


def test_help_text_states_the_rules_the_service_applies_when_asked():
    text = " ".join(Command().create_parser("manage.py", "grant_premium_trial").format_help().split())
    assert "--organization ORGANIZATION" in text and "--deployments DEPLOYMENTS" in text and "--days DAYS" in text
    assert f"1 to {trials.MAX_TRIAL_DEPLOYMENTS}" in text and f"(default {trials.MAX_TRIAL_DEPLOYMENTS})" in text
    assert f"1 to {trials.MAX_DAYS}" in text and f"(default {trials.DEFAULT_DAYS})" in text
    assert f"kept {trials.RETENTION.days} days, then deleted" in text
    assert f"3 days and {min(trials.REMINDER_DAYS)} day before the end" in text
    assert max(trials.REMINDER_DAYS) == 3


def test_non_staff_cannot_grant_when_member_or_api_key_or_admin_page(owner_org, client):
    organization = owner_org.organization
    with pytest.raises(PermissionDenied):
        trials.premium_trial_grant(organization=organization, actor=Principal(user=owner_org.owner), days=14)
    owner_org.owner.is_staff = True
    owner_org.owner.save(update_fields=["is_staff"])
    with pytest.raises(PermissionDenied):  # an API key acts for its creator, but never as staff
        trials.premium_trial_grant(
            organization=organization, actor=Principal(user=owner_org.owner, api_key=owner_org.owner_key), days=14
        )
    owner_org.owner.is_staff = False
    owner_org.owner.save(update_fields=["is_staff"])
    client.force_login(owner_org.owner)
    response = client.post("/admin/iot/premiumtrial/add/", {"organization": owner_org.id, "deployments": 2, "days": 14})
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert not PremiumTrial.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="premium_trial").exists()


def test_staff_grants_in_admin_and_bad_input_is_shown_on_the_form_when_submitted(owner_org, admin_client, admin_user):
    bad = admin_client.post(
        "/admin/iot/premiumtrial/add/", {"organization": owner_org.id, "deployments": 3, "days": -1}
    )
    assert bad.status_code == 200
    page = bad.content.decode()
    assert "1 to 2 trial deployments, not 3" in page and "1 to 90 days, not -1" in page
    unknown = admin_client.post(
        "/admin/iot/premiumtrial/add/", {"organization": "org_nope", "deployments": 1, "days": 1}
    )
    assert "No organization" in unknown.content.decode()
    assert not PremiumTrial.objects.exists()
    done = admin_client.post(
        "/admin/iot/premiumtrial/add/", {"organization": owner_org.id, "deployments": 1, "days": 7}
    )
    assert done.status_code == 302
    trial = PremiumTrial.objects.get()
    assert (trial.deployments, trial.granted_by) == (1, admin_user)
    event = AuditEvent.objects.get(action="premium_trial.grant")
    assert event.actor_email == admin_user.email
    listing = admin_client.get("/admin/iot/premiumtrial/").content.decode()
    assert trial.public_id in listing


def test_third_trial_deployment_refused_with_409_problem_when_two_are_used(owner_org, key_client):
    trials.premium_trial_grant(organization=owner_org.organization, actor=None, deployments=2, days=14)
    client = key_client(owner_org.owner_secret)
    for name in ("one", "two"):
        response = client.post(
            deployments_url(owner_org),
            {"name": name, "plan": "premium", "tier": "1k", "region": "local"},
            format="json",
        )
        assert response.status_code == 202, response.content
    third = client.post(
        deployments_url(owner_org), {"name": "three", "plan": "premium", "tier": "1k", "region": "local"}, format="json"
    )
    assert third.status_code == 409
    assert third["Content-Type"].startswith("application/problem+json")
    assert "used its 2 Premium trial deployment(s)" in third.json()["detail"]
    assert TrialDeployment.objects.count() == 2
    body = client.get(trial_url(owner_org)).json()
    assert body["used"] == 2 and [d["outcome"] for d in body["trial_deployments"]] == ["trial", "trial"]
    # Re-granting fewer than already made is refused too.
    with pytest.raises(ValidationFailed) as raised:
        trials.premium_trial_grant(organization=owner_org.organization, actor=None, deployments=1, days=14)
    assert "already created 2" in raised.value.errors[0].message


def test_premium_deployment_refused_when_trial_ended(owner_org):
    now = timezone.now()
    trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=1, now=now - 2 * DAY)
    with pytest.raises(Conflict) as raised:
        create_premium(owner_org, "late")
    assert "trial ended" in raised.value.message
    with pytest.raises(Conflict):  # and an ended trial is not granted again
        trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=14)


def test_trial_refused_with_409_and_nothing_recorded_when_the_organization_was_deleted(owner_org):
    from organizations.models import Organization

    Organization.objects.filter(pk=owner_org.organization.pk).update(closed_at=timezone.now())
    with pytest.raises(Conflict) as raised:
        trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=14)
    assert "deleted" in raised.value.message
    assert not PremiumTrial.objects.filter(organization=owner_org.organization).exists()
    assert not AuditEvent.objects.filter(action__startswith="premium_trial.").exists()


# -- reminders ------------------------------------------------------------------------------------------------------


@pytest.fixture
def receiver():
    found = Receiver()
    yield found
    found.stop()


def test_reminders_reach_channels_once_at_3_and_1_days_when_sweep_runs_twice(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    t0 = timezone.now()
    webhook_channel(owner_org.organization, receiver.url)
    trial = trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=14, now=t0)
    create_premium(owner_org, "plant")
    minute = datetime.timedelta(minutes=1)
    for at, expected in ((t0 + 10 * DAY, 0), (t0 + 11 * DAY + minute, 1), (t0 + 13 * DAY + minute, 1)):
        for attempt in range(2):
            with django_capture_on_commit_callbacks(execute=True):
                counts = trials.premium_trials_sweep(now=at)
            assert counts["reminders"] == (expected if attempt == 0 else 0), (at, attempt, counts)
    bodies = receiver.bodies()
    assert [b["event"] for b in bodies] == ["platform.premium_trial_reminder"] * 2
    assert "ends in 3 days" in bodies[0]["summary"] and "ends in 1 day" in bodies[1]["summary"]
    assert "plant" in bodies[0]["message"] and "annual plan" in bodies[0]["message"]
    assert PlatformEvent.objects.filter(kind="premium_trial_reminder").count() == 2
    assert Delivery.objects.count() == 2
    trial.refresh_from_db()
    assert (trial.reminded_3d_at, trial.reminded_1d_at) == (t0 + 11 * DAY + minute, t0 + 13 * DAY + minute)
    assert AuditEvent.objects.filter(action="premium_trial.reminder").count() == 2


@pytest.mark.django_db(transaction=True)
def test_each_reminder_sent_once_when_two_sweeps_run_at_once(owner_org):
    t0 = timezone.now()
    trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=14, now=t0)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def sweep():
        try:
            barrier.wait(timeout=10)
            results.append(trials.premium_trials_sweep(now=t0 + 11 * DAY + datetime.timedelta(seconds=1)))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(r["reminders"] for r in results) == [0, 1]
    assert PlatformEvent.objects.filter(kind="premium_trial_reminder").count() == 1


def test_only_the_1_day_reminder_goes_out_when_trial_granted_for_one_day(owner_org):
    t0 = timezone.now()
    trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=1, now=t0)
    assert trials.premium_trials_sweep(now=t0 + datetime.timedelta(minutes=10))["reminders"] == 1
    assert trials.premium_trials_sweep(now=t0 + datetime.timedelta(hours=12))["reminders"] == 0
    [event] = PlatformEvent.objects.filter(kind="premium_trial_reminder")
    assert "ends in 1 day" in event.message


def test_nothing_is_sent_or_recorded_when_the_trials_organization_was_deleted(owner_org):
    # A deleted (closed) organization has nobody left to remind, and its trial has nothing left to end.
    from organizations.models import Organization

    t0 = timezone.now()
    trial = trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=14, now=t0)
    Organization.objects.filter(pk=owner_org.organization.pk).update(closed_at=t0 + DAY)
    for at in (t0 + 11 * DAY + datetime.timedelta(minutes=1), trial.ends_at + datetime.timedelta(seconds=1)):
        assert trials.premium_trials_sweep(now=at) == {"reminders": 0, "converted": 0, "stopped": 0, "deleted": 0}
    trial.refresh_from_db()
    assert (trial.reminded_3d_at, trial.ended_at) == (None, None)
    assert not PlatformEvent.objects.filter(organization=owner_org.organization).exists()
    assert not AuditEvent.objects.filter(action__in=["premium_trial.reminder", "premium_trial.end"]).exists()


# -- the end --------------------------------------------------------------------------------------------------------


def test_converted_deployment_keeps_running_and_no_hour_is_billed_when_annual_plan_bought(owner_org):
    set_account(owner_org)
    t0 = timezone.now()
    trial = trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=14, now=t0)
    kept = create_premium(owner_org, "kept")
    settle_running(kept, kept.created_at)
    quote = annual.annual_quote_create(deployment=kept, actor=None, now=t0 + 5 * DAY)
    assert quote.accrued_this_month == 0  # the trial's hours are never billed, so nothing accrued
    assert quote.tier.plan.code == "premium" and quote.annual_price > 0
    subscription = annual.annual_quote_accept(quote=quote, actor=None, now=t0 + 5 * DAY + datetime.timedelta(hours=1))
    counts = trials.premium_trials_sweep(now=trial.ends_at + datetime.timedelta(seconds=1))
    assert counts["converted"] == 1 and counts["stopped"] == 0
    kept.refresh_from_db()
    assert kept.desired_state == "running" and kept.status_reason == ""
    assert not kept.operations.filter(kind="stop").exists()
    row = TrialDeployment.objects.get(deployment=kept)
    assert (row.outcome, row.converted_at) == ("converted", subscription.term_start)
    metering.usage_meter(now=t0 + 30 * DAY, since=t0 - datetime.timedelta(hours=1))
    assert not UsageRecord.objects.filter(deployment=kept).exists()
    assert metering.usage_preview(start=t0, end=t0 + 30 * DAY, currency="USD", deployment_id=kept.pk) == []
    assert AuditEvent.objects.filter(action="premium_trial.convert", target_id=kept.public_id).exists()
    # Sweeping again changes nothing.
    assert trials.premium_trials_sweep(now=trial.ends_at + 2 * DAY)["converted"] == 0


def test_traffic_is_free_during_the_trial_and_counted_from_the_annual_start_when_converted(owner_org):
    """Bytes moved on trial are never counted (not at the trial's end either: the counter moves on); from the
    second the annual plan starts, the same broker's bytes count towards the plan's allowance as for any plan."""
    set_account(owner_org)
    t0 = timezone.now().replace(microsecond=0)
    trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=14, now=t0)
    deployment = create_premium(owner_org, "traffic")
    settle_running(deployment, deployment.created_at)
    hourly = deployment_services.deployment_create(
        project=owner_org.default_project, actor=None, name="hourly", plan="dedicated", tier="1k", region="local"
    )[0]

    def read(dep, at, total):
        return traffic_counters_record(
            deployment_id=dep.pk, at=at, bytes_received=total, bytes_sent=0, uptime_seconds=60
        )

    start = deployment.created_at + datetime.timedelta(minutes=1)
    assert read(deployment, start, 1_000) == 0
    assert read(deployment, start + DAY, 5_000_000_000) == 0  # 5 GB on trial: free
    assert read(hourly, start, 1_000) == 1_000  # the same reading on a plan without a trial counts
    assert not TrafficRecord.objects.filter(deployment=deployment).exists()
    accept_at = start + 2 * DAY
    quote = annual.annual_quote_create(deployment=deployment, actor=None, now=accept_at)
    annual.annual_quote_accept(quote=quote, actor=None, now=accept_at)
    assert read(deployment, accept_at - datetime.timedelta(seconds=1), 5_000_000_100) == 0  # still on trial
    assert read(deployment, accept_at + datetime.timedelta(minutes=1), 5_000_000_900) == 800
    assert list(TrafficRecord.objects.filter(deployment=deployment).values_list("bytes", flat=True)) == [800]


def test_trial_seconds_are_skipped_to_the_second_when_annual_plan_later_ends(owner_org):
    """Trial, then annual from 10:17:23 to a void at 12:00:05: hourly billing resumes at that second exactly."""
    set_account(owner_org)
    t0 = timezone.now().replace(microsecond=0)
    trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=14, now=t0)
    deployment = create_premium(owner_org, "exact")
    settle_running(deployment, deployment.created_at)
    accept_at = metering.floor_hour(t0) + 2 * DAY + datetime.timedelta(hours=10, minutes=17, seconds=23)
    quote = annual.annual_quote_create(deployment=deployment, actor=None, now=accept_at)
    subscription = annual.annual_quote_accept(quote=quote, actor=None, now=accept_at)
    end_at = metering.floor_hour(accept_at) + datetime.timedelta(hours=2, seconds=5)
    annual.annual_subscription_end_now(subscription_id=subscription.pk, now=end_at, reason="voided")
    until = metering.floor_hour(end_at) + datetime.timedelta(hours=3)
    metering.usage_meter(now=until, since=t0 - datetime.timedelta(hours=1))
    rows = {r.hour: r.seconds for r in UsageRecord.objects.filter(deployment=deployment)}
    first = metering.floor_hour(end_at)
    assert rows == {first: 3595, first + datetime.timedelta(hours=1): 3600, first + datetime.timedelta(hours=2): 3600}
    preview = metering.usage_preview(start=t0, end=until, currency="USD", deployment_id=deployment.pk)
    assert {p.usage.hour: p.usage.seconds for p in preview} == rows  # the Python reference agrees with the SQL


def test_unbought_deployment_stops_at_end_is_kept_6_days_then_deleted_after_7_when_swept(owner_org, key_client):
    t0 = timezone.now()
    trial = trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=14, now=t0)
    dropped = create_premium(owner_org, "dropped")
    settle_running(dropped, dropped.created_at)
    end = trial.ends_at + datetime.timedelta(seconds=1)
    assert trials.premium_trials_sweep(now=trial.ends_at - datetime.timedelta(seconds=1))["stopped"] == 0
    for _ in range(2):
        trials.premium_trials_sweep(now=end)
    dropped.refresh_from_db()
    assert (dropped.desired_state, dropped.status_reason) == ("stopped", "trial_ended")
    assert dropped.operations.filter(kind="stop").count() == 1
    assert PlatformEvent.objects.filter(kind="premium_trial_ended").count() == 1
    settle_stopped(dropped, end)
    client = key_client(owner_org.owner_secret)
    start = client.post(f"{deployments_url(owner_org)}/{dropped.public_id}/start", {}, format="json")
    assert start.status_code == 409 and "without an annual plan" in start.json()["detail"]
    body = client.get(trial_url(owner_org)).json()
    assert body["status"] == "ended"
    [row] = body["trial_deployments"]
    assert row["outcome"] == "stopped"
    assert datetime.datetime.fromisoformat(row["delete_at"].replace("Z", "+00:00")) == end + trials.RETENTION
    assert trials.premium_trials_sweep(now=end + 6 * DAY)["deleted"] == 0
    dropped.refresh_from_db()
    assert dropped.desired_state == "stopped"
    assert trials.premium_trials_sweep(now=end + 7 * DAY)["deleted"] == 1
    assert trials.premium_trials_sweep(now=end + 7 * DAY)["deleted"] == 0
    dropped.refresh_from_db()
    assert dropped.desired_state == "deleted"
    assert dropped.operations.filter(kind="delete").count() == 1
    metering.usage_meter(now=end + 8 * DAY, since=t0 - datetime.timedelta(hours=1))
    assert not UsageRecord.objects.filter(deployment=dropped).exists()  # neither running nor retention seconds
    actions = set(AuditEvent.objects.filter(action__startswith="premium_trial").values_list("action", flat=True))
    assert actions == {
        "premium_trial.grant",
        "premium_trial.reminder",  # the sweep a second before the end was within the last day
        "premium_trial.stop",
        "premium_trial.end",
        "premium_trial.delete",
    }


def test_stop_waits_for_next_sweep_when_an_operation_is_in_flight_at_the_end(owner_org):
    t0 = timezone.now()
    trial = trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=14, now=t0)
    busy = create_premium(owner_org, "busy")  # its create operation is still pending
    counts = trials.premium_trials_sweep(now=trial.ends_at + datetime.timedelta(seconds=1))
    assert counts["stopped"] == 0
    trial.refresh_from_db()
    assert trial.ended_at is None
    busy.operations.update(status="succeeded")
    assert trials.premium_trials_sweep(now=trial.ends_at + datetime.timedelta(minutes=10))["stopped"] == 1
    trial.refresh_from_db()
    assert trial.ended_at is not None


def test_missing_premium_annual_price_is_added_from_the_hourly_one_when_migration_runs():
    import importlib
    from decimal import Decimal

    from django.apps import apps

    from deployments.models import Price

    migration = importlib.import_module("iot.migrations.0002_trials")
    premium_1k = Price.objects.filter(plan__code="premium", tier__code="1k")
    hourly = premium_1k.get(kind="hourly", currency="USD")
    Price.objects.create(
        plan=hourly.plan,
        tier=hourly.tier,
        currency="EUR",
        kind="hourly",
        amount=Decimal("0.33"),
        valid_from=hourly.valid_from,
    )
    premium_1k.filter(kind="annual", currency="USD").delete()
    kept = {p.pk: p.amount for p in Price.objects.filter(plan__code="premium", kind="annual")}
    migration.add_missing_premium_annual_prices(apps, None)
    migration.add_missing_premium_annual_prices(apps, None)  # idempotent
    added = premium_1k.filter(kind="annual")
    assert {p.currency: p.amount for p in added} == {"USD": Decimal("2680.56"), "EUR": Decimal("2457.18")}
    assert {p.pk: p.amount for p in Price.objects.filter(pk__in=kept)} == kept  # existing prices untouched


def test_quote_accepted_after_the_stop_is_refused_when_the_sweep_stopped_the_deployment_first(owner_org):
    set_account(owner_org)
    t0 = timezone.now()
    trial = trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=14, now=t0)
    late = create_premium(owner_org, "late")
    settle_running(late, late.created_at)
    quote = annual.annual_quote_create(deployment=late, actor=None, now=trial.ends_at - DAY)
    assert trials.premium_trials_sweep(now=trial.ends_at + datetime.timedelta(seconds=1))["stopped"] == 1
    with pytest.raises(Conflict):
        annual.annual_quote_accept(quote=quote, actor=None, now=trial.ends_at + datetime.timedelta(seconds=2))
    assert TrialDeployment.objects.get(deployment=late).outcome == "stopped"


def test_trial_the_sweep_ended_is_not_granted_again_when_the_grants_clock_read_came_before_the_end(owner_org):
    """A grant reads its clock, then waits on the trial's row lock while the sweep ends the trial (its `ended_at`
    update holds that lock): once it gets the row, its `now` is still before `ends_at`. Granted anyway, the ended
    trial got a new end in the future while the sweep never looks at it again (ended_at is set): a Premium
    deployment created under it was a trial deployment that never ended, covered for free for ever."""
    trial = trials.premium_trial_grant(organization=owner_org.organization, actor=None, days=1, now=timezone.now())
    trials.premium_trials_sweep(now=trial.ends_at + datetime.timedelta(seconds=1))
    trial.refresh_from_db()
    assert trial.ended_at is not None
    with pytest.raises(Conflict):
        trials.premium_trial_grant(
            organization=owner_org.organization, actor=None, days=14, now=trial.ends_at - datetime.timedelta(minutes=1)
        )
    assert PremiumTrial.objects.get(pk=trial.pk).ends_at == trial.ends_at
