"""Budget rules on month-to-date and forecast spend: the API, exact money, the lifecycle and its notifications.

Spend comes from real status history metered by billing.metering on real PostgreSQL (the 1k tier bills 0.36 USD an
hour). The clock is passed in: ten days and a half hour into March 2030, so 240.5 running hours are 86.58 USD and the
straight-line forecast for the month is 267.84 USD.
"""

import datetime as dt

import pytest
from django.db import IntegrityError, transaction

from alerts import evaluate, rules, tasks
from alerts.models import Alert, AlertEvent, AlertRule
from controlplane.errors import ValidationFailed
from notifications import services as notification_services
from notifications.models import Delivery
from tests.alerts.test_tasks import Receiver, eager, webhook_channel  # noqa: F401 - eager is a fixture

pytestmark = pytest.mark.django_db

UTC = dt.UTC
NOW = dt.datetime(2030, 3, 11, 0, 30, tzinfo=UTC)
MONTH_TO_DATE = "86.58"  # 240.5 h x 0.36 USD
FORECAST = "267.84"  # 744 h x 0.36 USD


def at(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def running_deployment(project, name="plant", *, since=at(2030, 3, 1)):
    """A 1k deployment running since `since`, with the status history the reconciler would have written."""
    from deployments.models import Deployment, Region, StatusInterval, Tier

    tier = Tier.objects.select_related("plan").get(plan__code="dedicated", code="1k")
    deployment = Deployment.objects.create(
        project=project,
        name=name,
        plan=tier.plan,
        tier=tier,
        region=Region.objects.get(code="local"),
        desired_state="running",
        status="running",
    )
    StatusInterval.objects.create(deployment=deployment, status="running", tier=tier, started_at=since)
    return deployment


def meter(now=NOW):
    from billing import metering

    metering.usage_meter(now=now, since=metering.month_start(now))


def budget_rule(project, amount, *, metric="spend_month_to_date", operator=">=", scope="project", **fields):
    defaults = {"name": "Budget", "severity": "warning", "repeat_interval_seconds": 3600}
    defaults.update(fields)
    return rules.alert_rule_create(
        project=project,
        actor=None,
        kind="budget",
        metric=metric,
        operator=operator,
        budget_scope=scope,
        budget_amount=amount,
        **defaults,
    )


def second_project(org):
    from projects import services as project_services

    return project_services.project_create(organization=org.organization, actor=None, name="Second")


@pytest.fixture
def ctx(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    org_url = f"/api/v1/organizations/{owner_org.id}"
    return {
        "client": client,
        "org": owner_org,
        "project": owner_org.default_project,
        "org_url": org_url,
        "rules_url": f"{org_url}/projects/{owner_org.default_project.public_id}/alert-rules",
    }


def problem_fields(response) -> set[str]:
    assert response["Content-Type"] == "application/problem+json", response.content
    return {e["field"] for e in response.json()["errors"]}


# --- evaluation and notification ------------------------------------------------------------------------------------


def test_budget_alert_fires_once_with_exact_amounts_and_resolves_when_budget_raised(
    owner_org, eager, settings, mailoutbox, django_capture_on_commit_callbacks
):
    settings.ALLOW_PRIVATE_WEBHOOKS = True
    receiver = Receiver()
    try:
        webhook_channel(owner_org.organization, receiver.url)
        notification_services.channel_create(
            organization=owner_org.organization,
            actor=None,
            name="finance",
            type="email",
            config={"addresses": ["finance@example.com"]},
        )
        project = owner_org.default_project
        running_deployment(project)
        meter()
        rule = budget_rule(project, "80.00")

        with django_capture_on_commit_callbacks(execute=True):
            summary = evaluate.budget_rules_evaluate(now=NOW)
        assert (summary.rules, summary.changed, summary.notifications) == (1, 1, 2)
        alert = Alert.objects.get(rule=rule)
        assert alert.deployment_id is None and alert.status == "firing"
        assert (alert.spend_minor, alert.budget_minor, alert.currency) == (8658, 8000, "USD")
        assert alert.value is None and alert.threshold is None
        assert alert.summary == (
            f"Budget: month-to-date spend {MONTH_TO_DATE} USD >= 80.00 USD on project Default project"
        )

        # Fifteen minutes later it is still over budget: no second notification within the repeat interval.
        with django_capture_on_commit_callbacks(execute=True):
            evaluate.budget_rules_evaluate(now=NOW + dt.timedelta(minutes=15))
        bodies = receiver.bodies()
        assert [b["event"] for b in bodies] == ["alert.firing"]
        assert bodies[0]["deployment"] is None
        assert bodies[0]["subject"] == {"type": "project", "id": project.public_id}
        assert bodies[0]["budget"] == {
            "metric": "spend_month_to_date",
            "scope": "project",
            "currency": "USD",
            "spend": MONTH_TO_DATE,
            "budget": "80.00",
        }
        assert len(mailoutbox) == 1 and mailoutbox[0].to == ["finance@example.com"]
        assert mailoutbox[0].subject == (
            f"[FIRING] Budget: month-to-date spend {MONTH_TO_DATE} USD >= 80.00 USD on project Default project"
        )
        assert "budget: 80.00 USD" in mailoutbox[0].body
        assert Delivery.objects.filter(alert_public_id=alert.public_id, kind="fire").count() == 2

        rules.alert_rule_update(rule=rule, actor=None, budget_amount="90.00")
        later = NOW + dt.timedelta(minutes=30)  # 241 h x 0.36 = 86.76 USD, under 90.00
        with django_capture_on_commit_callbacks(execute=True):
            evaluate.budget_rules_evaluate(now=later)
    finally:
        receiver.stop()
    alert.refresh_from_db()
    assert alert.status == "resolved" and alert.resolved_at == later
    assert (alert.spend_minor, alert.budget_minor) == (8676, 9000)
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing", "alert.resolved"]
    assert receiver.bodies()[1]["budget"]["spend"] == "86.76"
    assert len(mailoutbox) == 2 and mailoutbox[1].subject.startswith("[RESOLVED]")
    kinds = list(AlertEvent.objects.filter(alert=alert).values_list("kind", flat=True))
    assert kinds == ["firing", "notified", "resolved", "notified"]


def test_forecast_rule_fires_on_forecast_when_month_to_date_is_under_the_same_budget(owner_org):
    project = owner_org.default_project
    running_deployment(project)
    meter()
    month_to_date = budget_rule(project, "100.00", name="Month so far")
    forecast = budget_rule(project, "100.00", name="Forecast", metric="spend_forecast")
    evaluate.budget_rules_evaluate(now=NOW)
    assert not Alert.objects.filter(rule=month_to_date).exists()
    alert = Alert.objects.get(rule=forecast)
    assert alert.status == "firing" and (alert.spend_minor, alert.budget_minor) == (26784, 10000)
    assert alert.summary == f"Forecast: forecast spend {FORECAST} USD >= 100.00 USD on project Default project"


def test_organization_scope_sums_every_project_when_project_scope_counts_its_own(owner_org):
    project, other = owner_org.default_project, second_project(owner_org)
    running_deployment(project, "a")
    running_deployment(other, "b")
    meter()
    organization_rule = budget_rule(project, "150.00", name="Organization", scope="organization")
    project_rule = budget_rule(project, "150.00", name="Project")
    evaluate.budget_rules_evaluate(now=NOW)
    assert not Alert.objects.filter(rule=project_rule).exists()
    alert = Alert.objects.get(rule=organization_rule)
    assert alert.status == "firing" and alert.spend_minor == 2 * 8658
    assert alert.summary.endswith(f"on organization {owner_org.organization.name}")


def test_strictly_greater_operator_does_not_fire_when_spend_equals_budget(owner_org):
    project = owner_org.default_project
    running_deployment(project)
    meter()
    greater = budget_rule(project, MONTH_TO_DATE, operator=">", name="Above")
    at_least = budget_rule(project, MONTH_TO_DATE, operator=">=", name="At least")
    evaluate.budget_rules_evaluate(now=NOW)
    assert not Alert.objects.filter(rule=greater).exists()
    assert Alert.objects.get(rule=at_least).status == "firing"


def test_spend_computed_once_per_scope_when_many_rules_share_it(owner_org, monkeypatch):
    from billing import selectors

    project = owner_org.default_project
    running_deployment(project)
    meter()
    for i in range(4):
        budget_rule(project, "1000.00", name=f"p{i}")
        budget_rule(project, "1000.00", name=f"o{i}", scope="organization", metric="spend_forecast")
    calls = []
    original = selectors.spend_month_to_date

    def counting(**kwargs):
        calls.append(kwargs["project_id"])
        return original(**kwargs)

    monkeypatch.setattr(selectors, "spend_month_to_date", counting)
    assert evaluate.budget_rules_evaluate(now=NOW).rules == 8
    assert sorted(calls, key=str) == sorted([project.pk, None], key=str)


def test_budget_notification_withheld_when_silence_matches_metric(owner_org, django_capture_on_commit_callbacks):
    notification_services.channel_create(
        organization=owner_org.organization,
        actor=None,
        name="finance",
        type="email",
        config={"addresses": ["finance@example.com"]},
    )
    project = owner_org.default_project
    running_deployment(project)
    meter()
    rule = budget_rule(project, "80.00")
    rules.silence_create(
        project=project,
        actor=None,
        matchers={"metric": "spend_month_to_date"},
        starts_at=at(2030, 3, 10),
        ends_at=at(2030, 3, 12),
    )
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.budget_rules_evaluate(now=NOW)
    alert = Alert.objects.get(rule=rule)
    assert alert.status == "firing" and alert.last_notified_at is None
    assert list(AlertEvent.objects.filter(alert=alert).values_list("kind", flat=True)) == ["firing", "suppressed"]
    assert not Delivery.objects.filter(alert_public_id=alert.public_id).exists()


def test_repeat_withheld_while_acknowledged_when_budget_alert_firing(owner_org):
    project = owner_org.default_project
    running_deployment(project)
    meter()
    rule = budget_rule(project, "80.00", repeat_interval_seconds=600)
    evaluate.budget_rules_evaluate(now=NOW)
    alert = Alert.objects.get(rule=rule)
    rules.alert_acknowledge(alert=alert, actor=None, until=at(2030, 3, 12), comment="finance knows")

    def notices():
        return list(AlertEvent.objects.filter(alert=alert, kind="notified").values_list("message", flat=True))

    evaluate.budget_rules_evaluate(now=NOW + dt.timedelta(minutes=15))
    assert notices() == ["fire notification"]
    evaluate.budget_rules_evaluate(now=at(2030, 3, 12, 0, 30))
    assert notices() == ["fire notification", "repeat notification"]


def test_one_alert_per_budget_rule_when_inserted_twice(owner_org):
    project = owner_org.default_project
    running_deployment(project)
    meter()
    rule = budget_rule(project, "80.00")
    evaluate.budget_rules_evaluate(now=NOW)
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(
            organization=owner_org.organization,
            project=project,
            rule=rule,
            deployment=None,
            status="firing",
            since=NOW,
            severity="warning",
        )


def test_metric_evaluation_ignores_budget_rules_when_deployments_evaluated(owner_org):
    project = owner_org.default_project
    deployment = running_deployment(project)
    meter()
    rule = budget_rule(project, "1.00")
    evaluate.rules_evaluate(deployment_ids=[deployment.pk])
    evaluate.rules_evaluate()
    assert not Alert.objects.filter(rule=rule).exists()


def test_budget_task_runs_on_the_monitoring_queue_every_fifteen_minutes(owner_org, settings):
    from controlplane.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["alerts.evaluate_budget_rules"]
    assert entry["task"] == "alerts.evaluate_budget_rules" and entry["schedule"].minute == {0, 15, 30, 45}
    assert app.amqp.router.route({}, "alerts.evaluate_budget_rules")["queue"].name == "monitoring"
    budget_rule(owner_org.default_project, "1.00")
    tasks.evaluate_budget_rules()  # no spend yet: nothing fires, nothing breaks
    assert not Alert.objects.exists()


def test_budget_stored_in_minor_units_of_the_accounts_currency_when_zero_decimal(owner_org):
    from billing.selectors import billing_account_for

    account = billing_account_for(organization=owner_org.organization)
    account.currency = "JPY"
    account.save(update_fields=["currency"])
    rule = budget_rule(owner_org.default_project, "25000")
    assert (rule.budget_minor, rule.budget_currency) == (25000, "JPY")
    with pytest.raises(ValidationFailed) as refused:
        budget_rule(owner_org.default_project, "250.5")
    assert "budget_amount" in refused.value.message_dict()


# --- API ------------------------------------------------------------------------------------------------------------


def test_budget_rule_created_and_alert_exposes_subject_and_money_when_over_budget(ctx):
    project = ctx["project"]
    running_deployment(project)
    meter()
    created = ctx["client"].post(
        ctx["rules_url"],
        {
            "name": "Budget",
            "kind": "budget",
            "metric": "spend_month_to_date",
            "operator": ">=",
            "budget_amount": "80.00",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["kind"], body["deployment"], body["budget_scope"]) == ("budget", None, "project")
    assert (body["budget_amount"], body["budget_currency"], body["threshold"]) == ("80.00", "USD", 80.0)
    assert AlertRule.objects.get(public_id=body["id"]).budget_minor == 8000

    evaluate.budget_rules_evaluate(now=NOW)
    listed = ctx["client"].get(f"{ctx['org_url']}/alerts").json()["results"]
    assert len(listed) == 1
    alert = listed[0]
    assert alert["deployment"] is None and alert["subject"] == {"type": "project", "id": project.public_id}
    assert alert["budget"] == {
        "metric": "spend_month_to_date",
        "scope": "project",
        "currency": "USD",
        "spend": MONTH_TO_DATE,
        "budget": "80.00",
    }
    assert alert["rule"]["kind"] == "budget" and alert["value"] is None
    detail = ctx["client"].get(f"{ctx['org_url']}/alerts/{alert['id']}").json()
    assert [e["kind"] for e in detail["events"]] == ["firing", "notified"]

    patched = ctx["client"].patch(
        f"{ctx['rules_url']}/{body['id']}", {"budget_amount": "500", "budget_scope": "organization"}, format="json"
    )
    assert patched.status_code == 200, patched.content
    assert (patched.json()["budget_amount"], patched.json()["budget_scope"]) == ("500.00", "organization")
    evaluate.budget_rules_evaluate(now=NOW)
    resolved = ctx["client"].get(f"{ctx['org_url']}/alerts/{alert['id']}").json()
    assert resolved["status"] == "resolved"
    assert resolved["subject"] == {"type": "organization", "id": ctx["org"].id}


def test_metric_rules_keep_their_contract_when_budget_fields_exist(ctx):
    response = ctx["client"].post(
        ctx["rules_url"], {"name": "Busy", "metric": "connections", "threshold": 2}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "metric" and body["threshold"] == 2.0
    assert (body["budget_scope"], body["budget_amount"], body["budget_currency"]) == (None, None, None)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"budget_amount": 1e3}, "budget_amount"),
        ({"budget_amount": 250}, "budget_amount"),
        ({"budget_amount": "1e3"}, "budget_amount"),
        ({"budget_amount": "12.345"}, "budget_amount"),
        ({"budget_amount": "-5.00"}, "budget_amount"),
        ({"budget_amount": "0.00"}, "budget_amount"),
        ({"budget_amount": "1,000"}, "budget_amount"),
        ({"budget_amount": "99999999999999999999"}, "budget_amount"),
        ({"budget_amount": None}, "budget_amount"),
        ({"metric": "connections"}, "metric"),
        ({"metric": "spend_yesterday"}, "metric"),
        ({"metric": ""}, "metric"),
        ({"operator": "<"}, "operator"),
        ({"operator": "=="}, "operator"),
        ({"threshold": 250}, "threshold"),
        ({"budget_scope": "galaxy"}, "budget_scope"),
        ({"threshold_unit": "percent_of_tier_limit"}, "threshold_unit"),
        ({"deployment": "DEPLOYMENT"}, "deployment"),
    ],
)
def test_budget_rule_refused_with_field_error_when_input_bad(ctx, body, field):
    if body.get("deployment") == "DEPLOYMENT":
        body = {"deployment": running_deployment(ctx["project"]).public_id}
    payload = {"name": "Budget", "kind": "budget", "metric": "spend_month_to_date", "budget_amount": "250.00", **body}
    response = ctx["client"].post(ctx["rules_url"], payload, format="json")
    assert response.status_code == 400, response.content
    assert field in problem_fields(response)
    assert not AlertRule.objects.filter(kind="budget").exists()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"metric": "spend_forecast"}, "metric"),
        ({"budget_amount": "250.00"}, "budget_amount"),
        ({"budget_scope": "project"}, "budget_scope"),
    ],
)
def test_metric_rule_refuses_budget_fields_when_created(ctx, body, field):
    payload = {"name": "Busy", "metric": "connections", "threshold": 2, **body}
    response = ctx["client"].post(ctx["rules_url"], payload, format="json")
    assert response.status_code == 400, response.content
    assert field in problem_fields(response)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"threshold": 3}, "threshold"),
        ({"budget_amount": "1.001"}, "budget_amount"),
        ({"budget_amount": 12}, "budget_amount"),
        ({"metric": "connections"}, "metric"),
        ({"operator": "<="}, "operator"),
    ],
)
def test_budget_rule_update_refused_with_field_error_when_input_bad(ctx, body, field):
    rule = budget_rule(ctx["project"], "250.00")
    response = ctx["client"].patch(f"{ctx['rules_url']}/{rule.public_id}", body, format="json")
    assert response.status_code == 400, response.content
    assert field in problem_fields(response)
    rule.refresh_from_db()
    assert (rule.budget_minor, rule.metric, rule.operator) == (25000, "spend_month_to_date", ">=")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"budget_amount": "10.00"}, "budget_amount"),
        ({"budget_scope": "organization"}, "budget_scope"),
        ({"metric": "spend_forecast"}, "metric"),
    ],
)
def test_metric_rule_update_refuses_budget_fields(ctx, body, field):
    rule = rules.alert_rule_create(project=ctx["project"], actor=None, name="Busy", metric="connections", threshold=2)
    response = ctx["client"].patch(f"{ctx['rules_url']}/{rule.public_id}", body, format="json")
    assert response.status_code == 400, response.content
    assert field in problem_fields(response)


