"""`Idempotency-Key` for every mutating API request, and the same records for the console's forms (console.once).

Keys belong to a caller: the API key itself (whatever spelling of its header, and whichever of its secrets during a
rotation's overlap) or the signed-in user, as the view's own authentication establishes it. The first request with
a key runs; its response (unless 5xx, 401 or 429, which did not run the operation) is kept, encrypted (it can hold a
secret, such as a new API key's), for IDEMPOTENCY_TTL_SECONDS and replayed, with `Idempotent-Replayed: true`, to any
later request of the same caller with the same key and the same body. A later request is answered from the record
only after the view's own checks pass for it as they stand now (authentication, tenancy, scopes, and the view's
checks on the object or the input, ScopedViewSet.action_checks): a revoked key, a removed member or a demoted one
gets the refusal it would get without the header, never the stored response. The same key with another body answers
422. A duplicate arriving while the first still runs waits for it (the unique row is the lock), then replays.
"""

import datetime
import hashlib
import time
from urllib.parse import urlencode

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpResponse
from django.http.request import RawPostDataException
from django.utils import timezone

from controlplane import crypto
from controlplane.api.problems import problem_response
from idempotency.models import IdempotencyRecord

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The scopes a console page required, kept with a record of its 201 answer for console.once to check them again
# before it replays the page; never sent.
CONSOLE_REQUIRED_HEADER = "X-Console-Required"
KEPT_HEADERS = ("Content-Type", "Location", CONSOLE_REQUIRED_HEADER)
WAIT_SECONDS = 15


def _hashed(caller: str) -> str:
    return hashlib.sha256(caller.encode()).hexdigest()


def _session_scope(request) -> str | None:
    """The signed-in user of a console request; None for anonymous ones (sign-up, invitation acceptance), which have
    nothing to scope a key to."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return _hashed(f"user:{user.pk}")
    return None


def _api_scope(request, view_func, view_args, view_kwargs) -> str | None:
    """The caller of an API request as the view's own authenticators establish it: the credential's
    `idempotency_scope` (an API key: the key, not the text of its header), else the signed-in user. None when
    authentication fails or finds no one: the view answers that itself, and nothing is recorded."""
    bound = _bind(request, view_func, view_args, view_kwargs)
    if bound is None:
        return None
    _view, drf_request = bound
    try:
        user, auth = drf_request.user, drf_request.auth
    except Exception:  # noqa: BLE001 - any refusal of the credential: the view answers it, nothing is recorded
        return None
    if auth is not None:
        scope = getattr(auth, "idempotency_scope", None)
        return _hashed(scope) if scope else None
    if user is not None and user.is_authenticated:
        return _hashed(f"user:{user.pk}")
    return None


def _body(request) -> bytes:
    """The request's bytes; for a multipart form already parsed (its stream consumed), its fields in order and each
    uploaded file's name and SHA-256 (a file is part of the body: another file under the same key is another body)."""
    try:
        return request.body
    except RawPostDataException:
        fields = sorted(request.POST.lists())
        files = sorted((name, [_file_digest(upload) for upload in uploads]) for name, uploads in request.FILES.lists())
        return urlencode(fields + files, doseq=True).encode()


def _file_digest(upload) -> str:
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)  # the view reads it next
    return f"{upload.name}:{upload.size}:{digest.hexdigest()}"


def _replay(record: IdempotencyRecord) -> HttpResponse:
    try:
        body = crypto.decrypt_bytes(record.body)
    except ValueError:  # made with an encryption key that is no longer configured
        return problem_response(
            409,
            detail="The response to this Idempotency-Key can no longer be read; send the request with a new key.",
            code="idempotency-unreadable",
        )
    response = HttpResponse(body, status=record.status_code)
    for name, value in record.headers.items():
        response[name] = value
    response["Idempotent-Replayed"] = "true"
    # How old the stored answer is, in seconds (HTTP's Age): the console replays a page of credentials only briefly.
    response["Age"] = str(max(0, int((timezone.now() - record.created_at).total_seconds())))
    return response


def _bind(request, view_func, view_args, view_kwargs):
    """A fresh instance of the DRF view `view_func` and its DRF request, set up as APIView.dispatch sets them up;
    None for a view that is not DRF's."""
    cls = getattr(view_func, "cls", None)
    if cls is None:
        return None
    view = cls(**getattr(view_func, "initkwargs", {}))
    actions = getattr(view_func, "actions", None)
    if actions is not None:  # a viewset: bind its actions to methods as ViewSetMixin.as_view does
        view.action_map = actions
        for method, action in actions.items():
            setattr(view, method, getattr(view, action))
    view.args, view.kwargs = view_args, view_kwargs
    drf_request = view.initialize_request(request, *view_args, **view_kwargs)
    view.request = drf_request
    view.headers = view.default_response_headers
    return view, drf_request


