"""The one place settings are read from the environment (pydantic-settings).

Every variable is ``SIMPSONIZE_<NAME>`` except ``REDIS_URL``, which is also accepted without the prefix because
that is what Redis hosting and docker-compose conventionally set. The web process, the launcher and the worker all
read this module, so it must stay light: no torch, no ``model``, no ``training``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from simpsonize.resources import SHIPPED_WEIGHTS as DEFAULT_WEIGHTS

MB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIMPSONIZE_", extra="ignore", populate_by_name=True)

    # Where the queue and all job data live. None: `simpsonize serve` starts an embedded Redis.
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "SIMPSONIZE_REDIS_URL", "redis_url")
    )
    queue_name: str = "simpsonize"
    key_prefix: str = "simpsonize"

    # Upload validation.
    max_upload_bytes: int = Field(default=10 * MB, gt=0)
    max_pixels: int = Field(default=50_000_000, gt=0)  # decoded size limit against decompression bombs
    max_side: int = Field(default=1600, ge=64)  # longest side after normalisation
    # Formats decoded at full size (all but JPEG, which decodes reduced) cost 4 bytes a pixel with alpha: lower limit.
    max_pixels_full_decode: int = Field(default=24_000_000, gt=0)
    # Images decoded at once by the web process (each holds one full-size decode); None = CPUs available, at most 4.
    decode_concurrency: int | None = Field(default=None, ge=1)
    # Uploads being received or decoded at once; more get 503 + Retry-After at once (each holds up to max_upload_bytes).
    max_uploads_in_progress: int = Field(default=16, ge=1)
    upload_timeout: float = Field(default=60.0, gt=0)  # seconds to receive a whole upload body, else 408

    # Abuse limits, per client (the peer address, or the forwarded one from a trusted proxy).
    # "20/minute" (any `limits` string: "5/second", "100/hour;20/minute") or "off", which also lifts the
    # per-client queue cap (for benchmarks).
    rate_limit: str = "20/minute"
    max_queued_per_client: int = Field(default=5, ge=1)  # a client's jobs waiting at once; more -> 429

    # HTTP. Comma-separated lists.
    forwarded_allow_ips: str = "127.0.0.1"  # proxies whose X-Forwarded-For/-Proto are believed ("*": any; unsafe)
    allowed_hosts: str = "*"  # Host headers answered (TrustedHostMiddleware), e.g. "photos.example.org"
    cors_origins: str = ""  # origins allowed to call the REST API from a browser; empty = same origin only
    limit_concurrency: int = Field(default=200, ge=1)  # open connections uvicorn serves before answering 503
    access_log: bool = False  # uvicorn's access log: client addresses and URLs with job ids (bearer tokens) in them
    # Who may read GET /metrics (simpsonize.queue.metrics): addresses or networks, "*" anyone, "off" no endpoint (404).
    metrics_allow_ips: str = "127.0.0.1,::1"

    # Queue and lifetimes (seconds). Every key the service writes expires.
    max_queue: int = Field(default=100, ge=1)  # queued jobs beyond this -> 503
    retry_after: int = Field(default=10, ge=1)
    queue_ttl: int = Field(default=600, ge=1)  # a job still queued after this is dropped
    job_timeout: int = Field(default=120, ge=1)  # one job's run time
    result_ttl: int = Field(default=3600, ge=1)  # results (and failures) are kept this long

    # Worker.
    weights: Path = DEFAULT_WEIGHTS
    device: str | None = None  # None/"auto": CUDA when present, else CPU
    worker_threads: int | None = Field(default=None, ge=1)  # torch CPU threads per worker; None = all cores
    # A worker writes a heartbeat this often (seconds), busy or idle. It counts as alive (/readyz) while its last
    # heartbeat is at most 2x this old; the started job of a worker silent for 4x this long is failed
    # (simpsonize.queue.liveness).
    worker_heartbeat: int = Field(default=5, ge=1)
    # Jobs a worker takes at once, their photos run through the model as one batch: "auto" (16 on CUDA; on a CPU 2
    # for a worker with several threads, else 1, as measured in README "Speed, measured") or 1 to 64; it waits at most
    # worker_batch_wait_ms for more to fill a batch.
    worker_batch: str = "auto"
    worker_batch_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    # The generator's precision: "auto" (bf16 on CUDA, fp32 on a CPU), "bf16" or "fp32"; bf16 only where its output
    # stays within 40 dB PSNR of fp32 (checked when the worker starts), else fp32.
    worker_precision: Literal["auto", "bf16", "fp32"] = "auto"

    # Faces of a photo that get drawn: every face whose box is at least min_face pixels on its shorter side (in the
    # normalised photo), at most max_faces of them, the largest first; the largest is drawn whatever its size.
    min_face: int = Field(default=64, ge=1)
    max_faces: int = Field(default=8, ge=1, le=64)
    # Keep the composite as a lossless PNG for download (2-2.5 MB for a 1600x1200 photo) beside the JPEG the page
    # shows (about 0.3 MB); off: the download is the JPEG, and a job costs Redis a tenth of that.
    composite_lossless: bool = True

    # Embedded default (`simpsonize serve` without REDIS_URL).
    data_dir: Path = Path("data")  # created mode 0700; must belong to the user running serve
    redis_maxmemory: str = "1gb"  # the embedded Redis refuses writes beyond this (uploads get 503), never evicts
    poll_interval_ms: int = Field(default=1000, ge=100)  # how often the page asks for progress

    @field_validator("worker_batch")
    @classmethod
    def _worker_batch_is_valid(cls, value: str) -> str:
        value = str(value).strip().lower()
        if value != "auto" and not (value.isdigit() and 1 <= int(value) <= 64):
            raise ValueError("worker_batch must be 'auto' or a number from 1 to 64")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_is_valid(cls, value: str) -> str:
        if value.strip().lower() in ("off", "none", "0", ""):
            return "off"
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"rate_limit must look like '20/minute' or be 'off' ({exc})") from None
        return value

    @property
    def rate_limited(self) -> bool:
        return self.rate_limit != "off"

    @property
    def decoders(self) -> int:
        """Decodes at once: ``decode_concurrency``, else one per available CPU, at most 4."""
        from simpsonize.cpu import available_cpus

        return self.decode_concurrency or min(4, available_cpus())

    @staticmethod
    def split(value: str) -> list[str]:
        return [item.strip() for item in value.split(",") if item.strip()]

    @property
    def input_ttl(self) -> int:
        """An input outlives its job's queueing and running, and is deleted by the worker when the job ends."""
        return self.queue_ttl + self.job_timeout + 60

    @property
    def bookkeeping_ttl(self) -> int:
        """TTL of RQ's queue list, registries and worker sets: longer than any job and its result live."""
        return self.input_ttl + self.result_ttl


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
