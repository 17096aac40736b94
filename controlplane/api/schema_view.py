"""GET /api/schema/: the OpenAPI document, built once per process and rendered once per format.

The document is public and the same for every caller (one API version, English), while building it takes seconds of
CPU: built per request, anyone could keep a worker busy with a loop of GETs. Nothing in a request (its query string
included) makes it build again; a new deploy (a new process) does."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from django.http import HttpResponse
from django.utils.decorators import method_decorator
from django.views.decorators.gzip import gzip_page
from drf_spectacular.views import SpectacularAPIView
from rest_framework.request import Request


@method_decorator(gzip_page, name="dispatch")
class OpenApiDocumentView(SpectacularAPIView):
    _rendered: ClassVar[dict[tuple[str, str], bytes]] = {}
    _document: ClassVar[dict[str, Any] | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:  # type: ignore[override]
        renderer = request.accepted_renderer
        media_type = request.accepted_media_type
        key = (type(renderer).__name__, media_type)
        content = self._rendered.get(key)
        if content is None:
            with self._lock:
                content = self._rendered.get(key)
                if content is None:
                    content = renderer.render(self._built(request), media_type, self.get_renderer_context())
                    type(self)._rendered[key] = content
        charset = getattr(renderer, "charset", None)
        response = HttpResponse(content, content_type=f"{media_type}; charset={charset}" if charset else media_type)
        response["Content-Disposition"] = f'inline; filename="{self._get_filename(request, None)}"'
        return response

    def _built(self, request: Request) -> dict[str, Any]:
        """The document (the caller holds the lock): every format renders the same one."""
        if type(self)._document is None:
            generator = self.generator_class(urlconf=self.urlconf, api_version=None, patterns=self.patterns)
            type(self)._document = generator.get_schema(request=request, public=True)
        return type(self)._document
