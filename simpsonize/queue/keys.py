"""Redis key layout shared by the web process and the worker (plain strings; no heavy imports).

For a job id ``ID`` and prefix ``P`` (settings.key_prefix):
- ``P:input:ID``   the normalised upload (JPEG bytes); deleted by the worker when the job ends, TTL as a backstop.
- ``P:result:ID``  hash ``image`` (PNG), ``face`` (PNG of the translated face crop), ``meta`` (JSON); TTL result_ttl.
                   A group photo's other faces as ``image:N`` / ``face:N`` (N = 2, 3, ...: the largest is face 1), and
                   the photo with the drawn heads pasted back as ``composite_jpeg`` and ``composite`` (PNG), in the
                   same hash: kept and deleted with the rest.
- ``P:deleted:ID`` tombstone written by DELETE so a job that is running does not store its result afterwards.
- ``P:done:ID``    a one-element list pushed when the job ends (finished, failed or deleted); long polls block on it
                   (``simpsonize.queue.longpoll``). TTL ``DONE_TTL``.
RQ keeps its own job hash (``rq:job:ID``) and result stream, with the TTLs the app passes when enqueueing.
"""

from __future__ import annotations

import re
import secrets

JOB_FUNCTION = (
    "simpsonize.worker.jobs.process_job"  # enqueued by name: app/ never imports worker/ (which imports model/)
)
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")


def new_job_id() -> str:
    """128 random bits (url-safe base64, 22 characters): unguessable."""
    return secrets.token_urlsafe(16)


def is_job_id(value: str) -> bool:
    return bool(JOB_ID_RE.match(value))


def input_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:input:{job_id}"


def result_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:result:{job_id}"


def deleted_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:deleted:{job_id}"


DONE_TTL = 120  # seconds: only a long poll that read the state just before the job ended still needs the signal


def done_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:done:{job_id}"
