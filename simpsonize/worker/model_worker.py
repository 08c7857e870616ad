"""The RQ worker of `simpsonize worker`: one process that loads the Simpsonizer once and serves every job with it.

RQ's default ``Worker`` forks a fresh work horse per job, which would reload the model (or at best re-fault its
pages) for every photo. ``ModelWorker`` is a ``SimpleWorker``: jobs run in this process, the model is loaded before
the first job and reused. Job timeouts still work (SIGALRM in the main thread).

Batches (``SIMPSONIZE_WORKER_BATCH``, default ``auto``: 16 on CUDA; on a CPU 2 for a worker with several threads,
else 1). With a batch size above 1, each job RQ's work loop dequeues takes up to that many more with it: whatever
else is queued, waiting at most ``SIMPSONIZE_WORKER_BATCH_WAIT_MS`` for more to arrive. All of them are marked
started at once (so the registries, ``/readyz`` and the reaper see them as this worker's), their photos go through
MTCNN and the generator together (``simpsonize.worker.jobs.PhotoJobs.prepare_batch``), and then RQ performs and
records each job on its own, exactly as for one job: its own result or failure sentence, timeout, end-of-job signal
for long polls, tombstone check. Why in the worker and not in the job function: only the worker can take jobs off the
queue and register them as started the way RQ does; a job function that pulled other jobs' ids would leave them
queued in RQ's eyes, or would have to reimplement RQ's bookkeeping, while here RQ's own dequeue, start, perform,
success and failure steps run unchanged for every job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from simpsonize.queue import capacity, keys, liveness, metrics, rq_adapter
from simpsonize.queue.jobstore import SERIALIZER, refresh_rq_ttls
from simpsonize.queue.longpoll import notify_done
from simpsonize.queue.rq_adapter import JobStatus, JobTimeoutException, WorkerStatus
from simpsonize.worker.jobs import ModelHolder, PhotoJobs, serving

log = logging.getLogger("simpsonize.worker")
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
# Redis is gone for a moment, or full (noeviction: it refuses writes until results are deleted or expire). Neither
# is this worker's fault, and both pass: RQ's bookkeeping steps that meet one must not end the worker process.
REDIS_TROUBLE = (*REDIS_DOWN, OutOfMemoryError)


class ModelWorker(rq_adapter.Worker):
    """A SimpleWorker that also keeps a TTL on every bookkeeping key RQ writes without one, heartbeats from a thread
    every ``heartbeat_interval`` seconds (RQ's own heartbeat stops while a job runs in a SimpleWorker, and comes
    every 6.75 minutes when idle), ends the jobs of dead workers (``simpsonize.queue.liveness.reap``), and reconnects
    within ``max_connection_wait_time`` seconds once Redis is back after a restart.

    Everything of RQ's it relies on beyond the public API comes through ``simpsonize.queue.rq_adapter``: the steps of
    RQ's loop overridden here are its ``WORKER_HOOKS``, checked against the installed RQ by a test."""

    bookkeeping_ttl = 7200
    heartbeat_interval = 5.0
    key_prefix = "simpsonize"
    # RQ doubles its reconnect wait up to 60 s; a restarted Redis must see this worker again within seconds.
    max_connection_wait_time = 2.0

    batch_size = 1  # jobs taken at once; 1 is RQ's own one-job path, unchanged
    batch_wait = 0.005  # seconds to wait for more queued jobs to fill a batch

    def __init__(self, *args, serializer=SERIALIZER, model: ModelHolder | None = None, **kwargs):
        super().__init__(*args, serializer=serializer, **kwargs)  # JSON: a job from Redis never unpickles code
        # The model the jobs run on (loaded from the settings at the first job unless it was loaded already), and
        # the outcomes of the running batch.
        self.photo_jobs = PhotoJobs(model or ModelHolder())
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # the latest batches' sizes (tests, logs)
        self._prestarted: dict[str, object] = {}  # job id -> started_at, for the jobs of the running batch
        self._jobs_left: int | None = None  # what is left of work(max_jobs=...), counted in jobs, not batches

    def work(self, *args, **kwargs):
        self._jobs_left = kwargs.get("max_jobs")
        with serving(self.photo_jobs):  # what process_job runs on while this worker works
            return super().work(*args, **kwargs)

    def bootstrap(self, *args, **kwargs):
        super().bootstrap(*args, **kwargs)
        self._beating = threading.Event()
        self._beat_thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._beat_thread.start()

    def teardown(self):
        beating = getattr(self, "_beating", None)
        if beating is not None:
            beating.set()
            self._beat_thread.join(self.heartbeat_interval + 5)
        super().teardown()

    def _beat(self) -> None:
        """The heartbeat thread: runs while the main thread waits for a job or runs one (torch frees the GIL)."""
        while not self._beating.wait(self.heartbeat_interval):
            try:
                self.heartbeat()
                self._reap()
            except RedisError as exc:  # Redis restarting: the main loop reconnects, and so do we next time
                log.warning("Reaping failed: %s", exc)
            except Exception:  # never let the thread die: /readyz would call this worker dead
                log.exception("Heartbeat failed.")

    def _reap(self) -> None:
        """Once per interval per queue across its workers (a Redis lock per queue: workers of other queues on the
        same Redis must not starve this one's), fail the jobs of workers that went silent."""
        for queue in self.queues:
            lock = f"{self.key_prefix}:reaper-lock:{queue.name}"
            if not self.connection.set(lock, self.name, nx=True, ex=max(1, int(self.heartbeat_interval))):
                continue
            for job_id in liveness.reap(queue, self.key_prefix, 4 * self.heartbeat_interval):
                self.log.warning("Worker %s: failed job %s, whose worker stopped.", self.name, job_id)

    # -- the one adapter between RQ's bookkeeping and a Redis that is briefly gone or full ---------------------------
    # RQ's work loop quits on a Redis error anywhere but in its dequeue (which retries), and its teardown then raises
    # again: the worker process exits. A Redis restart or a full Redis (it refuses writes once at maxmemory, with
    # noeviction) would turn into a crash loop of every worker. So: the writes that end a job (start, success,
    # failure) are retried while Redis refuses them for memory, and end the job as failed (reason full, with
    # capacity.FULL_FAILURE) if they never fit; the writes that only keep RQ's books (heartbeats, worker state,
    # maintenance, the death notice) are skipped with a warning; the next dequeue waits for Redis.
    def execute_job(self, job, queue):
        try:
            if self.batch_size > 1:
                self._execute_batch(job, queue)
            else:
                super().execute_job(job, queue)
        except OutOfMemoryError as exc:  # RQ could not even start or end the job, through every retry
            log.warning("Redis is full; failing job %s: %s", job.id, exc)
            self._fail_for_room(job, queue)
        except REDIS_DOWN as exc:
            log.warning("Lost Redis while finishing job %s (%s); its state is gone with that Redis.", job.id, exc)
        finally:
            try:
                refresh_rq_ttls(queue, self.bookkeeping_ttl)
            except RedisError:
                log.warning("Could not refresh the TTLs of RQ's registries.", exc_info=True)

    # -- batches ------------------------------------------------------------------------------------------------
    def _execute_batch(self, job, queue) -> None:
        """``job`` and up to ``batch_size - 1`` more from ``queue``: started together, their photos run as one batch,
        then each performed and recorded by RQ on its own (``perform_job``), in the order they were queued."""
        room = self.batch_size if self._jobs_left is None else max(1, min(self.batch_size, self._jobs_left))
        batch = [job, *self._dequeue_more(queue, room - 1)]
        self.batch_sizes.append(len(batch))
        executions = {}
        try:
            for member in batch:
                executions[member.id] = self.prepare_execution(member)
                self.prepare_job_execution(member, remove_from_intermediate_queue=len(self.queues) == 1)
                self._prestarted[member.id] = member.started_at
            photos = [m for m in batch if m.func_name == keys.JOB_FUNCTION and len(m.args) >= 2 and m.args[0] == m.id]
            if len(photos) > 1:
                self._run_batch(photos)
            for member in batch:
                self.perform_job(member, queue, executions[member.id])
        finally:
            self.photo_jobs.discard([member.id for member in batch])
            for member in batch:
                self._prestarted.pop(member.id, None)
            self.set_state(WorkerStatus.IDLE)
        if self._jobs_left is not None:
            self._jobs_left -= len(batch)
            if self._jobs_left <= 0:
                rq_adapter.stop_at_next_turn(self)  # RQ's loop counts this batch as one job

    def _dequeue_more(self, queue, room: int) -> list:
        """Up to ``room`` more jobs from ``queue`` through RQ's own non-blocking dequeue, waiting at most
        ``batch_wait`` seconds for the queue to hold them."""
        more: list = []
        deadline = time.monotonic() + self.batch_wait
        while len(more) < room and not rq_adapter.stop_requested(self):
            try:
                job = rq_adapter.dequeue_now(self, queue)
            except Exception as exc:  # Redis gone, an unreadable job: run what we have; RQ's loop meets it next
                log.warning("Stopped filling a batch: %s", exc)
                break
            if job is None:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
                continue
            self.log.info("Worker %s: %s: %s (batched)", self.name, queue.name, job.id)
            more.append(job)
        return more

    def _run_batch(self, photos: list) -> None:
        """Their photos through the model together, under the shortest of their timeouts. Each job then finishes with
        its own outcome; a timeout fails them all (their time is up); any other error leaves each job to run its
        photo alone, so that only the photo that causes it fails."""
        started = time.perf_counter()
        ids = [job.id for job in photos]
        try:
            with rq_adapter.job_time_limit(self, photos):
                self.photo_jobs.prepare_batch([(job.id, job.args[1]) for job in photos], self.connection, started)
        except JobTimeoutException as exc:
            self.photo_jobs.fail_batch(ids, exc, started)
        except Exception:
            log.warning("A batch of %d photos failed; running them one by one.", len(photos), exc_info=True)
            self.photo_jobs.discard(ids)

    def prepare_job_execution(self, job, remove_from_intermediate_queue=False):
        if job.id in self._prestarted:  # started with its batch already; RQ's perform_job calls this again
            return
        capacity.with_room(lambda: super(ModelWorker, self).prepare_job_execution(job, remove_from_intermediate_queue))

    def prepare_execution(self, job):
        return capacity.with_room(lambda: super(ModelWorker, self).prepare_execution(job))

    def handle_execution_ended(self, job, queue, heartbeat_ttl):
        try:  # ended_at, and a heartbeat of the job: the end itself is recorded next
            super().handle_execution_ended(job, queue, heartbeat_ttl)
        except REDIS_TROUBLE as exc:
            log.warning("Could not mark job %s as ending: %s", job.id, exc)

    def _fail_for_room(self, job, queue) -> None:
        """End ``job`` as failed because Redis stayed full before or after its job function ran."""
        self._explain_full(job)
        try:
            metrics.record(self.connection, self.key_prefix, job.origin, "failed", "full")
        except RedisError as exc:
            log.warning("Could not record job metrics: %s", exc)
        self.handle_job_failure(job, queue, exc_string="OutOfMemoryError: Redis stayed full.")

    def _restore_start(self, job) -> None:
        """perform_job stamps ``started_at`` again; a batched job started when its batch did."""
        started_at = self._prestarted.get(job.id)
        if started_at is not None:
            job.started_at = started_at

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """RQ retries a lost connection inside its blocking pop only; its bookkeeping just before (worker state,
        heartbeat) raises instead, and the work loop then quits. Wait for Redis (or for room in it) here instead."""
        while True:
            try:
                dequeued = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except REDIS_TROUBLE as exc:
                if rq_adapter.stop_requested(self):
                    return None  # the work loop ends
                log.warning("Waiting for Redis: %s", exc)
                time.sleep(1.0)
                continue
            # RQ moves each id it pops into an intermediate list, and leaves there the id of a job that expired in the
            # queue (until its maintenance, every 10 minutes, if a worker is still running): give that list a TTL.
            for queue in self.queues:
                try:
                    refresh_rq_ttls(queue, self.bookkeeping_ttl)
                except RedisError:
                    log.warning("Could not refresh the TTLs of RQ's registries.", exc_info=True)
            return dequeued

    def run_maintenance_tasks(self):
        try:
            super().run_maintenance_tasks()
        except REDIS_TROUBLE as exc:
            log.warning("Skipped RQ's maintenance: %s", exc)

    def check_for_suspension(self, burst: bool):
        try:
            super().check_for_suspension(burst)
        except REDIS_TROUBLE as exc:
            log.warning("Could not check for suspension: %s", exc)

    # RQ records a job's end after the job function returns; long polls are woken only once it is recorded, so that
    # they read 'finished' or 'failed', never 'started'.
    # A full Redis refuses RQ's record of a job's end too. Success raises (perform_job then fails the job: see
    # handle_exception); RQ's failure path only logs it, which would leave the job 'started' for good, so it is
    # retried here until the job reads as failed (the record is one MULTI: all of it lands or none).
    def handle_job_success(self, job, queue, *args, **kwargs):
        self._restore_start(job)
        capacity.with_room(lambda: super(ModelWorker, self).handle_job_success(job, queue, *args, **kwargs))
        self._notify_done(job)

    def handle_job_failure(self, job, queue, *args, **kwargs):
        self._restore_start(job)

        def record() -> None:
            super(ModelWorker, self).handle_job_failure(job, queue, *args, **kwargs)
            if rq_adapter.stored_status(self.connection, job.id) == JobStatus.STARTED.value:  # not persisted
                raise OutOfMemoryError("RQ could not record the failure of the job.")

        try:
            capacity.with_room(record)
        except RedisError as exc:
            log.error("Could not record the failure of job %s: %s", job.id, exc)
        self._notify_done(job)

    def _notify_done(self, job) -> None:
        try:
            notify_done(self.connection, self.key_prefix, job.id)
        except RedisError as exc:  # the waiters get the state when their wait runs out
            log.warning("Could not announce the end of job %s: %s", job.id, exc)

    def handle_exception(self, job, *exc_info):
        from simpsonize.model.errors import SimpsonizeError

        if isinstance(exc_info[1], SimpsonizeError):  # the photo's fault, already explained to the user
            self.log.info("Worker %s: job %s failed: %s", self.name, job.id, exc_info[1])
            return
        if isinstance(exc_info[1], OutOfMemoryError):  # Redis full: not a bug, and the user gets a sentence
            self.log.warning("Worker %s: job %s failed, Redis is full: %s", self.name, job.id, exc_info[1])
            if not job.meta.get("error"):  # RQ could not record its start or its success: the result is not kept
                self._explain_full(job)
            return
        super().handle_exception(job, *exc_info)

    def _explain_full(self, job) -> None:
        """The job fails for a full Redis: drop its result if it was stored (room for the failure's record) and
        give it the sentence."""
        try:
            self.connection.delete(keys.result_key(self.key_prefix, job.id), keys.input_key(self.key_prefix, job.id))
            job.meta["error"] = capacity.FULL_FAILURE
            capacity.with_room(job.save_meta)
        except RedisError as exc:
            log.warning("Could not explain the failure of job %s: %s", job.id, exc)

    def heartbeat(self, timeout=None, pipeline=None):
        if pipeline is not None:
            return self._heartbeat(timeout, pipeline)
        try:
            self._heartbeat(timeout, pipeline)
        except REDIS_TROUBLE as exc:  # the work loop's next dequeue waits for Redis to come back, or for room
            log.warning("Heartbeat failed: %s", exc)

    def set_state(self, state, pipeline=None):
        if pipeline is not None:
            return super().set_state(state, pipeline)
        try:  # idle/busy, for `rq info`: nothing of ours reads it
            super().set_state(state, pipeline)
        except REDIS_TROUBLE as exc:
            log.warning("Could not record the worker's state: %s", exc)

    def register_birth(self, *args, **kwargs):
        while True:  # a full Redis refuses the registration: wait for room, as the work loop does, instead of exiting
            try:
                return super().register_birth(*args, **kwargs)
            except OutOfMemoryError as exc:
                log.warning("Redis is full; waiting for room to register this worker: %s", exc)
                time.sleep(1.0)

    def register_death(self):
        try:  # the worker's key expires on its own; a full or absent Redis must not turn a stop into a crash
            super().register_death()
        except REDIS_TROUBLE as exc:
            log.warning("Could not register this worker's end: %s", exc)

    def _heartbeat(self, timeout=None, pipeline=None):
        super().heartbeat(timeout, pipeline)
        rq_adapter.keep_registered(
            pipeline if pipeline is not None else self.connection,
            self.key,
            self.queue_names(),
            max(int(timeout or 0), self.worker_ttl + 60),
        )
