"""The Devices tab of a Premium deployment through Django's test client, on the real services: roles (read-only roles
get no forms and their crafted writes are 403 and change nothing), another organization's deployment or device is a
404, bad input is a message beside its field and never a 500, and a non-Premium deployment has no such tab."""

import gzip
import html
import re

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from iot import services as iot_services
from iot.models import Device, DeviceGroup, OutboxMessage, Shadow
from tests.console.helpers import console_path, deployment
from tests.iot.conftest import premium_deployment

pytestmark = pytest.mark.django_db


def _post(client, path, data=None, **extra):
    return client.post(path, data or {}, **extra)


def _register(plant, device_id, **extra):
    device, credentials, _operation = iot_services.device_create(
        deployment=plant, actor=None, device_id=device_id, **extra
    )
    return device, credentials


def _errors_of(response, field):
    """The messages Django renders beside `field` (its `<id>_error` list)."""
    body = response.content.decode()
    found = re.search(rf'<ul class="errorlist" id="id_{field}_error">(.*?)</ul>', body, re.S)
    return re.sub(r"<[^>]+>", " ", found.group(1)) if found else ""


@pytest.fixture
def plant(owner_org):
    return premium_deployment(owner_org)


@pytest.fixture
def owner(client, owner_org):
    client.force_login(owner_org.owner)
    return client


# -- the tab and its URLs exist only for Premium -------------------------------------------------------------------


def test_devices_tab_is_shown_when_the_deployment_is_premium(owner, plant):
    page = owner.get(console_path(plant))
    assert page.status_code == 200
    assert re.search(r'href="[^"]+/devices">Devices</a>', page.content.decode())


def test_devices_tab_is_absent_and_its_urls_404_when_the_deployment_is_not_premium(owner, owner_org, plant):
    dedicated = deployment(owner_org.default_project, name="plain")
    page = owner.get(console_path(dedicated))
    assert page.status_code == 200
    assert ">Devices</a>" not in page.content.decode()
    for path in ("devices", "devices/new", "devices/import", "devices/import/template.csv", "device/anything"):
        assert owner.get(console_path(dedicated, path)).status_code == 404, path
    assert _post(owner, console_path(dedicated, "devices/new"), {"device_id": "x"}).status_code == 404
    assert not Device.objects.exists()


# -- the list ---------------------------------------------------------------------------------------------------------


def test_list_shows_devices_with_their_state_and_filters_as_the_api_when_filtered(owner, plant):
    _register(plant, "sensor-1", name="Boiler", product="thermo", tags=["plant-a", "floor-1"])
    _register(plant, "sensor-2", product="valve", tags=["plant-a"])
    Device.objects.filter(device_id="sensor-1").update(
        online=True, connected_at=timezone.now(), client_address="203.0.113.7:50412"
    )
    body = owner.get(console_path(plant, "devices")).content.decode()
    assert "2 devices" in body and "sensor-1" in body and "sensor-2" in body
    assert "203.0.113.7:50412" in body and "online" in body and "offline" in body

    # Disabled while still connected: the agent is closing its connection (the broker's event is not in yet).
    Device.objects.filter(device_id="sensor-1").update(enabled=False)
    body = owner.get(console_path(plant, "devices")).content.decode()
    assert "disconnecting" in body
    detail = owner.get(console_path(plant, "device/sensor-1")).content.decode()
    assert "disconnecting" in detail and ">online<" not in detail
    Device.objects.filter(device_id="sensor-1").update(enabled=True)

    def listed(query):
        response = owner.get(console_path(plant, "devices") + query)
        assert response.status_code == 200, response.content[:400]
        return set(re.findall(r"<code>(sensor-\d)</code></a>", response.content.decode()))

    assert listed("?online=true") == {"sensor-1"}
    assert listed("?online=false") == {"sensor-2"}
    assert listed("?product=valve") == {"sensor-2"}
    assert listed("?tag=plant-a,floor-1") == {"sensor-1"}
    assert listed("?tag=plant-a") == {"sensor-1", "sensor-2"}
    assert listed("?enabled=false") == set()


