"""Response models: they document the API in the OpenAPI schema at /docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    detail: str = Field(description="One sentence saying what went wrong and what to do.")


class JobCreated(BaseModel):
    id: str = Field(description="Random job id (128 bits).")
    status: Literal["queued"] = "queued"
    status_url: str
    result_url: str


class JobState(BaseModel):
    id: str
    status: Literal["queued", "started", "finished", "failed"]
    status_url: str
    result_url: str = Field(description="The Simpsonized PNG, once status is 'finished'.")
    input_url: str = Field(description="The face crop that was translated (PNG), once status is 'finished'.")
    position: int | None = Field(default=None, description="Place in the queue while queued; 1 = next.")
    queue_length: int | None = Field(default=None, description="Jobs waiting, while queued.")
    error: str | None = Field(default=None, description="Why the job failed, for the user (status 'failed').")
    timings: dict[str, float] | None = Field(
        default=None, description="Seconds: queued (wait), detect, generate, encode, job (worker), end_to_end.")
    face: dict[str, Any] | None = Field(default=None, description="Where the face was found (status 'finished'); in a "
                                                                  "group photo, the largest face.")
    face_count: int | None = Field(default=None, description="How many faces were found and drawn (status "
                                                             "'finished'); ?face=N (1 to face_count) on result_url and "
                                                             "input_url gives each one.")
    faces_found: int | None = Field(default=None, description="How many faces were found (status 'finished'): more "
                                                               "than face_count when some were too small or over "
                                                               "the limit.")
    composite_url: str | None = Field(default=None, description="The photo with the drawn heads pasted back (PNG; "
                                                                "?format=jpeg for a lighter copy), once status is "
                                                                "'finished'.")
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None


class Health(BaseModel):
    status: str
    detail: str | None = None
