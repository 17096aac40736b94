"""MQTT topic name and topic filter rules (MQTT 3.1.1 §4.7, 5.0 §4.7), used to validate ACL rules before they reach a
broker. Pure functions: they never touch a broker or the database.
"""

from __future__ import annotations

from controlplane.validators import find_control_character

MAX_TOPIC_BYTES = 65535

# Two things in a rule's topic EMQX's authorization reads, and mosquitto's `topic` lines do not: a `${name}`
# placeholder (`${username}`, `${clientid}`, …), filled in for each client, and an `eq ` prefix, an exact match of the
# rest with wildcards off (emqx/emqx v5.8.6 apps/emqx_auth/src/emqx_authz/emqx_authz_rule.erl compile_topic/1; v5.1.1
# apps/emqx_authz/src/emqx_authz_rule.erl the same for `${username}` and `${clientid}`). mosquitto fills in `%u` and
# `%c` only in `pattern` lines, which the local driver never writes, and EMQX 5 has no such placeholders: those are
# literal on both.
EMQX_PLACEHOLDER = "${"
EMQX_EXACT_PREFIX = "eq "


def _validate_common(value: str, kind: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{kind} must be a string")
    if value == "":
        raise ValueError(f"{kind} must not be empty")
    if "\x00" in value:
        raise ValueError(f"{kind} must not contain the NUL character")
    # MQTT allows them (but NUL), no broker file or HOCON string carries them safely, and no one means them.
    found = find_control_character(value)
    if found is not None:
        raise ValueError(f"{kind} must not contain control characters; found U+{ord(found[1]):04X} at {found[0]}")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{kind} must be valid UTF-8 (it contains a lone surrogate)") from None
    if len(encoded) > MAX_TOPIC_BYTES:
        raise ValueError(f"{kind} is {len(encoded)} bytes of UTF-8; the limit is {MAX_TOPIC_BYTES}")


def validate_topic_filter(value: str) -> None:
    """Raise ValueError unless `value` is a valid topic filter ('+' a whole level, '#' alone and last)."""
    _validate_common(value, "topic filter")
    levels = value.split("/")
    for index, level in enumerate(levels):
        if "#" in level:
            if level != "#":
                raise ValueError(f"'#' must occupy a whole level of the topic filter, not {level!r}")
            if index != len(levels) - 1:
                raise ValueError("'#' must be the last level of the topic filter")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must occupy a whole level of the topic filter, not {level!r}")


def validate_acl_topic(value: str) -> None:
    """Raise ValueError unless `value` is a topic filter that means the same to every driver's broker."""
    validate_topic_filter(value)
    if EMQX_PLACEHOLDER in value:
        raise ValueError(
            "An ACL topic cannot contain '${': EMQX would fill in a placeholder such as ${username} for each client, "
            "while mosquitto reads it as written. Give the topic itself, with a rule per username if it differs."
        )
    if value.startswith(EMQX_EXACT_PREFIX):
        raise ValueError(
            "An ACL topic cannot start with 'eq ': EMQX reads that as an exact match of the rest, wildcards off, "
            "while mosquitto reads it as written."
        )


def emqx_reads_specially(value: str) -> bool:
    """Whether EMQX would read `value`, as a rule's topic, otherwise than as written (see EMQX_PLACEHOLDER)."""
    return EMQX_PLACEHOLDER in value or value.startswith(EMQX_EXACT_PREFIX)


def validate_topic_name(value: str) -> None:
    """Raise ValueError unless `value` is a valid topic name: a filter without wildcards."""
    _validate_common(value, "topic name")
    if "+" in value or "#" in value:
        raise ValueError("a topic name must not contain the wildcards '+' or '#'")


def topic_filters_overlap(a: str, b: str) -> bool:
    """True if some topic name matches both filters (ignoring the rule that wildcards skip `$` topics)."""
    left, right = a.split("/"), b.split("/")
    for x, y in zip(left, right):
        if x == "#" or y == "#":
            return True
        if x != y and x != "+" and y != "+":
            return False
    if len(left) == len(right):
        return True
    longer = left if len(left) > len(right) else right
    # 'a/#' also matches 'a': the parent level.
    return longer[min(len(left), len(right)) :] == ["#"]
