"""The device registry, groups, imports and shadows through the REST API: contracts, bad input, tenancy, audit."""

import gzip
import json

import pytest

from tests.iot.conftest import premium_deployment

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"


def fields(response):
    assert response["Content-Type"] == PROBLEM, response.content[:300]
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def test_created_device_answers_201_with_credentials_shown_once_when_posted(client, base, premium):
    from deployments.models import Operation
    from deployments.passwords import verify_mqtt_password
    from iot.models import Device

    response = client.post(
        f"{base}/devices",
        {"device_id": "sensor-1", "name": "Boiler", "product": "thermo", "tags": ["a", "b"], "attributes": {"fw": "1"}},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["device_id"] == "sensor-1" and body["id"].startswith("dev_")
    assert body["enabled"] is True and body["online"] is False
    credentials = body["credentials"]
    assert credentials["username"].startswith("$device-") and len(credentials["password"]) >= 24
    device = Device.objects.get(device_id="sensor-1")
    assert verify_mqtt_password(credentials["password"], _credential(device))
    assert credentials["password"] not in json.dumps(list(Device.objects.values()), default=str)
    operation = Operation.objects.get(public_id=body["operation"])
    assert operation.kind == "configure" and operation.params["change"] == "device.create"
    premium.refresh_from_db()
    assert operation.target_generation == premium.generation
    shown = client.get(f"{base}/devices/sensor-1").json()
    assert "credentials" not in shown and credentials["password"] not in json.dumps(shown)
    assert shown["credential_type"] == "password"
    assert shown["tags"] == ["a", "b"] and shown["attributes"] == {"fw": "1"}


def _credential(device):
    from deployments.drivers.base import MqttCredential

    return MqttCredential(device.username, device.salt_b64, device.hash_b64, device.iterations)


def test_device_create_is_audited_in_the_same_transaction_when_made(client, base, owner_org):
    from audit.models import AuditEvent

    password = client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json").json()["credentials"][
        "password"
    ]
    event = AuditEvent.objects.get(action="device.create")
    assert event.organization == owner_org.organization and event.summary["device_id"] == "sensor-1"
    assert password not in json.dumps(event.summary) and event.summary["credential_type"] == "password"


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"device_id": "has space"}, "device_id"),
        ({"device_id": "slash/not/allowed"}, "device_id"),
        ({"device_id": "plus+"}, "device_id"),
        ({"device_id": "x" * 129}, "device_id"),
        ({"device_id": ""}, "device_id"),
        ({"device_id": 17}, "device_id"),
        ({"device_id": "ok", "tags": ["no spaces"]}, "tags"),
        ({"device_id": "ok", "tags": "a"}, "tags"),
        ({"device_id": "ok", "attributes": [1, 2]}, "attributes"),
        ({"device_id": "ok", "attributes": {"big": "x" * 9000}}, "attributes"),
        ({"device_id": "ok", "attributes": {"nul": "a\u0000b"}}, "attributes"),
        ({"device_id": "ok", "name": "line\nbreak"}, "name"),
        ({"device_id": "ok", "groups": ["missing"]}, "groups"),
        ({"device_id": "ok", "unknown": 1}, "unknown"),
    ],
)
def test_bad_device_is_refused_with_a_field_error_and_nothing_stored_when_posted(client, base, payload, field):
    from audit.models import AuditEvent
    from iot.models import Device

    before = AuditEvent.objects.count()
    response = client.post(f"{base}/devices", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in fields(response)
    assert not Device.objects.exists()
    assert AuditEvent.objects.count() == before


def test_duplicate_device_id_answers_409_and_keeps_the_first_when_posted_twice(client, base):
    from iot.models import Device

    first = client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json").json()
    again = client.post(f"{base}/devices", {"device_id": "sensor-1", "name": "other"}, format="json")
    assert again.status_code == 409 and again["Content-Type"] == PROBLEM
    assert "already registered" in again.json()["detail"]
    device = Device.objects.get()
    assert device.username == first["credentials"]["username"] and device.name == ""


def test_devices_answer_409_when_the_deployment_is_not_premium(client, owner_org):
    from deployments import services

    deployment, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="std", plan="dedicated", tier="1k", region="local"
    )
    url = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments/{deployment.public_id}/devices"
    for response in (client.get(url), client.post(url, {"device_id": "a"}, format="json")):
        assert response.status_code == 409
        assert "Premium" in response.json()["detail"]


