"""A console form submitted twice changes things once: the same idempotency records as the API's Idempotency-Key.

Each form carries a random `form_key` rendered with it ({% post_guard %}); a second POST with the same key and body
replays the first answer (usually a redirect to the result), one with the same key and another body is refused.
"""

from __future__ import annotations

import functools

from django.shortcuts import render

from idempotency.middleware import run_once

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


def once(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        key = request.POST.get(FORM_KEY, "") if request.method == "POST" else ""
        if not key or len(key) > 64 or not key.isprintable():
            return view(request, *args, **kwargs)
        return run_once(
            request,
            f"console:{key}",
            lambda: view(request, *args, **kwargs),
            problem=functools.partial(_problem_page, request),
        )

    return wrapper


def posted(request):
    """The POST data of a POST (even an empty one, which must fail validation rather than read as no submit)."""
    return request.POST if request.method == "POST" else None
