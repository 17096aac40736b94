"""Checks at the iot app's edges: registry and edge-node values refuse a trailing line break (the one case an
anchored `^...$` pattern lets through, which would add a line to a broker's ACL or bridge file), edge settings refuse
what is not valid Unicode, and the agent's writes stay within its own deployment."""

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
