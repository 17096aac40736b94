"""Turns what a service refuses into what a console page shows: field errors beside their field, or a page message.

One place for every kind of refusal (the domain errors of controlplane.errors that services raise, Django's
ValidationError from model-level code, and DRF's exceptions from the API serializers the console's forms validate
with), each with the HTTP status the API would answer. It never decides whether something is refused.
"""

from __future__ import annotations

import dataclasses

from django.contrib import messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions as drf

from controlplane import errors as domain
from controlplane.api.problems import domain_status

# Everything a console view catches around a service call. Anything else is a bug and answers 500.
REFUSALS = (domain.DomainError, DjangoValidationError, DjangoPermissionDenied, drf.APIException)


@dataclasses.dataclass
class Refusal:
    status: int
    fields: dict[str, list[str]]  # "__all__" for messages about the whole input

    @property
    def messages(self) -> list[str]:
        return [message for values in self.fields.values() for message in values]

    @property
    def text(self) -> str:
        return " ".join(self.messages)


def _flatten_drf(detail, path: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            key = str(key)
            name = path if key in ("non_field_errors", "__all__") else (f"{path}.{key}" if path else key)
            for field, values in _flatten_drf(value, name).items():
                out.setdefault(field, []).extend(values)
    elif isinstance(detail, list):
        for index, item in enumerate(detail):
            name = path if isinstance(item, str) else (f"{path}.{index}" if path else str(index))
            for field, values in _flatten_drf(item, name).items():
                out.setdefault(field, []).extend(values)
    else:
        out.setdefault(path or "__all__", []).append(str(detail))
    return out


def explain(exc: BaseException) -> Refusal:
    if isinstance(exc, domain.DomainError):
        status = domain_status(exc)  # the API's status for the same refusal
        fields: dict[str, list[str]] = {}
        for error in getattr(exc, "errors", None) or []:  # any domain error may name the fields to blame
            fields.setdefault(error.field or "__all__", []).append(error.message)
        return Refusal(status, fields or {"__all__": [exc.message]})
    if isinstance(exc, DjangoValidationError):
        return explain(domain.ValidationFailed.from_django(exc))
    if isinstance(exc, DjangoPermissionDenied):
        return Refusal(403, {"__all__": [str(exc) or "Your role does not allow this."]})
    if isinstance(exc, drf.APIException):
        return Refusal(exc.status_code, _flatten_drf(exc.detail))
    raise TypeError(f"not a refusal: {exc!r}")


def to_form(form, exc: BaseException, *, aliases: dict[str, str] | None = None) -> int:
    """Put the refusal's messages on the form, each beside its field where the form has it. Returns the status."""
    refusal = explain(exc)
    aliases = aliases or {}
    for field, values in refusal.fields.items():
        name = aliases.get(field, aliases.get(field.split(".")[0], field))
        form.add_error(name if name in form.fields else None, values)
    return refusal.status


def to_page(request, exc: BaseException) -> int:
    """Show the refusal as a message at the top of the next page. Returns the status."""
    refusal = explain(exc)
    for field, values in refusal.fields.items():
        for message in values:
            prefix = "" if field == "__all__" or message.lower().startswith(field.split(".")[-1]) else f"{field}: "
            messages.error(request, f"{prefix}{message}")
    return refusal.status
