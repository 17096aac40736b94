"""Scheduled maintenance: lead times, overlaps, notification, the customer API, the operator command and admin, the
beat task that starts windows (one restart each), and alerts withheld while a window is open.

Deployments are made through the real services and settled by hand (no worker: the reconciler is not under test).
"""

import datetime as dt
import threading

import pytest
from django.core.management import ManagementUtility
from django.db import connection
from django.utils import timezone

from alerts import collection, evaluate, rules
from alerts.models import Alert, AlertEvent
from audit.models import AuditEvent
from controlplane.errors import Conflict, ValidationFailed
from deployments import services
from deployments.models import Deployment, DeploymentEvent, MaintenanceWindow, Operation
from notifications import services as notification_services
from notifications.models import Delivery, PlatformEvent
from tests.alerts.test_tasks import eager  # noqa: F401 - fixture: email notices are Celery tasks
from tests.otp import staff_sign_in

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("deployments_catalog")]

NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def make_deployment(project, name="plant"):
    deployment, _ = services.deployment_create(
        project=project, actor=None, name=name, plan="dedicated", tier="1k", region="local"
    )
    # Settled and running, as a converged reconcile leaves it.
    Deployment.objects.filter(pk=deployment.pk).update(status="running", observed_generation=deployment.generation)
    Operation.objects.filter(deployment=deployment).update(status="succeeded")
    deployment.refresh_from_db()
    return deployment


@pytest.fixture
def deployment(owner_org):
    return make_deployment(owner_org.default_project)


def schedule(deployment, *, after=dt.timedelta(days=15), hours=2, now=NOW, **kwargs):
    starts_at = now + after
    kwargs.setdefault("reason", "Broker security update")
    return services.maintenance_schedule(
        deployment=deployment,
        starts_at=starts_at,
        ends_at=starts_at + dt.timedelta(hours=hours),
        actor=None,
        now=now,
        **kwargs,
    )


# -- lead times, durations, overlaps -------------------------------------------------------------------------------


def test_schedule_is_refused_naming_starts_at_when_less_than_14_days_ahead(deployment):
    with pytest.raises(ValidationFailed) as refused:
        schedule(deployment, after=dt.timedelta(days=13))
    detail = refused.value.message_dict()
    assert list(detail) == ["starts_at"]
    assert "14 days" in str(detail["starts_at"][0]) and "2026-12-15T09:00:00Z" in str(detail["starts_at"][0])
    assert not MaintenanceWindow.objects.exists() and not PlatformEvent.objects.exists()


def test_emergency_is_refused_when_less_than_24_hours_ahead(deployment):
    with pytest.raises(ValidationFailed) as refused:
        schedule(deployment, after=dt.timedelta(hours=23), emergency=True)
    message = refused.value.message_dict()["starts_at"][0]
    assert "24 hours" in message and "2026-12-02T09:00:00Z" in message


def test_emergency_is_scheduled_when_25_hours_ahead(deployment):
    window = schedule(deployment, after=dt.timedelta(hours=25), emergency=True)
    assert window.public_id.startswith("mnt_") and window.status == "scheduled" and window.emergency
    assert window.starts_at == NOW + dt.timedelta(hours=25)


def test_schedule_is_refused_when_longer_than_four_hours_or_ending_before_it_starts(deployment):
    with pytest.raises(ValidationFailed) as too_long:
        schedule(deployment, hours=5)
    assert list(too_long.value.message_dict()) == ["ends_at"]
    with pytest.raises(ValidationFailed) as backwards:
        schedule(deployment, hours=-1)
    assert list(backwards.value.message_dict()) == ["ends_at"]


def test_schedule_is_refused_when_overlapping_another_window_of_the_deployment(owner_org, deployment):
    first = schedule(deployment)
    with pytest.raises(Conflict) as refused:
        schedule(deployment, after=dt.timedelta(days=15, hours=1))
    assert [e.field for e in refused.value.errors] == ["starts_at"]
    assert first.public_id in refused.value.errors[0].message
    # Back to back is not an overlap; another deployment's window never is; a cancelled one no longer is.
    schedule(deployment, after=dt.timedelta(days=15, hours=2))
    schedule(make_deployment(owner_org.default_project, name="other"))
    services.maintenance_cancel(window=first, actor=None, now=NOW)
    schedule(deployment, after=dt.timedelta(days=15, minutes=30), hours=1)
    assert MaintenanceWindow.objects.filter(status="scheduled").count() == 3