def test_list_pages_through_thousands_by_device_id_when_there_are_more_than_a_page(owner, plant):
    rows = "device_id\n" + "".join(f"dev-{i:04d}\n" for i in range(120))
    iot_services.devices_import(deployment=plant, actor=None, data=rows.encode())
    first = owner.get(console_path(plant, "devices")).content.decode()
    assert "120 devices" in first
    shown = re.findall(r"<code>(dev-\d+)</code></a>", first)
    assert shown == [f"dev-{i:04d}" for i in range(50)]
    following = re.search(r'href="(\?after=[^"]+)" rel="next"', first).group(1)
    second = owner.get(console_path(plant, "devices") + following.replace("&amp;", "&")).content.decode()
    assert re.findall(r"<code>(dev-\d+)</code></a>", second)[0] == "dev-0050"
    back = re.search(r'href="(\?before=[^"]+)" rel="prev"', second).group(1)
    again = owner.get(console_path(plant, "devices") + back.replace("&amp;", "&")).content.decode()
    assert re.findall(r"<code>(dev-\d+)</code></a>", again) == shown


@pytest.mark.slow
def test_list_reads_one_page_of_ten_thousand_in_a_fixed_number_of_queries_when_filtered(
    owner, plant, django_assert_max_num_queries
):
    rows = "device_id,tags\n" + "".join(f"dev-{i:05d},{'even' if i % 2 == 0 else 'odd'}\n" for i in range(10_000))
    iot_services.devices_import(deployment=plant, actor=None, data=rows.encode())
    with django_assert_max_num_queries(20):
        response = owner.get(console_path(plant, "devices") + "?tag=odd")
    body = response.content.decode()
    assert "5000 devices match this filter" in body
    shown = re.findall(r"<code>(dev-\d+)</code></a>", body)
    assert shown == [f"dev-{i:05d}" for i in range(1, 100, 2)]
    assert len(body) < 200_000  # a page, not ten thousand rows


@pytest.mark.parametrize(
    "query",
    ["?tag=%00", "?product=a%00b", "?online=maybe", "?after=%00", "?before=a/b", "?group=nope", "?tag=" + "x" * 5000],
)
def test_list_answers_a_message_not_a_500_when_the_filter_is_bad(owner, plant, query):
    response = owner.get(console_path(plant, "devices") + query)
    assert response.status_code in (200, 400), response.status_code
    assert "Devices" in response.content.decode()


# -- register -------------------------------------------------------------------------------------------------------


def test_registering_shows_the_credentials_once_and_audits_when_the_form_is_valid(owner, plant):
    response = _post(
        owner,
        console_path(plant, "devices/new"),
        {
            "device_id": "sensor-0017",
            "name": "Boiler room",
            "product": "thermo-v2",
            "tags": "plant-a, floor-1",
            "attributes": '{"firmware": "1.4.2"}',
            "enabled": "on",
        },
    )
    assert response.status_code == 201, response.content[:600]
    body = response.content.decode()
    assert "it will not be shown again" in body
    device = Device.objects.get(device_id="sensor-0017")
    password = re.search(r'id="device-password">([^<]+)<', body).group(1)
    assert device.username in body and len(password) >= 24
    assert device.tags == ["plant-a", "floor-1"] and device.attributes == {"firmware": "1.4.2"}
    assert AuditEvent.objects.filter(action="device.create", target_id=device.public_id).exists()
    # The device's page never shows the password again.
    detail = owner.get(console_path(plant, "device/sensor-0017")).content.decode()
    assert password not in detail and device.username in detail


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"device_id": "bad id!"}, "device_id", "1 to 128 characters"),
        ({"device_id": "x" * 129}, "device_id", "128"),
        ({"device_id": ""}, "device_id", "required"),
        ({"device_id": "ok", "attributes": "[1, 2]"}, "attributes", "JSON object"),
        ({"device_id": "ok", "attributes": "{not json"}, "attributes", "not valid JSON"),
        ({"device_id": "ok", "attributes": '{"blob": "' + "x" * 9000 + '"}'}, "attributes", "8192 bytes"),
        ({"device_id": "ok", "name": "line\nbreak"}, "name", "control"),
        ({"device_id": "ok", "name": "bell\x07"}, "name", "control"),
        ({"device_id": "ok", "product": "tab\there"}, "product", "control"),
        ({"device_id": "ok", "tags": "good bad\x1b[31m"}, "tags", ""),
        ({"device_id": "ok", "tags": "semi;colon"}, "tags", "Tag"),
        ({"device_id": "ok", "tags": "a\nb"}, "tags", "control"),
        ({"device_id": "ok", "tags": "a\tb"}, "tags", "control"),
        ({"device_id": "nul\x00"}, "device_id", ""),
        ({"device_id": "line\n"}, "device_id", "control"),
    ],
)
def test_register_shows_the_apis_message_beside_the_field_when_input_is_bad(owner, plant, data, field, message):
    response = _post(owner, console_path(plant, "devices/new"), data)
    assert response.status_code == 400, response.content[:400]
    beside = _errors_of(response, field)
    assert beside.strip(), response.content.decode()[:3000]
    assert message in beside, beside
    assert not Device.objects.exists()


