"""A job as the API, the pages and the tests see it: one pydantic model, ``JobState``.

``JobStore.view`` builds it (pydantic checks it then), ``GET /api/v1/jobs/{id}`` returns it as its response model
(its OpenAPI schema is this model's) and the job page renders it. Each field that belongs to one status only (the
queue position while queued, the error once failed, the faces once finished) is left out of the JSON in the others.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

JOBS_PATH = "/api/v1/jobs"  # where the API serves jobs: the URLs a job state hands out start here
Status = Literal["queued", "started", "finished", "failed"]
DONE: tuple[Status, ...] = ("finished", "failed")

# Fields of one status only: absent from the JSON of the others.
ONLY_WHEN: dict[str, Status] = {
    "position": "queued",
    "queue_length": "queued",
    "error": "failed",
    "face": "finished",
    "face_count": "finished",
    "faces_found": "finished",
    "composite_url": "finished",
}


class JobState(BaseModel):
    """One job's state, its timings and where its images are."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: Status
    status_url: str
    result_url: str = Field(description="The Simpsonized PNG, once status is 'finished'.")
    input_url: str = Field(description="The face crop that was translated (JPEG), once status is 'finished'.")
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    timings: dict[str, float] | None = Field(
        default=None, description="Seconds: queued (wait), detect, generate, encode, job (worker), end_to_end."
    )
    position: int | None = Field(default=None, description="Place in the queue while queued; 1 = next.")
    queue_length: int | None = Field(default=None, description="Jobs waiting, while queued.")
    error: str | None = Field(default=None, description="Why the job failed, for the user (status 'failed').")
    face: dict[str, Any] | None = Field(
        default=None, description="Where the face was found (status 'finished'); in a group photo, the largest face."
    )
    face_count: int | None = Field(
        default=None,
        description="How many faces were found and drawn (status "
        "'finished'); ?face=N (1 to face_count) on result_url and "
        "input_url gives each one.",
    )
    faces_found: int | None = Field(
        default=None,
        description="How many faces were found (status 'finished'): more "
        "than face_count when some were too small or over "
        "the limit.",
    )
    composite_url: str | None = Field(
        default=None,
        description="The photo with the drawn heads pasted back (PNG; "
        "?format=jpeg for a lighter copy), once status is "
        "'finished'.",
    )

    @classmethod
    def of(cls, job_id: str, status: Status, *, has_composite: bool = False, **fields: Any) -> JobState:
        """The state of ``job_id``, with the URLs of its status, images and composite (when it has one)."""
        url = f"{JOBS_PATH}/{job_id}"
        composite = f"{url}/composite" if has_composite and status == "finished" else None
        return cls(
            id=job_id,
            status=status,
            status_url=url,
            result_url=f"{url}/result",
            input_url=f"{url}/input",
            composite_url=composite,
            **fields,
        )

    @property
    def done(self) -> bool:
        return self.status in DONE

    @property
    def has_composite(self) -> bool:
        return self.composite_url is not None

    # No return annotation: with one, pydantic would take it for the schema, and the OpenAPI schema would lose the
    # fields above.
    @model_serializer(mode="wrap")
    def _only_the_fields_of_its_status(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        return {key: value for key, value in data.items() if ONLY_WHEN.get(key, self.status) == self.status}
