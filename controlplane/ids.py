"""Public identifiers: a type prefix and 20 random base32 characters (`org_…`, `prj_…`, `dep_…`).

Integer primary keys stay internal; anything a client sees or sends is a public id. Never derive one from data.
"""

import base64
import secrets
from typing import TYPE_CHECKING, Any

from django.db import models


def holds_nul(*values: object) -> bool:
    """Whether any of these strings holds a NUL. PostgreSQL text cannot, so no id or name in the database does, and a
    query with one fails (DataError, a 500) instead of finding nothing: an id from a URL is checked before its lookup."""
    return any(isinstance(value, str) and "\x00" in value for value in values)


def make_public_id(prefix: str) -> str:
    token = base64.b32encode(secrets.token_bytes(13)).decode().rstrip("=").lower()[:20]
    return f"{prefix}_{token}"


# Django's fields are generic only to the type checker (django-stubs); at run time they cannot be subscripted.
if TYPE_CHECKING:
    _CharField = models.CharField[str, str]
else:
    _CharField = models.CharField


class PublicIdField(_CharField):
    """A unique, indexed, immutable public id, generated on first save."""

    def __init__(self, *args: Any, prefix: str, **kwargs: Any) -> None:
        self.prefix = prefix
        kwargs.setdefault("max_length", 32)
        kwargs.setdefault("unique", True)
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> Any:
        name, path, args, kwargs = super().deconstruct()
        kwargs["prefix"] = self.prefix
        for key in ("max_length", "unique", "editable"):
            kwargs.pop(key, None)
        return name, path, args, kwargs

    def pre_save(self, model_instance: models.Model, add: bool) -> str:
        value: str = getattr(model_instance, self.attname)
        if not value:
            value = make_public_id(self.prefix)
            setattr(model_instance, self.attname, value)
        return value
