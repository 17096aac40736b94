"""A console form submitted twice changes things once: the same idempotency records as the API's Idempotency-Key.

Each form carries a random `form_key` rendered with it ({% post_guard %}); a second POST with the same key and body
replays the first answer when it was a redirect to the result or, for a few minutes, a 201 page showing it; one with
the same key and another body is refused.
"""

from __future__ import annotations

import functools
import json

from django.http import Http404
from django.shortcuts import render

from idempotency.middleware import CONSOLE_REQUIRED_HEADER, run_once

FORM_KEY = "form_key"


def _problem_page(request, status, title=None, detail="", errors=None, code=""):
    if status == 422:
        detail = "This form was already submitted with other values. Reload the page and submit it again."
    elif code == "idempotency-retry":
        detail = "The first submission of this form failed. Reload the page and submit it again."
    elif code == "idempotency-in-progress":
        detail = "This form is still being processed. Wait a moment, then reload the page."
    context = {"status": status, "title": "This form was already submitted", "detail": detail}
    return render(request, "console/problem.html", context, status=status)


def _refusal(request, kwargs):
    """A duplicate from someone who is no longer a member of the page's organization gets the page's 404, never
    what was stored for them."""
    from console import tenancy

    org_id = kwargs.get("org_id")
    if org_id is None:
        return None
    try:
        tenancy.for_organization(request, org_id)
    except Http404:
        return render(request, "404.html", status=404)
    return None


# A 201 page shows what the first submit made, credentials among them: replayed for a double click or a reload, not
# for as long as the record lives (IDEMPOTENCY_TTL_SECONDS), when the member may have lost the role that made them.
SHOWN_PAGE_REPLAY_SECONDS = 300


def _made_something(response) -> bool:
    if response.status_code == 201:
        return int(response.get("Age", "0")) <= SHOWN_PAGE_REPLAY_SECONDS
    return 300 <= response.status_code < 400


def _noting_required(request, view, args, kwargs):
    """The view's answer; a 201 page carries the scopes the view required (console.tenancy keeps them), stored with
    the record for the replay's check and taken off before the answer leaves."""
    from console import tenancy

    setattr(request, tenancy.REQUIRED_ATTRIBUTE, set())
    response = view(request, *args, **kwargs)
    if response.status_code == 201:
        required = sorted(getattr(request, tenancy.REQUIRED_ATTRIBUTE), key=lambda item: (item[0], item[1] or 0))
        response[CONSOLE_REQUIRED_HEADER] = json.dumps(required)
    return response


def _still_allowed(request, kwargs, response) -> bool:
    """Whether the caller still holds every scope the first answer's view required. A 201 page shows credentials:
    a member who lost the role that made them gets what the view answers now, not the page again."""
    from console import tenancy

    try:
        required = json.loads(response.get(CONSOLE_REQUIRED_HEADER) or "null")
        console = tenancy.for_organization(request, kwargs["org_id"])
    except (ValueError, KeyError, Http404):
        return False
    return isinstance(required, list) and console.still_allows(required)


def once(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        key = request.POST.get(FORM_KEY, "") if request.method == "POST" else ""
        if not key or len(key) > 64 or not key.isprintable():
            return view(request, *args, **kwargs)
        response = run_once(
            request,
            f"console:{key}",
            lambda: _noting_required(request, view, args, kwargs),
            refusal=lambda: _refusal(request, kwargs),
            problem=functools.partial(_problem_page, request),
        )
        replayed = bool(response.get("Idempotent-Replayed"))
        if replayed and (
            not _made_something(response)
            or (response.status_code == 201 and not _still_allowed(request, kwargs, response))
        ):
            # A stored refusal or page of field errors changed nothing: the view answers again, with today's checks
            # and data. A redirect to what the first submit did, or a 201 page showing what it made (credentials
            # shown once, which a second run would refuse as taken and so lose) within SHOWN_PAGE_REPLAY_SECONDS to
            # a caller who still holds the scopes that made it, is replayed; an older one is not, nor one to a caller
            # who lost a scope (the view answers again: refusing the scope, or what is taken).
            return view(request, *args, **kwargs)
        if CONSOLE_REQUIRED_HEADER in response:
            del response[CONSOLE_REQUIRED_HEADER]
        return response

    return wrapper


def posted(request):
    """The POST data of a POST (even an empty one, which must fail validation rather than read as no submit)."""
    return request.POST if request.method == "POST" else None
