"""The alerting pages without a browser: bad input gets a message beside its field and saves nothing, each role gets
what the API would give it, and another organization's alerts, rules and channels are not found."""

import datetime as dt

import pytest
from django.utils import timezone

from alerts import rules as rule_services
from alerts.models import Alert, AlertRule, AlertStatus, Silence
from notifications.models import NotificationChannel
from tests.console.helpers import deployment, threshold_rule_form

pytestmark = pytest.mark.django_db


def _rules_url(org, project=None):
    project = project or org.default_project
    return f"/console/o/{org.id}/p/{project.public_id}/alert-rules"


def _firing_alert(org, plant, *, name="Busy"):
    rule = rule_services.alert_rule_create(
        project=plant.project,
        actor=None,
        deployment=plant,
        name=name,
        metric="connections",
        aggregation="last",
        window_seconds=60,
        operator=">",
        threshold=2,
        severity="critical",
    )
    now = timezone.now()
    return Alert.objects.create(
        organization=org.organization,
        project=plant.project,
        rule=rule,
        deployment=plant,
        status=AlertStatus.FIRING,
        since=now,
        fired_at=now,
        severity="critical",
        value=3,
        threshold=2,
        summary="Busy: connections = 3",
    )


def test_threshold_that_is_not_a_number_is_refused_beside_its_field_when_creating_a_rule(client, owner_org):
    client.force_login(owner_org.owner)
    response = client.post(f"{_rules_url(owner_org)}/new", threshold_rule_form(**{"rule-threshold": "two"}))
    assert response.status_code == 400
    assert "Enter a number, such as 80 or 2.5." in response.content.decode()
    assert not AlertRule.objects.filter(name="Busy").exists()


def test_rule_is_created_with_its_condition_when_input_is_valid(client, owner_org):
    plant = deployment(owner_org.default_project)
    client.force_login(owner_org.owner)
    response = client.post(f"{_rules_url(owner_org)}/new", threshold_rule_form(**{"rule-deployment": plant.public_id}))
    assert response.status_code == 302, response.content.decode()[-3000:]
    rule = AlertRule.objects.get(name="Busy")
    assert (rule.deployment, rule.metric, rule.threshold, rule.for_seconds) == (plant, "connections", 2, 60)
    page = client.get(_rules_url(owner_org)).content.decode()
    assert "last value of connections over 1 minute &gt; 2, for 1 minute" in page


def test_percent_of_tier_on_a_metric_without_limit_is_refused_when_creating_a_rule(client, owner_org):
    client.force_login(owner_org.owner)
    data = threshold_rule_form(**{"rule-metric": "subscriptions", "rule-threshold_unit": "percent_of_tier_limit"})
    response = client.post(f"{_rules_url(owner_org)}/new", data)
    assert response.status_code == 400 and "have a tier limit" in response.content.decode()
    assert not AlertRule.objects.filter(name="Busy").exists()


def test_silence_that_ends_before_it_starts_is_refused_when_created(client, owner_org):
    client.force_login(owner_org.owner)
    response = client.post(
        f"/console/o/{owner_org.id}/p/{owner_org.default_project.public_id}/silences",
        {"silence-starts_at": "2030-01-02T10:00", "silence-ends_at": "2030-01-02T09:00", "silence-comment": "oops"},
    )
    assert response.status_code == 400
    assert "The silence must end after it starts." in response.content.decode()
    assert not Silence.objects.exists()


def test_silence_is_created_with_its_matchers_when_valid(client, owner_org):
    plant = deployment(owner_org.default_project)
    client.force_login(owner_org.owner)
    response = client.post(
        f"/console/o/{owner_org.id}/p/{owner_org.default_project.public_id}/silences",
        {"silence-ends_at": "2099-01-01T00:00", "silence-deployment": plant.public_id, "silence-severity": "warning"},
    )
    assert response.status_code == 302
    assert Silence.objects.get().matchers == {"deployment": plant.public_id, "severity": "warning"}


