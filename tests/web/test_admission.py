"""Admission: the queue-full check and the enqueue are one atomic step (a WATCH/MULTI transaction)."""

from __future__ import annotations

import threading

from service_support import make_settings

from simpsonize.queue import keys
from simpsonize.queue.jobstore import JobStore, QueueFull, connect

RACERS = 8


def test_concurrent_submits_never_overfill_the_queue(redis_url, tiny_weights, monkeypatch):
    """Every racer reads the queue length before any of them enqueues (a barrier in the id generator, which runs
    between the check and the enqueue). A check-then-enqueue would let all 8 in; the transaction lets exactly
    ``max_queue`` in, and the losers get QueueFull having written nothing."""
    settings = make_settings(redis_url, tiny_weights, max_queue=3)
    barrier = threading.Barrier(RACERS, timeout=30)
    waited = threading.local()
    real_new_job_id = keys.new_job_id

    def new_job_id_after_everyone_checked() -> str:
        if not getattr(waited, "done", False):  # only the first attempt of each racer waits
            waited.done = True
            barrier.wait()
        job_id = real_new_job_id()
        generated.append(job_id)
        return job_id

    monkeypatch.setattr(keys, "new_job_id", new_job_id_after_everyone_checked)
    accepted, refused, errors, generated = [], [], [], []

    def racer() -> None:
        store = JobStore(settings, connect(redis_url))  # one client each, as separate web processes would have
        try:
            accepted.append(store.submit(b"photo"))
        except QueueFull:
            refused.append(1)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            store.redis.close()

    threads = [threading.Thread(target=racer) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    store = JobStore(settings, connect(redis_url))
    try:
        assert len(accepted) == settings.max_queue and len(refused) == RACERS - settings.max_queue
        assert sorted(store.queue.get_job_ids()) == sorted(accepted)
        # a losing attempt wrote nothing: no input and no job under any id it drew
        lost = set(generated) - set(accepted)
        assert len(lost) >= RACERS - settings.max_queue
        for job_id in generated:
            kept = job_id in accepted
            assert bool(store.redis.exists(keys.input_key(settings.key_prefix, job_id))) == kept
            assert (store.view(job_id) is not None) == kept
    finally:
        for job_id in accepted:
            store.delete(job_id)
        store.redis.close()