def test_register_says_beside_the_id_when_the_id_is_taken(owner, plant):
    _register(plant, "sensor-1")
    response = _post(owner, console_path(plant, "devices/new"), {"device_id": "sensor-1"})
    assert response.status_code == 409
    assert "already registered" in _errors_of(response, "device_id")
    assert Device.objects.count() == 1


# -- one device -----------------------------------------------------------------------------------------------------


def test_shadow_editor_saves_desired_and_queues_the_delta_when_at_the_current_version(owner, plant):
    device, _ = _register(plant, "sensor-1")
    page = owner.get(console_path(plant, "device/sensor-1")).content.decode()
    assert "No shadow yet" in page
    saved = _post(owner, console_path(plant, "device/sensor-1/shadow"), {"desired": '{"setpoint": 21.5}'})
    assert saved.status_code == 302, saved.content[:500]
    shadow = Shadow.objects.get(device=device)
    assert shadow.desired == {"setpoint": 21.5} and shadow.version == 1
    assert OutboxMessage.objects.filter(topic="devices/sensor-1/shadow/update/delta").exists()
    page = html.unescape(owner.get(console_path(plant, "device/sensor-1")).content.decode())
    assert 'id="shadow-version">1<' in page and '"setpoint": 21.5' in page
    # null removes a field, as in the API.
    _post(
        owner, console_path(plant, "device/sensor-1/shadow"), {"desired": '{"setpoint": null, "fan": 2}', "version": 1}
    )
    shadow.refresh_from_db()
    assert shadow.desired == {"fan": 2} and shadow.version == 2


def test_shadow_editor_shows_the_conflict_and_the_current_document_when_the_version_is_stale(owner, plant):
    device, _ = _register(plant, "sensor-1")
    iot_services.shadow_update_desired(device=device, actor=None, body={"state": {"desired": {"mode": "eco"}}})
    iot_services.shadow_update_desired(device=device, actor=None, body={"state": {"desired": {"mode": "boost"}}})
    response = _post(owner, console_path(plant, "device/sensor-1/shadow"), {"desired": '{"mode": "off"}', "version": 1})
    assert response.status_code == 409
    body = html.unescape(response.content.decode())
    assert "Version conflict: the shadow is at version 2, not 1" in body
    assert '"mode": "boost"' in body  # the current document
    assert 'name="version" value="2"' in body and '{"mode": "off"}</textarea>' in body  # what they typed is kept
    assert Shadow.objects.get(device=device).desired == {"mode": "boost"}


@pytest.mark.parametrize(
    ("desired", "message"),
    [
        ("[1, 2]", "must be a JSON object or null"),
        ('"text"', "must be a JSON object or null"),
        ("{nope", "not valid JSON"),
        ("", "Type a JSON object"),
        ('{"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}', "nests more than 6 levels"),
        ('{"blob": "' + "x" * 9000 + '"}', "larger than 8192 bytes"),
        ('{"n": NaN}', "not valid JSON"),
    ],
)
def test_shadow_editor_shows_the_error_beside_desired_when_the_document_is_bad(owner, plant, desired, message):
    device, _ = _register(plant, "sensor-1")
    response = _post(owner, console_path(plant, "device/sensor-1/shadow"), {"desired": desired})
    assert response.status_code == 400, response.content[:400]
    assert message in _errors_of(response, "desired"), _errors_of(response, "desired")
    assert Shadow.objects.get(device=device).version == 0


