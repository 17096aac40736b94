"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers; Redis is reported).

Readiness fails (503) only without the database. Without Redis the API still serves reads and writes (rate limits per
process, tasks left to the sweeps), so `/readyz` answers 200 with `status: degraded`: a Redis outage must not take
every web pod out of the load balancer at once. Nothing here changes state.
"""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from controlplane import buckets as ratelimit


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        timeout = settings.RATE_LIMIT_REDIS_TIMEOUT_SECONDS
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means degraded; say which
        checks["redis"] = f"error: {type(exc).__name__}"
    # What this process's rate limiter is doing now: it notices a recovered Redis on its next request.
    checks["rate_limits"] = "per-process (Redis unreachable)" if ratelimit.degraded() else "shared (Redis)"
    if checks["database"] != "ok":
        status, code = "unavailable", 503
    elif checks["redis"] != "ok" or ratelimit.degraded():
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    return JsonResponse({"status": status, "checks": checks}, status=code)