def test_webhook_to_a_private_address_is_refused_beside_the_url_when_creating_a_channel(client, owner_org, settings):
    settings.ALLOW_PRIVATE_WEBHOOKS = False
    client.force_login(owner_org.owner)
    response = client.post(
        f"/console/o/{owner_org.id}/channels",
        {"new-name": "hook", "new-type": "webhook", "new-webhook_url": "https://10.1.2.3/hook"},
    )
    body = response.content.decode()
    assert response.status_code == 400
    # The message sits under the URL field (its error list is tied to it by id), not at the top of the form.
    field_errors = body.split('id="id_new-webhook_url_error"', 1)[1].split("</ul>", 1)[0]
    assert "a private address" in field_errors
    assert not NotificationChannel.objects.exists()


def test_webhook_secret_is_shown_once_when_the_channel_is_created(client, owner_org, settings):
    settings.ALLOW_PRIVATE_WEBHOOKS = True
    client.force_login(owner_org.owner)
    response = client.post(
        f"/console/o/{owner_org.id}/channels",
        {"new-name": "hook", "new-type": "webhook", "new-webhook_url": "http://127.0.0.1:9/hook"},
    )
    channel = NotificationChannel.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(channel.public_id)
    first = client.get(response["Location"]).content.decode()
    assert "whsec_" in first and "shown only once" in first
    assert "whsec_" not in client.get(response["Location"]).content.decode()


def test_acknowledgement_needs_a_comment_and_is_recorded_when_given(client, owner_org):
    plant = deployment(owner_org.default_project)
    alert = _firing_alert(owner_org, plant)
    client.force_login(owner_org.owner)
    url = f"/console/o/{owner_org.id}/alerts/{alert.public_id}/acknowledge"
    client.post(url, {f"{alert.public_id}-comment": "", f"{alert.public_id}-duration": "3600"})
    alert.refresh_from_db()
    assert alert.acknowledged_until is None
    client.post(url, {f"{alert.public_id}-comment": "scaling up", f"{alert.public_id}-duration": "3600"})
    alert.refresh_from_db()
    assert alert.acknowledgement_comment == "scaling up" and alert.acknowledged_by == owner_org.owner
    page = client.get(f"/console/o/{owner_org.id}/alerts").content.decode()
    assert "scaling up" in page and "firing" in page


def test_project_user_sees_only_their_projects_alerts_and_no_channels_when_granted_one_project(client, owner_org):
    from projects import services as project_services

    other = project_services.project_create(organization=owner_org.organization, actor=None, name="Other")
    mine = deployment(owner_org.default_project, name="mine")
    theirs = deployment(other, name="theirs")
    _firing_alert(owner_org, mine, name="Mine busy")
    hidden = _firing_alert(owner_org, theirs, name="Theirs busy")
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    client.force_login(user)
    page = client.get(f"/console/o/{owner_org.id}/alerts").content.decode()
    assert "Mine busy" in page and "Theirs busy" not in page and "Notification channels" not in page
    assert client.get(f"/console/o/{owner_org.id}/channels").status_code == 403
    assert client.get(_rules_url(owner_org, other)).status_code == 404
    # Configuring alerts is theirs (deployment:configure); a budget rule is not (it needs billing:read).
    assert client.post(f"{_rules_url(owner_org)}/new", threshold_rule_form()).status_code == 302
    assert client.get(f"{_rules_url(owner_org)}/new?kind=budget").status_code == 403
    budget = client.post(
        f"{_rules_url(owner_org)}/new",
        {"kind": "budget", "rule-name": "B", "rule-metric": "spend_month_to_date", "rule-budget_amount": "10"},
    )
    assert budget.status_code == 403
    assert not AlertRule.objects.filter(kind="budget").exists()
    # Acknowledging is organization-level in the API: their own project's alert is not theirs to acknowledge.
    assert "Acknowledge…" not in page
    own = Alert.objects.get(rule__name="Mine busy")
    url = f"/console/o/{owner_org.id}/alerts/{own.public_id}/acknowledge"
    assert client.post(url, {f"{own.public_id}-comment": "x", f"{own.public_id}-duration": "3600"}).status_code == 403
    own.refresh_from_db()
    assert own.acknowledged_until is None
    # Acknowledging another project's alert: not found, as if it did not exist.
    url = f"/console/o/{owner_org.id}/alerts/{hidden.public_id}/acknowledge"
    assert (
        client.post(url, {f"{hidden.public_id}-comment": "x", f"{hidden.public_id}-duration": "3600"}).status_code
        == 404
    )


