"""Journey: a customer watches a real broker on the monitoring tab. Three real MQTT clients connect to a local
deployment (a real mosquitto provisioned by the real Celery worker), the worker collects its metrics, and the page,
left open, shows 3 connections without being reloaded; the chart is drawn and its table says the same."""

import re
import time

import pytest
from playwright.sync_api import expect

from tests.console.helpers import console_path, make_organization
from tests.deployments.test_local_driver import Client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# The local driver republishes $SYS every 10 s: a collector that waits a little longer sees a batch computed while
# it is connected, so its own connection is subtracted exactly.
COLLECT_TIMEOUT = "12"


@pytest.fixture
def worker(request, monkeypatch, settings):
    """The real worker, started after its environment is set (it reads the collector's timeout from there)."""
    monkeypatch.setenv("COLLECT_TIMEOUT_SECONDS", COLLECT_TIMEOUT)
    settings.COLLECT_TIMEOUT_SECONDS = float(COLLECT_TIMEOUT)
    return request.getfixturevalue("celery_worker")


def wait_until(check, timeout=90.0, what="condition", logs=None):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}\n{logs() if logs else ''}")
        time.sleep(0.2)


def running_deployment(org, worker):
    """A 1k deployment with one MQTT user, provisioned and configured by the worker on a real mosquitto."""
    from deployments import services
    from deployments.models import Deployment, Operation

    plant, _ = services.deployment_create(
        project=org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
    )

    def running():
        plant.refresh_from_db()
        return plant.status == "running" and plant.observed_generation >= plant.generation

    wait_until(running, what="the deployment to run", logs=worker.logs)
    _user, operation = services.mqtt_user_create(
        deployment=plant, actor=None, username="device", password="device-secret"
    )
    wait_until(
        lambda: Operation.objects.get(pk=operation.pk).status == "succeeded",
        what="the MQTT user to be applied",
        logs=worker.logs,
    )
    return Deployment.objects.select_related("tier", "region").get(pk=plant.pk)


def collect(plant, worker):
    """One collection of the deployment, run by the worker as the minute's beat task would."""
    from alerts import tasks
    from alerts.models import CollectorState

    before = CollectorState.objects.filter(deployment=plant).values_list("last_attempt_at", flat=True).first()
    tasks.collect_deployment.delay(plant.pk)
    wait_until(
        lambda: (
            CollectorState.objects.filter(deployment=plant)
            .exclude(last_attempt_at=before)
            .exclude(last_attempt_at=None)
            .exists()
        ),
        what="the collection",
        logs=worker.logs,
    )


def test_connections_chart_shows_three_when_three_clients_are_connected(site, worker, settings):
    settings.CONSOLE_MONITORING_REFRESH_SECONDS = 2  # the page's minute, shortened so the test sees it refresh
    org = make_organization(name="Watchers")
    plant = running_deployment(org, worker)
    port = plant.endpoints["ports"]["mqtt"]

    page = site.page(org.owner)
    page.goto(console_path(plant))
    page.get_by_role("link", name="Monitoring").click()
    expect(page.get_by_role("heading", name="Now")).to_be_visible()
    expect(page.get_by_text("No sample yet")).to_be_visible()
    navigations = page.navigations

    devices = [Client(port, "device", "device-secret") for _ in range(3)]
    try:
        for device in devices:
            assert not device.connect().is_failure
        collect(plant, worker)
        # The open page refreshes itself: the value appears without a reload.
        connections = page.get_by_role("region", name="Now").get_by_label("Connections", exact=True)
        expect(connections).to_contain_text(re.compile(r"^3 of 1,000"), timeout=20_000)
        assert page.navigations == navigations
        chart = page.get_by_role("figure", name="Connections")
        expect(chart.get_by_role("row", name=re.compile("^Connections"))).to_contain_text("3")
        expect(chart.get_by_role("row", name="Tier limit")).to_contain_text("1,000")
        # The chart module drew from the console's JSON: a canvas with at least the one sample.
        expect(page.locator("[data-monitoring]")).to_have_attribute("data-drawn", re.compile(r"^[1-9]\d*$"))
        expect(chart.locator("canvas").first).to_be_visible()
        page.check("three-clients")
    finally:
        for device in devices:
            device.close()

    collect(plant, worker)
    expect(connections).to_contain_text(re.compile(r"^0 of 1,000"), timeout=20_000)
    page.get_by_role("link", name="24 hours").click()
    expect(page.get_by_role("link", name="24 hours")).to_have_attribute("aria-current", "true")
    # Both collections fall in the same five-minute step or in two: the step's maximum is at least their mean.
    row = page.get_by_role("figure", name="Connections").get_by_role("row", name=re.compile("^Connections"))
    maximum = float(row.get_by_role("cell").nth(3).inner_text().replace(",", ""))
    assert 1.5 <= maximum <= 3
    page.check("day")

    dark = site.page(org.owner, name="dark", color_scheme="dark")
    dark.goto(console_path(plant, "monitoring"))
    expect(dark.locator("[data-monitoring]")).to_have_attribute("data-drawn", re.compile(r"^[1-9]\d*$"))
    dark.check("dark")