def test_list_filters_by_tag_product_online_enabled_and_group_when_asked(client, base, premium):
    from iot.models import Device

    client.post(f"{base}/device-groups", {"name": "boilers"}, format="json")
    client.post(
        f"{base}/devices", {"device_id": "a", "tags": ["x", "y"], "product": "p1", "groups": ["boilers"]}, format="json"
    )
    client.post(f"{base}/devices", {"device_id": "b", "tags": ["x"], "product": "p2"}, format="json")
    client.post(f"{base}/devices", {"device_id": "c", "enabled": False}, format="json")
    Device.objects.filter(device_id="b").update(online=True)

    def ids(query):
        response = client.get(f"{base}/devices?{query}")
        assert response.status_code == 200, response.content
        return [d["device_id"] for d in response.json()["results"]]

    assert ids("") == ["a", "b", "c"]
    assert ids("tag=x") == ["a", "b"]
    assert ids("tag=x,y") == ["a"]
    assert ids("product=p2") == ["b"]
    assert ids("online=true") == ["b"]
    assert ids("online=false") == ["a", "c"]
    assert ids("enabled=false") == ["c"]
    assert ids("group=boilers") == ["a"]


def test_disabling_removes_the_broker_user_and_queues_a_disconnect_when_patched(client, base, premium):
    from iot.broker import spec_users
    from iot.models import OutboxMessage

    client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    premium.refresh_from_db()
    assert any(u.confined_to == ("devices/sensor-1/#",) for u in spec_users(premium))
    response = client.patch(f"{base}/devices/sensor-1", {"enabled": False}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["enabled"] is False and body["operation"].startswith("op_")
    premium.refresh_from_db()
    users = spec_users(premium)
    assert [u.username for u in users] == ["$controlplane-agent"]  # the agent alone: full access, not confined
    assert users[0].is_superuser and users[0].confined_to is None
    kick = OutboxMessage.objects.get(kind="kick")
    assert kick.client_id == "sensor-1" and kick.after_generation == premium.generation
    # A description change does not touch the broker.
    renamed = client.patch(f"{base}/devices/sensor-1", {"name": "Boiler"}, format="json").json()
    assert renamed["operation"] is None and renamed["name"] == "Boiler"
    assert client.patch(f"{base}/devices/sensor-1", {"device_id": "other"}, format="json").status_code == 400
    assert client.patch(f"{base}/devices/sensor-1", {"enabled": "maybe"}, format="json").status_code == 400


def test_rotated_credentials_replace_the_old_ones_when_posted(client, base):
    from deployments.passwords import verify_mqtt_password
    from iot.models import Device

    old = client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json").json()["credentials"]
    response = client.post(f"{base}/devices/sensor-1/credentials", format="json")
    assert response.status_code == 201
    new = response.json()["credentials"]
    device = Device.objects.get()
    assert new["username"] != old["username"] and device.username == new["username"]
    assert verify_mqtt_password(new["password"], _credential(device))
    assert not verify_mqtt_password(old["password"], _credential(device))


def test_delete_removes_device_shadow_and_history_when_asked(client, base):
    from iot.models import Device, Shadow, ShadowChange

    client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    client.patch(f"{base}/devices/sensor-1/shadow", {"state": {"desired": {"a": 1}}}, format="json")
    assert client.delete(f"{base}/devices/sensor-1").status_code == 204
    assert not Device.objects.exists() and not Shadow.objects.exists() and not ShadowChange.objects.exists()
    assert client.get(f"{base}/devices/sensor-1").status_code == 404


def test_device_registered_again_under_a_deleted_ones_id_gets_none_of_its_queued_messages_when_deleted(
    client, base, premium
):
    from iot import services

    client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    client.post(f"{base}/devices", {"device_id": "sensor-10"}, format="json")
    client.patch(f"{base}/devices/sensor-1/shadow", {"state": {"desired": {"unlock": True}}}, format="json")
    client.patch(f"{base}/devices/sensor-10/shadow", {"state": {"desired": {"unlock": False}}}, format="json")
    assert client.delete(f"{base}/devices/sensor-1").status_code == 204
    premium.refresh_from_db()
    due = services.outbox_due(deployment_id=premium.pk, observed_generation=premium.generation)
    published = {m.topic.split("/")[1] for m in due if m.kind == "publish"}
    assert published == {"sensor-10"}  # another device's messages stay
    kicks = [m for m in due if m.kind == "kick"]
    assert [m.client_id for m in kicks] == ["sensor-1"]  # the deleted one is still cut off
    services.outbox_done(deployment_id=premium.pk, ids=[m.pk for m in kicks])  # as the agent does
    assert client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json").status_code == 201
    due = services.outbox_due(deployment_id=premium.pk, observed_generation=premium.generation)
    assert {m.topic.split("/")[1] for m in due if m.kind == "publish"} == {"sensor-10"}


def test_registering_again_answers_409_until_the_deleted_devices_disconnect_is_carried_out(client, base, premium):
    from iot import services
    from iot.models import Device

    client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    assert client.delete(f"{base}/devices/sensor-1").status_code == 204
    again = client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    assert again.status_code == 409 and "not yet disconnected it" in again.json()["detail"]
    imported = client.post(f"{base}/device-imports", CSV + "sensor-1,,,,,,\nsensor-2,,,,,,\n", content_type="text/csv")
    assert imported.status_code == 400
    assert [e["field"] for e in imported.json()["errors"]] == ["rows.2.device_id"]
    assert not Device.objects.exists()  # nothing half-imported
    premium.refresh_from_db()
    due = services.outbox_due(deployment_id=premium.pk, observed_generation=premium.generation)
    services.outbox_done(deployment_id=premium.pk, ids=[m.pk for m in due])
    assert client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json").status_code == 201


CSV = "device_id,name,product,tags,attributes,groups,enabled\n"


def test_csv_import_registers_every_device_with_credentials_when_all_rows_are_valid(client, base):
    from iot.models import Device

    client.post(f"{base}/device-groups", {"name": "line-1"}, format="json")
    body = CSV + 'a,Sensor A,thermo,x;y,"{""fw"": ""1.2""}",line-1,true\nb,,,,,,false\n\n'
    response = client.post(f"{base}/device-imports", body, content_type="text/csv")
    assert response.status_code == 201, response.content
    result = response.json()
    assert result["imported"] == 2 and result["operation"].startswith("op_")
    assert [d["device_id"] for d in result["devices"]] == ["a", "b"]
    assert all(d["credentials"]["password"] for d in result["devices"])
    a = Device.objects.get(device_id="a")
    assert a.tags == ["x", "y"] and a.attributes == {"fw": "1.2"} and [g.name for g in a.groups.all()] == ["line-1"]
    assert Device.objects.get(device_id="b").enabled is False


def test_gzip_csv_is_accepted_when_sent_with_content_encoding(client, base):
    rows = "device_id\n" + "".join(f"dev-{i:05d}\n" for i in range(300))
    response = client.post(
        f"{base}/device-imports", gzip.compress(rows.encode()), content_type="text/csv", HTTP_CONTENT_ENCODING="gzip"
    )
    assert response.status_code == 201, response.content
    assert response.json()["imported"] == 300


def test_csv_with_a_bad_row_imports_nothing_and_reports_every_bad_row_when_posted(client, base):
    from audit.models import AuditEvent
    from deployments.models import Operation
    from iot.models import Device

    client.post(f"{base}/devices", {"device_id": "taken"}, format="json")
    before = (Device.objects.count(), Operation.objects.count(), AuditEvent.objects.count())
    body = (
        CSV
        + "good-1,,,,,,\nbad id,,,,,,\ngood-2,,,,{not json},,\ntaken,,,,,,\ngood-1,,,,,,\nx,,,,,nope,\ny,,,,,,maybe\n"
    )
    response = client.post(f"{base}/device-imports", body, content_type="text/csv")
    assert response.status_code == 400, response.content
    errors = fields(response)
    assert set(errors) >= {"rows.3.device_id", "rows.4.attributes", "rows.6.device_id", "rows.8.enabled"}
    assert "line 3" in errors["rows.3.device_id"]
    assert (Device.objects.count(), Operation.objects.count(), AuditEvent.objects.count()) == before
    # The database-side checks run once the file itself is clean, and report every row too.
    second = client.post(
        f"{base}/device-imports", CSV + "ok,,,,,,\ntaken,,,,,,\nz,,,,,nope,\n", content_type="text/csv"
    )
    assert second.status_code == 400
    assert set(fields(second)) == {"rows.3.device_id", "rows.4.groups"}
    assert Device.objects.count() == before[0]


@pytest.mark.parametrize(
    "body, content_type, message",
    [
        ("", "text/csv", "empty"),
        ("name\nx\n", "text/csv", "device_id column"),
        ("device_id,colour\nx,red\n", "text/csv", "unknown column"),
        ("device_id\n", "text/csv", "no device"),
        ('device_id\n"unterminated\n', "text/csv", "unreadable"),
        (b"device_id\n\xff\xfe\n", "text/csv", "UTF-8"),
    ],
)
def test_unreadable_csv_is_refused_with_a_clear_error_when_posted(client, base, body, content_type, message):
    response = client.post(f"{base}/device-imports", body, content_type=content_type)
    assert response.status_code == 400, response.content
    assert message in json.dumps(response.json())


def test_csv_import_refuses_more_than_10000_rows_and_json_bodies(client, base):
    rows = "device_id\n" + "".join(f"d{i}\n" for i in range(10_001))
    response = client.post(
        f"{base}/device-imports", gzip.compress(rows.encode()), content_type="text/csv", HTTP_CONTENT_ENCODING="gzip"
    )
    assert response.status_code == 400 and "10000" in response.json()["detail"]
    assert client.post(f"{base}/device-imports", {"device_id": "a"}, format="json").status_code == 415
    bomb = gzip.compress(b"device_id\n" + b"a" * (40 * 1024 * 1024))
    response = client.post(f"{base}/device-imports", bomb, content_type="text/csv", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 400 and "uncompressed" in response.json()["detail"]


def test_groups_are_created_listed_described_and_deleted_when_asked(client, base):
    created = client.post(f"{base}/device-groups", {"name": "line-1", "description": "Line 1"}, format="json")
    assert created.status_code == 201, created.content
    assert client.post(f"{base}/device-groups", {"name": "line-1"}, format="json").status_code == 409
    assert client.post(f"{base}/device-groups", {"name": "bad name"}, format="json").status_code == 400
    client.post(f"{base}/devices", {"device_id": "a", "groups": ["line-1"]}, format="json")
    assert [g["name"] for g in client.get(f"{base}/device-groups").json()["results"]] == ["line-1"]
    changed = client.patch(f"{base}/device-groups/line-1", {"description": "First line"}, format="json")
    assert changed.json()["description"] == "First line"
    assert client.delete(f"{base}/device-groups/line-1").status_code == 204
    assert client.get(f"{base}/devices/a").json()["groups"] == []


# --- shadows over REST ----------------------------------------------------------------------------------------


def test_desired_change_is_versioned_stored_in_history_and_queued_for_the_device_when_patched(client, base, premium):
    from iot.models import OutboxMessage

    client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    assert client.get(f"{base}/devices/sensor-1/shadow").status_code == 404
    response = client.patch(
        f"{base}/devices/sensor-1/shadow", {"state": {"desired": {"setpoint": 21}}, "clientToken": "t"}, format="json"
    )
    assert response.status_code == 200, response.content
    accepted = response.json()
    assert accepted["version"] == 1 and accepted["state"] == {"desired": {"setpoint": 21}}
    assert accepted["clientToken"] == "t"
    topics = list(OutboxMessage.objects.order_by("id").values_list("topic", flat=True))
    assert topics == [
        "devices/sensor-1/shadow/update/accepted",
        "devices/sensor-1/shadow/update/documents",
        "devices/sensor-1/shadow/update/delta",
    ]
    delta = json.loads(OutboxMessage.objects.get(topic__endswith="/delta").payload)
    assert delta["state"] == {"setpoint": 21} and delta["version"] == 1
    shadow = client.get(f"{base}/devices/sensor-1/shadow").json()
    assert shadow["state"] == {"desired": {"setpoint": 21}, "delta": {"setpoint": 21}} and shadow["version"] == 1
    history = client.get(f"{base}/devices/sensor-1/shadow/history").json()["results"]
    assert [(h["version"], h["source"], h["state"]) for h in history] == [(1, "api", {"desired": {"setpoint": 21}})]


def test_stale_version_answers_409_and_changes_nothing_when_patched(client, base):
    from iot.models import ShadowChange

    client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    client.patch(f"{base}/devices/sensor-1/shadow", {"state": {"desired": {"a": 1}}}, format="json")
    stale = client.patch(
        f"{base}/devices/sensor-1/shadow", {"state": {"desired": {"a": 2}}, "version": 0}, format="json"
    )
    assert stale.status_code == 409 and stale["Content-Type"] == PROBLEM
    assert stale.json()["type"].endswith("version-conflict")
    assert client.get(f"{base}/devices/sensor-1/shadow").json()["state"]["desired"] == {"a": 1}
    assert ShadowChange.objects.count() == 1
    fresh = client.patch(
        f"{base}/devices/sensor-1/shadow", {"state": {"desired": {"a": 2}}, "version": 1}, format="json"
    )
    assert fresh.status_code == 200 and fresh.json()["version"] == 2


@pytest.mark.parametrize(
    "body, field",
    [
        ({"state": {"reported": {"a": 1}}}, "state.reported"),
        ({"state": {"desired": [1]}}, "state.desired"),
        ({"state": "x"}, "state"),
        ({"desired": {"a": 1}}, "desired"),
        ({"state": {"desired": {"1": {"2": {"3": {"4": {"5": {"6": {"7": 1}}}}}}}}}, "state.desired.1.2.3.4.5.6"),
        ({"state": {"desired": {"a": 1}}, "version": -2}, "version"),
    ],
)
def test_bad_shadow_change_answers_400_naming_the_field_and_stores_nothing_when_patched(client, base, body, field):
    from iot.models import OutboxMessage, ShadowChange

    client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    response = client.patch(f"{base}/devices/sensor-1/shadow", body, format="json")
    assert response.status_code == 400, response.content
    assert field in fields(response)
    assert not ShadowChange.objects.exists() and not OutboxMessage.objects.filter(kind="publish").exists()


def test_shadow_over_8_kb_answers_400_too_large_when_patched(client, base):
    client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    response = client.patch(f"{base}/devices/sensor-1/shadow", {"state": {"desired": {"x": "y" * 9000}}}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "too-large"
    response = client.patch(f"{base}/devices/sensor-1/shadow", ["not", "an", "object"], format="json")
    assert response.status_code == 400


def test_null_removes_a_desired_field_and_delete_keeps_counting_when_asked(client, base):
    client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    client.patch(f"{base}/devices/sensor-1/shadow", {"state": {"desired": {"a": 1, "b": 2}}}, format="json")
    client.patch(f"{base}/devices/sensor-1/shadow", {"state": {"desired": {"a": None}}}, format="json")
    assert client.get(f"{base}/devices/sensor-1/shadow").json()["state"]["desired"] == {"b": 2}
    assert client.delete(f"{base}/devices/sensor-1/shadow?version=1").status_code == 409
    deleted = client.delete(f"{base}/devices/sensor-1/shadow?version=2")
    assert deleted.status_code == 200 and deleted.json()["version"] == 3
    assert client.get(f"{base}/devices/sensor-1/shadow").status_code == 404
    assert client.delete(f"{base}/devices/sensor-1/shadow").status_code == 404
    again = client.patch(f"{base}/devices/sensor-1/shadow", {"state": {"desired": {"c": 1}}}, format="json")
    assert again.json()["version"] == 4


def test_idempotency_key_replays_the_first_answer_without_a_second_device_when_retried(client, base):
    from iot.models import Device

    first = client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true" and again.json() == first.json()
    assert Device.objects.count() == 1


def test_another_organizations_device_is_a_404_like_a_missing_one_when_requested(org_factory, key_client):
    victim = org_factory()
    deployment = premium_deployment(victim)
    from iot import services

    services.device_create(deployment=deployment, actor=None, device_id="sensor-1")
    outsider = key_client(org_factory().owner_secret)
    url = (
        f"/api/v1/organizations/{victim.id}/projects/{victim.default_project.public_id}/deployments/"
        f"{deployment.public_id}/devices/sensor-1"
    )
    for response in (outsider.get(url), outsider.get(url + "/shadow"), outsider.delete(url)):
        assert response.status_code == 404
    owner = key_client(victim.owner_secret)
    assert owner.get(url).status_code == 200


def test_project_user_may_write_devices_and_auditor_only_read_when_scopes_apply(owner_org, premium, key_client, base):
    from organizations.roles import Role

    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, Role.PROJECT_USER)])
    _key, secret = owner_org.key_for(user, role=Role.PROJECT_USER, projects=[owner_org.default_project])
    project_user = key_client(secret)
    assert project_user.post(f"{base}/devices", {"device_id": "a"}, format="json").status_code == 201
    auditor_user, _ = owner_org.add_member(roles=[Role.AUDITOR])
    _key, secret = owner_org.key_for(auditor_user, role=Role.AUDITOR)
    auditor = key_client(secret)
    assert auditor.get(f"{base}/devices").status_code == 200
    refused = auditor.post(f"{base}/devices", {"device_id": "b"}, format="json")
    assert refused.status_code == 403 and "device:write" in refused.json()["detail"]
    accountant_user, _ = owner_org.add_member(roles=[Role.ACCOUNTANT])
    _key, secret = owner_org.key_for(accountant_user, role=Role.ACCOUNTANT)
    assert key_client(secret).get(f"{base}/devices").status_code == 403


