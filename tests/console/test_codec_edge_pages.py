"""The Premium tabs (Schemas, Codec rules, Edge nodes) through Django's test client: roles as the API has them (reads
for device:read, writes 403 without device:write, no forms for read-only roles), another organization's objects and
non-Premium deployments 404, and bad input (a .proto that does not compile, control characters, oversize try-it
payloads, bad JSON) answered with a message beside its field, never a 500, with nothing changed."""

import base64
import html
import re

import pytest

from audit.models import AuditEvent
from iot.codec_models import CodecRule, Schema
from iot.edge_models import EdgeNode
from iot.schemas import MAX_PAYLOAD_BYTES
from tests.console.helpers import console_path, deployment, make_organization
from tests.iot.conftest import premium_deployment

pytestmark = pytest.mark.django_db

PROTO = 'syntax = "proto3";\npackage sensors;\nmessage Reading {\n  string device = 1;\n  double temperature = 2;\n}\n'
PROTO_BROKEN = PROTO.replace("double temperature = 2;", "string temperature = 2;")
# {"device": "s-1", "temperature": 21.5} in the Protobuf encoding of sensors.Reading
READING_HEX = "0a03732d31110000000000803540"


def _body(response) -> str:
    return html.unescape(response.content.decode())


def _field_error(response, field_id, text):
    match = re.search(rf'<ul class="errorlist" id="{field_id}_error">(.*?)</ul>', _body(response), re.S)
    assert match, f"no error list for {field_id} in the page"
    assert text in match.group(1), match.group(1)


@pytest.fixture
def plant(owner_org):
    return premium_deployment(owner_org)


@pytest.fixture
def owner(client, owner_org):
    client.force_login(owner_org.owner)
    return owner_org


def _schema(plant, name="reading"):
    from iot import codecs

    return codecs.schema_create(
        deployment=plant, actor=None, name=name, type="protobuf", source=PROTO, message_type="Reading"
    )


def _rule(plant, schema="reading"):
    from iot import codecs

    return codecs.codec_rule_create(
        deployment=plant,
        actor=None,
        topic_filter="devices/+/telemetry",
        direction="decode",
        schema=schema,
        topic_template="app/{device_id}/reading",
    )


def _node(plant, name="gw-1"):
    from iot import edge_services

    node, _credentials, _operation = edge_services.edge_node_create(
        deployment=plant, actor=None, name=name, kind="mosquitto", up_topics=["sensors/#"]
    )
    return node


# -- tabs and tenancy --------------------------------------------------------------------------------------------------


def test_premium_tabs_are_linked_when_deployment_is_premium(client, owner, plant):
    body = _body(client.get(console_path(plant)))
    for label, page in (("Schemas", "schemas"), ("Codec rules", "codec-rules"), ("Edge nodes", "edge-nodes")):
        assert f'href="{console_path(plant, page)}">{label}</a>' in body


def test_tabs_are_absent_and_pages_404_when_deployment_is_not_premium(client, owner):
    plain = deployment(owner.default_project, name="plain")
    body = _body(client.get(console_path(plain)))
    assert "Codec rules" not in body and "Edge nodes" not in body and ">Schemas<" not in body
    for page in ("schemas", "codec-rules", "edge-nodes", "schemas/reading", "edge-nodes/gw-1"):
        assert client.get(console_path(plain, page)).status_code == 404, page
    response = client.post(console_path(plain, "schemas"), {"new-name": "x", "new-type": "protobuf"})
    assert response.status_code == 404
    assert not Schema.objects.exists()


def test_another_organizations_objects_answer_404_when_reached_by_url(client, owner_org, plant):
    _schema(plant)
    rule = _rule(plant)
    _node(plant)
    stranger = make_organization(name="Elsewhere")
    client.force_login(stranger.owner)
    gets = ["schemas", "schemas/reading", "schemas/reading/versions/1", "codec-rules", f"codec-rules/{rule.public_id}"]
    gets += ["edge-nodes", "edge-nodes/gw-1", "edge-nodes/gw-1/config", "edge-nodes/gw-1/delete"]
    for page in gets:
        assert client.get(console_path(plant, page)).status_code == 404, page
    posts = {
        "schemas": {"new-name": "mine", "new-type": "protobuf", "new-source": PROTO, "new-message_type": "Reading"},
        "schemas/reading/try": {"try-direction": "decode", "try-payload_format": "hex", "try-payload": READING_HEX},
        f"codec-rules/{rule.public_id}/toggle": {"enabled": "false"},
        f"codec-rules/{rule.public_id}/delete": {},
        "edge-nodes/gw-1/delete": {},
    }
    for page, data in posts.items():
        assert client.post(console_path(plant, page), data).status_code == 404, page
    assert Schema.objects.filter(deployment=plant).count() == 1
    assert CodecRule.objects.get(pk=rule.pk).enabled
    assert EdgeNode.objects.filter(deployment=plant).count() == 1


