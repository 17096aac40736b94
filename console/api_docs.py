"""The API's reference pages as the console serves them: ReDoc from our own files and nothing from a CDN.

ReDoc's bundle (drf-spectacular-sidecar) draws its "API docs by Redocly" logo from cdn.redoc.ly whatever its
options say; the CSP blocks that request and reports a violation. The bundle is served here with that one address
replaced by the same logo's shape as a data: URI, which the CSP's img-src allows. Nothing else in it changes.
"""

import functools
import hashlib

from django.contrib.staticfiles import finders
from django.http import HttpResponse
from django.urls import reverse
from django.views.decorators.http import require_GET
from drf_spectacular.views import SpectacularRedocView

BUNDLE = "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"
CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
LOCAL_LOGO = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Ccircle cx='8' cy='8' r='7' fill='%23e53935'/%3E%3C/svg%3E"
)


@functools.cache
def _bundle() -> tuple[bytes, str]:
    path = finders.find(BUNDLE)
    with open(path, "rb") as handle:
        body = handle.read().replace(CDN_LOGO.encode(), LOCAL_LOGO.encode())
    return body, hashlib.sha256(body).hexdigest()[:16]


@require_GET
def redoc_bundle(request):
    body, etag = _bundle()
    response = HttpResponse(body, content_type="application/javascript; charset=utf-8")
    response["ETag"] = f'"{etag}"'
    response["Cache-Control"] = "public, max-age=86400"
    return response


class RedocView(SpectacularRedocView):
    template_name = "console/api/redoc.html"

    def _redoc_standalone(self):
        return reverse("redoc-bundle")