def test_schedule_is_refused_when_deployment_was_deleted(deployment):
    services.deployment_delete(deployment=deployment, actor=None)
    with pytest.raises(Conflict):
        schedule(deployment)


def test_deleting_the_deployment_cancels_its_scheduled_maintenance(deployment):
    window = schedule(deployment, now=timezone.now())
    services.deployment_delete(deployment=deployment, actor=None)
    window.refresh_from_db()
    assert window.status == "cancelled" and window.cancelled_at is not None
    assert AuditEvent.objects.get(action="deployment.delete").summary["maintenance_cancelled"] == 1


def test_schedule_is_refused_when_reason_is_empty(deployment):
    with pytest.raises(ValidationFailed) as refused:
        schedule(deployment, reason="   ")
    assert list(refused.value.message_dict()) == ["reason"]


# -- notification and audit ----------------------------------------------------------------------------------------


def test_scheduling_emails_administrators_and_records_platform_event_when_no_channel(
    owner_org, deployment, mailoutbox, django_capture_on_commit_callbacks, eager
):
    with django_capture_on_commit_callbacks(execute=True):
        window = schedule(deployment, reason="Kernel upgrade of the nodes")
    event = PlatformEvent.objects.get(dedup_key=f"maintenance:{window.public_id}")
    assert event.kind == "maintenance_scheduled" and event.subject == deployment.public_id
    assert event.severity == "info"
    assert "2026-12-16 09:00–11:00 UTC" in event.message and "Kernel upgrade of the nodes" in event.message
    assert deployment.name in event.message and deployment.public_id in event.message
    [mail] = mailoutbox
    assert mail.to == [owner_org.owner.email]
    assert "Maintenance scheduled for deployment plant" in mail.subject and "Kernel upgrade" in mail.body
    audit = AuditEvent.objects.get(action="deployment.maintenance.schedule", target_id=window.public_id)
    assert audit.summary["deployment"] == deployment.public_id and audit.summary["emergency"] is False
    assert DeploymentEvent.objects.filter(deployment=deployment, kind="maintenance.scheduled").exists()


def test_scheduling_records_delivery_to_platform_channel_and_says_emergency(
    owner_org, deployment, django_capture_on_commit_callbacks
):
    channel, _ = notification_services.channel_create(
        organization=owner_org.organization,
        actor=None,
        name="ops",
        type="email",
        config={"addresses": ["ops@example.com"]},
    )
    window = schedule(deployment, after=dt.timedelta(hours=30), emergency=True, reason="CVE-2026-1234")
    [delivery] = Delivery.objects.filter(channel=channel)
    assert delivery.kind == "platform" and delivery.payload["event"] == "platform.maintenance_scheduled"
    assert delivery.payload["severity"] == "warning"
    assert delivery.payload["summary"].startswith("Emergency maintenance scheduled for deployment plant")
    assert "CVE-2026-1234" in delivery.payload["message"] and window.public_id in delivery.payload["message"]


def test_cancelling_notifies_again_and_cannot_be_repeated(
    owner_org, deployment, mailoutbox, django_capture_on_commit_callbacks, eager
):
    with django_capture_on_commit_callbacks(execute=True):
        window = schedule(deployment)
    with django_capture_on_commit_callbacks(execute=True):
        services.maintenance_cancel(window=window, actor=None, now=NOW + dt.timedelta(days=1))
    window.refresh_from_db()
    assert window.status == "cancelled" and window.cancelled_at == NOW + dt.timedelta(days=1)
    assert (
        PlatformEvent.objects.filter(
            dedup_key=f"maintenance_cancelled:{window.public_id}", kind="maintenance_cancelled"
        ).count()
        == 1
    )
    assert len(mailoutbox) == 2 and "Maintenance cancelled" in mailoutbox[1].subject
    assert AuditEvent.objects.filter(action="deployment.maintenance.cancel", target_id=window.public_id).exists()
    with pytest.raises(Conflict):
        services.maintenance_cancel(window=window, actor=None)


# -- the customer API ----------------------------------------------------------------------------------------------


@pytest.fixture
def base(owner_org):
    return f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"