def test_budget_alerts_and_the_spend_they_tell_are_shown_only_to_who_may_read_billing(client, owner_org):
    project = owner_org.default_project
    rule = rule_services.alert_rule_create(
        project=project, actor=None, name="Monthly spend", kind="budget", metric="spend_month_to_date",
        operator=">", budget_scope="organization", budget_amount="100",
    )  # fmt: skip
    now = timezone.now()
    Alert.objects.create(
        organization=owner_org.organization, project=project, rule=rule, status=AlertStatus.FIRING, since=now,
        fired_at=now, severity=rule.severity, spend_minor=987654, budget_minor=10000, currency=rule.budget_currency,
        summary="Monthly spend: 9876.54 USD > 100.00 USD",
    )  # fmt: skip
    project_user, _ = owner_org.add_member(project_grants=[(project, "project_user")])
    url = f"/console/o/{owner_org.id}/alerts"

    client.force_login(project_user)
    hidden = client.get(url)
    client.force_login(owner_org.owner)
    shown = client.get(url)

    assert hidden.status_code == 200 and shown.status_code == 200
    assert "Monthly spend" not in hidden.content.decode() and "9,876.54" not in hidden.content.decode()
    assert "Monthly spend" in shown.content.decode() and "9,876.54" in shown.content.decode()