def _refusal(request, view_func, view_args, view_kwargs):
    """What the view would answer this request now, short of running it: DRF's own `initial()` (content
    negotiation, authentication, throttling, and for tenant views the organization, project and scope checks and
    the view's checks on the object or the input) on a fresh instance of the view. None when the caller may make
    the call; else the rendered refusal."""
    bound = _bind(request, view_func, view_args, view_kwargs)
    if bound is None:  # not a DRF view: nothing to check it against, so nothing is replayed
        return problem_response(409, detail="This request cannot be replayed.", code="idempotency-not-replayable")
    view, drf_request = bound
    try:
        view.initial(drf_request, *view_args, **view_kwargs)
    except Exception as exc:  # noqa: BLE001 - as APIView.dispatch: handle_exception answers what it knows, re-raises the rest
        response = view.finalize_response(drf_request, view.handle_exception(exc), *view_args, **view_kwargs)
        return response.render()
    return None


def _serves(view_func, method: str) -> bool:
    """Whether the resolved view implements `method` (an undeclared method must still answer 405)."""
    actions = getattr(view_func, "actions", None)
    if actions is not None:
        return method.lower() in actions
    cls = getattr(view_func, "cls", None) or getattr(view_func, "view_class", None)
    return cls is not None and hasattr(cls, method.lower())


class IdempotencyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        key = request.META.get("HTTP_IDEMPOTENCY_KEY")
        if (
            key is None
            or request.method not in MUTATING
            or not request.path.startswith("/api/")
            or not _serves(view_func, request.method)
        ):
            return None
        if not (1 <= len(key) <= 255) or not key.isprintable():
            return problem_response(
                400,
                detail="Idempotency-Key must be 1 to 255 printable characters.",
                errors=[{"field": "Idempotency-Key", "message": "Invalid header value.", "code": "invalid"}],
            )
        scope = _api_scope(request, view_func, view_args, view_kwargs)
        if scope is None:
            return None  # no one authenticated: the view refuses the request itself, and nothing is recorded
        return run_once(
            request,
            key,
            lambda: view_func(request, *view_args, **view_kwargs),
            # Whatever the record holds, the caller must first pass the view's checks as they stand now.
            refusal=lambda: _refusal(request, view_func, view_args, view_kwargs),
            scope=scope,
        )


def run_once(request, key: str, call, *, refusal, scope: str | None = None, problem=problem_response):
    """Run `call()` (which answers the request) at most once per (caller, key) within the TTL, and replay its response
    to duplicates. The API passes the Idempotency-Key header and its caller's `scope`; the console a key rendered
    into each form (the scope is then the signed-in user). `refusal()` answers a duplicate that may no longer make
    the call (None when it may); `problem` builds the answers for a reused key or a first attempt still running
    (problem+json for the API, a page for the console) from (status, title, detail, errors=..., code=...)."""
    scope = scope or _session_scope(request)
    if scope is None:
        return call()
    fingerprint = hashlib.sha256(
        b"\n".join([request.method.encode(), request.get_full_path().encode(), _body(request)])
    ).hexdigest()
    expired_before = timezone.now() - datetime.timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS)
    IdempotencyRecord.objects.filter(scope=scope, key=key, created_at__lt=expired_before).delete()
    try:
        with transaction.atomic():
            record = IdempotencyRecord.objects.create(scope=scope, key=key, fingerprint=fingerprint)
    except IntegrityError:
        refused = refusal()
        if refused is not None:
            return refused
        return _duplicate(scope, key, fingerprint, problem)

    try:
        response = call()
        if hasattr(response, "render") and callable(response.render):
            response = response.render()
    except BaseException:
        record.delete()
        raise
    if response.status_code >= 500 or response.status_code in (401, 429) or response.streaming:
        record.delete()  # the operation did not (reliably) run: let the client retry with the same key
        return response
    record.completed = True
    record.status_code = response.status_code
    record.headers = {name: response[name] for name in KEPT_HEADERS if name in response}
    record.body = crypto.encrypt_bytes(response.content)
    record.save(update_fields=["completed", "status_code", "headers", "body"])
    return response


def _duplicate(scope: str, key: str, fingerprint: str, problem):
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        record = IdempotencyRecord.objects.filter(scope=scope, key=key).first()
        if record is None:
            return problem(
                409,
                detail="The first request with this Idempotency-Key failed; retry it.",
                code="idempotency-retry",
            )
        if record.fingerprint != fingerprint:
            return problem(
                422,
                "Idempotency-Key reused",
                "This Idempotency-Key was used with a different request body or path.",
                errors=[{"field": "Idempotency-Key", "message": "Already used for another request.", "code": "reused"}],
                code="idempotency-key-reused",
            )
        if record.completed:
            return _replay(record)
        if time.monotonic() > deadline:
            response = problem(
                409,
                detail="A request with this Idempotency-Key is still in progress.",
                code="idempotency-in-progress",
            )
            response["Retry-After"] = "1"
            return response
        time.sleep(0.05)