def test_api_lists_windows_and_shows_next_maintenance_on_the_deployment(owner_org, deployment, base, key_client):
    later = schedule(deployment, after=dt.timedelta(days=20), now=timezone.now(), reason="Later")
    sooner = schedule(deployment, after=dt.timedelta(days=15), now=timezone.now(), reason="Sooner")
    client = key_client(owner_org.owner_secret)
    response = client.get(f"{base}/{deployment.public_id}/maintenance-windows")
    assert response.status_code == 200, response.content
    rows = response.json()["results"]
    assert [r["id"] for r in rows] == [later.public_id, sooner.public_id]
    assert rows[1] == {
        "id": sooner.public_id,
        "deployment": deployment.public_id,
        "starts_at": sooner.starts_at.isoformat().replace("+00:00", "Z"),
        "ends_at": sooner.ends_at.isoformat().replace("+00:00", "Z"),
        "emergency": False,
        "reason": "Sooner",
        "status": "scheduled",
        "created_at": rows[1]["created_at"],
        "cancelled_at": None,
    }
    detail = client.get(f"{base}/{deployment.public_id}").json()
    assert detail["next_maintenance"]["id"] == sooner.public_id and detail["next_maintenance"]["reason"] == "Sooner"
    listed = client.get(base).json()["results"]
    assert listed[0]["next_maintenance"]["id"] == sooner.public_id
    filtered = client.get(f"{base}/{deployment.public_id}/maintenance-windows?status=cancelled")
    assert filtered.status_code == 200 and filtered.json()["results"] == []
    bad = client.get(f"{base}/{deployment.public_id}/maintenance-windows?status=soon")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "status"


def test_next_maintenance_is_null_when_none_is_open(owner_org, deployment, base, key_client):
    window = schedule(deployment, now=timezone.now())
    services.maintenance_cancel(window=window, actor=None)
    body = key_client(owner_org.owner_secret).get(f"{base}/{deployment.public_id}").json()
    assert body["next_maintenance"] is None


def test_another_organization_gets_404_for_the_windows(owner_org, org_factory, deployment, base, key_client):
    schedule(deployment, now=timezone.now())
    outsider = org_factory()
    response = key_client(outsider.owner_secret).get(f"{base}/{deployment.public_id}/maintenance-windows")
    assert response.status_code == 404
    own_base = f"/api/v1/organizations/{outsider.id}/projects/{outsider.default_project.public_id}/deployments"
    assert (
        key_client(outsider.owner_secret).get(f"{own_base}/{deployment.public_id}/maintenance-windows").status_code
        == 404
    )


def test_windows_list_makes_the_same_number_of_queries_whatever_the_page_size(
    owner_org, deployment, base, key_client, django_assert_num_queries
):
    from django.test.utils import CaptureQueriesContext

    for n in range(12):
        schedule(deployment, after=dt.timedelta(days=15 + n), now=timezone.now())
    client = key_client(owner_org.owner_secret)
    url = f"{base}/{deployment.public_id}/maintenance-windows"
    client.get(url)  # the first request of a key also records its use
    with CaptureQueriesContext(connection) as small:
        assert client.get(f"{url}?page_size=5").status_code == 200
    with django_assert_num_queries(len(small.captured_queries)):
        assert len(client.get(f"{url}?page_size=100").json()["results"]) == 12


# -- the operator command -----------------------------------------------------------------------------------------


def run_command(*args):
    """Through manage.py's own entry point, as an operator runs it: (exit code, stdout, stderr)."""
    import contextlib
    import io
    from unittest import mock

    from django.db import connections

    out, err = io.StringIO(), io.StringIO()
    code = 0
    # The entry point closes every connection on the way out, which would end this test's transaction.
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        mock.patch.object(connections, "close_all", lambda: None),
    ):
        try:
            ManagementUtility(["manage.py", "schedule_maintenance", *args]).execute()
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_command_schedules_a_deployment_and_exits_zero(deployment):
    start = timezone.now() + dt.timedelta(days=15)
    code, out, err = run_command(
        "--deployment", deployment.public_id, "--start", iso(start), "--duration", "1h30m", "--reason", "Broker upgrade"
    )
    assert code == 0, err
    window = MaintenanceWindow.objects.get(deployment=deployment)
    assert window.ends_at - window.starts_at == dt.timedelta(minutes=90) and window.reason == "Broker upgrade"
    assert window.created_by is None
    assert window.public_id in out and deployment.public_id in out


