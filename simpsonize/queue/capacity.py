"""Redis memory: admission by memory in the web process, and retries of the writes a full Redis refuses.

Redis runs with ``maxmemory`` and ``noeviction`` (embedded and in compose): once full it refuses every write with
``OutOfMemoryError`` instead of dropping queued jobs. A job that was accepted must still be able to store its result
and RQ its end, so the web process stops accepting uploads *before* Redis is full:

- ``MemoryGauge`` reads ``used_memory`` and ``maxmemory`` from ``INFO memory``, at most once per ``CACHE_S``: an
  upload burst does not ask Redis once per request. The bytes this process stored since the reading are added to it,
  so that a burst within one cached second is still counted.
- ``Admission`` refuses an upload (``StorageFull``: 503, ``Retry-After: 60``, ``BUSY``) once used memory plus the
  room that every job already accepted still needs to finish (``JobFootprint``, by the size of each one's upload:
  the composite grows with the photo), plus this upload and its own, would pass ``maxmemory`` less a margin. A Redis
  without ``maxmemory`` (0) is not limited here.

Workers retry a refused write with a short backoff (``with_room``): memory comes back as other jobs end, results are
deleted or expire. A job whose result still cannot be stored fails with ``FULL_FAILURE`` (reason ``full``).

No torch here: the web process imports this module.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from redis import Redis
from redis.backoff import EqualJitterBackoff
from redis.exceptions import OutOfMemoryError
from redis.retry import Retry

from simpsonize.queue import keys, rq_adapter

log = logging.getLogger("simpsonize.capacity")
T = TypeVar("T")

CACHE_S = 1.0  # seconds an INFO memory reading is used for
BUSY = "The service is busy; try again in a minute."
BUSY_RETRY_AFTER = 60  # seconds: room comes back as results are downloaded and deleted, or expire
FULL_FAILURE = (
    "The service's storage was full, so the result of this photo could not be kept. Please try again in a minute."
)
FULL_READINESS = "Redis is full: uploads are refused until results are deleted or expire."
# Part of maxmemory never planned for: allocator fragmentation and the small keys that are not per job (rate limits,
# per-client places, metrics, RQ's registries), which grow with traffic, not with jobs.
MARGIN_FRACTION = 0.05


@dataclass(frozen=True)
class JobFootprint:
    """Bytes one job holds in Redis at its peak (its result stored while its upload is still there), for an upload of
    a given size.

    Measured with the shipped model (``used_memory`` before and after 50 results; README "Capacity"): the result hash
    of the astronaut, a 117 KB PNG drawing, its 12 KB JPEG face crop and the meta, takes 131 KB of Redis's memory;
    RQ's job hash, its result stream entry and the registries' entries a few KB more (``fixed``). The composite (the
    photo with the drawing in it) grows with the photo: its JPEG is 0.6 times the normalised upload's bytes, its
    lossless PNG (``SIMPSONIZE_COMPOSITE_LOSSLESS``) 3.6-4.8 times (a 512 px astronaut: 69 KB and 395 KB for a 109 KB
    upload; 1600x1200: 283 KB and 2.1 MB for 457 KB). ``upload`` stands in for the photo before its body is read:
    a normalised photo (JPEG, at most 1600 px) is 50-600 KB.
    """

    upload: int = 400_000
    fixed: int = 150_000
    per_upload_byte: float = 0.7  # the composite's bytes per byte of upload: JPEG only

    @classmethod
    def for_settings(cls, composite_lossless: bool) -> JobFootprint:
        return cls(per_upload_byte=5.5 if composite_lossless else 0.7)

    def to_finish(self, upload_bytes: int) -> int:
        """What an accepted job (its upload stored already) still needs: its results and RQ's records."""
        return self.fixed + int(self.per_upload_byte * upload_bytes)


class StorageFull(Exception):
    """Redis has no room for one more job beside those already accepted: refuse the upload (503)."""


