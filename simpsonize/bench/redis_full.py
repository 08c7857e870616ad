"""`simpsonize bench full`: a burst against a `serve` whose embedded Redis is small, as a busy instance fills it.

It starts `simpsonize serve` with ``SIMPSONIZE_REDIS_MAXMEMORY`` (default 12mb), then ``--clients`` clients (8) send
``--uploads`` photos (400) between them, each as a REST client would: upload, long-poll the job until it ends,
download the result, and delete two jobs in three (``--delete-every``), keeping the third until it expires. A 503
counts as refused and the client goes on with its next photo after a short pause.

It prints accepted, refused (503), finished, failed (by the workers' reason, from ``/metrics``, and by sentence),
never ended (no final state within ``--job-timeout``), other answers (a DELETE that got a 500, say), the worker exits
`serve` reported, and whether `serve` was still up at the end. ``--repo DIR`` runs another checkout's `serve` (the
code before a change) with this benchmark. Timings are left out on purpose: the counts are the figures.

    simpsonize bench full --maxmemory 12mb --uploads 400 --clients 8 --json full.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from simpsonize.bench.common import REPO_ROOT, astronaut_jpeg, serving
from simpsonize.cpu import cpu_name

EXIT_LINE = re.compile(r"worker pid \d+ (exited with code -?\d+|was killed by signal \d+)")


def failed_by_reason(metrics_text: str) -> dict[str, int]:
    reasons = {}
    for line in metrics_text.splitlines():
        match = re.match(r'simpsonize_jobs_failed_total\{reason="([a-z_]+)"\} ([0-9.e+]+)', line)
        if match and float(match.group(2)) > 0:
            reasons[match.group(1)] = int(float(match.group(2)))
    return reasons


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.sentences: Counter[str] = Counter()
        self.other: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n


def client_loop(
    base: str, photo: bytes, next_index, tally: Tally, delete_every: int, job_timeout: float, pause: float
) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        while (index := next_index()) is not None:
            try:
                response = client.post("/api/v1/jobs", files={"file": ("me.jpg", photo, "image/jpeg")})
            except httpx.HTTPError as exc:
                tally.add("upload_errors")
                with tally.lock:
                    tally.other[f"POST {type(exc).__name__}"] += 1
                time.sleep(pause)
                continue
            if response.status_code == 503:
                tally.add("refused")
                with tally.lock:
                    retry = response.headers.get("Retry-After", "none")
                    tally.refusals[f"{response.json().get('detail')} (Retry-After {retry})"] += 1
                time.sleep(pause)
                continue
            if response.status_code != 202:
                with tally.lock:
                    tally.other[f"POST {response.status_code}"] += 1
                continue
            tally.add("accepted")
            job_id = response.json()["id"]
            deadline = time.monotonic() + job_timeout
            state = None
            while time.monotonic() < deadline:
                try:
                    status = client.get(f"/api/v1/jobs/{job_id}", params={"wait": 30})
                except httpx.HTTPError:
                    time.sleep(0.5)
                    continue
                if status.status_code == 404:
                    state = "lost"  # it vanished without a final state
                    break
                if status.status_code != 200:
                    time.sleep(0.5)
                    continue
                body = status.json()
                if body["status"] in ("finished", "failed"):
                    state = body["status"]
                    if state == "failed":
                        with tally.lock:
                            tally.sentences[body.get("error") or "(no sentence)"] += 1
                    break
            if state is None or state == "lost":
                tally.add("never_ended")
                continue
            tally.add(state)
            if state == "finished":
                result = client.get(f"/api/v1/jobs/{job_id}/result")
                if result.status_code != 200:
                    with tally.lock:
                        tally.other[f"GET result {result.status_code}"] += 1
            if index % delete_every != 0:  # two in three (delete_every 3) are deleted, the third kept
                deleted = client.delete(f"/api/v1/jobs/{job_id}")
                if deleted.status_code != 204:
                    with tally.lock:
                        tally.other[f"DELETE {deleted.status_code}"] += 1


def measure(args: argparse.Namespace) -> dict:
    repo = Path(args.repo or REPO_ROOT).resolve()
    photo = Path(args.photo).read_bytes() if args.photo else astronaut_jpeg()
    with tempfile.TemporaryDirectory(prefix="szfull-") as data_dir:
        settings = {
            "SIMPSONIZE_REDIS_MAXMEMORY": args.maxmemory,
            "SIMPSONIZE_RATE_LIMIT": "off",
            "SIMPSONIZE_RESULT_TTL": str(args.result_ttl),
        }
        options = ["--workers", str(args.workers), "--data-dir", data_dir]
        if args.threads:
            options += ["--threads", str(args.threads)]
        if args.weights:
            options += ["--weights", str(args.weights)]
        log_path = Path(data_dir) / "serve.log"
        with (
            open(log_path, "w") as log,
            serving(
                *options,
                repo=repo,
                settings=settings,
                stderr=log,
                timeout=args.start_timeout,
                path="/readyz",
                stop_timeout=90,
            ) as server,
        ):
            process, base = server.process, server.base
            tally = Tally()
            counter = iter(range(args.uploads))
            counter_lock = threading.Lock()

            def next_index():
                with counter_lock:
                    return next(counter, None)

            threads = [
                threading.Thread(
                    target=client_loop,
                    args=(base, photo, next_index, tally, args.delete_every, args.job_timeout, args.pause),
                )
                for _ in range(args.clients)
            ]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.monotonic() - started
            serve_up = process.poll() is None
            metrics_text = ""
            if serve_up:
                try:
                    metrics_text = httpx.get(f"{base}/metrics", timeout=10).text
                except httpx.HTTPError:
                    pass
        serve_log = log_path.read_text(errors="replace")
    exits = EXIT_LINE.findall(serve_log)
    stopped = [line for line in serve_log.splitlines() if "stopping." in line]
    return {
        "header": {
            "cpu": cpu_name(),
            "load_average": os.getloadavg(),
            "maxmemory": args.maxmemory,
            "uploads": args.uploads,
            "clients": args.clients,
            "result_ttl": args.result_ttl,
            "repo": str(repo),
            "wall_s": round(wall, 1),
        },
        "accepted": tally.counts["accepted"],
        "refused": tally.counts["refused"],
        "finished": tally.counts["finished"],
        "failed": tally.counts["failed"],
        "failed_by_reason": failed_by_reason(metrics_text),
        "failure_sentences": dict(tally.sentences),
        "never_ended": tally.counts["never_ended"],
        "upload_errors": tally.counts["upload_errors"],
        "other_answers": dict(tally.other),
        "refusal_answers": dict(tally.refusals),
        "worker_exits": len(exits),
        "worker_exit_lines": sorted(set(exits)),
        "serve_stayed_up": serve_up,
        "serve_stop_lines": stopped[:3],
        "redis_memory": {
            line.split(" ")[0]: line.split(" ")[1]
            for line in metrics_text.splitlines()
            if line.startswith("simpsonize_redis_") and "memory" in line.split(" ")[0]
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--maxmemory", default="12mb", help="The embedded Redis's maxmemory (default 12mb).")
    parser.add_argument("--uploads", type=int, default=400, help="Photos sent in all (default 400).")
    parser.add_argument("--clients", type=int, default=8, help="Clients sending them at once (default 8).")
    parser.add_argument(
        "--delete-every",
        type=int,
        default=3,
        help="Keep one job in this many, delete the others after downloading (default 3).",
    )
    parser.add_argument("--result-ttl", type=int, default=3600, help="SIMPSONIZE_RESULT_TTL for the run (3600).")
    parser.add_argument("--workers", type=int, default=1, help="Workers `serve` starts (default 1).")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: serve's).")
    parser.add_argument("--weights", type=Path, help="Generator weights (default: the shipped ones).")
    parser.add_argument("--photo", type=Path, help="The photo sent (default: the astronaut, 512x512 JPEG).")
    parser.add_argument("--pause", type=float, default=0.2, help="Seconds a client waits after a 503 (0.2).")
    parser.add_argument(
        "--job-timeout",
        type=float,
        default=180.0,
        help="Seconds a job may take to end before it counts as never ended (180).",
    )
    parser.add_argument("--start-timeout", type=float, default=240.0)
    parser.add_argument("--repo", type=Path, help="Run this checkout's `serve` (default: this one).")
    parser.add_argument("--json", type=Path, help="Also write the report here.")


def run(args: argparse.Namespace) -> int:
    report = measure(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if report["serve_stayed_up"] and report["never_ended"] == 0 else 1