def test_command_refuses_with_exit_1_when_lead_time_is_too_short(deployment):
    start = timezone.now() + dt.timedelta(days=13)
    code, out, err = run_command(
        "--deployment", deployment.public_id, "--start", iso(start), "--duration", "2h", "--reason", "Broker upgrade"
    )
    assert code == 1
    assert "starts_at" in err and "14 days" in err and "earliest allowed start" in err
    assert not MaintenanceWindow.objects.exists()


def test_command_emergency_needs_24_hours(deployment):
    soon = timezone.now() + dt.timedelta(hours=23)
    code, _, err = run_command(
        "--deployment", deployment.public_id, "--start", iso(soon), "--duration", "1h", "--emergency", "--reason", "CVE"
    )
    assert code == 1 and "24 hours" in err
    code, _, err = run_command(
        "--deployment",
        deployment.public_id,
        "--start",
        iso(soon + dt.timedelta(hours=2)),
        "--duration",
        "1h",
        "--emergency",
        "--reason",
        "CVE",
    )
    assert code == 0, err
    assert MaintenanceWindow.objects.get().emergency


def test_command_schedules_every_live_deployment_of_a_region_or_none(owner_org, org_factory, deployment):
    other_org = org_factory()
    other = make_deployment(other_org.default_project, name="elsewhere")
    gone = make_deployment(owner_org.default_project, name="gone")
    services.deployment_delete(deployment=gone, actor=None)
    start = timezone.now() + dt.timedelta(days=15)
    code, out, err = run_command("--region", "local", "--start", iso(start), "--duration", "2h", "--reason", "Patch")
    assert code == 0, err
    assert set(MaintenanceWindow.objects.values_list("deployment__public_id", flat=True)) == {
        deployment.public_id,
        other.public_id,
    }
    assert PlatformEvent.objects.filter(kind="maintenance_scheduled").count() == 2
    # A second run overlaps every window: refused as a whole, naming the first deployment that clashes.
    code, _, err = run_command(
        "--region",
        "local",
        "--start",
        iso(start + dt.timedelta(hours=1)),
        "--duration",
        "2h",
        "--reason",
        "Patch again",
    )
    assert code == 1 and "Nothing was scheduled" in err
    assert MaintenanceWindow.objects.count() == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--deployment", "dep_nope", "--start", "2030-01-01T00:00:00Z", "--duration", "2h"], "no live deployment"),
        (["--region", "mars", "--start", "2030-01-01T00:00:00Z", "--duration", "2h"], "no region"),
        (["--region", "local", "--start", "next tuesday", "--duration", "2h"], "ISO 8601"),
        (["--region", "local", "--start", "2030-01-01T00:00:00Z", "--duration", "two hours"], "--duration"),
        (["--region", "local", "--start", "2030-01-01T00:00:00Z", "--duration", "0h"], "longer than zero"),
        (["--region", "local", "--start", "2030-01-01T00:00:00Z", "--duration", "5h"], "at most 4 hours"),
    ],
)
def test_command_refuses_bad_arguments_with_exit_1(deployment, args, message):
    code, _, err = run_command(*args, "--reason", "Patch")
    assert code == 1 and message in err, err


def test_command_refuses_without_a_target(deployment):
    code, _, err = run_command("--start", "2030-01-01T00:00:00Z", "--duration", "2h", "--reason", "Patch")
    assert code == 2 and "--deployment" in err


# -- the admin ----------------------------------------------------------------------------------------------------


@pytest.fixture
def staff(db):
    from accounts.models import User

    return User.objects.create_superuser("ops@example.com", "operator passphrase")


def admin_form(deployment, start: dt.datetime, **changes):
    return {
        "deployment": deployment.pk,
        "starts_at_0": start.strftime("%Y-%m-%d"),
        "starts_at_1": start.strftime("%H:%M:%S"),
        "ends_at_0": (start + dt.timedelta(hours=2)).strftime("%Y-%m-%d"),
        "ends_at_1": (start + dt.timedelta(hours=2)).strftime("%H:%M:%S"),
        "reason": "Node pool upgrade",
        **changes,
    }


