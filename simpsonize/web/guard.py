"""Limits that keep one client, or many slow ones, from knocking the service over.

- ``ClientLimits``: per client, a rate limit on uploads (the ``limits`` library's moving window, stored in our Redis)
  and a cap on the client's jobs waiting or running. Both answer 429 + Retry-After + a sentence
  (``TooManyRequests``); ``SIMPSONIZE_RATE_LIMIT=off`` turns both off.
- ``UploadGate``: at most ``max_uploads_in_progress`` uploads being received or decoded at once (more get 503 at
  once, before their body is read), and at most ``decoders`` images decoded at once (the others wait their turn
  without holding a thread): each decode holds a full-size image.

The client is ``request.client.host``: the peer address, or the forwarded one when the peer is a trusted proxy
(``ProxyHeadersMiddleware`` with ``SIMPSONIZE_FORWARDED_ALLOW_IPS``, installed by ``create_app``). IPv6 clients are
counted per /64, the block one subscriber usually holds. Only a hash of the address is written to Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import secrets
import threading
import time
from contextlib import asynccontextmanager

import anyio
from limits import parse_many
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis

from simpsonize.queue import rq_adapter
from simpsonize.settings import Settings

# KEYS[1]: the client's sorted set (member -> expiry time). ARGV: now, cap, member, expiry, key ttl.
# Drops expired members, then adds ``member`` only if fewer than ``cap`` are left: one atomic step, so parallel
# uploads from one client cannot all pass the check.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class TooManyRequests(Exception):
    """429: this client is over its rate limit or has too many jobs waiting."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class Busy(Exception):
    """503: too many uploads are in progress right now."""


def client_key(host: str | None) -> str:
    """The identity limits are counted against: the IPv4 address, the IPv6 /64, or the literal peer name."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


def _hashed(client: str) -> str:
    return hashlib.sha256(client.encode()).hexdigest()[:32]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class ClientLimits:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.enabled = settings.rate_limited
        self.prefix = settings.key_prefix
        self.items = parse_many(settings.rate_limit) if self.enabled else []
        self.limiter = None
        if self.enabled:
            storage = RedisStorage(
                "redis://", connection_pool=redis.connection_pool, key_prefix=f"{self.prefix}:ratelimit"
            )
            self.limiter = MovingWindowRateLimiter(storage)
        self._reserve = redis.register_script(_RESERVE)

    def _jobs_key(self, client: str) -> str:
        return f"{self.prefix}:client:{_hashed(client)}"

    # -- rate ----------------------------------------------------------------------------------------------------
    def hit(self, client: str) -> None:
        """Count one upload; ``TooManyRequests`` when the client is over a rate limit."""
        if not self.enabled:
            return
        who = _hashed(client)
        for item in self.items:
            if not self.limiter.hit(item, "upload", who):
                reset = self.limiter.get_window_stats(item, "upload", who).reset_time
                retry = max(1, math.ceil(reset - time.time()))
                raise TooManyRequests(
                    f"Too many uploads from your address: the limit is {_plural(item.amount, 'photo')} per "
                    f"{_plural(item.multiples, item.GRANULARITY.name) if item.multiples > 1 else item.GRANULARITY.name}"
                    f"; please try again in {_plural(retry, 'second')}.",
                    retry,
                )

    # -- jobs waiting ----------------------------------------------------------------------------------------------
    def reserve(self, client: str) -> str | None:
        """Hold one of the client's job places for an upload in progress; returns a token for ``confirm``/``release``.

        ``TooManyRequests`` when the client already has ``max_queued_per_client`` jobs waiting or running.
        """
        if not self.enabled:
            return None
        s = self.settings
        key = self._jobs_key(client)
        self._forget_finished(key)
        token = f"upload:{secrets.token_urlsafe(12)}"
        now = time.time()
        expiry = now + s.upload_timeout + 60  # an upload that never confirms frees its place by then
        if not self._reserve(keys=[key], args=[now, s.max_queued_per_client, token, expiry, s.input_ttl]):
            raise TooManyRequests(
                f"You already have {_plural(s.max_queued_per_client, 'photo')} waiting; please wait for one to "
                f"finish before uploading another.",
                s.retry_after,
            )
        return token

    def confirm(self, client: str, token: str | None, job_id: str) -> None:
        """The upload became job ``job_id``: it holds the place until it starts running and ends (or expires)."""
        if token is None:
            return
        key = self._jobs_key(client)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(key, token)
            pipe.zadd(key, {f"job:{job_id}": time.time() + self.settings.input_ttl})
            pipe.expire(key, self.settings.input_ttl)
            pipe.execute()

    def release(self, client: str, token: str | None) -> None:
        if token is not None:
            self.redis.zrem(self._jobs_key(client), token)

    def _forget_finished(self, key: str) -> None:
        """Drop the client's jobs that have finished, failed, expired or were deleted."""
        jobs = [m.decode() for m in self.redis.zrange(key, 0, -1) if m.startswith(b"job:")]
        if not jobs:
            return
        # a job still counts against its client while it waits (in any of RQ's states before a start) or runs
        still = rq_adapter.still_open(self.redis, [member.removeprefix("job:") for member in jobs])
        done = [member for member, is_open in zip(jobs, still) if not is_open]
        if done:
            self.redis.zrem(key, *done)


class UploadGate:
    """Uploads in progress (non-blocking: full means 503 now) and decodes at once (blocking, without a thread)."""

    def __init__(self, settings: Settings) -> None:
        self.max_uploads = settings.max_uploads_in_progress
        self.in_progress = 0
        self.decoders = anyio.CapacityLimiter(settings.decoders)
        self.decoding = 0
        self.peak_decoding = 0  # the most decodes seen at once (tests and the memory benchmark read it)
        self._count_lock = threading.Lock()

    @asynccontextmanager
    async def upload(self):
        if self.in_progress >= self.max_uploads:  # one event loop: no lock needed between check and increment
            raise Busy()
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1

    async def decode(self, fn, *args, **kwargs):
        """Run ``fn`` in a worker thread once a decoder is free."""

        def counted():
            with self._count_lock:
                self.decoding += 1
                self.peak_decoding = max(self.peak_decoding, self.decoding)
            try:
                return fn(*args, **kwargs)
            finally:
                with self._count_lock:
                    self.decoding -= 1

        return await anyio.to_thread.run_sync(counted, limiter=self.decoders)


async def with_deadline(awaitable, seconds: float):
    """``awaitable``'s result, or ``TimeoutError`` after ``seconds``."""
    async with asyncio.timeout(seconds):
        return await awaitable
