"""Hierarchical API rate limits: token buckets (controlplane.buckets) for the platform, the organization and the
caller, taken by a DRF throttle before each API view runs; the base view copies the decision into RateLimit-* headers.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from controlplane.buckets import Bucket, degraded, take

__all__ = ["Bucket", "HierarchicalRateThrottle", "buckets_for", "degraded", "take"]


# Organization overrides ({level: [capacity, refill per second]}) are read from the database at most every 30 s per
# process.
Overrides = dict[str, Any]
_overrides: dict[str, tuple[float, Overrides]] = {}


def _organization_overrides(org_public_id: str) -> Overrides:
    cached = _overrides.get(org_public_id)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    from organizations.models import Organization

    value: Overrides = (
        Organization.objects.filter(public_id=org_public_id).values_list("rate_limits", flat=True).first() or {}
    )
    if len(_overrides) > 10_000:  # unknown ids in URLs must not grow this without bound
        _overrides.clear()
    _overrides[org_public_id] = (time.monotonic() + 30, value)
    return value


def _limits(level: str, overrides: Overrides) -> tuple[float, float]:
    capacity, rate = overrides.get(level) or settings.RATE_LIMITS[level]
    return float(capacity), float(rate)


def buckets_for(request: Request, view: Any) -> list[Bucket]:
    from controlplane.middleware import client_ip

    # The organization's bucket and overrides apply only once the view resolved the caller's membership of it:
    # otherwise anyone could spend a customer's budget by requesting its URLs.
    organization = getattr(view, "organization", None)
    org = getattr(organization, "public_id", None)
    overrides = _organization_overrides(org) if isinstance(org, str) and len(org) <= 32 else {}
    buckets = [Bucket("platform", "platform", *_limits("platform", {}))]
    if org:
        buckets.append(Bucket("organization", f"org:{org}", *_limits("organization", overrides)))
    auth = getattr(request, "auth", None)
    user = getattr(request, "user", None)
    key_prefix = getattr(auth, "prefix", None)  # an API key authenticated the request
    if key_prefix:
        principal = f"key:{key_prefix}"
    elif user is not None and user.is_authenticated:
        principal = f"user:{user.pk}"
    else:
        principal = f"ip:{client_ip(request)}"
    buckets.append(Bucket("principal", principal, *_limits("principal", overrides)))
    return buckets


class HierarchicalRateThrottle(BaseThrottle):
    """DRF throttle over the three buckets; the base view copies the decision into RateLimit-* headers."""

    _wait: int | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        if not settings.RATE_LIMITS_ENABLED:
            return True
        decision = take(buckets_for(request, view))
        request._rate_limit = decision  # type: ignore[attr-defined]  # read by RateLimitHeadersMixin
        short = [state.retry_after for state in decision.states if state.remaining < 1]
        self._wait = max(short) if not decision.allowed and short else None
        return decision.allowed

    def wait(self) -> int | None:
        return self._wait