def test_admin_schedules_through_the_service(
    client, staff, owner_org, deployment, mailoutbox, django_capture_on_commit_callbacks, eager
):
    staff_sign_in(client, staff, "operator passphrase")
    start = (timezone.now() + dt.timedelta(days=16)).replace(microsecond=0)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/admin/deployments/maintenancewindow/add/", admin_form(deployment, start))
    assert response.status_code == 302, response.content[:2000]
    window = MaintenanceWindow.objects.get()
    assert window.created_by == staff and window.starts_at == start
    audit = AuditEvent.objects.get(action="deployment.maintenance.schedule", target_id=window.public_id)
    assert audit.actor == staff and audit.via == "admin"
    assert PlatformEvent.objects.filter(dedup_key=f"maintenance:{window.public_id}").exists()
    assert [m.to for m in mailoutbox] == [[owner_org.owner.email]]
    assert client.get(f"/admin/deployments/maintenancewindow/{window.pk}/change/").status_code == 200
    assert client.get("/admin/deployments/maintenancewindow/").status_code == 200


def test_admin_shows_the_lead_time_error_on_the_form(client, staff, deployment):
    staff_sign_in(client, staff, "operator passphrase")
    start = timezone.now() + dt.timedelta(days=3)
    response = client.post("/admin/deployments/maintenancewindow/add/", admin_form(deployment, start))
    assert response.status_code == 200
    assert b"earliest allowed start" in response.content
    assert not MaintenanceWindow.objects.exists() and not PlatformEvent.objects.exists()


def test_admin_action_cancels_and_notifies(client, staff, deployment):
    window = schedule(deployment, now=timezone.now())
    staff_sign_in(client, staff, "operator passphrase")
    response = client.post(
        "/admin/deployments/maintenancewindow/", {"action": "cancel_windows", "_selected_action": [window.pk]}
    )
    assert response.status_code == 302
    window.refresh_from_db()
    assert window.status == "cancelled"
    assert PlatformEvent.objects.filter(dedup_key=f"maintenance_cancelled:{window.public_id}").exists()


# -- the beat task ------------------------------------------------------------------------------------------------


def test_start_due_maintenance_restarts_once_when_run_twice(deployment):
    window = schedule(deployment)
    during = window.starts_at + dt.timedelta(minutes=1)
    assert services.maintenance_start_due(now=window.starts_at - dt.timedelta(minutes=1)) == (0, 0)
    assert services.maintenance_start_due(now=during) == (1, 0)
    assert services.maintenance_start_due(now=during + dt.timedelta(minutes=1)) == (0, 0)
    [restart] = Operation.objects.filter(deployment=deployment, kind="restart")
    window.refresh_from_db()
    assert window.status == "in_progress" and window.operation == restart
    deployment.refresh_from_db()
    assert deployment.restart_nonce == 1
    assert services.maintenance_start_due(now=window.ends_at) == (0, 1)
    window.refresh_from_db()
    assert window.status == "completed"
    assert list(
        DeploymentEvent.objects.filter(deployment=deployment, kind__startswith="maintenance.")
        .order_by("id")
        .values_list("kind", flat=True)
    ) == ["maintenance.scheduled", "maintenance.started", "maintenance.completed"]


def test_start_due_maintenance_starts_without_restart_when_deployment_is_stopped(deployment):
    window = schedule(deployment)
    services.deployment_stop(deployment=deployment, actor=None)
    Operation.objects.filter(deployment=deployment).update(status="succeeded")
    assert services.maintenance_start_due(now=window.starts_at) == (1, 0)
    window.refresh_from_db()
    assert window.status == "in_progress" and window.operation is None
    assert not Operation.objects.filter(deployment=deployment, kind="restart").exists()
    event = DeploymentEvent.objects.get(deployment=deployment, kind="maintenance.started")
    assert "without a restart" in event.message


def test_window_missed_entirely_is_completed_without_a_restart(deployment):
    window = schedule(deployment)
    assert services.maintenance_start_due(now=window.ends_at + dt.timedelta(hours=1)) == (0, 0)
    window.refresh_from_db()
    assert window.status == "completed" and window.operation is None
    assert not Operation.objects.filter(deployment=deployment, kind="restart").exists()