def test_their_own_objects_answer_404_on_another_deployment_when_ids_are_swapped(client, owner, plant):
    other = premium_deployment(owner, name="other")
    rule = _rule(plant, schema=_schema(plant).name)
    assert client.get(console_path(other, f"codec-rules/{rule.public_id}")).status_code == 404
    assert client.get(console_path(other, "schemas/reading")).status_code == 404


# -- roles ---------------------------------------------------------------------------------------------------------------

WRITERS = [(["owner"], None), (["administrator"], None), ([], "project_administrator"), ([], "project_user")]


@pytest.mark.parametrize(("roles", "grant"), WRITERS)
def test_writers_see_forms_and_change_things_when_role_has_device_write(client, owner_org, plant, roles, grant):
    user, _ = owner_org.add_member(roles=roles, project_grants=[(owner_org.default_project, grant)] if grant else [])
    client.force_login(user)
    assert "Register schema" in _body(client.get(console_path(plant, "schemas")))
    created = client.post(
        console_path(plant, "schemas"),
        {"new-name": "reading", "new-type": "protobuf", "new-source": PROTO, "new-message_type": "Reading"},
    )
    assert created.status_code == 302, _body(created)[:2000]
    event = AuditEvent.objects.get(action="codec.schema.create")
    assert event.actor_id == user.pk
    assert "Register edge node" in _body(client.get(console_path(plant, "edge-nodes")))


def test_auditor_reads_every_tab_but_gets_no_form_and_403_when_crafting_writes(client, owner_org, plant):
    _schema(plant)
    rule = _rule(plant)
    _node(plant)
    user, _ = owner_org.add_member(roles=["auditor"])
    client.force_login(user)
    for page, form_label in (
        ("schemas", "Register schema"),
        ("schemas/reading", "Add version"),
        ("codec-rules", "Add codec rule"),
        (f"codec-rules/{rule.public_id}", "Save rule"),
        ("edge-nodes", "Register edge node"),
        ("edge-nodes/gw-1", "Push configuration"),
    ):
        response = client.get(console_path(plant, page))
        assert response.status_code == 200, page
        body = _body(response)
        assert form_label not in body and "Delete" not in body.split("</nav>", 2)[-1], page
        assert "Your role can look at" in body or page.count("/") == 1, page
    # Try-it is a read, as in the API (device:read).
    tried = client.post(
        console_path(plant, "schemas/reading/try"),
        {"try-direction": "decode", "try-payload_format": "hex", "try-payload": READING_HEX},
    )
    assert tried.status_code == 200 and '"temperature": 21.5' in _body(tried)
    writes = {
        "schemas": {"new-name": "mine", "new-type": "protobuf", "new-source": PROTO, "new-message_type": "Reading"},
        "schemas/reading": {"version-source": PROTO},
        "schemas/reading/delete": {},
        "codec-rules": {"rule-topic_filter": "a/b", "rule-direction": "decode", "rule-schema": "reading"},
        f"codec-rules/{rule.public_id}": {"topic_filter": "a/b"},
        f"codec-rules/{rule.public_id}/toggle": {"enabled": "false"},
        f"codec-rules/{rule.public_id}/delete": {},
        "edge-nodes": {"node-name": "gw-2", "node-kind": "mosquitto"},
        "edge-nodes/gw-1": {"config-settings": "{}"},
        "edge-nodes/gw-1/delete": {},
    }
    for page, data in writes.items():
        assert client.post(console_path(plant, page), data).status_code == 403, page
    assert client.get(console_path(plant, f"codec-rules/{rule.public_id}/delete")).status_code == 403
    assert Schema.objects.count() == 1 and Schema.objects.get().latest_version == 1
    assert CodecRule.objects.get(pk=rule.pk).enabled
    assert list(EdgeNode.objects.values_list("name", "desired_version")) == [("gw-1", 0)]


