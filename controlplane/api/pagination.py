"""Cursor pagination: stable under inserts, opaque cursors, `page_size` up to 200."""

from collections.abc import Sequence
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Field, Model, QuerySet
from rest_framework import exceptions, pagination
from rest_framework.request import Request
from rest_framework.views import APIView

from controlplane.ids import holds_nul
from controlplane.validators import whole_number

INVALID_CURSOR = "This cursor is not valid."


class CursorPagination(pagination.CursorPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
    ordering = ("-created_at", "-id")

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.getlist(self.page_size_query_param)
        if not raw:
            return self.page_size
        # DRF would silently fall back to the default; a client asking for something invalid should hear so.
        size = whole_number(raw[0]) if len(raw) == 1 else None
        if size is None or not 1 <= size <= self.max_page_size:
            raise exceptions.ValidationError(
                {self.page_size_query_param: [f"A whole number from 1 to {self.max_page_size}."]}
            )
        return size

    def paginate_queryset(
        self, queryset: QuerySet[Any] | Sequence[Any], request: Request, view: APIView | None = None
    ) -> list[Any] | None:
        # decode_cursor checks the position against the ordering's column
        self._model: type[Model] | None = getattr(queryset, "model", None)
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request: Request) -> pagination.Cursor | None:
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound:
            # DRF answers 404 for a bad cursor, which reads as "no such list"; it is a bad parameter.
            raise self._invalid_cursor() from None
        if cursor is not None and cursor.position is not None and not self._position_fits(str(cursor.position)):
            raise self._invalid_cursor()
        return cursor

    def _invalid_cursor(self) -> exceptions.ValidationError:
        return exceptions.ValidationError({self.cursor_query_param: [INVALID_CURSOR]})

    def _position_fits(self, position: str) -> bool:
        """Whether the cursor's position can be compared with the first ordering column. A cursor is base64 anyone can
        write, and DRF filters on its position as written: "abc" against an integer column raises ValueError, a NUL
        in text is refused by PostgreSQL (DataError). Either is a bad cursor, not a server error."""
        if holds_nul(position):
            return False
        if self._model is None:
            return True
        try:
            field = self._model._meta.get_field(self.ordering[0].lstrip("-"))
        except FieldDoesNotExist:  # an ordering through a relation: the NUL check is all we can say
            return True
        if not isinstance(field, Field):
            return True
        try:
            field.get_prep_value(field.to_python(position))
        except (DjangoValidationError, ValueError, TypeError):
            return False
        return True

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        params = super().get_schema_operation_parameters(view)
        for param in params:
            if param["name"] == self.page_size_query_param:
                param["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
        return params
