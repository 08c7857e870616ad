"""`simpsonize worker`: the command line of an RQ worker process that loads the Simpsonizer once and serves every
job with it (``simpsonize.worker.model_worker.ModelWorker``): its options, the batch size it picks, its start-up
checks (weights, model, Redis), and ``--check``, the containers' health check on its heartbeat."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
import sys
from pathlib import Path

from redis.exceptions import RedisError
from rq import Queue

from simpsonize.cpu import limited_cpus
from simpsonize.queue import liveness
from simpsonize.queue.jobstore import SERIALIZER, connect
from simpsonize.settings import get_settings
from simpsonize.worker.jobs import ModelHolder
from simpsonize.worker.model_worker import ModelWorker

log = logging.getLogger("simpsonize.worker")
AUTO_BATCH_CUDA = 16  # SIMPSONIZE_WORKER_BATCH=auto on CUDA
# auto on a CPU: 2 for a worker with several torch threads, else 1. Measured on a 2-core EPYC, bursts of 16,
# interleaved runs: one 2-thread worker did 7.7-8.9 photos/s with batches of 2 against 6.0-7.9 one by one
# (saturation 0.90-1.05 against 0.83-0.92); two 1-thread workers were slower with batches (10.1-11.1 against
# 11.2-12.3). Two photos keep both threads of a worker busy through MTCNN's single-threaded stretches, and RQ's
# bookkeeping is paid once per batch.
AUTO_BATCH_CPU_MULTITHREADED = 2
MAX_BATCH = 64


def batch_size_for(setting: str | int | None, device_type: str, threads: int | None = 1) -> int:
    """``SIMPSONIZE_WORKER_BATCH`` ("auto" or a number from 1 to MAX_BATCH) for a model on ``device_type`` running
    ``threads`` torch threads (None: torch's default, as the worker then leaves it)."""
    value = str(setting if setting is not None else "auto").strip().lower()
    if value in ("", "auto"):
        if device_type == "cuda":
            return AUTO_BATCH_CUDA
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        return AUTO_BATCH_CPU_MULTITHREADED if threads >= 2 else 1
    try:
        size = int(value)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_BATCH:
        raise ValueError(f"the worker batch must be 'auto' or a number from 1 to {MAX_BATCH}, not {setting!r}")
    return size


def default_name() -> str:
    """Unique (a restarted container keeps its hostname and often its pid) and tied to the host, for ``check``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def check(redis_url: str, queue_name: str, max_age: float) -> int:
    """0 when a worker named after this host has a heartbeat at most ``max_age`` seconds old, else 1."""
    host = socket.gethostname()
    try:
        alive = liveness.live_workers(Queue(queue_name, connection=connect(redis_url), serializer=SERIALIZER), max_age)
    except RedisError as exc:
        print(f"unhealthy: Redis is not reachable ({type(exc).__name__}).")
        return 1
    mine = [name for name in alive if name.startswith(f"{host}-")]
    print(
        f"healthy: {', '.join(mine)}"
        if mine
        else f"unhealthy: no worker of host {host} has a heartbeat within {max_age:g} s."
    )
    return 0 if mine else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis to take jobs from (default: $REDIS_URL).")
    parser.add_argument("--queue", help="Queue name (default: $SIMPSONIZE_QUEUE_NAME or 'simpsonize').")
    parser.add_argument(
        "--weights",
        type=Path,
        help="Generator weights (default: $SIMPSONIZE_WEIGHTS or the shipped weights/simpsonize.safetensors).",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present, else CPU).")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: $SIMPSONIZE_WORKER_THREADS, else the "
        "cgroup CPU quota when one is set, else torch's default; give "
        "cores / workers when several run on one machine).",
    )
    parser.add_argument(
        "--batch",
        help="Jobs taken at once, their photos run as one batch: 'auto' (16 on CUDA; on a "
        "CPU 2 with several threads, else 1) or 1 to 64 (default: "
        "$SIMPSONIZE_WORKER_BATCH or auto).",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="Generator precision: bf16 where its output stays within 40 dB PSNR of fp32, checked at "
        "start-up, else fp32; auto tries bf16 on CUDA only (default: "
        "$SIMPSONIZE_WORKER_PRECISION or auto).",
    )
    parser.add_argument("--name", help="Worker name (default: HOSTNAME-PID-RANDOM, which --check recognises).")
    parser.add_argument(
        "--check",
        action="store_true",
        help="Health check (containers): exit 0 if a worker of this host has a recent heartbeat in "
        "Redis, else 1. Loads no model.",
    )
    parser.add_argument("--burst", action="store_true", help="Quit when the queue is empty.")
    parser.add_argument("--max-jobs", type=int, help="Quit after this many jobs.")
    parser.add_argument("--log-level", default="INFO", help="Logging level (default INFO).")


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    redis_url = args.redis_url or settings.redis_url
    if not redis_url:
        print(
            "simpsonize worker: REDIS_URL is not set; point the worker at the Redis the web service uses, "
            "e.g. REDIS_URL=redis://localhost:6379/0.",
            file=sys.stderr,
        )
        return 2
    if args.check:
        return check(redis_url, args.queue or settings.queue_name, 2 * settings.worker_heartbeat)
    weights = Path(args.weights or settings.weights)
    if not weights.is_file():
        print(
            f"simpsonize worker: the weights file {weights} does not exist; export trained weights there "
            "(simpsonize export) or set SIMPSONIZE_WEIGHTS to a weights file.",
            file=sys.stderr,
        )
        return 2

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from simpsonize.model.device import pick_device
    from simpsonize.model.errors import SimpsonizeError

    holder = ModelHolder()
    try:
        device = args.device or settings.device
        threads = args.threads or settings.worker_threads or limited_cpus()
        batch_size = batch_size_for(args.batch or settings.worker_batch, pick_device(device).type, threads)
        model = holder.load(
            weights,
            device=device,
            num_threads=threads,
            precision=args.precision or settings.worker_precision,
            batch_size=batch_size,
        )
    except (SimpsonizeError, ValueError) as exc:
        print(f"simpsonize worker: {exc}", file=sys.stderr)
        return 2
    log.info(
        "Loaded %s on %s (pid %d), %s, batches of up to %d.",
        weights,
        model.device,
        os.getpid(),
        model.precision if model.bf16_psnr is None else f"{model.precision} (bf16 at {model.bf16_psnr:.1f} dB)",
        batch_size,
    )

    redis = connect(redis_url)
    try:
        redis.ping()
    except RedisError as exc:
        print(f"simpsonize worker: cannot reach Redis at {redis_url} ({exc}).", file=sys.stderr)
        return 3  # distinct from 2 (bad weights/settings): `serve` retries it once the service has been up
    queue = Queue(args.queue or settings.queue_name, connection=redis, serializer=SERIALIZER)
    worker = ModelWorker([queue], connection=redis, name=args.name or default_name(), model=holder)
    worker.bookkeeping_ttl = settings.bookkeeping_ttl
    worker.heartbeat_interval = settings.worker_heartbeat
    worker.key_prefix = settings.key_prefix
    worker.batch_size = batch_size
    worker.batch_wait = settings.worker_batch_wait_ms / 1000
    worker.work(burst=args.burst, max_jobs=args.max_jobs, logging_level=args.log_level.upper())
    return 0