def test_beat_task_is_routed_to_provisioning_and_scheduled_every_minute(settings):
    from celery.schedules import crontab

    from deployments.tasks import start_due_maintenance

    entry = settings.CELERY_BEAT_SCHEDULE["deployments.start_due_maintenance"]
    assert entry["task"] == start_due_maintenance.name == "deployments.start_due_maintenance"
    assert entry["schedule"] == crontab()
    from controlplane.celery import app

    assert app.amqp.router.route({}, start_due_maintenance.name)["queue"].name == "provisioning"


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_start_one_restart_per_window(owner_org):
    deployment = make_deployment(owner_org.default_project)
    window = schedule(deployment)
    barrier = threading.Barrier(4)
    results, errors = [], []

    def run():
        try:
            barrier.wait()
            results.append(services.maintenance_start_due(now=window.starts_at))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sum(started for started, _ in results) == 1
    assert Operation.objects.filter(deployment=deployment, kind="restart").count() == 1
    assert Deployment.objects.get(pk=deployment.pk).restart_nonce == 1


# -- alerts withheld during a window ------------------------------------------------------------------------------


def test_alert_firing_during_window_is_suppressed_and_not_sent(
    owner_org, deployment, mailoutbox, django_capture_on_commit_callbacks
):
    channel, _ = notification_services.channel_create(
        organization=owner_org.organization,
        actor=None,
        name="ops",
        type="email",
        config={"addresses": ["ops@example.com"]},
        platform_events=False,
    )
    window = schedule(deployment)
    rule = rules.alert_rule_create(
        project=deployment.project,
        actor=None,
        deployment=deployment,
        name="Too many connections",
        metric="connections",
        aggregation="max",
        window_seconds=60,
        operator=">",
        threshold=2,
        for_seconds=0,
        severity="critical",
    )
    during = window.starts_at + dt.timedelta(minutes=10)  # scheduled, not yet started by the beat task
    collection.samples_store(rows=[(deployment.pk, "connections", during, 5.0)])
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=during, deployment_ids=[deployment.pk])
    alert = Alert.objects.get(rule=rule)
    assert alert.status == "firing"
    events = list(AlertEvent.objects.filter(alert=alert).values_list("kind", "message"))
    assert ("suppressed", "notification withheld: maintenance") in events
    assert not Delivery.objects.filter(channel=channel).exists() and mailoutbox == []
    # After the window, the withheld fire is sent.
    after = window.ends_at + dt.timedelta(minutes=1)
    collection.samples_store(rows=[(deployment.pk, "connections", after, 5.0)])
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=after, deployment_ids=[deployment.pk])
    assert Delivery.objects.filter(channel=channel, kind="fire").count() == 1


def test_maintenance_ids_cover_open_windows_only(owner_org, deployment):
    other = make_deployment(owner_org.default_project, name="other")
    window = schedule(deployment)
    cancelled = schedule(other)
    services.maintenance_cancel(window=cancelled, actor=None)
    inside = window.starts_at + dt.timedelta(minutes=1)
    assert evaluate._maintenance_ids(None, now=inside) == {deployment.pk}
    assert evaluate._maintenance_ids([other.pk], now=inside) == set()
    assert evaluate._maintenance_ids(None, now=window.ends_at) == set()
    assert evaluate._maintenance_ids(None, now=window.starts_at - dt.timedelta(seconds=1)) == set()


# -- datetimes at the edge of the calendar ---------------------------------------------------------------------------


def test_schedule_refuses_a_start_past_the_calendar_in_utc_naming_the_field(deployment):
    # 9999-12-31 22:00 at UTC-5 is 10000-01-01 03:00 UTC: Python cannot represent it in UTC.
    starts_at = dt.datetime(9999, 12, 31, 22, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    with pytest.raises(ValidationFailed) as refused:
        services.maintenance_schedule(
            deployment=deployment,
            starts_at=starts_at,
            ends_at=starts_at + dt.timedelta(hours=1),
            reason="Far future",
            actor=None,
            now=NOW,
        )
    assert "starts_at" in refused.value.message_dict()
    assert not MaintenanceWindow.objects.exists() and not PlatformEvent.objects.exists()


@pytest.mark.parametrize(
    "start, duration",
    [("9999-12-31T23:00:00Z", "2h"), ("2030-01-01T00:00:00Z", "999999999999h"), ("9999-12-31T22:00:00-05:00", "1h")],
)
def test_command_refuses_out_of_range_times_with_exit_1(deployment, start, duration):
    code, _, err = run_command(
        "--deployment", deployment.public_id, "--start", start, "--duration", duration, "--reason", "Patch"
    )
    assert code == 1 and ("--start" in err or "--duration" in err or "starts_at" in err), err
    assert not MaintenanceWindow.objects.exists()
