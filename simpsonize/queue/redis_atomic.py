"""One helper for writes that must land together: join the caller's pipeline, or run as one MULTI of their own."""

from __future__ import annotations

from collections.abc import Callable

from redis import Redis
from redis.client import Pipeline


def atomically(redis: Redis | Pipeline, queue: Callable[[Pipeline], None]) -> None:
    """``queue(pipe)`` adds the commands; on a pipeline they join it (the caller executes), else they run at once as
    one transaction, so no reader sees half of them (a list without its TTL, a count without its buckets)."""
    if isinstance(redis, Pipeline):
        queue(redis)
        return
    with redis.pipeline() as pipe:
        queue(pipe)
        pipe.execute()