def room_retry(retries: int = 10) -> Retry:
    """redis-py's retry for writes that a full Redis refuses: about 5 s in all with 10 retries (0.05 s doubling to at
    most 1 s, jittered so that workers refused together do not come back together)."""
    return Retry(EqualJitterBackoff(cap=1.0, base=0.05), retries, supported_errors=(OutOfMemoryError,))


def with_room(write: Callable[[], T], retries: int = 10) -> T:
    """``write()``, retried while Redis refuses it for memory; raises ``OutOfMemoryError`` if it never fits."""
    return room_retry(retries).call_with_retry(write, lambda exc: log.info("Redis is full; retrying a write: %s", exc))


@dataclass
class MemoryReading:
    used: int
    maxmemory: int  # 0: no limit
    at: float  # time.monotonic() of the reading


class MemoryGauge:
    """Redis's used and maximum memory, from ``INFO memory``, cached ``CACHE_S`` seconds, plus what was written
    since."""

    def __init__(self, redis: Redis, cache_s: float = CACHE_S) -> None:
        self.redis = redis
        self.cache_s = cache_s
        self._reading: MemoryReading | None = None
        self._written = 0  # bytes stored by this process since the reading
        self._lock = threading.Lock()

    def read(self) -> MemoryReading:
        """The reading (raises ``RedisError`` when Redis does not answer), with this process's writes since added."""
        with self._lock:
            reading = self._reading
            if reading is None or time.monotonic() - reading.at >= self.cache_s:
                info = self.redis.info("memory")
                reading = self._reading = MemoryReading(
                    int(info["used_memory"]), int(info.get("maxmemory", 0)), time.monotonic()
                )
                self._written = 0
            return MemoryReading(reading.used + self._written, reading.maxmemory, reading.at)

    def wrote(self, nbytes: int) -> None:
        with self._lock:
            self._written += nbytes


class Admission:
    """The high-water mark: is there room for one more job beside every job already accepted?"""

    def __init__(
        self, queue, key_prefix: str, footprint: JobFootprint | None = None, gauge: MemoryGauge | None = None
    ) -> None:
        self.queue = queue  # rq.Queue
        self.redis: Redis = queue.connection
        self.prefix = key_prefix
        self.footprint = footprint or JobFootprint()
        self.gauge = gauge or MemoryGauge(self.redis)

    def uploads_in_flight(self) -> list[int]:
        """The upload bytes of every job queued or running (asked every time, as the memory reading is cached: a
        job accepted a moment ago counts at once). A job whose upload is gone counts 0: it needs ``fixed`` at most."""
        ids = rq_adapter.open_job_ids(self.queue)
        if not ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.strlen(keys.input_key(self.prefix, job_id))
            return [int(n) for n in pipe.execute()]

    def room(self, upload_bytes: int | None = None) -> tuple[bool, MemoryReading]:
        """(whether one more upload of ``upload_bytes`` fits, the reading). ``None``: the body is not read yet."""
        reading = self.gauge.read()
        if reading.maxmemory <= 0:
            return True, reading
        f = self.footprint
        upload = f.upload if upload_bytes is None else upload_bytes
        need = upload + f.to_finish(upload) + sum(f.to_finish(n) for n in self.uploads_in_flight())
        mark = reading.maxmemory * (1 - MARGIN_FRACTION)
        return reading.used + need <= mark, reading

    def check(self, upload_bytes: int | None = None) -> None:
        """Raises ``StorageFull`` when the upload does not fit (``RedisError`` when Redis does not answer)."""
        fits, reading = self.room(upload_bytes)
        if not fits:
            raise StorageFull(f"Redis holds {reading.used} of {reading.maxmemory} bytes.")

    def stored(self, nbytes: int) -> None:
        """An upload of ``nbytes`` was stored: count it until the next reading shows it."""
        self.gauge.wrote(nbytes)
