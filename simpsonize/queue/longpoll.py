"""Long polling: ``GET /api/v1/jobs/{id}?wait=S`` answers as soon as the job ends, without a thread or a busy loop.

Whatever ends a job calls :func:`notify_done` once the end is stored: the worker after RQ has recorded the job as
finished or failed, the reaper when it fails a dead worker's job, ``DELETE``. It leaves a one-element list
``P:done:ID`` (``simpsonize.queue.keys.done_key``) with a short TTL. A waiting request sends
``BLMOVE key key LEFT RIGHT S``:
Redis holds the request's connection, not a thread, until the element is there or ``S`` runs out, and moving the
element from the list onto the same list leaves it in place, so every request waiting on the job wakes, and one that
starts waiting just after the job ended returns at once (a pub/sub message sent a moment earlier would be lost).

No torch here: the web process imports this module.
"""

from __future__ import annotations

import asyncio
import weakref

import redis.asyncio as aredis
from redis import Redis
from redis.client import Pipeline

from simpsonize.queue import keys
from simpsonize.queue.redis_atomic import atomically

MAX_WAIT = 30.0  # seconds a status request may wait (``?wait=``)
CLIENT_NAME = "simpsonize-long-poll"  # how the waiting connections show in Redis's CLIENT LIST


def notify_done(redis: Redis | Pipeline, prefix: str, job_id: str) -> None:
    """Wake the long polls waiting on ``job_id``. On a pipeline, the commands join it; else they run as one MULTI,
    so that no waiter ever sees the list without its TTL."""
    key = keys.done_key(prefix, job_id)

    def queue(pipe) -> None:
        pipe.delete(key)  # exactly one element, however many times the end is announced
        pipe.rpush(key, b"1")
        pipe.expire(key, keys.DONE_TTL)

    atomically(redis, queue)


class CompletionWaiter:
    """Waits for job ends on an asyncio Redis client: many waiting requests cost a Redis connection each, no thread.

    redis.asyncio connections belong to the event loop that opened them, so there is one client per running loop
    (one in production; tests run the app on several).
    """

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = weakref.WeakKeyDictionary()

    def _client(self) -> aredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # The socket timeout must outlast the longest wait, or redis-py would give up on a blocked BLMOVE.
            client = aredis.Redis.from_url(
                self.redis_url, socket_connect_timeout=5, socket_timeout=MAX_WAIT + 10, client_name=CLIENT_NAME
            )
            self._clients[loop] = client
        return client

    async def wait(self, prefix: str, job_id: str, seconds: float) -> bool:
        """True once ``job_id`` has ended (now or earlier), False when ``seconds`` ran out first.

        Raises ``redis.exceptions.RedisError`` when Redis cannot be reached.
        """
        if seconds <= 0:
            return False
        key = keys.done_key(prefix, job_id)
        return await self._client().blmove(key, key, seconds, "LEFT", "RIGHT") is not None

    async def aclose(self) -> None:
        """Close the client of the running loop (the app's shutdown)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