def test_accountant_has_no_tab_and_403_when_role_lacks_device_read(client, owner_org, plant):
    user, _ = owner_org.add_member(roles=["accountant"])
    client.force_login(user)
    body = _body(client.get(console_path(plant)))
    assert "Codec rules" not in body and "Edge nodes" not in body
    for page in ("schemas", "codec-rules", "edge-nodes"):
        assert client.get(console_path(plant, page)).status_code == 403, page


# -- schemas and bad input -------------------------------------------------------------------------------------------


def test_protoc_message_is_shown_beside_the_source_when_proto_does_not_compile(client, owner, plant):
    response = client.post(
        console_path(plant, "schemas"),
        {"new-name": "reading", "new-type": "protobuf", "new-source": "message {", "new-message_type": "Reading"},
    )
    assert response.status_code == 400
    _field_error(response, "id_new-source", "protoc:")
    assert not Schema.objects.exists()


def test_names_are_refused_with_a_message_when_they_hold_control_characters(client, owner, plant):
    schema = client.post(
        console_path(plant, "schemas"),
        {"new-name": "read\x01ing", "new-type": "protobuf", "new-source": PROTO, "new-message_type": "Reading"},
    )
    assert schema.status_code == 400
    _field_error(schema, "id_new-name", "A schema name is 1 to 64 characters")
    _schema(plant)
    rule = client.post(
        console_path(plant, "codec-rules"),
        {
            "rule-name": "bad\x07name",
            "rule-topic_filter": "devices/+/telemetry",
            "rule-direction": "decode",
            "rule-schema": "reading",
            "rule-topic_template": "app/{device_id}/x",
        },
    )
    assert rule.status_code == 400
    _field_error(rule, "id_rule-name", "control characters")
    node = client.post(console_path(plant, "edge-nodes"), {"node-name": "gw\x1b1", "node-kind": "mosquitto"})
    assert node.status_code == 400
    _field_error(node, "id_node-name", "control characters")
    topic = client.post(
        console_path(plant, "edge-nodes"), {"node-name": "gw-2", "node-kind": "mosquitto", "node-up_topics": "a/\x00b"}
    )
    assert topic.status_code == 400
    assert Schema.objects.count() == 1 and not CodecRule.objects.exists() and not EdgeNode.objects.exists()


def test_incompatible_version_is_refused_naming_the_field_when_added(client, owner, plant):
    _schema(plant)
    response = client.post(console_path(plant, "schemas/reading"), {"version-source": PROTO_BROKEN})
    assert response.status_code == 400
    _field_error(
        response,
        "id_version-source",
        "Not backward compatible with the previous version: field sensors.Reading.temperature (number 2): type "
        "double became string",
    )
    assert Schema.objects.get().latest_version == 1
    added = client.post(
        console_path(plant, "schemas/reading"), {"version-source": PROTO.replace("}\n", "  int32 humidity = 3;\n}\n")}
    )
    assert added.status_code == 302
    assert Schema.objects.get().latest_version == 2
    source = _body(client.get(console_path(plant, "schemas/reading/versions/2")))
    assert "int32 humidity = 3;" in source
    assert client.get(console_path(plant, "schemas/reading/versions/3")).status_code == 404
    assert client.get(console_path(plant, "schemas/reading/versions/" + "9" * 30)).status_code == 404


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"try-payload_format": "hex", "try-payload": "00" * (MAX_PAYLOAD_BYTES + 1)}, f"At most {MAX_PAYLOAD_BYTES}"),
        (
            {"try-payload_format": "base64", "try-payload": base64.b64encode(b"\0" * (MAX_PAYLOAD_BYTES + 1)).decode()},
            f"At most {MAX_PAYLOAD_BYTES}",
        ),
        ({"try-payload_format": "hex", "try-payload": "zz"}, "Not hex"),
        ({"try-payload_format": "base64", "try-payload": "!!!"}, "Not valid base64"),
        ({"try-payload_format": "hex", "try-payload": "ffffffff"}, "not a sensors.Reading message"),
        ({"try-direction": "encode", "try-payload": "{not json"}, "Not JSON"),
        ({"try-direction": "encode", "try-payload": "[" * 100000}, "Not JSON"),
        ({"try-direction": "encode", "try-payload": '{"temperature": "warm"}'}, "not a sensors.Reading"),
        ({"try-payload_format": "hex", "try-payload": READING_HEX, "try-version": "9"}, "has no version 9"),
    ],
)
def test_try_it_shows_the_reason_beside_the_payload_when_input_is_bad(client, owner, plant, data, message):
    _schema(plant)
    data = {"try-direction": "decode", **data}
    response = client.post(console_path(plant, "schemas/reading/try"), data)
    assert response.status_code == 400
    body = _body(response)
    assert message in body, body[-3000:]
    hx = client.post(console_path(plant, "schemas/reading/try"), data, headers={"HX-Request": "true"})
    assert hx.status_code == 200 and message in _body(hx) and "<html" not in _body(hx)


