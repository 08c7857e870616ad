"""Response models: they document the API in the OpenAPI schema at /docs. A job's state is
``simpsonize.queue.jobstate.JobState``, the model the job store builds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    detail: str = Field(description="One sentence saying what went wrong and what to do.")


class JobCreated(BaseModel):
    id: str = Field(description="Random job id (128 bits).")
    status: Literal["queued"] = "queued"
    status_url: str
    result_url: str


class Health(BaseModel):
    status: str
    detail: str | None = None
