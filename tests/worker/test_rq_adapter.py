"""RQ at arm's length: what simpsonize.queue.rq_adapter relies on is there in the installed RQ, with the parameters
RQ declared when the adapter was written, and ModelWorker overrides nothing of RQ's that the adapter does not list.
An RQ upgrade that moves any of it fails here, by name."""

from __future__ import annotations

import inspect
import re
import uuid

import pytest
from rq import Queue
from rq.registry import StartedJobRegistry
from service_support import REPO_ROOT

from simpsonize.queue import rq_adapter
from simpsonize.queue.jobstore import SERIALIZER, connect


def parameters(function) -> tuple[str, ...]:
    return tuple(name for name in inspect.signature(function).parameters if name != "self")


def test_the_installed_rq_is_the_minor_version_the_adapter_and_pyproject_name():
    major, minor = rq_adapter.SUPPORTED_RQ
    assert rq_adapter.rq_version() == (major, minor), (
        f"RQ {rq_adapter.rq_version()} is installed; simpsonize/queue/rq_adapter.py was checked against "
        f"{major}.{minor}: run this file's tests, update RELIED_ON and WORKER_HOOKS, then SUPPORTED_RQ and the pin."
    )
    pins = re.findall(r'"rq([^"]*)"', (REPO_ROOT / "pyproject.toml").read_text())
    assert pins == [f">={major}.{minor},<{major}.{minor + 1}"]


@pytest.fixture()
def rq_instances(redis_url):
    """A queue, its started-job registry and a worker of the installed RQ: where RQ sets an attribute in
    __init__, only an instance has it."""
    from simpsonize.worker.model_worker import ModelWorker

    redis = connect(redis_url)
    queue = Queue(f"adapter-{uuid.uuid4().hex[:8]}", connection=redis, serializer=SERIALIZER)
    worker = rq_adapter.Worker([queue], connection=redis, serializer=SERIALIZER)
    yield {
        Queue: queue,
        StartedJobRegistry: queue.started_job_registry,
        rq_adapter.Worker: worker,
        ModelWorker: ModelWorker([queue], connection=redis),
    }
    redis.close()


def test_everything_the_adapter_relies_on_is_there_with_its_parameters(rq_instances):
    problems = []
    for owner, name, expected in rq_adapter.RELIED_ON:
        where = getattr(owner, "__name__", repr(owner))
        target = owner if hasattr(owner, name) else rq_instances.get(owner)
        if target is None or not hasattr(target, name):
            problems.append(f"{where}.{name} is gone")
        elif expected is not None and (found := parameters(getattr(target, name))) != expected:
            problems.append(f"{where}.{name} takes {found}, not {expected}")
    assert problems == [], "RQ changed under simpsonize/queue/rq_adapter.py:\n" + "\n".join(problems)
    assert len(rq_adapter.RELIED_ON) > 40  # the list is really the adapter's, hooks and attributes included


def test_the_worker_overrides_only_the_hooks_the_adapter_lists(rq_instances):
    from simpsonize.worker.model_worker import ModelWorker

    rq_worker = rq_instances[rq_adapter.Worker]
    overridden = {
        name
        for name, value in vars(ModelWorker).items()
        if callable(value) and hasattr(rq_adapter.Worker, name) and not name.startswith("__")
    }
    assert overridden - set(rq_adapter.WORKER_HOOKS) == set()
    assert {"execute_job", "handle_job_failure", "heartbeat"} <= overridden  # the walk found the overrides
    # Nothing else of ours may shadow a name of RQ's worker: our methods and settings, what __init__ and bootstrap set.
    ours = {name for name in vars(ModelWorker) if not name.startswith("__")}
    ours |= set(vars(rq_instances[ModelWorker])) - set(vars(rq_worker)) | {"_beating", "_beat_thread"}
    assert {"_heartbeat", "_prestarted", "photo_jobs", "batch_size"} <= ours
    intended = set(rq_adapter.WORKER_HOOKS) | set(rq_adapter.WORKER_ATTRIBUTES)
    assert sorted(name for name in ours - intended if hasattr(rq_worker, name)) == []


def test_a_changed_signature_is_reported_by_name(monkeypatch, rq_instances):
    """The check above can fail: an RQ whose execute_job grew a parameter is caught."""

    def execute_job(self, job, queue, execution):  # what a newer RQ might declare
        pass

    monkeypatch.setattr(rq_adapter.Worker, "execute_job", execute_job)
    with pytest.raises(AssertionError, match=r"SimpleWorker.execute_job takes \('job', 'queue', 'execution'\)"):
        test_everything_the_adapter_relies_on_is_there_with_its_parameters(rq_instances)
