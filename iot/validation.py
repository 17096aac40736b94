"""Checks of what a customer types into the device registry (device ids, names, tags, attributes, group names), as
pure functions raising ValueError with a message the API shows beside the field. Nothing here touches the database.
"""

from __future__ import annotations

import re
from typing import Any

from controlplane.validators import control_character_message, find_control_character
from iot import shadow

DEVICE_ID_RE = shadow.DEVICE_ID_RE
DEVICE_ID_RULE = "1 to 128 characters among A-Z, a-z, 0-9 and _ . : -"
GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9_.:=/@+-]{1,64}\Z")
MAX_TAGS = 32
MAX_GROUPS = 32
MAX_ATTRIBUTES_BYTES = 8 * 1024
MAX_ATTRIBUTES_DEPTH = shadow.MAX_DEPTH


def device_id(value: Any) -> str:
    if not isinstance(value, str) or not DEVICE_ID_RE.match(value):
        raise ValueError(f"A device id is the device's MQTT client id: {DEVICE_ID_RULE}.")
    return value


def text(value: Any, *, max_length: int) -> str:
    if not isinstance(value, str):
        raise ValueError("Must be a string.")
    if len(value) > max_length:
        raise ValueError(f"At most {max_length} characters.")
    if (found := find_control_character(value)) is not None:
        raise ValueError(control_character_message(*found))
    return value


def tags(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError("Must be a list of strings.")
    if len(value) > MAX_TAGS:
        raise ValueError(f"At most {MAX_TAGS} tags.")
    for tag in value:
        if not TAG_RE.match(tag):
            raise ValueError(f"Tag {tag!r}: 1 to 64 characters among A-Z, a-z, 0-9 and _ . : = / @ + -.")
    return list(dict.fromkeys(value))  # duplicates dropped, order kept


def group_name(value: Any) -> str:
    if not isinstance(value, str) or not GROUP_NAME_RE.match(value):
        raise ValueError("A group name is 1 to 64 characters among A-Z, a-z, 0-9 and _ . : -.")
    return value


def group_names(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("Must be a list of group names.")
    if len(value) > MAX_GROUPS:
        raise ValueError(f"At most {MAX_GROUPS} groups.")
    return list(dict.fromkeys(group_name(name) for name in value))


def attributes(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError("Must be a JSON object.")
    try:
        shadow._check_value(value, "attributes", 1)
    except shadow.ShadowRejected as exc:
        raise ValueError(exc.message) from None
    size = len(shadow.compact(value))
    if size > MAX_ATTRIBUTES_BYTES:
        raise ValueError(f"At most {MAX_ATTRIBUTES_BYTES} bytes of JSON; these are {size}.")
    return value