def test_auditor_reads_alerts_rules_and_channels_but_changes_nothing_when_crafting_posts(client, owner_org):
    plant = deployment(owner_org.default_project)
    alert = _firing_alert(owner_org, plant)
    channel, _ = __import__("notifications.services", fromlist=["x"]).channel_create(
        organization=owner_org.organization, actor=None, name="mail", type="email", config={"addresses": ["a@b.co"]}
    )
    user, _ = owner_org.add_member(roles=["auditor"])
    client.force_login(user)
    for path in (f"/console/o/{owner_org.id}/alerts", _rules_url(owner_org), f"/console/o/{owner_org.id}/channels"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "Acknowledge…" not in page.content.decode() and "Create channel" not in page.content.decode()
    assert client.post(f"{_rules_url(owner_org)}/new", threshold_rule_form()).status_code == 403
    url = f"/console/o/{owner_org.id}/alerts/{alert.public_id}/acknowledge"
    assert (
        client.post(url, {f"{alert.public_id}-comment": "x", f"{alert.public_id}-duration": "3600"}).status_code == 403
    )
    assert client.post(f"/console/o/{owner_org.id}/channels/{channel.public_id}/test").status_code == 403
    assert client.post(f"/console/o/{owner_org.id}/channels/{channel.public_id}/delete").status_code == 403
    assert NotificationChannel.objects.filter(pk=channel.pk).exists()
    alert.refresh_from_db()
    assert alert.acknowledged_until is None


def test_other_organizations_alerting_pages_are_not_found_when_not_a_member(client, org_factory):
    mine, other = org_factory(), org_factory()
    plant = deployment(other.default_project)
    alert = _firing_alert(other, plant)
    rule = alert.rule
    channel, _ = __import__("notifications.services", fromlist=["x"]).channel_create(
        organization=other.organization, actor=None, name="mail", type="email", config={"addresses": ["a@b.co"]}
    )
    client.force_login(mine.owner)
    for path in (
        f"/console/o/{other.id}/alerts",
        _rules_url(other),
        f"{_rules_url(other)}/{rule.public_id}",
        f"/console/o/{other.id}/channels/{channel.public_id}",
        f"{_rules_url(mine)}/{rule.public_id}",
        f"/console/o/{mine.id}/channels/{channel.public_id}",
    ):
        assert client.get(path).status_code == 404, path
    url = f"/console/o/{mine.id}/alerts/{alert.public_id}/acknowledge"
    assert (
        client.post(url, {f"{alert.public_id}-comment": "x", f"{alert.public_id}-duration": "3600"}).status_code == 404
    )
    assert client.post(f"{_rules_url(mine)}/{rule.public_id}/delete").status_code == 404
    assert AlertRule.objects.filter(pk=rule.pk).exists()


def test_rule_can_be_disabled_and_enabled_when_toggled(client, owner_org):
    plant = deployment(owner_org.default_project)
    rule = _firing_alert(owner_org, plant).rule
    client.force_login(owner_org.owner)
    client.post(f"{_rules_url(owner_org)}/{rule.public_id}/toggle", {"enabled": "off"})
    rule.refresh_from_db()
    assert not rule.enabled
    client.post(f"{_rules_url(owner_org)}/{rule.public_id}/toggle", {"enabled": "on"})
    rule.refresh_from_db()
    assert rule.enabled


def test_resolved_alert_is_not_acknowledged_when_its_form_is_stale(client, owner_org):
    plant = deployment(owner_org.default_project)
    alert = _firing_alert(owner_org, plant)
    Alert.objects.filter(pk=alert.pk).update(status=AlertStatus.RESOLVED, resolved_at=timezone.now())
    client.force_login(owner_org.owner)
    response = client.post(
        f"/console/o/{owner_org.id}/alerts/{alert.public_id}/acknowledge",
        {f"{alert.public_id}-comment": "late", f"{alert.public_id}-duration": "3600"},
        follow=True,
    )
    assert response.status_code == 200 and "Only a firing alert can be acknowledged" in response.content.decode()
    alert.refresh_from_db()
    assert alert.acknowledged_until is None and alert.since <= timezone.now() + dt.timedelta(seconds=1)


def test_budget_rule_is_stored_exactly_in_the_billing_currency_when_created_by_an_owner(client, owner_org):
    client.force_login(owner_org.owner)
    response = client.post(
        f"{_rules_url(owner_org)}/new",
        {
            "kind": "budget",
            "rule-name": "Monthly budget",
            "rule-metric": "spend_forecast",
            "rule-budget_amount": "1,250.50",
            "rule-budget_scope": "organization",
            "rule-severity": "warning",
            "rule-enabled": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[-2000:]
    rule = AlertRule.objects.get(kind="budget")
    assert (rule.budget_minor, rule.budget_currency, rule.budget_scope) == (125050, "USD", "organization")
    page = client.get(_rules_url(owner_org)).content.decode()
    assert "this month&#x27;s forecast spend &gt;= 1,250.50 USD" in page


def test_budget_with_too_many_decimals_is_refused_beside_the_amount_when_created(client, owner_org):
    client.force_login(owner_org.owner)
    response = client.post(
        f"{_rules_url(owner_org)}/new",
        {
            "kind": "budget",
            "rule-name": "B",
            "rule-metric": "spend_month_to_date",
            "rule-budget_amount": "10.555",
            "rule-budget_scope": "project",
            "rule-severity": "warning",
        },
    )
    assert response.status_code == 400 and "at most 2 decimal places" in response.content.decode()
    assert not AlertRule.objects.filter(kind="budget").exists()


def test_rules_page_queries_do_not_grow_with_deployments_when_listing_defaults(client, owner_org):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from alerts.defaults import create_default_rules

    client.force_login(owner_org.owner)
    counts = []
    for n in (2, 6):
        while owner_org.default_project.deployments.count() < n:
            plant = deployment(owner_org.default_project, name=f"d{owner_org.default_project.deployments.count()}")
            create_default_rules(deployment=plant)
        with CaptureQueriesContext(connection) as captured:
            page = client.get(_rules_url(owner_org))
        assert page.status_code == 200 and "Connections above 80% of the tier" in page.content.decode()
        counts.append(len(captured))
    assert counts[0] == counts[1], counts


def test_project_user_cannot_route_a_rule_to_org_channels_when_crafting_the_post(client, owner_org):
    channel, _ = __import__("notifications.services", fromlist=["x"]).channel_create(
        organization=owner_org.organization, actor=None, name="Ops mail", type="email", config={"addresses": ["a@b.co"]}
    )
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    client.force_login(user)
    form = client.get(f"{_rules_url(owner_org)}/new").content.decode()
    assert "Ops mail" not in form and "choosing channels needs a role that reads them" in form
    response = client.post(
        f"{_rules_url(owner_org)}/new", threshold_rule_form(**{"rule-channels": [channel.public_id]})
    )
    assert response.status_code in (400, 403)
    assert not AlertRule.objects.filter(name="Busy").exists()


def test_control_characters_in_a_rule_or_channel_name_are_refused_beside_the_name_when_created(client, owner_org):
    client.force_login(owner_org.owner)
    rule = client.post(f"{_rules_url(owner_org)}/new", threshold_rule_form(**{"rule-name": "Bus\x1by"}))
    assert rule.status_code == 400
    errors = rule.content.decode().split('id="id_rule-name_error"', 1)[1].split("</ul>", 1)[0]
    assert "found U+001B at position 3" in errors
    channel = client.post(
        f"/console/o/{owner_org.id}/channels",
        {"new-name": "Ops\rmail", "new-type": "email", "new-addresses": "ops@example.com"},
    )
    assert channel.status_code == 400
    errors = channel.content.decode().split('id="id_new-name_error"', 1)[1].split("</ul>", 1)[0]
    assert "found U+000D at position 3" in errors
    assert not AlertRule.objects.filter(default_key="").exists()
    assert not NotificationChannel.objects.exists()


def test_send_test_stops_polling_and_says_so_when_the_queue_never_picks_it_up(client, owner_org):
    from notifications.models import Delivery

    channel, _ = __import__("notifications.services", fromlist=["x"]).channel_create(
        organization=owner_org.organization, actor=None, name="mail", type="email", config={"addresses": ["a@b.co"]}
    )
    client.force_login(owner_org.owner)
    base = f"/console/o/{owner_org.id}/channels/{channel.public_id}"
    sent = client.post(f"{base}/test", HTTP_HX_REQUEST="true")
    assert sent.status_code == 200
    delivery = Delivery.objects.get(channel=channel, kind="test")
    if delivery.status != Delivery.Status.PENDING:
        pytest.fail(f"no worker runs here, yet the test delivery is {delivery.status}")
    fresh = sent.content.decode()
    assert "Sending the test…" in fresh and "hx-get" in fresh
    Delivery.objects.filter(pk=delivery.pk).update(created_at=timezone.now() - dt.timedelta(minutes=2))
    late = client.get(f"{base}/deliveries/{delivery.public_id}", HTTP_HX_REQUEST="true").content.decode()
    assert "not sent yet" in late and "hx-get" not in late


def test_alerting_pages_carry_no_inline_script_when_rendered(client, owner_org):
    plant = deployment(owner_org.default_project)
    alert = _firing_alert(owner_org, plant)
    channel, _ = __import__("notifications.services", fromlist=["x"]).channel_create(
        organization=owner_org.organization, actor=None, name="mail", type="email", config={"addresses": ["a@b.co"]}
    )
    client.force_login(owner_org.owner)
    for path in (
        f"/console/o/{owner_org.id}/alerts",
        _rules_url(owner_org),
        f"{_rules_url(owner_org)}/new",
        f"{_rules_url(owner_org)}/new?kind=budget",
        f"{_rules_url(owner_org)}/{alert.rule.public_id}",
        f"/console/o/{owner_org.id}/channels",
        f"/console/o/{owner_org.id}/channels/{channel.public_id}",
    ):
        response = client.get(path)
        body = response.content.decode()
        assert response.status_code == 200, path
        assert "script-src 'self'" in response["Content-Security-Policy"], path
        assert "<script>" not in body and " onclick=" not in body and " style=" not in body, path


def test_delivery_history_shows_each_attempts_status_code_and_the_retry_when_a_receiver_fails(
    client, owner_org, settings
):
    """Attempts are made by the real delivery service against a real loopback receiver (what the worker runs)."""
    import html

    from notifications import services as notification_services
    from notifications.models import Delivery
    from tests.alerts.test_tasks import Receiver

    settings.ALLOW_PRIVATE_WEBHOOKS = True
    receiver = Receiver(status=503)
    try:
        channel, _ = notification_services.channel_create(
            organization=owner_org.organization, actor=None, name="hook", type="webhook", config={"url": receiver.url}
        )
        delivery = notification_services.channel_test(channel=channel, actor=None)
        for _ in range(2):
            notification_services.delivery_attempt(delivery_id=delivery.pk)
        client.force_login(owner_org.owner)
        url = f"/console/o/{owner_org.id}/channels/{channel.public_id}"
        row = html.unescape(client.get(url).content.decode()).split("Delivery history", 1)[1]
        assert row.count("HTTP 503") == 2 and "retrying" in row
        assert Delivery.objects.get(pk=delivery.pk).next_attempt_at.strftime("%H:%M:%S") in row
        receiver.status = 200
        notification_services.delivery_attempt(delivery_id=delivery.pk)
        row = html.unescape(client.get(url).content.decode()).split("Delivery history", 1)[1]
        assert row.count("HTTP 503") == 2 and "HTTP 200" in row and "succeeded" in row
        assert len(receiver.requests) == 3
        settings.NOTIFICATION_HISTORY_DAYS = 45
        assert "A delivery is kept for 45 days after it was sent or gave up." in client.get(url).content.decode()
    finally:
        receiver.stop()


def test_rule_is_edited_and_its_deployment_default_too_when_saved(client, owner_org):
    from alerts.defaults import create_default_rules

    plant = deployment(owner_org.default_project)
    create_default_rules(deployment=plant)
    client.force_login(owner_org.owner)
    client.post(f"{_rules_url(owner_org)}/new", threshold_rule_form(**{"rule-deployment": plant.public_id}))
    rule = AlertRule.objects.get(name="Busy")
    edited = {k: v for k, v in threshold_rule_form(**{"rule-threshold": "7.5", "rule-severity": "warning"}).items()}
    edited.pop("rule-deployment")
    response = client.post(f"{_rules_url(owner_org)}/{rule.public_id}", edited)
    assert response.status_code == 302, response.content.decode()[-2000:]
    rule.refresh_from_db()
    assert (rule.threshold, rule.severity, rule.deployment) == (7.5, "warning", plant)
    bad = client.post(f"{_rules_url(owner_org)}/{rule.public_id}", {**edited, "rule-threshold": "lots"})
    assert bad.status_code == 400 and "Enter a number, such as 80 or 2.5." in bad.content.decode()
    rule.refresh_from_db()
    assert rule.threshold == 7.5

    default = AlertRule.objects.get(deployment=plant, default_key="connections_high")
    form = client.get(f"{_rules_url(owner_org)}/{default.public_id}").content.decode()
    assert "one of its default rules" in form
    changed = threshold_rule_form(
        **{"rule-name": default.name, "rule-threshold": "90", "rule-threshold_unit": "percent_of_tier_limit"}
    )
    changed.pop("rule-deployment")
    response = client.post(f"{_rules_url(owner_org)}/{default.public_id}", changed)
    assert response.status_code == 302 and response["Location"].endswith(f"?deployment={plant.public_id}")
    default.refresh_from_db()
    assert (default.threshold, default.threshold_unit) == (90, "percent_of_tier_limit")


def test_project_user_neither_sees_nor_drops_a_rules_channels_when_editing_it(client, owner_org):
    """Without channel:read the API shows a rule's channels by id only and refuses to change them; the console must
    neither name them on the rules page nor silently drop them when the rule is saved from a form that cannot show
    them."""
    from notifications import services as notification_services

    channel, _ = notification_services.channel_create(
        organization=owner_org.organization,
        actor=None,
        name="Pager of the security team",
        type="email",
        config={"addresses": ["sec@example.com"]},
    )
    rule = rule_services.alert_rule_create(
        project=owner_org.default_project,
        actor=None,
        name="Busy",
        metric="connections",
        aggregation="last",
        window_seconds=60,
        operator=">",
        threshold=2,
        severity="critical",
        channels=[channel],
    )
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    client.force_login(user)
    page = client.get(_rules_url(owner_org)).content.decode()
    assert "Busy" in page and "Pager of the security team" not in page
    edited = threshold_rule_form(**{"rule-threshold": "5"})
    edited.pop("rule-deployment")
    response = client.post(f"{_rules_url(owner_org)}/{rule.public_id}", edited)
    assert response.status_code == 302, response.content.decode()[-2000:]
    rule.refresh_from_db()
    assert rule.threshold == 5
    assert [c.public_id for c in rule.channels.all()] == [channel.public_id]
