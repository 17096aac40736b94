"""The alerts REST API: metric series, rules, alerts and acknowledgement, silences, channels, bad input, tenancy."""

import datetime as dt

import pytest
from django.utils import timezone

from alerts import defaults, evaluate, rules
from alerts.models import Alert, AlertRule
from deployments import services as deployment_services
from deployments.models import Operation
from notifications import services as notification_services
from projects.services import project_create
from tests.alerts.test_tasks import Receiver, eager, make_deployment, rule_for, store  # noqa: F401 - eager is a fixture

pytestmark = pytest.mark.django_db

PAGERDUTY_KEY = "0123456789abcdef0123456789abcdef"
SLACK_URL = "https://hooks.slack.com/services/T0001/B0002/abcDEF123"


@pytest.fixture
def ctx(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    project = owner_org.default_project
    deployment = make_deployment(project)
    org_url = f"/api/v1/organizations/{owner_org.id}"
    return {
        "client": client,
        "org": owner_org,
        "deployment": deployment,
        "org_url": org_url,
        "project_url": f"{org_url}/projects/{project.public_id}",
        "dep_url": f"{org_url}/projects/{project.public_id}/deployments/{deployment.public_id}",
    }


def problem_fields(response) -> set[str]:
    assert response["Content-Type"] == "application/problem+json", response.content
    return {e["field"] for e in response.json()["errors"]}


# --- metrics --------------------------------------------------------------------------------------------------------


def test_metrics_answer_aligned_series_with_gaps_when_samples_missing(ctx):
    deployment = ctx["deployment"]
    base = dt.datetime.fromtimestamp(int(timezone.now().timestamp()) // 60 * 60 - 600, tz=dt.UTC)
    store(deployment, "connections", 3, base + dt.timedelta(seconds=5))
    store(deployment, "connections", 5, base + dt.timedelta(seconds=125))
    store(deployment, "traffic_bytes", 100, base + dt.timedelta(seconds=5))
    store(deployment, "traffic_bytes", 50, base + dt.timedelta(seconds=35))
    response = ctx["client"].get(
        f"{ctx['dep_url']}/metrics",
        {
            "names": "connections,traffic_bytes",
            "from": base.isoformat(),
            "to": (base + dt.timedelta(seconds=180)).isoformat(),
            "step": 60,
        },
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["step"] == 60 and body["source"] == "raw" and len(body["timestamps"]) == 3
    series = {s["name"]: s["values"] for s in body["series"]}
    assert series["connections"] == [3.0, None, 5.0]
    assert series["traffic_bytes"] == [150.0, None, None]  # a counter sums within the step


def test_metrics_current_shows_tier_limits_when_samples_exist(ctx):
    store(ctx["deployment"], "connections", 250, timezone.now())
    response = ctx["client"].get(f"{ctx['dep_url']}/metrics/current")
    assert response.status_code == 200, response.content
    connections = next(m for m in response.json()["metrics"] if m["name"] == "connections")
    assert (connections["value"], connections["limit"], connections["percent_of_limit"]) == (250.0, 1000, 25.0)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"names": "connections,bogus"}, "names"),
        ({"step": "10"}, "step"),
        ({"step": "abc"}, "step"),
        ({"step": "²"}, "step"),  # a digit to str.isdigit(), not to int()
        ({"step": "6" * 5000}, "step"),  # more digits than int() reads
        ({"step": "60", "from": "2020-01-01T00:00:00Z"}, "step"),
        ({"from": "yesterday"}, "from"),
    ],
)
def test_metrics_refuse_bad_query_when_names_step_or_range_invalid(ctx, params, field):
    response = ctx["client"].get(f"{ctx['dep_url']}/metrics", params)
    assert response.status_code == 400, response.content
    assert field in problem_fields(response)


# --- alert rules ----------------------------------------------------------------------------------------------------


