"""Every answer the app gives carries the same security headers as its pages, whichever layer gives it: a static file
(WhiteNoise answers before the rest of the stack) and a body refused before anything reads it included."""

import pytest
from django.conf import settings
from django.templatetags.static import static

pytestmark = pytest.mark.django_db

SECURITY_HEADERS = (
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Cross-Origin-Opener-Policy",
)


def _security_headers(response) -> dict[str, str | None]:
    return {name: response.get(name) for name in SECURITY_HEADERS}


@pytest.fixture
def page_headers(client):
    """The security headers of a console page, which every other answer must carry too."""
    page = client.get("/console/login")
    assert page.status_code == 200
    headers = _security_headers(page)
    assert None not in headers.values(), headers
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == settings.CONTENT_SECURITY_POLICY
    return headers


def test_static_file_carries_the_pages_security_headers_when_whitenoise_serves_it(client, page_headers):
    response = client.get(static("console/favicon.svg"))
    assert response.status_code == 200 and response["Content-Type"].startswith("image/svg+xml")
    assert b"<svg" in b"".join(response.streaming_content)
    assert _security_headers(response) == page_headers


def test_body_over_the_limit_carries_the_pages_security_headers_when_refused_with_413(client, page_headers):
    body = b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    page = client.post("/console/login", body, content_type="application/octet-stream", HTTP_ACCEPT="text/html")
    assert page.status_code == 413 and page["Content-Type"].startswith("text/html")
    assert _security_headers(page) == page_headers
    api = client.post("/api/v1/organizations", body, content_type="application/json")
    assert api.status_code == 413 and api["Content-Type"] == "application/problem+json"
    assert _security_headers(api) == page_headers


def test_unreadable_content_length_carries_the_pages_security_headers_when_refused_with_400(client, page_headers):
    response = client.generic("POST", "/api/v1/organizations", b"{}", "application/json", CONTENT_LENGTH="many")
    assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"
    assert _security_headers(response) == page_headers


def test_https_redirect_carries_the_pages_security_headers(client, page_headers, settings):
    settings.SECURE_SSL_REDIRECT = True
    from django.test import Client

    response = Client().get("/console/login")  # a new client builds its middleware with the setting on
    assert response.status_code == 301 and response["Location"].startswith("https://")
    assert _security_headers(response) == page_headers
