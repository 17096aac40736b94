"""Codec rules' topics: the input filter, the output topic template and its rendering, and the error topic.

A template is text with placeholders: `{topic}` (the whole input topic), `{topic[N]}` (its level N, counted from 0),
`{device_id}` (level 1 of a `devices/{device_id}/…` topic). Any other brace is an error. Pure functions: checked
once when a rule is saved, rendered by the agent for every message; nothing here touches a broker or the database.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from deployments import topics

ERROR_TOPIC_PREFIX = "codec-errors"
MAX_TEMPLATE_LENGTH = 512
_PLACEHOLDER = re.compile(r"\{(topic|device_id|topic\[(\d{1,3})\])\}")
MAX_INDEX = 127
MAX_TOPIC_BYTES = 65535  # MQTT's limit on a topic name


def error_topic(rule_id: str) -> str:
    """Where the agent publishes what a rule could not decode or encode (the reason in the JSON payload)."""
    return f"{ERROR_TOPIC_PREFIX}/{rule_id}"


def check_filter(value: object) -> str:
    """The rule's input topic filter, or ValueError."""
    if not isinstance(value, str):
        raise ValueError("A topic filter, such as devices/+/telemetry.")
    topics.validate_topic_filter(value)
    if value.startswith("$"):
        raise ValueError("Topics starting with $ are the broker's and the platform's; a rule cannot read them.")
    if value.split("/")[0] == ERROR_TOPIC_PREFIX or value in ("#", "+/#"):
        raise ValueError(f"A rule cannot read {ERROR_TOPIC_PREFIX}/… (its own error topics) or every topic.")
    return value


@dataclasses.dataclass(frozen=True)
class Template:
    """A parsed template: literal text and placeholders in order (("text", s) | ("topic", None) | ("level", n) |
    ("device_id", None))."""

    parts: tuple[tuple[str, Any], ...]

    def render(self, topic: str) -> str:
        levels = topic.split("/")
        out = []
        for kind, value in self.parts:
            if kind == "text":
                out.append(value)
            elif kind == "topic":
                out.append(topic)
            elif kind == "level":
                out.append(levels[value])  # checked against the filter: the level always exists
            else:
                out.append(levels[1])
        return "".join(out)


def output_topic_problem(topic: str) -> str | None:
    """Why a rendered output topic cannot be published, or None. The template was checked with stand-ins, but the
    levels its placeholders take come from the input topic, which a device writes: one may be empty, start with `$`
    or be `codec-errors`, and the agent publishes as a superuser."""
    if not topic:
        return "the output topic would be empty (a placeholder took an empty level of the input topic)"
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        return "the output topic would be longer than 65,535 bytes"
    if topic.startswith("$"):
        return "the output topic would start with $ (a placeholder took such a level of the input topic)"
    if topic.split("/")[0] == ERROR_TOPIC_PREFIX:
        return f"the output topic would be under {ERROR_TOPIC_PREFIX}/, where the platform reports rule failures"
    return None


def _guaranteed_levels(topic_filter: str) -> int:
    """How many leading levels every topic matching the filter has (`a/+/#` matches `a/x`: 2)."""
    levels = topic_filter.split("/")
    return len(levels) - 1 if levels[-1] == "#" else len(levels)


def parse_template(value: object, *, topic_filter: str) -> Template:
    """The output topic template, checked against the rule's filter, or ValueError saying what is wrong."""
    if not isinstance(value, str) or not value:
        raise ValueError("A topic template such as app/{device_id}/reading.")
    if len(value) > MAX_TEMPLATE_LENGTH:
        raise ValueError(f"At most {MAX_TEMPLATE_LENGTH} characters.")
    have = _guaranteed_levels(topic_filter)
    filter_levels = topic_filter.split("/")
    parts: list[tuple[str, Any]] = []
    position = 0
    for match in _PLACEHOLDER.finditer(value):
        if match.start() > position:
            parts.append(("text", value[position : match.start()]))
        name = match.group(1)
        if name == "topic":
            parts.append(("topic", None))
        elif name == "device_id":
            if have < 2 or filter_levels[0] != "devices" or filter_levels[1] == "#":
                raise ValueError(
                    "{device_id} needs a filter of the form devices/<id or +>/…: this filter does not say which "
                    "level is the device id."
                )
            parts.append(("device_id", None))
        else:
            index = int(match.group(2))
            if index >= have:
                raise ValueError(
                    f"{{topic[{index}]}} refers to a level that topics matching {topic_filter!r} may not have: "
                    f"levels 0 to {have - 1} always exist."
                    if have
                    else f"{{topic[{index}]}}: topics matching {topic_filter!r} have no level that always exists."
                )
            parts.append(("level", index))
        position = match.end()
    if position < len(value):
        parts.append(("text", value[position:]))
    literal = "".join(str(v) for k, v in parts if k == "text")
    if "{" in literal or "}" in literal:
        raise ValueError(
            "Unknown placeholder: a template may use {topic}, {topic[N]} (level N of the input topic, from 0) and "
            "{device_id}; other braces are not allowed."
        )
    # Every placeholder stands for at least one character and no wildcard: check the shape with a stand-in.
    sample = "".join(str(v) if k == "text" else "x" for k, v in parts)
    try:
        topics.validate_topic_name(sample)
    except ValueError as exc:
        raise ValueError(f"The output topic is not a valid topic name: {exc}.") from None
    if sample.startswith("$"):
        raise ValueError("The output topic cannot start with $.")
    if sample.split("/")[0] == ERROR_TOPIC_PREFIX:
        raise ValueError(f"{ERROR_TOPIC_PREFIX}/… is where the platform reports rule failures.")
    return Template(tuple(parts))


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching of a topic name against a filter (wildcards never match a leading `$`)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(f_levels):
        if level == "#":
            return True
        if index >= len(t_levels):
            return False
        if level != "+" and level != t_levels[index]:
            return False
    return len(f_levels) == len(t_levels)
