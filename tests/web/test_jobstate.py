"""A job's state is one pydantic model (simpsonize.queue.jobstate.JobState): the store builds it, the API returns it
as its response model and the page renders it; its JSON keeps each status's fields only."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from simpsonize.queue.jobstate import JobState

TIMES = {"created_at": "2024-05-01T12:00:00+00:00", "started_at": None, "ended_at": None}
ALWAYS = ["id", "status", "status_url", "result_url", "input_url", "created_at", "started_at", "ended_at", "timings"]


def test_each_status_shows_its_own_fields_only():
    queued = JobState.of("j1", "queued", position=2, queue_length=5, **TIMES).model_dump(mode="json")
    assert list(queued) == [*ALWAYS, "position", "queue_length"]
    assert queued["status_url"] == "/api/v1/jobs/j1" and queued["position"] == 2
    started = JobState.of("j1", "started", timings={"queued": 0.5}, **TIMES).model_dump(mode="json")
    assert list(started) == ALWAYS
    failed = JobState.of("j1", "failed", error="No face found in the photo.", **TIMES).model_dump(mode="json")
    assert list(failed) == [*ALWAYS, "error"]
    finished = JobState.of(
        "j1", "finished", has_composite=True, face={"box": [1, 2, 3, 4]}, face_count=1, faces_found=2, **TIMES
    )
    assert list(finished.model_dump(mode="json")) == [*ALWAYS, "face", "face_count", "faces_found", "composite_url"]
    assert finished.composite_url == "/api/v1/jobs/j1/composite" and finished.has_composite and finished.done
    # a finished job of before composites existed has none: the field is there, null
    assert JobState.of("j1", "finished", face_count=1, **TIMES).model_dump(mode="json")["composite_url"] is None


def test_a_state_outside_the_schema_is_refused_when_built():
    with pytest.raises(ValidationError):
        JobState.of("j1", "deferred")  # RQ's own states map onto the four the API knows
    with pytest.raises(ValidationError):
        JobState.of("j1", "queued", positon=1)  # a misspelt field is an error, not a silent extra
    with pytest.raises(ValidationError):
        JobState.of("j1", "finished", timings={"detect": "fast"})


def test_the_api_schema_is_the_models(idle_client):
    schema = idle_client.get("/openapi.json").json()
    answer = schema["paths"]["/api/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"]["$ref"].endswith("/JobState")
    properties = schema["components"]["schemas"]["JobState"]["properties"]
    assert set(properties) == set(JobState.model_fields)
    assert "queue" in properties["position"]["description"]
