"""Browser journey on the Devices tab of a Premium deployment, on real parts: a real Celery worker runs a real
mosquitto, a real platform agent serves it, and a paho device connects with the credentials the page showed once.
The customer registers a device, sees it come online, changes its desired state (the device receives the delta),
meets a version conflict, disables it (it is disconnected), and imports devices from CSV (a bad row imports nothing)."""

import re
import time

import pytest
from playwright.sync_api import expect

from tests.console.helpers import console_path, make_organization
from tests.iot.agent_process import agents  # noqa: F401
from tests.iot.conftest import premium_deployment
from tests.iot.devices import Device

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _converged(plant, timeout=90.0):
    """The deployment once the worker has brought its broker to the latest change (the device's user included)."""
    deadline = time.monotonic() + timeout
    while True:
        plant.refresh_from_db()
        if plant.is_converged and plant.status == "running":
            return plant
        assert plant.status != "failed", plant.last_error
        assert time.monotonic() < deadline, f"never converged: {plant.status}"
        time.sleep(0.2)


def _until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.3)


def _row(page, device_id):
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=device_id, exact=True))


def test_customer_registers_connects_steers_and_disables_a_device_when_following_the_tab(site, celery_worker, agents):
    org = make_organization(name="Factory")
    plant = _converged(premium_deployment(org, running=False))
    port = plant.endpoints["ports"]["mqtt"]
    agents()

    # 1. The Devices tab of the deployment, empty; registering shows the credentials once.
    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant))
    page.get_by_role("link", name="Devices", exact=True).click()
    expect(page.get_by_text("No device is registered yet.")).to_be_visible()
    page.check("empty-list")
    page.get_by_role("link", name="Register a device").click()
    page.get_by_label("Device id").fill("boiler-7")
    page.get_by_label("Name", exact=True).fill("Boiler room sensor")
    page.get_by_label("Product").fill("thermo-v2")
    page.get_by_label("Tags").fill("plant-a, floor-1")
    page.get_by_label("Attributes (JSON object)").fill('{"firmware": "1.4.2"}')
    page.check("register-form")
    page.get_by_role("button", name="Register device").click()
    expect(page.get_by_role("heading", name=re.compile("Device registered: boiler-7"))).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("it will not be shown again")
    username = page.locator("#device-username").inner_text().strip()
    password = page.locator("#device-password").inner_text().strip()
    assert username.startswith("$device-") and len(password) >= 24
    page.check("credentials-once")

    # 2. A paho device connects with them: the list shows it online within seconds.
    _converged(plant)
    device = Device(port, "boiler-7", username, password)
    assert not device.connect().is_failure, device.connack
    connected_at = time.monotonic()
    page.get_by_role("link", name="I have copied it: go to the device").click()
    expect(page.get_by_role("heading", name=re.compile("Device boiler-7"))).to_be_visible()
    assert password not in page.content()
    page.goto(console_path(plant, "devices"))

    def shown_online():
        page.reload()
        return _row(page, "boiler-7").get_by_text("online", exact=True).count() == 1

    _until(shown_online, 10, "the list to show boiler-7 online")
    assert time.monotonic() - connected_at < 12
    row = _row(page, "boiler-7")
    expect(row).to_contain_text("127.0.0.1:")
    expect(row).to_contain_text("thermo-v2")
    expect(row).to_contain_text("plant-a")
    page.check("online")
    # The filters the API offers: offline hides it, online and its tag show it.
    page.get_by_label("Connection").select_option("Offline")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No device matches this filter.")).to_be_visible()
    page.get_by_label("Connection").select_option("Online")
    page.get_by_label("Tags").fill("floor-1")
    page.get_by_role("button", name="Filter").click()
    expect(_row(page, "boiler-7")).to_have_count(1)

    # 3. The shadow editor: desired reaches the device as a delta on its topic.
    device.wait_served()
    _row(page, "boiler-7").get_by_role("link", name="boiler-7").click()
    expect(page.get_by_text("No shadow yet")).to_be_visible()
    stale = site.page(org.owner, name="other-tab")  # a second tab, opened before the change below
    stale.goto(console_path(plant, "device/boiler-7"))
    page.get_by_label("Desired state (JSON)").fill('{"setpoint": 21.5, "mode": "eco"}')
    page.get_by_role("button", name="Save desired state").click()
    expect(page.get_by_role("status")).to_contain_text("the shadow is at version 1")
    delta, _ = device.wait_for("update/delta", lambda body: body.get("state", {}).get("setpoint") == 21.5)
    assert delta["state"] == {"setpoint": 21.5, "mode": "eco"} and delta["version"] == 1
    expect(page.locator("#shadow-version")).to_have_text("1")
    expect(page.locator("#shadow-delta")).to_contain_text('"setpoint": 21.5')
    # The device reports part of it: the delta the page shows shrinks to what is left.
    device.update({"state": {"reported": {"setpoint": 21.5}}})
    device.wait_for("update/accepted", lambda body: "reported" in body.get("state", {}))
    page.reload()
    expect(page.locator("#shadow-reported")).to_contain_text('"setpoint": 21.5')
    expect(page.locator("#shadow-delta")).not_to_contain_text("setpoint")
    expect(page.locator("#shadow-delta")).to_contain_text('"mode": "eco"')
    page.check("shadow")

    # 4. The other tab still holds the shadow as it was before both changes: its save is refused with the conflict
    # and the current document, and what was typed is kept.
    stale.get_by_label("Desired state (JSON)").fill('{"mode": "boost"}')
    stale.get_by_role("button", name="Save desired state").click()
    expect(stale.get_by_role("alert").first).to_contain_text("Version conflict")
    expect(stale.locator("#shadow-desired")).to_contain_text('"mode": "eco"')
    expect(stale.get_by_label("Desired state (JSON)")).to_have_value('{"mode": "boost"}')
    stale.check("conflict")
    assert not [b for b in device.messages("update/delta") if b.get("state", {}).get("mode") == "boost"]

    # 5. Disabling disconnects the device and the page says so.
    page.get_by_role("button", name="Disable device").click()
    expect(page.get_by_role("status")).to_contain_text("boiler-7 is disabled")
    expect(page.get_by_role("heading", name=re.compile("Device boiler-7"))).to_contain_text("disabled")
    expect(page.get_by_role("button", name="Enable device")).to_be_visible()
    assert device.disconnected.wait(30), "the disabled device is still connected"
    page.check("disabled")
    device.close()