def test_budget_rule_needs_billing_read_when_project_administrator_creates_it(ctx, key_client):
    org = ctx["org"]
    user, _ = org.add_member(project_grants=[(ctx["project"], "project_administrator")])
    _, secret = org.key_for(user, role="project_administrator", projects=[ctx["project"]])
    client = key_client(secret)
    refused = client.post(
        ctx["rules_url"],
        {"name": "Budget", "kind": "budget", "metric": "spend_month_to_date", "budget_amount": "250.00"},
        format="json",
    )
    assert refused.status_code == 403, refused.content
    rule = budget_rule(ctx["project"], "250.00")
    assert (
        client.patch(f"{ctx['rules_url']}/{rule.public_id}", {"budget_amount": "1.00"}, format="json").status_code
        == 403
    )
    allowed = client.post(ctx["rules_url"], {"name": "Busy", "metric": "connections", "threshold": 2}, format="json")
    assert allowed.status_code == 201, allowed.content


def test_budget_rule_is_not_deleted_when_a_member_without_billing_read_asks(ctx, key_client):
    # Creating and changing a budget rule needs billing:read: deleting the finance team's budget must too.
    org = ctx["org"]
    user, _ = org.add_member(project_grants=[(ctx["project"], "project_administrator")])
    _, secret = org.key_for(user, role="project_administrator", projects=[ctx["project"]])
    rule = budget_rule(ctx["project"], "250.00")
    refused = key_client(secret).delete(f"{ctx['rules_url']}/{rule.public_id}")
    assert refused.status_code == 403, refused.content
    assert AlertRule.objects.filter(pk=rule.pk).exists()
    assert ctx["client"].delete(f"{ctx['rules_url']}/{rule.public_id}").status_code == 204


