"""Checks at the iot app's edges: registry and edge-node values refuse a trailing line break (the one case an
anchored `^...$` pattern lets through, which would add a line to a broker's ACL or bridge file), edge settings refuse
what is not valid Unicode, and the agent's writes stay within its own deployment."""

import re

import pytest

from iot import edge, validation


@pytest.mark.parametrize(
    ("check", "good"),
    [
        (validation.device_id, "sensor-1"),
        (validation.group_name, "floor.1"),
        (lambda value: validation.tags([value]), "site=paris"),
        (edge.node_name, "gw-1"),
        (edge.ca_file, "/etc/edge/ca.pem"),
    ],
)
@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r", "\x00", "\u2028"])
def test_value_is_refused_when_it_ends_in_a_line_break_or_control_character(check, good, ending):
    check(good)  # the same value without the ending passes
    with pytest.raises(ValueError):
        check(good + ending)


@pytest.mark.parametrize("name", ["Hall \u2028sensor", "tab\there", "del\x7f", "c1\x85"])
def test_free_text_names_the_control_character_and_its_position_with_the_shared_rule_when_refused(name):
    from controlplane.validators import find_control_character
    from iot import codecs

    position, character = find_control_character(name)
    expected = f"U+{ord(character):04X} at position {position}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        validation.text(name, max_length=128)
    from controlplane.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as refused:
        codecs._text(name, "name", max_length=128)
    assert expected in refused.value.message_dict()["name"][0]


@pytest.mark.parametrize("name", ["Lobby \U0001f468\u200d\U0001f469\u200d\U0001f467", "Café\u00a0Nord", "東京-1"])
def test_free_text_keeps_what_people_type_when_it_holds_no_control_character(name):
    assert validation.text(name, max_length=128) == name


@pytest.mark.parametrize("bad", [{"a": "\ud800"}, {"\udfff": 1}, {"a": ["x\x00"]}])
def test_edge_settings_refuse_a_lone_surrogate_or_nul_with_a_message_when_given(bad):
    with pytest.raises(ValueError, match="lone surrogate|NUL"):
        edge.settings(bad)


@pytest.mark.django_db
def test_agent_drops_only_its_own_deployments_outbox_rows_when_given_foreign_ids(owner_org, org_factory):
    from iot import services
    from iot.models import OutboxMessage
    from tests.iot.conftest import premium_deployment

    mine = premium_deployment(owner_org, name="mine")
    theirs = premium_deployment(org_factory(), name="theirs")
    own, foreign = (
        OutboxMessage.objects.create(deployment=d, kind="publish", topic="devices/x/shadow/update/delta", payload="{}")
        for d in (mine, theirs)
    )
    services.outbox_done(deployment_id=mine.pk, ids=[own.pk, foreign.pk])
    assert list(OutboxMessage.objects.values_list("pk", flat=True)) == [foreign.pk]
