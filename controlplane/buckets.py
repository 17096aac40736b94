"""Token buckets in Redis: the API's rate limits (controlplane.api.ratelimit) and any service's own allowance (how
many emails a public form may send to one address).

One Lua script checks every bucket of a request and takes a token from all of them or from none, so concurrent
requests on any number of web processes can never overdraw a bucket. Buckets refill continuously (Redis' own clock).
When Redis is unreachable the same buckets are kept per process (looser by the number of processes, never open):
a Redis outage must not turn every API call into an error. `/readyz` and `/metrics` say when that happens.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from typing import Any

import redis
from django.conf import settings

from controlplane import metrics
from controlplane.outage import Breaker

logger = logging.getLogger(__name__)

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
_script: Any = None  # redis-py's Script: called with keys and args, answers the Lua result

# After a failure, requests skip Redis for REDIS_OUTAGE_RETRY_SECONDS: a frozen Redis costs one timeout per process
# per period, not one per request.
redis_breaker = Breaker("ratelimit-redis", open_seconds=lambda: float(settings.REDIS_OUTAGE_RETRY_SECONDS))


def _redis() -> tuple[redis.Redis, Any]:
    global _client, _script
    with _client_lock:
        if _client is None:
            timeout = settings.RATE_LIMIT_REDIS_TIMEOUT_SECONDS
            _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout)
            _script = _client.register_script(_SCRIPT)
    return _client, _script


def reset_client() -> None:
    """Forget the Redis client and any remembered outage (settings changed: tests, a reloaded process)."""
    global _client, _script
    with _client_lock:
        if _client is not None:
            _client.close()
        _client = _script = None
    redis_breaker.reset()
    metrics.RATELIMIT_FALLBACK.set(0)


def degraded() -> bool:
    """True while this process counts rate limits on its own because Redis failed."""
    return redis_breaker.failing


@dataclasses.dataclass(frozen=True)
class Bucket:
    level: str  # the API's: platform | organization | principal; a service's own (mail)
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


class LocalBuckets:
    """The Lua script's token buckets in this process's memory, for while Redis is unreachable.

    Bounded: past `max_keys` buckets, those that have refilled completely (indistinguishable from new ones) are
    forgotten, then the least recently used, so unknown callers cannot grow it without limit.
    """

    def __init__(self, max_keys: int = 50_000) -> None:
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float, Bucket]] = {}  # key -> (tokens, monotonic time, bucket)

    def take(self, buckets: list[Bucket], *, cost: int = 1) -> Decision:
        now = time.monotonic()
        with self._lock:
            tokens = []
            for bucket in buckets:
                held, at, _ = self._state.get(bucket.key, (bucket.capacity, now, bucket))
                tokens.append(min(bucket.capacity, held + max(0.0, now - at) * bucket.refill_per_second))
            allowed = all(t >= cost for t in tokens)
            states = []
            for bucket, t in zip(buckets, tokens):
                if allowed:
                    t -= cost
                if cost > 0:
                    self._state.pop(bucket.key, None)  # re-insert: dict order is least recently used first
                    self._state[bucket.key] = (t, now, bucket)
                states.append(BucketState(bucket, t))
            if len(self._state) > self.max_keys:
                self._prune(now)
        return Decision(allowed=allowed, states=tuple(states))

    def _prune(self, now: float) -> None:
        for key, (held, at, bucket) in list(self._state.items()):
            if held + (now - at) * bucket.refill_per_second >= bucket.capacity:
                del self._state[key]
        for key in list(self._state)[: max(0, len(self._state) - self.max_keys // 2)]:
            del self._state[key]

    def __len__(self) -> int:
        return len(self._state)

    def clear(self) -> None:
        with self._lock:
            self._state.clear()


local_buckets = LocalBuckets()


def _take_in_redis(buckets: list[Bucket], cost: int) -> Decision:
    _, script = _redis()
    keys = [f"ratelimit:{b.key}" for b in buckets]
    args: list[float] = [cost]
    for b in buckets:
        args += [b.capacity, b.refill_per_second]
    result = script(keys=keys, args=args)
    allowed = int(result[0]) == 1
    states = tuple(BucketState(b, float(v)) for b, v in zip(buckets, result[1:]))
    return Decision(allowed=allowed, states=states)


def take(buckets: list[Bucket], *, cost: int = 1) -> Decision:
    """Take `cost` tokens from every bucket, or from none if any is short. cost=0 only reads.

    In Redis while it answers; in this process's buckets while it does not (`degraded()`), retrying Redis every
    REDIS_OUTAGE_RETRY_SECONDS.
    """
    if redis_breaker.allow():
        try:
            decision = _take_in_redis(buckets, cost)
        except redis.RedisError as exc:
            if redis_breaker.failed():
                metrics.RATELIMIT_FALLBACK.set(1)
                logger.error("rate limits: Redis unreachable (%s); counting per process until it answers", exc)
        else:
            if redis_breaker.succeeded():
                metrics.RATELIMIT_FALLBACK.set(0)
                local_buckets.clear()
                logger.warning("rate limits: Redis answers again; buckets are shared again")
            return decision
    metrics.RATELIMIT_FALLBACK_DECISIONS.inc()
    return local_buckets.take(buckets, cost=cost)