def test_other_organization_cannot_see_or_edit_budget_rules_and_alerts(ctx, org_factory):
    other = org_factory()
    running_deployment(other.default_project)
    meter()
    their_rule = budget_rule(other.default_project, "1.00")
    evaluate.budget_rules_evaluate(now=NOW)
    their_alert = Alert.objects.get(rule=their_rule)
    client = ctx["client"]
    assert client.get(f"{ctx['rules_url']}/{their_rule.public_id}").status_code == 404
    assert (
        client.patch(
            f"{ctx['rules_url']}/{their_rule.public_id}", {"budget_amount": "999.00"}, format="json"
        ).status_code
        == 404
    )
    assert client.delete(f"{ctx['rules_url']}/{their_rule.public_id}").status_code == 404
    assert client.get(f"{ctx['org_url']}/alerts/{their_alert.public_id}").status_code == 404
    assert client.get(f"{ctx['org_url']}/alerts").json()["results"] == []
    theirs = f"/api/v1/organizations/{other.id}/projects/{other.default_project.public_id}/alert-rules"
    assert client.get(theirs).status_code == 404
    their_rule.refresh_from_db()
    assert their_rule.budget_minor == 100


def test_budget_rules_of_a_closed_organization_are_not_evaluated(owner_org, org_factory):
    from organizations import access
    from organizations import services as organization_services

    budget_rule(owner_org.default_project, "1.00", name="Closed")
    open_org = org_factory()
    running_deployment(open_org.default_project)
    meter()
    budget_rule(open_org.default_project, "1.00", name="Open")
    organization_services.organization_delete(
        organization=owner_org.organization,
        actor=access.Principal(user=owner_org.owner),
        confirm_name=owner_org.organization.name,
    )

    summary = evaluate.budget_rules_evaluate(now=NOW)

    assert summary.rules == 1
    assert list(Alert.objects.values_list("rule__name", flat=True)) == ["Open"]
