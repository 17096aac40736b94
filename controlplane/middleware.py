"""Request-wide middleware: request ids and client context, the body size limit, the Content-Security-Policy header,
no storing of a signed-in user's pages.

Nothing here authorises anything: tenancy and scopes live in organizations.access and the API base classes.
"""

import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.shortcuts import render
from django.utils.cache import add_never_cache_headers

from controlplane import context
from controlplane.api.problems import problem_response

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}\Z")


def client_ip(request: HttpRequest) -> str | None:
    """The client address, trusting exactly TRUSTED_PROXY_COUNT hops of X-Forwarded-For and no more."""
    hops: int = settings.TRUSTED_PROXY_COUNT
    forwarded: str = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if hops and forwarded:
        chain = [part.strip() for part in forwarded.split(",") if part.strip()]
        if len(chain) >= hops:
            return chain[-hops]
    remote: str | None = request.META.get("REMOTE_ADDR")
    return remote


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]  # read by views and templates
        path = request.path_info
        via = "api" if path.startswith("/api/") else "admin" if path.startswith("/admin/") else "console"
        token = context.bind(
            request_id=request_id,
            ip=client_ip(request),
            user_agent=request.META.get("HTTP_USER_AGENT", "")[:512],
            via=via,
        )
        try:
            response = self.get_response(request)
        finally:
            context.reset(token)
        response["X-Request-Id"] = request_id
        return response


class BodySizeLimitMiddleware:
    """Refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE with 413 before anything reads them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return problem_response(400, "Invalid Content-Length", "The Content-Length header is not a number.")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if length > limit:
            if _wants_page(request):
                detail = f"What you sent is {length:,} bytes; the limit is {limit:,} bytes."
                return render(request, "413.html", {"detail": detail}, status=413)
            return problem_response(
                413, "Request body too large", f"The body is {length} bytes; the limit is {limit} bytes."
            )
        return self.get_response(request)


def _wants_page(request: HttpRequest) -> bool:
    """A browser's form post outside the API (the console): it gets a page, not problem+json. Its own script refuses
    a file over the limit beside the field (console.ConsoleForm); this page is what a browser without it sees."""
    return not request.path.startswith("/api/") and "text/html" in request.META.get("HTTP_ACCEPT", "")


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if settings.CONTENT_SECURITY_POLICY and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = settings.CONTENT_SECURITY_POLICY
        return response


class SignedInNoStoreMiddleware:
    """A page answered to a signed-in session is stored by no cache, the browser's own included: Back shows a stored
    copy even after signing out on a shared computer (an API key's secret shown once, an organization's data). A
    response that chose its own caching keeps it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and not response.has_header("Cache-Control"):
            add_never_cache_headers(response)
        return response
