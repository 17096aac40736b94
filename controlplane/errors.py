"""The domain errors every service raises, defined once.

Services speak in these and never in HTTP: the API's exception handler (`controlplane.api.problems`) turns them into
problem+json, the console into form and page messages. Nothing here imports Django REST framework.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.core.exceptions import ValidationError as DjangoValidationError
    from django.db.models import Model


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One message about one input. `field` is a dotted path into the input (`users.0.topic`), or None when the
    message is about the request as a whole."""

    field: str | None
    message: str
    code: str = "invalid"


def _field_errors(errors, code: str) -> list[FieldError]:
    """FieldErrors from a mapping of field -> message(s) ("__all__" or None: the input as a whole), a message about
    the whole input, or FieldErrors as they are."""
    if errors is None:
        return []
    if isinstance(errors, str):
        return [FieldError(None, errors, code)]
    if isinstance(errors, Mapping):
        items = []
        for field, messages in errors.items():
            for message in [messages] if isinstance(messages, str) else messages:
                name = None if field in ("__all__", "non_field_errors", None) else str(field)
                items.append(FieldError(name, str(message), code))
        return items
    return list(errors)


class DomainError(Exception):
    """Base of every error a service raises on purpose. `code` is a stable, kebab-case machine word.

    `fields` names the inputs to blame (`Conflict(fields={"name": "Taken."})`); without a message, the first field
    message is the message."""

    code = "error"
    default_message = "The request could not be completed."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        fields: Mapping[str, str | Iterable[str]] | None = None,
    ) -> None:
        if code:
            self.code = code
        self.errors: list[FieldError] = _field_errors(fields, self.code)
        self.message = message or (self.errors[0].message if self.errors else self.default_message)
        super().__init__(self.message)


class NotFound(DomainError):
    """The object does not exist, or the caller may not know that it does (another tenant's object)."""

    code = "not-found"
    default_message = "Not found."


class Conflict(DomainError):
    """The request is valid but the current state of the object forbids it (deletion protection, a running
    operation, a name already taken that is not a field error)."""

    code = "conflict"
    default_message = "The request conflicts with the current state of the resource."


class Unprocessable(DomainError):
    """Well-formed and allowed, but not processable as it stands (a quote that has expired)."""

    code = "unprocessable"
    default_message = "The request is well-formed but cannot be processed."


class PermissionDenied(DomainError):
    """The caller is known and sees the object but may not do this to it."""

    code = "permission-denied"
    default_message = "You do not have permission to perform this action."


class RateLimited(DomainError):
    code = "rate-limited"
    default_message = "Too many requests."

    def __init__(self, message: str | None = None, *, retry_after: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A service the request needs (the payment provider, DNS) did not answer: nothing was changed, and the same
    request may succeed after `retry_after` seconds."""

    code = "unavailable"
    default_message = "A service this request needs did not answer; nothing was changed. Try again shortly."

    def __init__(self, message: str | None = None, *, retry_after: float = 30.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ValidationFailed(DomainError):
    """Input that cannot be accepted, with one message per field where a field is to blame.

    Build it from a mapping (`ValidationFailed({"tier": "Unknown tier."})`), a list of FieldError, or a message about
    the whole input (`ValidationFailed("…")`)."""

    code = "validation-error"
    default_message = "The input is not valid."

    def __init__(
        self,
        errors: str | Mapping[str, str | Iterable[str]] | Iterable[FieldError] | None = None,
        *,
        code: str | None = None,
    ) -> None:
        items = _field_errors(errors, code or "invalid")
        summary = "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in items[:5])
        super().__init__(summary or self.default_message)
        self.errors = items

    @classmethod
    def from_django(cls, exc: DjangoValidationError) -> ValidationFailed:
        """Django's ValidationError (model or field validation) as the same messages, field by field."""
        return cls(exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages})

    def message_dict(self) -> dict[str, list[str]]:
        """Messages by field ("__all__" for the whole input), the shape Django forms take in `add_error`."""
        out: dict[str, list[str]] = {}
        for error in self.errors:
            out.setdefault(error.field or "__all__", []).append(error.message)
        return out


def model_clean(instance: Model, **options: Any) -> None:
    """`instance.full_clean(**options)`, its refusal raised as ValidationFailed, message by message beside the field
    at fault ("__all__": the instance as a whole), so a service that validates a model still raises a domain error."""
    from django.core.exceptions import ValidationError

    try:
        instance.full_clean(**options)
    except ValidationError as exc:
        raise ValidationFailed.from_django(exc) from None