def test_disabling_uses_the_service_kicks_the_device_and_audits_when_the_owner_confirms(owner, plant):
    _register(plant, "sensor-1")
    response = _post(owner, console_path(plant, "device/sensor-1/enabled"), {"enabled": "false"})
    assert response.status_code == 302
    assert not Device.objects.get(device_id="sensor-1").enabled
    assert OutboxMessage.objects.filter(kind="kick", client_id="sensor-1").exists()
    assert AuditEvent.objects.filter(action="device.update", summary__enabled=False).exists()
    page = owner.get(console_path(plant, "device/sensor-1")).content.decode()
    assert "Enable device" in page and "is disabled" in page
    assert _post(owner, console_path(plant, "device/sensor-1/enabled"), {"enabled": "maybe"}).status_code == 302
    assert not Device.objects.get(device_id="sensor-1").enabled


def test_delete_asks_first_and_then_removes_the_device_when_confirmed(owner, plant):
    _register(plant, "sensor-1")
    confirm = owner.get(console_path(plant, "device/sensor-1/delete"))
    assert confirm.status_code == 200 and "cannot be undone" in confirm.content.decode()
    assert Device.objects.filter(device_id="sensor-1").exists()
    assert _post(owner, console_path(plant, "device/sensor-1/delete")).status_code == 302
    assert not Device.objects.filter(device_id="sensor-1").exists()
    assert AuditEvent.objects.filter(action="device.delete").exists()
    assert owner.get(console_path(plant, "device/sensor-1")).status_code == 404


def test_new_credentials_are_shown_once_and_replace_the_old_when_issued(owner, plant):
    device, old = _register(plant, "sensor-1")
    response = _post(owner, console_path(plant, "device/sensor-1/credentials"))
    assert response.status_code == 201
    device.refresh_from_db()
    assert device.username != old.username and device.username in response.content.decode()


def test_editing_changes_description_tags_and_groups_through_the_service_when_valid(owner, plant):
    iot_services.device_group_create(deployment=plant, actor=None, name="boilers")
    _register(plant, "sensor-1", name="Old", tags=["a"])
    form = owner.get(console_path(plant, "device/sensor-1/edit")).content.decode()
    assert 'value="Old"' in form and "boilers" in form
    bad = _post(owner, console_path(plant, "device/sensor-1/edit"), {"name": "new\x1bname"})
    assert bad.status_code == 400 and "control" in _errors_of(bad, "name")
    bad = _post(owner, console_path(plant, "device/sensor-1/edit"), {"name": "ok", "attributes": "[]"})
    assert bad.status_code == 400 and "JSON object" in _errors_of(bad, "attributes")
    assert Device.objects.get(device_id="sensor-1").name == "Old"
    saved = _post(
        owner,
        console_path(plant, "device/sensor-1/edit"),
        {"name": "New", "product": "p", "tags": "b c", "attributes": '{"k": 1}', "groups": ["boilers"]},
    )
    assert saved.status_code == 302, saved.content[:500]
    device = Device.objects.get(device_id="sensor-1")
    assert (device.name, device.product, device.tags, device.attributes) == ("New", "p", ["b", "c"], {"k": 1})
    assert list(device.groups.values_list("name", flat=True)) == ["boilers"]
    assert AuditEvent.objects.filter(action="device.update", target_id=device.public_id).exists()
    listing = owner.get(console_path(plant, "devices") + "?group=boilers").content.decode()
    assert "sensor-1" in listing
    assert DeviceGroup.objects.count() == 1


