"""The registry's and edge nodes' checks refuse a value with a trailing line break, the one case an anchored `^…$`
pattern lets through: such a value would add a line to a broker's ACL or bridge file."""

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