def test_device_list_makes_the_same_number_of_queries_whatever_the_page_size(
    client, base, premium, django_assert_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from iot import services

    services.device_group_create(deployment=premium, actor=None, name="g")
    for i in range(12):
        services.device_create(deployment=premium, actor=None, device_id=f"d{i:02d}", groups=["g"], tags=["t"])
    client.get(f"{base}/devices")  # the first request of a key also records its use
    with CaptureQueriesContext(connection) as small:
        assert client.get(f"{base}/devices?page_size=5&tag=t").status_code == 200
    with django_assert_num_queries(len(small.captured_queries)):
        body = client.get(f"{base}/devices?page_size=100&tag=t").json()
    assert len(body["results"]) == 12 and body["results"][0]["groups"] == ["g"]


def test_body_nested_past_the_recursion_limit_answers_400_when_patched(client, base):
    client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    body = "[" * 100_000 + "]" * 100_000
    response = client.generic("PATCH", f"{base}/devices/sensor-1/shadow", body, content_type="application/json")
    assert response.status_code == 400 and response["Content-Type"] == PROBLEM


@pytest.mark.parametrize("raw", ["%C2%B2", "1" * 5000], ids=["superscript-two", "5000-digits"])
def test_shadow_delete_with_a_non_ascii_or_overlong_version_answers_400_naming_version(client, base, raw):
    # "²".isdigit() is true but int("²") raises; so does int() of more than 4300 digits.
    client.post(f"{base}/devices", {"device_id": "sensor-1"}, format="json")
    client.patch(f"{base}/devices/sensor-1/shadow", {"state": {"desired": {"a": 1}}}, format="json")
    response = client.delete(f"{base}/devices/sensor-1/shadow?version={raw}")
    assert response.status_code == 400
    assert "version" in fields(response)
    assert client.get(f"{base}/devices/sensor-1/shadow").status_code == 200