def test_groups_are_created_listed_and_deleted_with_their_devices_kept_when_managed(owner, plant):
    created = _post(owner, console_path(plant, "device-groups"), {"group-name": "boilers", "group-description": "B"})
    assert created.status_code == 302
    again = _post(owner, console_path(plant, "device-groups"), {"group-name": "boilers"})
    assert again.status_code == 409 and "already exists" in _errors_of(again, "group-name")
    bad = _post(owner, console_path(plant, "device-groups"), {"group-name": "no spaces"})
    assert bad.status_code == 400 and "1 to 64" in _errors_of(bad, "group-name")
    _register(plant, "sensor-1", groups=["boilers"])
    listing = owner.get(console_path(plant, "devices")).content.decode()
    assert "<code>boilers</code>" in listing
    confirm = owner.get(console_path(plant, "device-groups/boilers/delete"))
    assert confirm.status_code == 200 and "1 device stays" in confirm.content.decode()
    assert _post(owner, console_path(plant, "device-groups/boilers/delete")).status_code == 302
    assert not DeviceGroup.objects.exists() and Device.objects.filter(device_id="sensor-1").exists()
    assert owner.get(console_path(plant, "device-groups/boilers/delete")).status_code == 404


# -- import ---------------------------------------------------------------------------------------------------------


def _upload(client, plant, content: bytes, name="devices.csv"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        console_path(plant, "devices/import"), {"file": SimpleUploadedFile(name, content, content_type="text/csv")}
    )


def test_import_lists_every_bad_row_and_imports_nothing_when_any_row_fails(owner, plant):
    _register(plant, "taken")
    content = b"device_id,name,attributes\nok-1,One,\nbad id,Two,\nok-3,,\nok-2,,[1]\n"
    response = _upload(owner, plant, content)
    assert response.status_code == 400
    body = response.content.decode()
    assert "Nothing was imported" in body
    rows = re.findall(r"<tr><td>(\d+)</td><td>(?:<code>)?([\w—]+)", body)
    assert rows == [("3", "device_id"), ("5", "attributes")], rows
    # What depends on the registry is checked once every row reads well, as the API does.
    response = _upload(owner, plant, b"device_id\nok-1\ntaken\n")
    assert response.status_code == 400
    assert re.findall(r"<tr><td>(\d+)</td>", response.content.decode()) == ["3"]
    assert "already registered" in response.content.decode()
    assert Device.objects.count() == 1


def test_import_shows_the_count_and_every_credential_once_when_all_rows_are_good(owner, plant):
    content = b"device_id,tags\n" + b"".join(b"dev-%d,plant-a\n" % i for i in range(25))
    response = _upload(owner, plant, gzip.compress(content), name="devices.csv.gz")
    assert response.status_code == 201, response.content[:500]
    body = response.content.decode()
    assert "25 devices imported" in body and "will not be shown again" in body
    assert Device.objects.filter(deployment=plant).count() == 25
    assert body.count("$device-") == 25


def test_double_submitted_import_shows_the_first_imports_credentials_when_the_form_key_repeats(owner, plant):
    # A double click: the browser shows the second answer. Answering it "already registered" for every row would
    # lose the credentials of the devices the first submit imported, which are shown nowhere else.
    from django.core.files.uploadedfile import SimpleUploadedFile

    content = b"device_id\ndev-1\ndev-2\n"

    def submit():
        return owner.post(
            console_path(plant, "devices/import"),
            {"file": SimpleUploadedFile("devices.csv", content, content_type="text/csv"), "form_key": "c" * 32},
        )

    first = submit()
    assert first.status_code == 201, first.content[:500]
    second = submit()
    assert second.status_code == 201, second.content[:500]
    assert second.content == first.content and "2 devices imported" in second.content.decode()
    assert Device.objects.filter(deployment=plant).count() == 2
    assert AuditEvent.objects.filter(action="device.import").count() == 1


def test_double_submitted_register_shows_the_first_credentials_when_the_form_key_repeats(owner, plant):
    data = {"device_id": "sensor-0018", "form_key": "d" * 32}
    first = _post(owner, console_path(plant, "devices/new"), data)
    assert first.status_code == 201, first.content[:500]
    second = _post(owner, console_path(plant, "devices/new"), data)
    assert second.status_code == 201, second.content[:500]
    password = re.search(r'id="device-password">([^<]+)<', first.content.decode()).group(1)
    assert password in second.content.decode()
    assert Device.objects.filter(deployment=plant).count() == 1
    assert AuditEvent.objects.filter(action="device.create").count() == 1


@pytest.mark.parametrize(
    "content", [b"", b"\xff\xfe not utf-8", b"name\nno-id-column\n", b"device_id\n" + b"a\x00b\n", b"\x1f\x8bgarbage"]
)
def test_import_explains_and_never_500s_when_the_file_is_bad(owner, plant, content):
    response = _upload(owner, plant, content)
    assert response.status_code == 400, response.content[:300]
    assert not Device.objects.exists()


