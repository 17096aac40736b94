"""Hierarchical API rate limits: token buckets in Redis for the platform, the organization and the caller.

One Lua script checks every bucket of a request and takes a token from all of them or from none, so concurrent
requests on any number of web processes can never overdraw a bucket. Buckets refill continuously (Redis' own clock).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import redis
from django.conf import settings
from rest_framework.throttling import BaseThrottle

_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local cost = tonumber(ARGV[1])
local n = #KEYS
local tokens = {}
local allowed = 1
for i = 1, n do
  local capacity = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local t = tonumber(state[1])
  local ts = tonumber(state[2])
  if t == nil then t = capacity; ts = now end
  t = math.min(capacity, t + math.max(0, now - ts) * rate)
  tokens[i] = t
  if t < cost then allowed = 0 end
end
local out = {allowed}
for i = 1, n do
  local capacity = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  local t = tokens[i]
  if allowed == 1 then t = t - cost end
  if cost > 0 then
    redis.call('HSET', KEYS[i], 'tokens', tostring(t), 'ts', tostring(now))
    redis.call('EXPIRE', KEYS[i], math.ceil(capacity / rate) + 60)
  end
  table.insert(out, tostring(t))
end
return out
"""

_client_lock = threading.Lock()
_client: redis.Redis | None = None
_script = None


def _redis():
    global _client, _script
    with _client_lock:
        if _client is None:
            _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
            _script = _client.register_script(_SCRIPT)
    return _client, _script


@dataclasses.dataclass(frozen=True)
class Bucket:
    level: str  # platform | organization | principal
    key: str
    capacity: float
    refill_per_second: float


@dataclasses.dataclass(frozen=True)
class BucketState:
    bucket: Bucket
    remaining: float

    @property
    def reset_seconds(self) -> int:
        """Seconds until the bucket is full again."""
        return math.ceil(max(0.0, self.bucket.capacity - self.remaining) / self.bucket.refill_per_second)

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(max(0.0, 1 - self.remaining) / self.bucket.refill_per_second))


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    states: tuple[BucketState, ...]

    @property
    def tightest(self) -> BucketState:
        return min(self.states, key=lambda s: (s.remaining / s.bucket.capacity, s.remaining))

    def headers(self) -> dict[str, str]:
        tight = self.tightest
        return {
            "RateLimit-Limit": str(int(tight.bucket.capacity)),
            "RateLimit-Remaining": str(max(0, math.floor(tight.remaining))),
            "RateLimit-Reset": str(tight.reset_seconds),
            "RateLimit-Policy": ", ".join(
                f"{int(s.bucket.capacity)};w={math.ceil(s.bucket.capacity / s.bucket.refill_per_second)};"
                f'name="{s.bucket.level}"'
                for s in self.states
            ),
        }


def take(buckets: list[Bucket], *, cost: int = 1) -> Decision:
    """Take `cost` tokens from every bucket, or from none if any is short. cost=0 only reads."""
    _, script = _redis()
    keys = [f"ratelimit:{b.key}" for b in buckets]
    args = [cost]
    for b in buckets:
        args += [b.capacity, b.refill_per_second]
    result = script(keys=keys, args=args)
    allowed = int(result[0]) == 1
    states = tuple(BucketState(b, float(v)) for b, v in zip(buckets, result[1:]))
    return Decision(allowed=allowed, states=states)


# Organization overrides are read from the database at most every 30 s per process.
_overrides: dict[str, tuple[float, dict]] = {}


def _organization_overrides(org_public_id: str) -> dict:
    cached = _overrides.get(org_public_id)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    from organizations.models import Organization

    value = Organization.objects.filter(public_id=org_public_id).values_list("rate_limits", flat=True).first() or {}
    if len(_overrides) > 10_000:  # unknown ids in URLs must not grow this without bound
        _overrides.clear()
    _overrides[org_public_id] = (time.monotonic() + 30, value)
    return value


def _limits(level: str, overrides: dict) -> tuple[float, float]:
    capacity, rate = overrides.get(level) or settings.RATE_LIMITS[level]
    return float(capacity), float(rate)


def buckets_for(request, view) -> list[Bucket]:
    from controlplane.middleware import client_ip

    org = (getattr(view, "kwargs", None) or {}).get("org")
    overrides = _organization_overrides(org) if isinstance(org, str) and len(org) <= 32 else {}
    buckets = [Bucket("platform", "platform", *_limits("platform", {}))]
    if org:
        buckets.append(Bucket("organization", f"org:{org}", *_limits("organization", overrides)))
    auth = getattr(request, "auth", None)
    user = getattr(request, "user", None)
    if getattr(auth, "prefix", None):
        principal = f"key:{auth.prefix}"
    elif user is not None and user.is_authenticated:
        principal = f"user:{user.pk}"
    else:
        principal = f"ip:{client_ip(request)}"
    buckets.append(Bucket("principal", principal, *_limits("principal", overrides)))
    return buckets


class HierarchicalRateThrottle(BaseThrottle):
    """DRF throttle over the three buckets; the base view copies the decision into RateLimit-* headers."""

    def allow_request(self, request, view):
        if not settings.RATE_LIMITS_ENABLED:
            return True
        decision = take(buckets_for(request, view))
        request._rate_limit = decision
        short = [state.retry_after for state in decision.states if state.remaining < 1]
        self._wait = max(short) if not decision.allowed and short else None
        return decision.allowed

    def wait(self):
        return self._wait