def test_customer_imports_devices_and_sees_each_bad_row_when_the_file_has_one(site):
    from iot.models import Device as DeviceRow

    org = make_organization(name="Fleet")
    plant = premium_deployment(org)
    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant, "devices"))
    page.get_by_role("link", name="Import from CSV").click()
    expect(page.get_by_role("heading", name="The file's format")).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile("Download a template")).click()
    assert download.value.suggested_filename == "devices-template.csv"
    page.check("import-form")

    bad = b"device_id,name,tags\nline-1,One,plant-a\nno good,Two,\nline-3,Three,\n"
    page.get_by_label("CSV file").set_input_files(files=[{"name": "fleet.csv", "mimeType": "text/csv", "buffer": bad}])
    page.get_by_role("button", name="Import devices").click()
    report = page.get_by_role("region", name=re.compile("Nothing was imported"))
    expect(report).to_contain_text("fleet.csv")
    expect(report.get_by_role("row").filter(has_text="device_id")).to_contain_text("3")
    page.check("import-refused")
    assert not DeviceRow.objects.filter(deployment=plant).exists()
    page.goto(console_path(plant, "devices"))
    expect(page.get_by_text("No device is registered yet.")).to_be_visible()

    # A file over the body limit is refused beside the field as soon as it is chosen, and nothing is sent: the server
    # would answer 413 before any form could say so.
    from django.conf import settings

    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    huge = b"device_id\n" + b"unit-x\n" * (limit // 7 + 1)
    page.get_by_role("link", name="Import from CSV").click()
    field = page.get_by_label("CSV file")
    field.set_input_files(files=[{"name": "huge.csv", "mimeType": "text/csv", "buffer": huge}])
    expect(field).to_have_attribute("aria-invalid", "true")
    refusal = page.locator(".field .errorlist")
    expect(refusal).to_have_text(f"The file is {len(huge):,} bytes; the limit is {limit:,} bytes.")
    posts = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.get_by_role("button", name="Import devices").click()
    expect(field).to_be_focused()
    page.wait_for_timeout(300)
    assert posts == [] and page.url.endswith("/devices/import")
    page.check("import-too-large")

    good = b"device_id,name,tags\n" + b"".join(b"unit-%03d,Unit %d,plant-b\n" % (i, i) for i in range(60))
    page.get_by_label("CSV file").set_input_files(files=[{"name": "fleet.csv", "mimeType": "text/csv", "buffer": good}])
    expect(refusal).to_have_count(0)
    expect(field).not_to_have_attribute("aria-invalid", "true")
    page.get_by_role("button", name="Import devices").click()
    expect(page.get_by_role("heading", name="60 devices imported")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("they will not be shown again")
    credentials = page.get_by_label("Credentials (CSV: device_id, username, password)").input_value()
    assert len(credentials.splitlines()) == 61 and credentials.splitlines()[1].startswith("unit-000,$device-")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download credentials.csv").click()
    assert download.value.suggested_filename == f"{plant.public_id}-credentials.csv"
    with open(download.value.path(), encoding="utf-8") as saved:
        assert saved.read() == credentials + "\n"
    page.check("imported")

    # Thousands are paged on the server: the list shows a page and a way on.
    page.get_by_role("link", name="I have copied them: all devices").click()
    expect(page.get_by_role("heading", name="60 devices")).to_be_visible()
    expect(page.get_by_role("link", name="unit-049", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="unit-050", exact=True)).to_have_count(0)
    page.get_by_role("link", name="Next devices").click()
    expect(page.get_by_role("link", name="unit-059", exact=True)).to_be_visible()
    page.check("second-page")

    # A group, then a device put in it: the list filters by it.
    page.get_by_label("Group name").fill("boilers")
    page.get_by_label("Description", exact=True).fill("Boiler room")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_role("status")).to_contain_text("Group boilers created")
    page.get_by_role("link", name="unit-007", exact=True).click()
    page.get_by_role("link", name="Edit…").click()
    page.get_by_label("Name", exact=True).fill("Unit seven\u0007")
    page.get_by_role("checkbox", name="boilers").check()
    page.get_by_role("button", name="Save device").click()
    name = page.get_by_label("Name", exact=True)
    expect(name).to_have_attribute("aria-invalid", "true")
    expect(name).to_have_accessible_description(re.compile("control characters"))
    page.check("edit-refused")
    name.fill("Unit seven")
    page.get_by_role("button", name="Save device").click()
    expect(page.get_by_role("status")).to_contain_text("unit-007 saved")
    page.goto(console_path(plant, "devices"))
    page.get_by_role("link", name="Devices of group boilers").click()
    expect(page.get_by_role("heading", name="1 device matches this filter")).to_be_visible()
    expect(page.get_by_role("link", name="unit-007", exact=True)).to_be_visible()
    page.check("group-filter")

    # New credentials and delete, each after a confirmation; the group goes, its device stays.
    page.get_by_role("link", name="unit-007", exact=True).click()
    page.get_by_role("link", name="New credentials…").click()
    page.check("rotate-confirm")
    page.get_by_role("button", name="Issue new credentials").click()
    expect(page.get_by_role("alert")).to_contain_text("it will not be shown again")
    assert page.locator("#device-username").inner_text().strip() != credentials.splitlines()[8].split(",")[1]
    page.check("rotated")
    page.get_by_role("link", name="I have copied it: go to the device").click()
    page.get_by_role("link", name="Delete…").click()
    expect(page.get_by_role("heading", name="Delete device unit-007?")).to_be_visible()
    page.check("delete-confirm")
    page.get_by_role("button", name="Delete unit-007").click()
    expect(page.get_by_role("status")).to_contain_text("Device unit-007 deleted")
    expect(page.get_by_role("heading", name="59 devices")).to_be_visible()
    page.get_by_role("link", name="Delete group boilers…").click()
    page.check("group-delete-confirm")
    page.get_by_role("button", name="Delete group boilers").click()
    expect(page.get_by_role("status")).to_contain_text("Group boilers deleted")
    expect(page.get_by_text("No group yet.")).to_be_visible()


def test_read_only_role_sees_the_devices_without_any_form_when_browsing(site):
    from iot import services

    org = make_organization(name="Watchers")
    plant = premium_deployment(org)
    services.device_create(deployment=plant, actor=None, device_id="sensor-1", tags=["plant-a"])
    auditor, _ = org.add_member(roles=["auditor"])
    page = site.page(auditor, name="auditor")
    page.goto(console_path(plant, "devices"))
    expect(page.get_by_role("link", name="sensor-1", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Register a device")).to_have_count(0)
    expect(page.get_by_text("Your role can look at this deployment's devices but not change them.")).to_be_visible()
    page.get_by_role("link", name="sensor-1", exact=True).click()
    expect(page.get_by_role("heading", name="Shadow")).to_be_visible()
    expect(page.get_by_role("button", name="Save desired state")).to_have_count(0)
    expect(page.get_by_role("button", name="Disable device")).to_have_count(0)
    page.check("read-only")


def test_customer_registers_a_certificate_device_downloads_its_files_and_it_comes_online_when_following_the_tab(
    site,
    celery_worker,
    agents,  # noqa: F811
):
    import ssl

    from deployments import tls_services

    org = make_organization(name="Cameras")
    plant = _converged(premium_deployment(org, running=False))
    agents()

    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant, "devices"))
    page.get_by_role("link", name="Register a device").click()
    page.get_by_label("Device id").fill("cam-9")
    page.get_by_label("X.509 certificate").check()
    page.check("register-x509-form")
    page.get_by_role("button", name="Register device").click()
    expect(page.get_by_role("heading", name=re.compile("Device registered: cam-9"))).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("the key will not be shown again")
    expect(page.get_by_text("password", exact=True)).to_have_count(0)
    saved = {}
    for name in ("cam-9.crt", "cam-9.key", f"{plant.public_id}-device-ca.crt"):
        with page.expect_download() as download:
            page.get_by_role("link", name=f"Download {name}").click()
        assert download.value.suggested_filename == name
        saved[name] = download.value.path()
    with open(saved["cam-9.key"], encoding="ascii") as key:
        assert key.read() == page.get_by_label("Private key (PEM)").input_value().strip() + "\n"
    page.check("certificate-once")

    # The broker takes it up on its certificate port; a paho device presents the downloaded files and is online.
    plant = _converged(plant)
    port = plant.endpoints["ports"]["mqtts_x509"]
    context = ssl.create_default_context(cadata=tls_services.certificate_authority().certificate_pem)
    context.load_cert_chain(str(saved["cam-9.crt"]), str(saved["cam-9.key"]))
    device = Device(port, "cam-9", tls=context)
    assert not device.connect().is_failure, device.connack
    page.goto(console_path(plant, "devices"))

    def shown_online():
        page.reload()
        return _row(page, "cam-9").get_by_text("online", exact=True).count() == 1

    _until(shown_online, 15, "the list to show cam-9 online")
    _row(page, "cam-9").get_by_role("link", name="cam-9").click()
    expect(page.get_by_text("X.509 certificate")).to_be_visible()
    page.check("certificate-device")
    device.close()
