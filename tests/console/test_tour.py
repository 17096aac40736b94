"""Every console page in a real browser, as an Owner, light and dark: a screenshot of each for a person to look at,
and axe-core with no serious or critical violation (the journeys cover the pages of other roles)."""

import re

import pytest
from playwright.sync_api import expect

from tests.console.helpers import console_path, deployment, make_organization, settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _pages(org, plant, member, key, channel=None):
    o, p = org.id, org.default_project.public_id
    return [
        ("projects", f"/console/o/{o}"),
        ("deployments", f"/console/o/{o}/p/{p}"),
        ("project-settings", f"/console/o/{o}/p/{p}/settings"),
        ("wizard", f"/console/o/{o}/p/{p}/deployments/new"),
        ("overview", console_path(plant)),
        ("monitoring", console_path(plant, "monitoring")),
        ("mqtt-users", console_path(plant, "mqtt-users")),
        ("acl", console_path(plant, "acl")),
        ("rate-limits", console_path(plant, "rate-limits")),
        ("tls", console_path(plant, "tls")),
        ("vpc-peering", console_path(plant, "vpc-peering")),
        ("manage", console_path(plant, "manage")),
        ("confirm-restart", console_path(plant, "actions/restart")),
        ("history", console_path(plant, "history")),
        ("members", f"/console/o/{o}/members"),
        ("member-edit", f"/console/o/{o}/members/{member.public_id}"),
        ("member-remove", f"/console/o/{o}/members/{member.public_id}/remove"),
        ("api-keys", f"/console/o/{o}/api-keys"),
        ("api-key-rotate", f"/console/o/{o}/api-keys/{key.public_id}/rotate"),
        ("audit", f"/console/o/{o}/audit"),
        ("settings", f"/console/o/{o}/settings"),
        ("alerts", f"/console/o/{o}/alerts"),
        ("alert-rules", f"/console/o/{o}/p/{p}/alert-rules"),
        ("alert-rule-new", f"/console/o/{o}/p/{p}/alert-rules/new"),
        ("budget-rule-new", f"/console/o/{o}/p/{p}/alert-rules/new?kind=budget"),
        ("channels", f"/console/o/{o}/channels"),
        ("channel", f"/console/o/{o}/channels/{channel.public_id if channel else 'chn_missing'}"),
        ("billing", f"/console/o/{o}/billing"),
        ("not-found", f"/console/o/{o}/p/prj_missing"),
    ]


def _alerting(org, plant):
    """A channel, a rule of the user's own, a firing alert and a silence, for the alerting pages to show."""
    import datetime as dt

    from django.utils import timezone

    from alerts import rules
    from alerts.models import Alert
    from notifications import services as notifications

    channel, _ = notifications.channel_create(
        organization=org.organization, actor=None, name="Ops mail", type="email", config={"addresses": ["ops@a.io"]}
    )
    rule = rules.alert_rule_create(
        project=org.default_project,
        actor=None,
        deployment=plant,
        channels=[channel],
        name="More than two clients",
        metric="connections",
        aggregation="last",
        window_seconds=60,
        operator=">",
        threshold=2,
        for_seconds=60,
        severity="critical",
    )
    now = timezone.now()
    Alert.objects.create(
        organization=org.organization,
        project=org.default_project,
        rule=rule,
        deployment=plant,
        status="firing",
        since=now,
        fired_at=now,
        severity="critical",
        value=3,
        threshold=2,
    )
    rules.silence_create(
        project=org.default_project,
        actor=None,
        matchers={"severity": "warning"},
        starts_at=None,
        ends_at=now + dt.timedelta(hours=2),
        comment="load test",
    )
    return channel


def _drawn(page):
    """A page with charts is looked at once they are drawn."""
    if page.locator("[data-monitoring]").count():
        expect(page.locator("[data-monitoring]")).to_have_attribute("data-drawn", re.compile(r"^[1-9]\d*$"))


def _metrics(plant):
    """An hour of samples with a five-minute outage in it, for the monitoring tab to draw."""
    import datetime as dt

    from django.utils import timezone

    from alerts.models import MetricSample

    now = timezone.now()
    rows = []
    for minute in range(60):
        if 20 <= minute < 25:
            continue
        ts = now - dt.timedelta(minutes=minute)
        values = {
            "connections": 200 + 5 * (minute % 11),
            "subscriptions": 410 + minute,
            "messages_received_rate": 30 + minute % 7,
            "messages_sent_rate": 55 + minute % 5,
            "messages_dropped_rate": 0.2 * (minute % 3),
            "traffic_bytes": 120_000 + 900 * minute,
            "auth_failure_rate": 0.05 if minute % 10 == 0 else 0,
            "acl_denied_rate": 0,
        }
        rows += [MetricSample(deployment=plant, name=name, ts=ts, value=value) for name, value in values.items()]
    MetricSample.objects.bulk_create(rows)


def test_every_console_page_passes_axe_when_shown_light_and_dark(site):
    from deployments import services, tls_services

    org = make_organization(name="Tour")
    plant = settle(deployment(org.default_project))
    services.mqtt_user_create(deployment=plant, actor=None, username="sensor", password="sensor-secret")
    services.acl_rule_create(deployment=plant, actor=None, permission="deny", action="publish", topic="secret/#")
    services.acl_rule_create(deployment=plant, actor=None, permission="allow", action="all", topic="public/+")
    services.rate_limits_replace(deployment=plant, actor=None, policies=[{"level": "global", "messages_rate": 1000}])
    settle(plant)
    plant.endpoints = {"host": "127.0.0.1", "ports": {"mqtt": 21883, "ws": 21884, "mqtts": 21885, "wss": 21886}}
    plant.save(update_fields=["endpoints"])
    tls_services.server_certificate_ensure(deployment=plant)
    _metrics(plant)
    user, member = org.add_member(roles=["auditor"], email="audrey@example.com")
    key, _ = org.key_for(user, role="auditor")
    channel = _alerting(org, plant)

    light = site.page(org.owner, name="light")
    for label, path in _pages(org, plant, member, key, channel):
        light.goto(path)
        expect(light.locator("main")).to_be_visible()
        _drawn(light)
        light.check(label)

    dark = site.page(org.owner, name="dark", color_scheme="dark")
    for label in (
        "overview",
        "monitoring",
        "manage",
        "members",
        "wizard",
        "tls",
        "vpc-peering",
        "alerts",
        "alert-rules",
        "channels",
        "channel",
        "alert-rule-new",
        "budget-rule-new",
    ):
        path = dict(_pages(org, plant, member, key, channel))[label]
        dark.goto(path)
        _drawn(dark)
        dark.check(label)

    anonymous = site.page(name="anonymous")
    for label, path in (("login", "/console/login"), ("signup", "/console/signup")):
        anonymous.goto(path)
        anonymous.check(label)