def test_try_it_shows_the_reason_beside_the_payload_when_the_json_holds_a_lone_surrogate(client, owner, plant):
    from iot import codecs

    codecs.schema_create(deployment=plant, actor=None, name="text", type="json_schema", source='{"type": "string"}')
    response = client.post(
        console_path(plant, "schemas/text/try"), {"try-direction": "encode", "try-payload": '"\\ud800"'}
    )
    assert response.status_code == 400
    _field_error(response, "id_try-payload", "text that is not valid Unicode (a lone surrogate) cannot be encoded")


def test_try_it_answers_413_without_reading_it_when_body_exceeds_the_upload_limit(client, owner, plant, settings):
    _schema(plant)
    body = {
        "try-direction": "decode",
        "try-payload_format": "hex",
        "try-payload": "00" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
    }
    assert client.post(console_path(plant, "schemas/reading/try"), body).status_code == 413


def test_try_it_decodes_and_encodes_when_payload_matches(client, owner, plant):
    _schema(plant)
    url = console_path(plant, "schemas/reading/try")
    decoded = client.post(
        url, {"try-direction": "decode", "try-payload_format": "hex", "try-payload": READING_HEX.upper()}
    )
    assert decoded.status_code == 200
    assert '"device": "s-1"' in _body(decoded) and '"temperature": 21.5' in _body(decoded)
    encoded = client.post(
        url, {"try-direction": "encode", "try-payload": '{"device": "s-1", "temperature": 21.5}'}, HTTP_HX_REQUEST="1"
    )
    assert encoded.status_code == 200
    assert base64.b64encode(bytes.fromhex(READING_HEX)).decode() in _body(encoded)
    rule = _rule(plant)
    on_rule = client.post(
        console_path(plant, f"codec-rules/{rule.public_id}/try"),
        {"try-payload_format": "base64", "try-payload": base64.b64encode(bytes.fromhex(READING_HEX)).decode()},
    )
    assert on_rule.status_code == 200 and '"temperature": 21.5' in _body(on_rule)
    assert not AuditEvent.objects.filter(action__startswith="codec.schema.decode").exists()


# -- codec rules ---------------------------------------------------------------------------------------------------------


def test_rule_is_added_changed_disabled_and_deleted_through_the_service_when_owner_acts(client, owner, plant):
    _schema(plant)
    bad = client.post(
        console_path(plant, "codec-rules"),
        {
            "rule-topic_filter": "devices/+/telemetry",
            "rule-direction": "decode",
            "rule-schema": "reading",
            "rule-topic_template": "app/{topic[5]}/x",
            "rule-enabled": "on",
        },
    )
    assert bad.status_code == 400
    _field_error(bad, "id_rule-topic_template", "refers to a level that topics matching")
    made = client.post(
        console_path(plant, "codec-rules"),
        {
            "rule-topic_filter": "devices/+/telemetry",
            "rule-direction": "decode",
            "rule-schema": "reading",
            "rule-topic_template": "app/{device_id}/reading",
            "rule-enabled": "on",
        },
    )
    assert made.status_code == 302
    rule = CodecRule.objects.get()
    page = _body(client.get(made["Location"]))
    assert f"codec-errors/{rule.public_id}" in page and "devices/+/telemetry" in page
    edited = client.post(
        console_path(plant, f"codec-rules/{rule.public_id}"),
        {
            "name": "readings",
            "topic_filter": "devices/+/raw",
            "direction": "decode",
            "schema": "reading",
            "schema_version": "1",
            "topic_template": "app/{device_id}/reading",
            "enabled": "on",
        },
    )
    assert edited.status_code == 302
    rule.refresh_from_db()
    assert (rule.name, rule.topic_filter) == ("readings", "devices/+/raw")
    client.post(console_path(plant, f"codec-rules/{rule.public_id}/toggle"), {"enabled": "false"})
    rule.refresh_from_db()
    assert not rule.enabled
    confirm = client.get(console_path(plant, f"codec-rules/{rule.public_id}/delete"))
    assert confirm.status_code == 200 and f"Delete {rule.public_id}" in _body(confirm)
    assert CodecRule.objects.exists()
    client.post(console_path(plant, f"codec-rules/{rule.public_id}/delete"))
    assert not CodecRule.objects.exists()
    actions = set(AuditEvent.objects.filter(action__startswith="codec.rule").values_list("action", flat=True))
    assert actions == {"codec.rule.create", "codec.rule.update", "codec.rule.delete"}


