"""Input validators shared by every app: defined once, at the bottom layer, usable by models, forms and DRF fields.

Owns what counts as a control character and how refusing one reads. Nothing here imports Django REST framework: DRF
fields run Django validators and turn their ValidationError into a field error themselves.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.utils.deconstruct import deconstructible

# C0 (U+0000-U+001F, tab and line breaks included), DEL (U+007F), C1 (U+0080-U+009F, NEL U+0085 included) and the
# Unicode line and paragraph separators: every character that can end or break a line in some parser on the way to a
# broker (mosquitto's files, EMQX's HOCON and HTTP API, a log line), or that no one types on purpose.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CONTROL_CHARACTER_CODE = "control_character"


def find_control_character(value: str) -> tuple[int, str] | None:
    """(position, character) of the first control character in `value`, or None."""
    match = CONTROL_CHARACTERS.search(value)
    return (match.start(), match.group()) if match else None


def control_character_message(position: int, character: str) -> str:
    return (
        f"Must not contain control characters (line breaks, tabs, U+0000-U+001F, U+007F-U+009F, U+2028, U+2029); "
        f"found U+{ord(character):04X} at position {position}."
    )


def refuse_control_characters(value: object) -> None:
    """Raise Django's ValidationError (code `control_character`) if the string `value` holds a control character.

    Anything but a string passes: the field's own type check answers for that."""
    if not isinstance(value, str):
        return
    found = find_control_character(value)
    if found is not None:
        raise ValidationError(control_character_message(*found), code=CONTROL_CHARACTER_CODE)


@deconstructible
class NoControlCharacters:
    """The validator as an object, for `validators=[...]` on model, form and DRF fields.

    `reaches_broker=True` marks a field whose value ends up in a broker's files or a broker's management API: the
    test suite finds broker-bound fields by this marker and checks each one refuses control characters."""

    def __init__(self, *, reaches_broker: bool = False) -> None:
        self.reaches_broker = reaches_broker

    def __call__(self, value: object) -> None:
        refuse_control_characters(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoControlCharacters) and other.reaches_broker == self.reaches_broker

    def __hash__(self) -> int:
        return hash((NoControlCharacters, self.reaches_broker))


no_control_characters = NoControlCharacters()
# For values that reach a broker's files or its management API: topics, MQTT usernames, client ids, names.
broker_text = NoControlCharacters(reaches_broker=True)


class RefuseControlCharactersMixin:
    """A field mixin (DRF serializer field or Django form field) that adds `no_control_characters`, or
    `broker_text` when the class sets `reaches_broker = True`."""

    reaches_broker = False
    validators: list[Any]  # the field's own, set by the field class this is mixed into

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.validators.append(broker_text if self.reaches_broker else no_control_characters)


def reaches_broker(field: object) -> bool:
    """Whether a model, form or serializer field carries the broker marker."""
    return any(isinstance(v, NoControlCharacters) and v.reaches_broker for v in getattr(field, "validators", ()))


def whole_number(raw: object, *, max_digits: int = 18) -> int | None:
    """`raw` as a non-negative integer when it is 1 to `max_digits` ASCII digits (a query parameter, a header's
    field), else None. str.isdigit() alone accepts digits int() refuses ("²"), and int() refuses more than 4,300
    digits: each of those reached int() unguarded and answered 500."""
    if not isinstance(raw, str) or not 0 < len(raw) <= max_digits or not (raw.isascii() and raw.isdigit()):
        return None
    return int(raw)
