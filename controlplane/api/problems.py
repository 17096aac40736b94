"""Every API error as `application/problem+json` (RFC 9457), with field-level messages in `errors`.

`errors` is a list of {field, message, code}; `field` is a dotted path into the request body (`users.0.topic`), or
null for errors about the request as a whole. Nothing here decides *whether* a request fails, only how it reads.
"""

import logging
import math
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response

from controlplane import context
from controlplane import errors as domain

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://docs.mqtt-cloud.example/problems/"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."
    default_code = "conflict"


class Unprocessable(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "The request is well-formed but cannot be processed."
    default_code = "unprocessable"


FieldError = dict[str, Any]  # {field, message, code}


def _flatten(detail: Any, path: str = "") -> list[FieldError]:
    """Turn DRF's nested error structure into a flat list of field errors."""
    if isinstance(detail, dict):
        out = []
        for key, value in detail.items():
            key = str(key)
            if key in ("non_field_errors", "__all__"):
                out.extend(_flatten(value, path))
            else:
                out.extend(_flatten(value, f"{path}.{key}" if path else key))
        return out
    if isinstance(detail, list):
        if all(isinstance(item, (str, exceptions.ErrorDetail)) for item in detail):
            return [
                {"field": path or None, "message": str(item), "code": getattr(item, "code", "invalid")}
                for item in detail
            ]
        out = []
        for index, item in enumerate(detail):
            out.extend(_flatten(item, f"{path}.{index}" if path else str(index)))
        return out
    return [{"field": path or None, "message": str(detail), "code": getattr(detail, "code", "invalid")}]


_TITLES = {
    400: "Invalid request",
    401: "Authentication required",
    403: "Permission denied",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable request",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem_body(
    status_code: int,
    title: str | None = None,
    detail: str = "",
    errors: list[FieldError] | None = None,
    code: str = "",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (code or str(status_code)),
        "title": title or _TITLES.get(status_code, "Error"),
        "status": status_code,
        "detail": detail,
    }
    request_id = context.current().request_id
    if request_id:
        body["request_id"] = request_id
    body["errors"] = errors or []
    return body


def problem_response(
    status_code: int,
    title: str | None = None,
    detail: str = "",
    errors: list[FieldError] | None = None,
    code: str = "",
) -> JsonResponse:
    """A plain Django response, for middleware and Django-level handlers that run outside DRF."""
    return JsonResponse(
        problem_body(status_code, title, detail, errors, code), status=status_code, content_type=PROBLEM_CONTENT_TYPE
    )


_DOMAIN_STATUS = (
    (domain.NotFound, status.HTTP_404_NOT_FOUND),
    (domain.Conflict, status.HTTP_409_CONFLICT),
    (domain.PermissionDenied, status.HTTP_403_FORBIDDEN),
    (domain.RateLimited, status.HTTP_429_TOO_MANY_REQUESTS),
    (domain.ValidationFailed, status.HTTP_400_BAD_REQUEST),
    (domain.Unprocessable, status.HTTP_422_UNPROCESSABLE_ENTITY),
    (domain.Unavailable, status.HTTP_503_SERVICE_UNAVAILABLE),
)


def domain_status(exc: domain.DomainError) -> int:
    """The HTTP status of a domain error's kind, for the API and the console alike."""
    return next((code for kind, code in _DOMAIN_STATUS if isinstance(exc, kind)), status.HTTP_400_BAD_REQUEST)


def domain_error_response(exc: domain.DomainError) -> Response:
    """A service's domain error as problem+json: the status from its kind, the field messages as `errors`."""
    status_code = domain_status(exc)
    headers = {}
    if isinstance(exc, domain.RateLimited | domain.Unavailable):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    field_errors = [{"field": e.field, "message": e.message, "code": e.code} for e in exc.errors]
    return Response(
        problem_body(status_code, None, exc.message, field_errors, exc.code),
        status=status_code,
        headers=headers,
        content_type=PROBLEM_CONTENT_TYPE,
    )


def exception_handler(exc: Exception, ctx: dict[str, Any]) -> Response | None:
    if isinstance(exc, domain.DomainError):
        return domain_error_response(exc)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):
        # Services raise ValidationFailed (controlplane.errors.model_clean wraps full_clean). Django's own error can
        # still come from code below them (a model manager's checks, a query filter's parsing): answered alike.
        return domain_error_response(domain.ValidationFailed.from_django(exc))
    if not isinstance(exc, exceptions.APIException):
        return None  # a real bug: let Django log it and answer 500 through handler500

    headers: dict[str, str] = {}
    # DRF sets these on the exceptions its views raise: the authentication scheme, and a throttle's wait.
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = str(auth_header)
    wait = getattr(exc, "wait", None)
    if wait:
        headers["Retry-After"] = str(math.ceil(float(wait)))

    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors[:5])
        code = "validation-error"
    else:
        detail_value = exc.detail
        if isinstance(detail_value, (dict, list)):
            errors = _flatten(detail_value)
            detail = errors[0]["message"] if errors else ""
        else:
            errors = []
            detail = str(detail_value)
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else str(exc.default_code)
    return Response(
        problem_body(exc.status_code, None, detail, errors, str(code).replace("_", "-")),
        status=exc.status_code,
        headers=headers,
        content_type=PROBLEM_CONTENT_TYPE,
    )


@csrf_exempt  # a POST to a wrong API URL is a 404, not a CSRF failure page
def api_not_found(request: HttpRequest) -> HttpResponseBase:
    """Every path under /api/ that no route matched: a problem+json 404 in every environment, DEBUG included (Django's
    debug 404 page is HTML). A GET that only lacks its trailing slash is redirected, as CommonMiddleware would."""
    from django.conf import settings
    from django.http import HttpResponsePermanentRedirect
    from django.urls import Resolver404, resolve

    path = request.path_info
    if settings.APPEND_SLASH and request.method in ("GET", "HEAD") and not path.endswith("/"):
        try:
            match = resolve(path + "/")
        except Resolver404:
            match = None
        if match is not None and match.func is not api_not_found:
            return HttpResponsePermanentRedirect(request.get_full_path(force_append_slash=True))
    return problem_response(404, detail="No resource at this URL.")


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return problem_response(404, detail="No resource at this URL.")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return problem_response(500, detail="The server failed; the error was logged with this request id.")
    from django.views.defaults import server_error

    return server_error(request)
