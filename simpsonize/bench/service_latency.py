"""`simpsonize bench service`: what a client waits for, next to what the worker spends, for each workers x threads.

For each configuration (``--configs 1x2 2x1 ...``: worker processes x torch threads each) it starts
`simpsonize serve` on a free port (embedded Redis, uvicorn, the workers), warms every worker up, then measures

* **one photo at a time** (``--singles`` of them): the client's latency, from just before the POST until the result
  PNG is downloaded, waiting with the long poll (``?wait=30``) as a REST client would; next to the worker's own job
  time and its detect / generate / encode split, taken from the job's status. Overhead = client latency / job time.
* **a burst** (``--burst`` photos sent at once, each by its own client): wall time until the last result, photos per
  second, and the *saturation*: the throughput against the compute bound, which is ``parallel / job time alone``,
  ``parallel`` being how many jobs the cores can run at once (``min(workers, cores // threads)``). It also reports
  the CPU seconds that each process of the service used during the burst (web, workers, Redis) and the client's own,
  so that a shortfall can be traced to where the cores went.

Every ratio comes from the same run. Figures are only meaningful on an otherwise idle machine: the header prints
the CPU model and the load average. ``--json`` writes everything; ``--markdown`` the table for the README.

    simpsonize bench service --configs 1x2 2x1 4x1 --burst 16 --singles 10 --json service.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from simpsonize.bench.common import astronaut_jpeg, percentile, serving
from simpsonize.cpu import cpu_name
from simpsonize.resources import SHIPPED_WEIGHTS

LONG_POLL_S = 30  # the API's maximum wait: a client asks again only when a long poll runs out
STAGES = ("detect", "generate", "encode", "job")


@dataclass(frozen=True)
class Config:
    workers: int
    threads: int

    @classmethod
    def parse(cls, text: str) -> Config:
        try:
            workers, threads = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not WORKERSxTHREADS, e.g. 2x1") from None
        if workers < 1 or threads < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: workers and threads must be at least 1")
        return cls(workers, threads)

    def __str__(self) -> str:
        return f"{self.workers}x{self.threads}"


def one_photo(client: httpx.Client, photo: bytes, timeout: float) -> dict:
    """Submit one photo, long-poll its status, download the result: the client's latency and the worker's timings."""
    started = time.perf_counter()
    response = client.post("/api/v1/jobs", files={"file": ("photo.jpg", photo, "image/jpeg")})
    response.raise_for_status()
    job = response.json()
    deadline = started + timeout
    while True:
        state = client.get(job["status_url"], params={"wait": LONG_POLL_S}).json()
        if state["status"] == "finished":
            break
        if state["status"] == "failed":
            raise RuntimeError(f"job failed: {state.get('error')}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"no result within {timeout:.0f} s")
    client.get(job["result_url"]).raise_for_status()
    latency = time.perf_counter() - started
    return {"latency": latency, **{k: v for k, v in (state.get("timings") or {}).items() if k in STAGES}}


def bench_client(base: str, connections: int) -> httpx.Client:
    """One client for the whole run, its connections opened by the warm-up and kept alive.

    A client per photo built an SSL context and opened a connection inside the timed span: 16 of them cost the
    burst about 0.5 CPU s on the service's own cores (the first job was queued 140 ms after the burst began), which
    a real client, on its own machine with its connections open, does not cost the service.
    """
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.Client(base_url=base, timeout=LONG_POLL_S + 30, limits=limits)


def burst(client: httpx.Client, photo: bytes, count: int, timeout: float) -> tuple[list[dict], float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(lambda _: one_photo(client, photo, timeout), range(count)))
    return results, time.perf_counter() - started


def service_cpu_seconds(root_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the service's processes, by role: the launcher process also serves the
    web; its children are the workers and the embedded Redis."""
    import psutil

    def cpu(process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    roles = {"web": 0.0, "workers": 0.0, "redis": 0.0, "other": 0.0}
    root = psutil.Process(root_pid)
    roles["web"] += cpu(root)
    for child in root.children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            role = (
                "redis"
                if "redis" in command and "worker" not in command
                else ("workers" if "worker" in command else "other")
            )
            roles[role] += cpu(child)
        except psutil.NoSuchProcess:
            continue
    return roles


def client_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def summarise_stages(results: list[dict]) -> dict[str, float]:
    return {
        stage: round(statistics.median(r[stage] for r in results), 4)
        for stage in STAGES
        if all(stage in r for r in results)
    }


def measure(
    config: Config, weights: Path, photo: bytes, singles: int, burst_size: int, timeout: float, device: str | None
) -> dict:
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="szbench-") as data_dir:
        options = ["--workers", str(config.workers), "--threads", str(config.threads), "--weights", str(weights)]
        options += ["--data-dir", data_dir, "--log-level", "warning"]
        if device:
            options += ["--device", device]
        # Benchmarks need the per-client limits off (one client sends the whole burst) and the queue wide enough.
        started = time.perf_counter()
        with serving(
            *options,
            settings={"SIMPSONIZE_RATE_LIMIT": "off"},
            inherit=True,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            path="/readyz",
            workers=config.workers,
            stop_signal=signal.SIGINT,
            stop_timeout=60,
        ) as server:
            process, base = server.process, server.base
            startup = time.perf_counter() - started
            with bench_client(base, connections=max(burst_size, 2 * config.workers)) as client:
                # Every worker builds its detector and picks kernels; the burst's connections are opened.
                burst(client, photo, max(burst_size, 2 * config.workers), timeout)
                single = [one_photo(client, photo, timeout) for _ in range(singles)]
                cpu_before, client_before = service_cpu_seconds(process.pid), client_cpu_seconds()
                bursted, wall = burst(client, photo, burst_size, timeout)
                cpu_after, client_after = service_cpu_seconds(process.pid), client_cpu_seconds()

    latencies = [r["latency"] for r in single]
    stages = summarise_stages(single)
    job_alone = stages.get("job")
    parallel = min(config.workers, max(1, cores // config.threads))
    bound = parallel / job_alone if job_alone else None
    photos_per_s = burst_size / wall
    cpu_used = {role: round(cpu_after[role] - cpu_before[role], 2) for role in cpu_before}
    cpu_used["client"] = round(client_after - client_before, 2)
    # The benchmark's own clients run on the same cores; in production they are elsewhere. The service's share of
    # the bound: the cores the client left, shared as before.
    left = max(0.5, cores - cpu_used["client"] / wall)
    bound_service = min(config.workers, max(left / config.threads, 0.0)) / job_alone if job_alone else None
    burst_latencies = [r["latency"] for r in bursted]
    return {
        "config": str(config),
        "workers": config.workers,
        "threads": config.threads,
        "cores": cores,
        "startup_s": round(startup, 2),
        "single": {
            "n": singles,
            "runs": [{k: round(v, 4) for k, v in r.items()} for r in single],  # each photo: latency and its stages
            "p50_s": round(percentile(latencies, 0.5), 4),
            "p95_s": round(percentile(latencies, 0.95), 4),
            "worker_stages_s": stages,
            "overhead_ratio": round(percentile(latencies, 0.5) / job_alone, 3) if job_alone else None,
        },
        "burst": {
            "n": burst_size,
            "wall_s": round(wall, 3),
            "photos_per_s": round(photos_per_s, 3),
            "bound_photos_per_s": round(bound, 3) if bound else None,
            "saturation": round(photos_per_s / bound, 3) if bound else None,
            "bound_without_client_photos_per_s": round(bound_service, 3) if bound_service else None,
            "saturation_without_client": round(photos_per_s / bound_service, 3) if bound_service else None,
            "p50_s": round(percentile(burst_latencies, 0.5), 3),
            "p95_s": round(percentile(burst_latencies, 0.95), 3),
            "worker_stages_s": summarise_stages(bursted),
            "cpu_s": cpu_used,
            "cpu_share_of_wall": round(sum(cpu_used.values()) / (wall * cores), 3),
        },
    }


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        f"{header['cpu']}, {header['cores']} cores, torch threads per worker as configured; photo: "
        f"{header['photo']}; load average before: {header['load_before']}.",
        "",
        "| workers × threads | 1 photo p50 / p95 | worker job (detect / generate / encode) | overhead | "
        f"burst of {rows[0]['burst']['n']}: photos/s | bound | saturation (without the client's CPU) | "
        "burst p50 / p95 | CPU s in burst (web / workers / redis / client) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        single, bursted = row["single"], row["burst"]
        stages, cpu = single["worker_stages_s"], bursted["cpu_s"]
        split = " / ".join(f"{stages.get(s, float('nan')) * 1000:.0f}" for s in ("detect", "generate", "encode"))
        lines.append(
            f"| {row['config']} | {single['p50_s'] * 1000:.0f} / {single['p95_s'] * 1000:.0f} ms | "
            f"{stages.get('job', float('nan')) * 1000:.0f} ms ({split}) | {single['overhead_ratio']:.2f}× | "
            f"{bursted['photos_per_s']:.2f} | {bursted['bound_photos_per_s']:.2f} | "
            f"{bursted['saturation']:.2f} ({bursted['saturation_without_client']:.2f}) | "
            f"{bursted['p50_s']:.2f} / {bursted['p95_s']:.2f} s | "
            f"{cpu['web']:.1f} / {cpu['workers']:.1f} / {cpu['redis']:.1f} / {cpu['client']:.1f} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument(
        "--configs",
        type=Config.parse,
        nargs="+",
        default=None,
        metavar="WxT",
        help="worker processes x torch threads each (default: 1xC, and Cx1 for C cores)",
    )
    parser.add_argument("--burst", type=int, default=16, help="photos sent at once (default 16)")
    parser.add_argument("--singles", type=int, default=10, help="photos sent one at a time (default 10)")
    parser.add_argument("--photo", type=Path, help="photo to send (default: scikit-image's astronaut, 512x512)")
    parser.add_argument("--device", help="worker device (default: CUDA when present)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--markdown", type=Path, help="also write the table here")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if not args.weights.is_file():
        print(f"bench service: the weights file {args.weights} does not exist; pass --weights.", file=sys.stderr)
        return 2
    if args.photo and not args.photo.is_file():
        print(f"bench service: the photo {args.photo} does not exist.", file=sys.stderr)
        return 2
    photo = args.photo.read_bytes() if args.photo else astronaut_jpeg()
    cores = len(os.sched_getaffinity(0))
    configs = args.configs or [Config(1, cores), Config(cores, 1)]
    header = {
        "cpu": cpu_name(),
        "cores": cores,
        "photo": str(args.photo or "astronaut 512x512 JPEG"),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "weights": str(args.weights),
    }
    print(
        f"{header['cpu']} | {cores} CPU cores | load average {header['load_before']} | weights {args.weights}",
        flush=True,
    )
    rows = []
    for config in configs:
        row = measure(config, args.weights, photo, args.singles, args.burst, args.timeout, args.device)
        rows.append(row)
        single, bursted = row["single"], row["burst"]
        print(
            f"{config}: 1 photo p50 {single['p50_s']:.3f} s, p95 {single['p95_s']:.3f} s, worker "
            f"{single['worker_stages_s']} (overhead {single['overhead_ratio']}x) | burst of {bursted['n']}: "
            f"{bursted['photos_per_s']:.2f} photos/s of a bound {bursted['bound_photos_per_s']} "
            f"(saturation {bursted['saturation']}), CPU s {bursted['cpu_s']}",
            flush=True,
        )
    table = markdown(rows, header)
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