def test_schema_in_use_is_not_deleted_and_the_page_says_why_when_confirmed(client, owner, plant):
    _schema(plant)
    rule = _rule(plant)
    response = client.post(console_path(plant, "schemas/reading/delete"), follow=True)
    assert response.status_code == 200
    assert f"Codec rules use this schema ({rule.public_id})" in _body(response)
    assert Schema.objects.exists()


def test_writes_are_refused_with_a_message_when_deployment_is_deleted(client, owner, plant):
    from deployments.models import Deployment

    _schema(plant)
    Deployment.objects.filter(pk=plant.pk).update(desired_state="deleted")
    page = _body(client.get(console_path(plant, "schemas")))
    assert "Register schema" not in page and "Nothing can be changed on a deleted deployment" in page
    response = client.post(
        console_path(plant, "schemas"),
        {"new-name": "other", "new-type": "protobuf", "new-source": PROTO, "new-message_type": "Reading"},
    )
    assert response.status_code == 409 and "being deleted" in _body(response)
    assert Schema.objects.count() == 1


# -- edge nodes ----------------------------------------------------------------------------------------------------------


def test_new_node_credentials_and_bridge_file_are_shown_once_when_registered(client, owner, plant):
    from deployments.models import Deployment

    Deployment.objects.filter(pk=plant.pk).update(endpoints={"host": "127.0.0.1", "ports": {"mqtt": 18830}})
    made = client.post(
        console_path(plant, "edge-nodes"),
        {"node-name": "gw-1", "node-kind": "mosquitto", "node-up_topics": "sensors/#\n", "node-down_topics": ""},
    )
    assert made.status_code == 302, _body(made)[:3000]
    node = EdgeNode.objects.get()
    first = _body(client.get(made["Location"]))
    password = re.search(r'<code id="shown-password">([^<]+)</code>', first).group(1)
    assert node.username in first and "address 127.0.0.1:18830" in first and f"remote_password {password}" in first
    again = _body(client.get(made["Location"]))
    assert password not in again and "shown this once" not in again
    download = client.get(console_path(plant, "edge-nodes/gw-1/config"))
    assert download.status_code == 200 and download["Content-Disposition"].startswith("attachment")
    text = download.content.decode()
    assert node.username in text and password not in text
    assert AuditEvent.objects.filter(action="edge_node.create").exists()


def test_config_push_is_refused_beside_settings_and_then_awaits_acknowledgement_when_pushed(client, owner, plant):
    _node(plant)
    url = console_path(plant, "edge-nodes/gw-1")
    bad = client.post(url, {"config-up_topics": "sensors/#", "config-settings": "{nope"})
    assert bad.status_code == 400
    _field_error(bad, "id_config-settings", "Not JSON")
    not_object = client.post(url, {"config-up_topics": "sensors/#", "config-settings": "[1, 2]"})
    assert not_object.status_code == 400
    too_big = client.post(url, {"config-settings": '{"x": "' + "a" * 70000 + '"}'})
    assert too_big.status_code == 400
    _field_error(too_big, "id_config-settings", "")
    pushed = client.post(url, {"config-up_topics": "sensors/#", "config-settings": '{"sample_rate": 5}'})
    assert pushed.status_code == 302
    page = _body(client.get(url))
    assert "waiting for the node" in page
    node = EdgeNode.objects.get()
    assert node.desired_version == 1 and node.configs.get().settings == {"sample_rate": 5}
    confirm = _body(client.get(console_path(plant, "edge-nodes/gw-1/delete")))
    assert "Delete gw-1" in confirm
    deleted = client.post(console_path(plant, "edge-nodes/gw-1/delete"))
    assert deleted.status_code == 302 and not EdgeNode.objects.exists()
    assert AuditEvent.objects.filter(action="edge_node.delete").exists()