def test_import_template_names_the_columns_of_the_api_when_downloaded(owner, plant):
    from iot import csv_import

    response = owner.get(console_path(plant, "devices/import/template.csv"))
    assert response.status_code == 200
    header = response.content.decode().splitlines()[0]
    assert tuple(header.split(",")) == csv_import.COLUMNS
    # The template itself imports.
    rows = csv_import.parse(response.content)
    assert [r.device_id for r in rows] == ["sensor-0001", "sensor-0002"]


# -- roles and tenancy ----------------------------------------------------------------------------------------------

WRITES = [
    ("devices/new", {"device_id": "crafted"}),
    ("devices/import", {}),
    ("device/sensor-1/shadow", {"desired": '{"x": 1}'}),
    ("device/sensor-1/enabled", {"enabled": "false"}),
    ("device/sensor-1/credentials", {}),
    ("device/sensor-1/delete", {}),
    ("device/sensor-1/edit", {"name": "crafted"}),
    ("device-groups", {"group-name": "crafted"}),
    ("device-groups/g1/delete", {}),
]


@pytest.mark.parametrize(("roles", "grant"), [(["auditor"], None)])
def test_read_only_role_sees_devices_without_forms_and_its_writes_are_403_when_crafted(
    client, owner_org, plant, roles, grant
):
    iot_services.device_group_create(deployment=plant, actor=None, name="g1")
    device, _ = _register(plant, "sensor-1")
    user, _ = owner_org.add_member(roles=roles)
    client.force_login(user)
    listing = client.get(console_path(plant, "devices"))
    assert listing.status_code == 200
    body = listing.content.decode()
    assert "sensor-1" in body and "Register a device" not in body and "can look at" in body
    assert "Create group" not in body and "Delete group" not in body
    detail = client.get(console_path(plant, "device/sensor-1")).content.decode()
    assert "Save desired state" not in detail and "Disable device" not in detail and "Delete…" not in detail
    for path in ("devices/new", "devices/import", "device/sensor-1/delete", "device/sensor-1/credentials"):
        assert client.get(console_path(plant, path)).status_code == 403, path
    for path, data in WRITES:
        assert _post(client, console_path(plant, path), data).status_code == 403, path
    device.refresh_from_db()
    assert device.enabled and device.name == "" and Device.objects.count() == 1
    assert list(DeviceGroup.objects.values_list("name", flat=True)) == ["g1"]
    assert Shadow.objects.get(device=device).version == 0
    assert not AuditEvent.objects.filter(action__startswith="device.", actor=user).exists()


def test_accountant_without_device_scope_has_no_tab_and_is_refused_when_opening_it(client, owner_org, plant):
    user, _ = owner_org.add_member(roles=["accountant"])
    client.force_login(user)
    page = client.get(console_path(plant))
    assert page.status_code == 200 and ">Devices</a>" not in page.content.decode()
    assert client.get(console_path(plant, "devices")).status_code == 403


@pytest.mark.parametrize("grant", ["project_user", "project_administrator"])
def test_project_roles_may_register_and_edit_when_granted_the_project(client, owner_org, plant, grant):
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, grant)])
    client.force_login(user)
    assert "Register a device" in client.get(console_path(plant, "devices")).content.decode()
    assert _post(client, console_path(plant, "devices/new"), {"device_id": "mine"}).status_code == 201
    assert _post(client, console_path(plant, "device/mine/enabled"), {"enabled": "false"}).status_code == 302
    assert not Device.objects.get(device_id="mine").enabled


def test_project_user_of_another_project_gets_404_when_opening_the_devices(client, owner_org, plant):
    from projects import services as project_services

    other = project_services.project_create(organization=owner_org.organization, actor=None, name="elsewhere")
    user, _ = owner_org.add_member(project_grants=[(other, "project_user")])
    client.force_login(user)
    assert client.get(console_path(plant, "devices")).status_code == 404