def test_rule_crud_and_deployment_filter_when_project_and_deployment_scoped(ctx):
    client, url = ctx["client"], f"{ctx['project_url']}/alert-rules"
    created = client.post(
        url,
        {
            "name": "Busy",
            "metric": "connections",
            "aggregation": "max",
            "window_seconds": 60,
            "operator": ">",
            "threshold": 2,
            "deployment": ctx["deployment"].public_id,
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["deployment"] == ctx["deployment"].public_id and body["threshold"] == 2.0
    project_wide = client.post(
        url, {"name": "Drops", "metric": "messages_dropped_rate", "threshold": 1.5}, format="json"
    )
    assert project_wide.status_code == 201, project_wide.content
    assert project_wide.json()["deployment"] is None

    listed = client.get(url, {"deployment": ctx["deployment"].public_id}).json()["results"]
    assert body["id"] in [r["id"] for r in listed] and project_wide.json()["id"] not in [r["id"] for r in listed]
    # The two rules above and the deployment's defaults, which exist since it was created.
    assert len(client.get(url, {"page_size": 50}).json()["results"]) == 2 + len(defaults.keys_for("dedicated"))

    patched = client.patch(f"{url}/{body['id']}", {"enabled": False, "threshold": 10}, format="json")
    assert patched.status_code == 200, patched.content
    assert patched.json()["enabled"] is False and patched.json()["threshold"] == 10.0
    assert client.delete(f"{url}/{body['id']}").status_code == 204
    assert client.get(f"{url}/{body['id']}").status_code == 404


def test_default_rules_listed_and_editable_when_deployment_created(ctx):
    url = f"{ctx['project_url']}/alert-rules"
    rules = ctx["client"].get(url, {"deployment": ctx["deployment"].public_id, "page_size": 50}).json()["results"]
    assert {r["default_key"] for r in rules} >= {"connections_high", "auth_failures", "rule_resource_down"}
    connections = next(r for r in rules if r["default_key"] == "connections_high")
    assert connections["threshold_unit"] == "percent_of_tier_limit" and connections["threshold"] == 80.0
    response = ctx["client"].patch(f"{url}/{connections['id']}", {"threshold": 90}, format="json")
    assert response.status_code == 200 and response.json()["threshold"] == 90.0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"metric": "cpu_temperature"}, "metric"),
        ({"threshold": "2"}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"window_seconds": 30}, "window_seconds"),
        ({"window_seconds": "300"}, "window_seconds"),
        ({"metric": "retained", "threshold_unit": "percent_of_tier_limit"}, "threshold_unit"),
        ({"operator": "~"}, "operator"),
        ({"severity": "fatal"}, "severity"),
        ({"deployment": "dep_doesnotexist00000000"}, "deployment"),
        ({"channels": ["chn_doesnotexist0000000"]}, "channels"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_rule_refused_with_field_error_when_input_bad(ctx, body, field):
    payload = {"name": "Bad", "metric": "connections", "threshold": 2, **body}
    response = ctx["client"].post(f"{ctx['project_url']}/alert-rules", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in problem_fields(response)


def test_project_user_reads_rules_but_cannot_edit_when_only_alert_read(ctx, key_client):
    org = ctx["org"]
    user, _ = org.add_member(roles=["auditor"])
    _, secret = org.key_for(user, role="auditor")
    client = key_client(secret)
    url = f"{ctx['project_url']}/alert-rules"
    assert client.get(url).status_code == 200
    response = client.post(url, {"name": "x", "metric": "connections", "threshold": 1}, format="json")
    assert response.status_code == 403


# --- alerts, acknowledgement, silences ------------------------------------------------------------------------------


def _firing_alert(ctx) -> Alert:
    rule = rule_for(ctx["deployment"], window_seconds=3600)
    store(ctx["deployment"], "connections", 9, timezone.now())
    evaluate.rules_evaluate(deployment_ids=[ctx["deployment"].pk])
    return Alert.objects.get(rule=rule)


def test_alerts_listed_filtered_and_acknowledged_when_firing(ctx):
    alert = _firing_alert(ctx)
    client, url = ctx["client"], f"{ctx['org_url']}/alerts"
    listed = client.get(url, {"status": "firing"}).json()["results"]
    assert [a["id"] for a in listed] == [alert.public_id]
    assert client.get(url, {"status": "resolved"}).json()["results"] == []
    assert client.get(url, {"deployment": ctx["deployment"].public_id}).json()["results"][0]["value"] == 9.0
    assert client.get(url, {"severity": "info"}).json()["results"] == []

    until = (timezone.now() + dt.timedelta(hours=2)).isoformat()
    acked = client.post(f"{url}/{alert.public_id}/acknowledge", {"until": until, "comment": "looking"}, format="json")
    assert acked.status_code == 200, acked.content
    body = acked.json()
    assert body["acknowledgement_comment"] == "looking" and body["acknowledged_by"] == ctx["org"].owner.email
    assert [e["kind"] for e in body["events"]] == ["firing", "notified", "acknowledged"]

    past = client.post(f"{url}/{alert.public_id}/acknowledge", {"until": "2001-01-01T00:00:00Z"}, format="json")
    assert past.status_code == 400 and "until" in problem_fields(past)


def test_moved_deployments_rules_and_alerts_follow_it_when_it_moves_to_another_project(ctx, key_client):
    """Rules are read and changed with a project's rights: left in the project a deployment moved out of, a Project
    User there could still list and disable the monitoring of a deployment they may no longer see."""
    org, deployment, client = ctx["org"], ctx["deployment"], ctx["client"]
    source = org.default_project
    target = project_create(organization=org.organization, actor=None, name="Plant floor")
    own_alert = _firing_alert(ctx)
    project_wide = rules.alert_rule_create(
        project=source, actor=None, name="Any plant busy", metric="connections", aggregation="max",
        window_seconds=3600, operator=">", threshold=2, severity="warning",
    )  # fmt: skip
    evaluate.rules_evaluate(deployment_ids=[deployment.pk])
    assert Alert.objects.get(rule=project_wide, deployment=deployment).status == "firing"
    user, _ = org.add_member(project_grants=[(source, "project_user")])
    _key, secret = org.key_for(user, role="project_user", projects=[source])
    bystander = key_client(secret)
    own_rule = own_alert.rule
    Operation.objects.filter(deployment=deployment).update(status="succeeded")  # created, nothing in flight

    moved = client.post(f"{ctx['dep_url']}/move", {"project": target.public_id}, format="json")
    assert moved.status_code == 200, moved.content

    source_rules = f"{ctx['project_url']}/alert-rules"
    listed = bystander.get(source_rules, {"page_size": 200}).json()["results"]
    assert [r["id"] for r in listed] == [project_wide.public_id]
    patched = bystander.patch(f"{source_rules}/{own_rule.public_id}", {"enabled": False}, format="json")
    assert patched.status_code == 404, patched.content
    own_rule.refresh_from_db()
    assert own_rule.enabled and own_rule.project == target
    target_rules = f"{ctx['org_url']}/projects/{target.public_id}/alert-rules"
    followed = client.get(target_rules, {"deployment": deployment.public_id, "page_size": 200}).json()["results"]
    assert own_rule.public_id in {r["id"] for r in followed}
    assert {r["id"] for r in followed} == set(
        AlertRule.objects.filter(deployment=deployment).values_list("public_id", flat=True)
    )
    own_alert.refresh_from_db()
    assert (own_alert.project, own_alert.status) == (target, "firing")
    # The old project's own rule watches it no longer: its alert resolved, saying why, and stays resolved.
    left = Alert.objects.get(rule=project_wide, deployment=deployment)
    assert left.status == "resolved" and left.project == source
    assert "moved to project " + target.public_id in left.events.filter(kind="resolved").get().message
    evaluate.rules_evaluate(deployment_ids=[deployment.pk])
    left.refresh_from_db()
    assert left.status == "resolved"


def test_rule_for_a_deployment_moved_since_the_request_resolved_it_is_refused(ctx):
    """The view resolved the deployment in its project; it moved before the rule was saved. Saved in the old project,
    the rule would be the monitoring of a deployment that project's people may no longer see."""
    from controlplane.errors import ValidationFailed

    org, deployment = ctx["org"], ctx["deployment"]
    stale = type(deployment).objects.get(pk=deployment.pk)
    Operation.objects.filter(deployment=deployment).update(status="succeeded")
    target = project_create(organization=org.organization, actor=None, name="Plant floor")
    deployment_services.deployment_move(deployment=deployment, actor=None, project=target)

    with pytest.raises(ValidationFailed) as refused:
        rules.alert_rule_create(
            project=org.default_project, actor=None, deployment=stale, name="Busy", metric="connections", threshold=9
        )

    assert refused.value.errors[0].field == "deployment"
    assert not AlertRule.objects.filter(name="Busy").exists()


def test_rules_left_behind_by_an_earlier_move_follow_their_deployment_when_the_migration_runs(ctx):
    import importlib

    from django.apps import apps

    org, deployment = ctx["org"], ctx["deployment"]
    own_alert = _firing_alert(ctx)
    target = project_create(organization=org.organization, actor=None, name="Plant floor")
    type(deployment).objects.filter(pk=deployment.pk).update(project=target)  # moved before rules followed
    assert AlertRule.objects.filter(deployment=deployment, project=org.default_project).count() > 1

    importlib.import_module("alerts.migrations.0010_rules_follow_moved_deployments").follow(apps, None)

    assert set(AlertRule.objects.filter(deployment=deployment).values_list("project", flat=True)) == {target.pk}
    own_alert.refresh_from_db()
    assert own_alert.project == target


def test_silence_created_listed_and_ended_when_valid(ctx):
    client, url = ctx["client"], f"{ctx['project_url']}/silences"
    ends = (timezone.now() + dt.timedelta(hours=1)).isoformat()
    created = client.post(
        url,
        {
            "matchers": {"deployment": ctx["deployment"].public_id, "severity": "critical"},
            "ends_at": ends,
            "comment": "load test",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["active"] is True
    assert [s["id"] for s in client.get(url).json()["results"]] == [created.json()["id"]]
    ended = client.delete(f"{url}/{created.json()['id']}")
    assert ended.status_code == 200 and ended.json()["active"] is False


@pytest.mark.parametrize(
    "body, field",
    [
        ({"matchers": {"deployment": "dep_x"}}, "ends_at"),
        ({"ends_at": None}, "ends_at"),
        ({"ends_at": "2001-01-01T00:00:00Z"}, "ends_at"),
        ({"matchers": {"colour": "red"}, "ends_at": "2099-01-01T00:00:00Z"}, "matchers"),
        ({"matchers": {"metric": "bogus"}, "ends_at": "2099-01-01T00:00:00Z"}, "matchers.metric"),
    ],
)
def test_silence_refused_when_end_missing_or_matchers_bad(ctx, body, field):
    response = ctx["client"].post(f"{ctx['project_url']}/silences", body, format="json")
    assert response.status_code == 400, response.content
    assert field in problem_fields(response)


# --- tenancy --------------------------------------------------------------------------------------------------------


def test_other_organizations_objects_are_404_when_addressed_through_own_org(ctx, org_factory):
    other = org_factory()
    other_deployment = make_deployment(other.default_project, name="theirs")
    other_rule = rule_for(other_deployment)
    store(other_deployment, "connections", 9, timezone.now())
    evaluate.rules_evaluate(deployment_ids=[other_deployment.pk])
    other_alert = Alert.objects.get(rule=other_rule)
    other_channel, _ = notification_services.channel_create(
        organization=other.organization, actor=None, name="x", type="email", config={"addresses": ["x@example.com"]}
    )
    other_silence = rules.silence_create(
        project=other.default_project,
        actor=None,
        matchers={},
        starts_at=None,
        ends_at=timezone.now() + dt.timedelta(hours=1),
    )
    client = ctx["client"]
    assert client.get(f"{ctx['project_url']}/alert-rules/{other_rule.public_id}").status_code == 404
    assert (
        client.patch(
            f"{ctx['project_url']}/alert-rules/{other_rule.public_id}", {"enabled": False}, format="json"
        ).status_code
        == 404
    )
    assert client.get(f"{ctx['org_url']}/alerts/{other_alert.public_id}").status_code == 404
    assert (
        client.post(
            f"{ctx['org_url']}/alerts/{other_alert.public_id}/acknowledge",
            {"until": "2099-01-01T00:00:00Z"},
            format="json",
        ).status_code
        == 404
    )
    assert client.get(f"{ctx['org_url']}/notification-channels/{other_channel.public_id}").status_code == 404
    assert client.post(f"{ctx['org_url']}/notification-channels/{other_channel.public_id}/test").status_code == 404
    assert client.get(f"{ctx['project_url']}/silences/{other_silence.public_id}").status_code == 404
    other_dep_url = f"{ctx['project_url']}/deployments/{other_deployment.public_id}/metrics"
    assert client.get(other_dep_url).status_code == 404
    # Their organization's URLs are invisible too.
    theirs = f"/api/v1/organizations/{other.id}"
    assert client.get(f"{theirs}/alerts").status_code == 404
    assert client.get(f"{theirs}/notification-channels").status_code == 404
    # And their rules cannot route to our channel, nor ours to theirs.
    response = client.post(
        f"{ctx['project_url']}/alert-rules",
        {"name": "x", "metric": "connections", "threshold": 1, "channels": [other_channel.public_id]},
        format="json",
    )
    assert response.status_code == 400
    assert AlertRule.objects.filter(organization=ctx["org"].organization, name="x").count() == 0


# --- routing a rule to channels needs channel:read ------------------------------------------------------------------


def test_project_user_routes_rules_to_channels_only_when_granted_channel_read(ctx, key_client):
    org = ctx["org"]
    channel, _ = notification_services.channel_create(
        organization=org.organization, actor=None, name="pager", type="email", config={"addresses": ["x@example.com"]}
    )
    user, _ = org.add_member(project_grants=[(org.default_project, "project_user")])
    _, secret = org.key_for(user, role="project_user", projects=[org.default_project])
    client, url = key_client(secret), f"{ctx['project_url']}/alert-rules"
    body = {"name": "mine", "metric": "connections", "threshold": 1}

    # A rule of their own, routed to the organization's defaults: allowed (deployment:configure).
    plain = client.post(url, body, format="json")
    assert plain.status_code == 201, plain.content
    # Naming a channel, existing or not, is refused the same way: no probing for channel ids.
    for ids in ([channel.public_id], ["chn_doesnotexist0000000"]):
        refused = client.post(url, {**body, "channels": ids}, format="json")
        assert refused.status_code == 403, refused.content
        assert "channel:read" in refused.json()["detail"]
    refused = client.patch(f"{url}/{plain.json()['id']}", {"channels": [channel.public_id]}, format="json")
    assert refused.status_code == 403
    assert not AlertRule.objects.filter(channels=channel).exists()

    # A rule an administrator routed keeps its channels when the project user edits it, even sending them back.
    routed = ctx["client"].post(url, {**body, "name": "routed", "channels": [channel.public_id]}, format="json")
    assert routed.status_code == 201, routed.content
    edited = client.patch(
        f"{url}/{routed.json()['id']}", {"threshold": 5, "channels": [channel.public_id]}, format="json"
    )
    assert edited.status_code == 200 and edited.json()["channels"] == [channel.public_id]
    assert client.patch(f"{url}/{routed.json()['id']}", {"channels": []}, format="json").status_code == 403


def test_rule_name_refused_when_it_has_control_characters(ctx):
    url = f"{ctx['project_url']}/alert-rules"
    for name in ("busy\rnow", "two\nlines", "tab\there", "bell\x07ring", "nul\x00"):
        response = ctx["client"].post(url, {"name": name, "metric": "connections", "threshold": 1}, format="json")
        assert response.status_code == 400, (name, response.content)
        assert "name" in problem_fields(response)
    assert not AlertRule.objects.filter(default_key="").exists()


@pytest.mark.usefixtures("deployments_catalog")
def test_alert_rule_name_refuses_line_breaks_when_it_would_head_every_alert_email(owner_org, api, brokers_dir):
    """An alert's email subject is "[FIRING] <rule name>: ...": a "\\r" in a rule's name once made every email of
    that rule refused ("subject must be one line"), so its alerts reached nobody by email. A Project User can name
    rules."""
    deployment, _op = deployment_services.deployment_create(
        project=owner_org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
    )
    user, _membership = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    api.force_login(user)
    response = api.post(
        f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/alert-rules",
        {
            "name": "Busy\rBcc: victim@example.com",
            "metric": "connections",
            "aggregation": "max",
            "window_seconds": 60,
            "operator": ">",
            "threshold": 2,
            "deployment": deployment.public_id,
        },
        format="json",
    )
    assert response.status_code == 400, response.content[:200]
    assert response.json()["errors"][0]["field"] == "name"
