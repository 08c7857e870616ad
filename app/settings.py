"""The one place settings are read from the environment (pydantic-settings).

Every variable is ``SIMPSONIZE_<NAME>`` except ``REDIS_URL``, which is also accepted without the prefix because
that is what Redis hosting and docker-compose conventionally set. The web process, the launcher and the worker all
read this module, so it must stay light: no torch, no ``model``, no ``training``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
# Same file as model.weights.DEFAULT_WEIGHTS; repeated here because app/ must not import model/.
DEFAULT_WEIGHTS = REPO_ROOT / "weights" / "simpsonize.safetensors"
MB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIMPSONIZE_", extra="ignore", populate_by_name=True)

    # Where the queue and all job data live. None: `simpsonize serve` starts an embedded Redis.
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "SIMPSONIZE_REDIS_URL",
                                                                              "redis_url"))
    queue_name: str = "simpsonize"
    key_prefix: str = "simpsonize"

    # Upload validation.
    max_upload_bytes: int = Field(default=10 * MB, gt=0)
    max_pixels: int = Field(default=50_000_000, gt=0)  # decoded size limit against decompression bombs
    max_side: int = Field(default=1600, ge=64)  # longest side after normalisation

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

    # Embedded default (`simpsonize serve` without REDIS_URL).
    data_dir: Path = Path("data")
    poll_interval_ms: int = Field(default=1000, ge=100)  # how often the page asks for progress

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