def test_another_organizations_deployment_and_device_are_404_when_addressed(client, owner_org, org_factory, plant):
    _register(plant, "sensor-1")
    stranger = org_factory()
    theirs = premium_deployment(stranger, name="theirs")
    _register(theirs, "their-device")
    client.force_login(owner_org.owner)
    assert client.get(console_path(theirs, "devices")).status_code == 404
    assert client.get(console_path(theirs, "device/their-device")).status_code == 404
    # Their device id through our own deployment's URL: not ours, so not found.
    assert client.get(console_path(plant, "device/their-device")).status_code == 404
    iot_services.device_group_create(deployment=theirs, actor=None, name="g1")
    for path, data in WRITES:
        assert _post(client, console_path(theirs, path.replace("sensor-1", "their-device")), data).status_code == 404
    assert DeviceGroup.objects.filter(deployment=theirs).count() == 1
    assert Device.objects.get(device_id="their-device").enabled


def test_anonymous_is_sent_to_sign_in_when_opening_devices(client, plant):
    from django.urls import reverse

    response = client.get(console_path(plant, "devices"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("console:login"))


# -- X.509 certificate devices ----------------------------------------------------------------------------------------


def _textarea(body, element_id):
    found = re.search(rf'<textarea id="{element_id}"[^>]*>(.*?)</textarea>', body, re.S)
    return html.unescape(found.group(1)).strip() + "\n" if found else ""


def test_registering_a_certificate_device_shows_certificate_key_and_ca_once_with_downloads_when_chosen(owner, plant):
    import base64

    from cryptography import x509

    response = _post(
        owner, console_path(plant, "devices/new"), {"device_id": "cam-1", "credential_type": "certificate"}
    )
    assert response.status_code == 201, response.content[:600]
    body = response.content.decode()
    device = Device.objects.get(device_id="cam-1")
    assert device.credential_type == "certificate" and 'id="device-password"' not in body
    certificate = _textarea(body, "device-certificate")
    key = _textarea(body, "device-private-key")
    ca = _textarea(body, "device-ca-certificate")
    issued = x509.load_pem_x509_certificate(certificate.encode())
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.encode()))
    assert issued.subject.rfc4514_string() == f"CN={device.username}"
    assert "BEGIN PRIVATE KEY" in key and "the key will not be shown again" in body
    link = re.search(r'href="data:application/x-pem-file;base64,([^"]+)" download="cam-1.key"', body)
    assert link and base64.b64decode(link.group(1)).decode() == key
    detail = owner.get(console_path(plant, "device/cam-1")).content.decode()
    assert key.splitlines()[1] not in detail and "X.509 certificate" in detail


def test_registering_with_a_csr_certifies_its_key_and_shows_no_key_when_pasted(owner, plant):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.iot.test_certificates import make_csr

    key = ec.generate_private_key(ec.SECP256R1())
    response = _post(
        owner,
        console_path(plant, "devices/new"),
        {"device_id": "cam-2", "credential_type": "certificate", "csr": make_csr(key)},
    )
    assert response.status_code == 201, response.content[:600]
    body = response.content.decode()
    assert 'id="device-private-key"' not in body
    issued = x509.load_pem_x509_certificate(_textarea(body, "device-certificate").encode())
    assert issued.public_key().public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"credential_type": "certificate", "csr": "not a csr"}, "Not PEM"),
        ({"credential_type": "password", "csr": "-----BEGIN CERTIFICATE REQUEST-----"}, "only given with"),
        ({"credential_type": "certificate", "csr": "-----BEGIN CERTIFICATE REQUEST-----\x07"}, "control"),
    ],
)
def test_register_shows_the_csr_message_beside_the_field_when_the_csr_is_bad(owner, plant, data, message):
    response = _post(owner, console_path(plant, "devices/new"), {"device_id": "cam", **data})
    assert response.status_code == 400, response.content[:400]
    beside = _errors_of(response, "csr")
    assert message in beside, response.content.decode()[:3000]
    assert not Device.objects.exists()


def test_new_credentials_of_a_certificate_device_are_a_new_certificate_when_issued(owner, plant):
    device, old = _register(plant, "cam-1", credential_type="certificate")
    response = _post(owner, console_path(plant, "device/cam-1/credentials"))
    assert response.status_code == 201
    body = response.content.decode()
    assert "BEGIN CERTIFICATE" in _textarea(body, "device-certificate")
    assert _textarea(body, "device-certificate") != old.certificate.certificate_pem


