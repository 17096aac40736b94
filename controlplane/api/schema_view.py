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
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework.request import Request


@method_decorator(gzip_page, name="dispatch")
class OpenApiDocumentView(SpectacularAPIView):
    _rendered: ClassVar[dict[tuple[str, str], bytes]] = {}
    _document: ClassVar[dict[str, Any] | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @extend_schema(exclude=True)  # the document does not describe itself
    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        renderer = request.accepted_renderer
        media_type = request.accepted_media_type
        key = (type(renderer).__name__, media_type)
        content = self._rendered.get(key)
        if content is None:
            with self._lock:
                content = self._rendered.get(key)
                if content is None:
                    rendered = renderer.render(self._built(request), media_type, self.get_renderer_context())
                    content = rendered.encode() if isinstance(rendered, str) else rendered
                    type(self)._rendered[key] = content
        charset = getattr(renderer, "charset", None)
        response = HttpResponse(content, content_type=f"{media_type}; charset={charset}" if charset else media_type)
        title = spectacular_settings.TITLE or "schema"
        response["Content-Disposition"] = f'inline; filename="{title}.{renderer.format}"'
        return response

    def _built(self, request: Request) -> dict[str, Any]:
        """The document (the caller holds the lock): every format renders the same one."""
        document = type(self)._document
        if document is None:
            generator = self.generator_class(urlconf=self.urlconf, api_version=None, patterns=self.patterns)
            document = type(self)._document = generator.get_schema(request=request, public=True)
        return document
