"""Serializer bases that refuse what the default DRF ones quietly accept: unknown fields and numbers for strings."""

import datetime
from typing import TYPE_CHECKING, Any

from rest_framework import serializers

from controlplane.validators import RefuseControlCharactersMixin


class StrictCharField(serializers.CharField):
    """A string field that refuses numbers and booleans instead of coercing them."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class PlainTextField(RefuseControlCharactersMixin, StrictCharField):
    """A one-line string a person types (a name): control characters are refused with a 400 naming the field."""


class BrokerTextField(RefuseControlCharactersMixin, StrictCharField):
    """A string that reaches a broker's files or a broker's management API (a topic, an MQTT username, a client id):
    control characters are refused with a 400 naming the field. Marked, so the test suite finds every such field."""

    reaches_broker = True


# The mixin is only ever mixed into a Serializer; typed as one so its fields and super() resolve.
if TYPE_CHECKING:
    _SerializerBase = serializers.Serializer[Any]
else:
    _SerializerBase = object


class StrictFieldsMixin(_SerializerBase):
    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            unknown = sorted(set(data) - writable)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class InputSerializer(StrictFieldsMixin, serializers.Serializer[Any]):
    pass


def iso_datetime(value: datetime.datetime | None) -> str | None:
    """What DRF's DateTimeField renders under USE_TZ and UTC (`2026-11-01T09:30:00.123456Z`), without its overhead."""
    if value is None:
        return None
    return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
