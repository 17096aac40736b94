"""Every console page in a real browser, as an Owner, light and dark: a screenshot of each for a person to look at,
and axe-core with no serious or critical violation (the journeys cover the pages of other roles)."""

import pytest
from playwright.sync_api import expect

from tests.console.helpers import console_path, deployment, make_organization, settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _pages(org, plant, member, key):
    o, p = org.id, org.default_project.public_id
    return [
        ("projects", f"/console/o/{o}"),
        ("deployments", f"/console/o/{o}/p/{p}"),
        ("project-settings", f"/console/o/{o}/p/{p}/settings"),
        ("wizard", f"/console/o/{o}/p/{p}/deployments/new"),
        ("overview", console_path(plant)),
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
        ("billing", f"/console/o/{o}/billing"),
        ("not-found", f"/console/o/{o}/p/prj_missing"),
    ]


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
    user, member = org.add_member(roles=["auditor"], email="audrey@example.com")
    key, _ = org.key_for(user, role="auditor")

    light = site.page(org.owner, name="light")
    for label, path in _pages(org, plant, member, key):
        light.goto(path)
        expect(light.locator("main")).to_be_visible()
        light.check(label)

    dark = site.page(org.owner, name="dark", color_scheme="dark")
    for label in ("overview", "manage", "members", "wizard", "tls", "vpc-peering"):
        path = dict(_pages(org, plant, member, key))[label]
        dark.goto(path)
        dark.check(label)

    anonymous = site.page(name="anonymous")
    for label, path in (("login", "/console/login"), ("signup", "/console/signup")):
        anonymous.goto(path)
        anonymous.check(label)