def test_an_import_over_the_body_limit_gets_a_page_saying_so_when_the_browser_sends_it_anyway(owner, plant, settings):
    # console.js refuses such a file beside the field; a browser without it still gets the limit in words (a page,
    # not the API's problem+json), and nothing is imported.
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    content = b"device_id\n" + b"unit-x\n" * 1000
    response = owner.post(
        console_path(plant, "devices/import"),
        {"file": SimpleUploadedFile("devices.csv", content, content_type="text/csv")},
        HTTP_ACCEPT="text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    )
    assert response.status_code == 413
    assert response["Content-Type"].startswith("text/html")
    body = html.unescape(response.content.decode())
    length = int(response.wsgi_request.META["CONTENT_LENGTH"])
    assert f"What you sent is {length:,} bytes; the limit is 4,096 bytes." in body
    assert "Too large to send" in body
    assert not Device.objects.filter(deployment=plant).exists()
    api = owner.post(
        f"/api/v1/organizations/{plant.project.organization.public_id}/projects",
        {"name": "x" * 5000},
        content_type="application/json",
        HTTP_ACCEPT="text/html",
    )
    assert api.status_code == 413 and api["Content-Type"] == "application/problem+json"


def test_file_fields_carry_the_body_limit_for_the_page_to_check_when_rendered(owner, plant, settings):
    response = owner.get(console_path(plant, "devices/import"))
    assert f'data-max-bytes="{settings.DATA_UPLOAD_MAX_MEMORY_SIZE}"' in response.content.decode()


@pytest.mark.parametrize("made_by", ["organization", "project"])
def test_a_credentials_page_is_not_replayed_to_a_member_who_lost_the_role_that_made_them_when_resubmitted(
    client, owner_org, plant, made_by
):
    # Within the minutes a double click or a reload is replayed, the member was demoted: the same form posted again
    # answers as the view answers them now (the scope is missing), never the stored page with the password.
    from projects.models import ProjectGrant

    if made_by == "organization":
        user, membership = owner_org.add_member(roles=["administrator"])
    else:  # an auditor (reads every project) who may register devices through a project role
        user, membership = owner_org.add_member(roles=["auditor"], project_grants=[(plant.project, "project_user")])
    client.force_login(user)
    data = {"device_id": "sensor-0020", "form_key": "f" * 32}
    first = _post(client, console_path(plant, "devices/new"), data)
    assert first.status_code == 201, first.content[:500]
    password = re.search(r'id="device-password">([^<]+)<', first.content.decode()).group(1)
    assert "X-Console-Required" not in first  # what the replay checks stays with the record

    again = _post(client, console_path(plant, "devices/new"), data)  # a reload: still allowed, the same page
    assert again.status_code == 201 and password in again.content.decode()

    if made_by == "organization":
        membership.roles = ["auditor"]  # reads devices, may not register them
        membership.save(update_fields=["roles"])
    else:
        ProjectGrant.objects.filter(membership=membership).delete()
    later = _post(client, console_path(plant, "devices/new"), data)

    assert later.status_code == 403, later.content[:300]
    assert password not in later.content.decode()
    assert Device.objects.filter(deployment=plant).count() == 1


def test_a_credentials_page_is_not_replayed_when_the_form_is_submitted_again_minutes_later(owner, plant):
    # A double click or a reload gets the page again; the same form posted long after (by then the member may have
    # lost the role that registered the device) runs the view again, which refuses the taken id.
    from idempotency.models import IdempotencyRecord

    data = {"device_id": "sensor-0019", "form_key": "e" * 32}
    first = _post(owner, console_path(plant, "devices/new"), data)
    assert first.status_code == 201, first.content[:500]
    password = re.search(r'id="device-password">([^<]+)<', first.content.decode()).group(1)
    IdempotencyRecord.objects.update(created_at=timezone.now() - timezone.timedelta(minutes=6))

    later = _post(owner, console_path(plant, "devices/new"), data)

    assert later.status_code != 201 and password not in later.content.decode()
    assert Device.objects.filter(deployment=plant).count() == 1
