"""Every failure a user can be told about has its own sentence; the generic one is for bugs, logged with a traceback."""

from __future__ import annotations

import logging
import signal

import pytest
from service_support import make_settings

from simpsonize.queue.jobstore import GENERIC_FAILURE, JobStore


@pytest.fixture()
def burst(redis_url, redis_client, tiny_weights, monkeypatch):
    """Submit one job to a fresh queue and run it in this process with a broken model that raises ``error``."""
    from simpsonize.worker.jobs import ModelHolder
    from simpsonize.worker.model_worker import ModelWorker

    def run(error: BaseException):
        class Broken:
            def simpsonize(self, data):
                raise error

        store = JobStore(make_settings(redis_url, tiny_weights), redis_client)
        job_id = store.submit(b"\xff\xd8 a photo")
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            ModelWorker([store.queue], connection=store.redis, model=ModelHolder(Broken())).work(
                burst=True, logging_level="INFO"
            )
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        return store.view(job_id)

    return run


@pytest.mark.parametrize("error", [MemoryError(), type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory")])
def test_running_out_of_memory_is_named(burst, error):
    from simpsonize.worker.jobs import OUT_OF_MEMORY

    view = burst(error)
    assert view.status == "failed" and view.error == OUT_OF_MEMORY


def test_a_real_bug_gets_the_generic_sentence_and_its_traceback_is_logged(burst, caplog):
    caplog.set_level(logging.INFO)
    view = burst(ZeroDivisionError("a bug in the pipeline"))
    assert view.status == "failed" and view.error == GENERIC_FAILURE
    assert "a bug in the pipeline" not in view.error
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Traceback" in logged and "ZeroDivisionError: a bug in the pipeline" in logged
