"""Concurrent load: what micro-batching buys, in the engine and through `recsys-infer serve`.

    python benchmarks/load_test.py BUNDLE [--clients 16] [--requests 1500] [--threads 2] [--json FILE]

Two measurements, each with and without micro-batching, repeated ``--repeats`` times in
alternation (medians reported, so that drift hits every mode alike):

1. **Engine**: ``--clients`` threads call ``Engine.recommend`` directly, or through a
   ``MicroBatcher`` (max batch 32, max wait 2 ms), until ``--requests`` are answered; once with
   history and text requests alternating (``mixed``), once with text requests only.
2. **HTTP**: ``recsys-infer serve`` runs as a separate process on 127.0.0.1, once with
   ``--max-batch 1 --max-wait-us 0`` (no batching) and once with the defaults; ``--clients``
   concurrent keep-alive connections (aiohttp, one event loop) send ``--requests``
   ``POST /recommend`` between them.

Requests are the bundle's probe histories and short text requests, alternating. Reported:
throughput (requests/s), latency p50/p95/p99, errors, the mean batch size (from /metrics), and
CPU time per request: the engine's process (its client threads included), or the server's
process, its event loop (the main thread) alone, and the HTTP client's (client and server share
the machine's cores).
Nothing is asserted: the tests check correctness; this script writes the figures down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from recsys_infer import Engine, MicroBatcher

TEXTS = [
    "a quiet film about a family by the sea",
    "space opera",
    "romantic comedy in paris",
    "heist thriller",
]


def queries(bundle: Path, n: int, mix: str) -> list[dict[str, Any]]:
    """``mixed``: histories and texts alternating; ``text``: text requests only."""
    probe = json.loads((bundle / "probe.json").read_text()) if (bundle / "probe.json").is_file() else {}
    histories = [h for h in probe.get("histories", []) if h][:200]
    requests = list(probe.get("requests", []))[:200] or TEXTS
    out: list[dict[str, Any]] = []
    for i in range(n):
        if mix == "mixed" and histories and i % 2 == 0:
            out.append({"history": histories[i % len(histories)], "k": 10})
        else:
            out.append({"text": requests[i % len(requests)], "k": 10})
    return out


def summary(latencies_ms: list[float], seconds: float, errors: int) -> dict[str, Any]:
    a = np.asarray(latencies_ms)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "requests": int(a.size),
        "errors": errors,
        "seconds": round(seconds, 3),
        "throughput_rps": round(a.size / seconds, 1),
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
    }


def drive(call: Any, work: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0

    def one(q: dict[str, Any]) -> tuple[float, bool]:
        t = time.perf_counter_ns()
        try:
            call(q)
            ok = True
        except Exception:
            ok = False
        return (time.perf_counter_ns() - t) / 1e6, ok

    for q in work[:20]:  # warm-up
        call(q)
    t0, cpu0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(clients) as pool:
        for ms, ok in pool.map(one, work):
            latencies.append(ms)
            errors += not ok
    result = summary(latencies, time.perf_counter() - t0, errors)
    result["cpu_ms_per_request"] = round(1000 * (time.process_time() - cpu0) / len(work), 3)
    return result


def engine_runs(
    bundle: Path, work: list[dict[str, Any]], clients: int, threads: int, spin: bool
) -> dict[str, Any]:
    engine = Engine.load(bundle, device="cpu", threads=threads, spin=spin)
    direct = drive(lambda q: engine.recommend(**q), work, clients)
    sizes: list[int] = []
    with MicroBatcher(engine, max_batch=32, max_wait_us=2000, on_batch=sizes.append) as batcher:
        batched = drive(lambda q: batcher.recommend(**q), work, clients)
    batched["mean_batch"] = round(float(np.mean(sizes)), 2)
    return {"direct": direct, "micro_batched": batched}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """User plus system CPU time of process ``pid`` (all its threads), or of one of its threads
    (the main thread's id is the process id). Linux only; None elsewhere."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serving(bundle: Path, *options: str) -> Iterator[tuple[str, int]]:
    """``recsys-infer serve BUNDLE OPTIONS`` in its own process on a free loopback port; yields
    its base URL and process id once ``/healthz`` answers, and stops it afterwards."""
    port = free_port()
    cli = str(Path(sys.executable).with_name("recsys-infer"))
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_INFER_API_KEY"}
    args = [cli, "serve", str(bundle), "--port", str(port), *options]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the server did not come up")
        yield base, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


async def http_drive(base: str, work: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """``clients`` concurrent keep-alive connections on one event loop (aiohttp), each sending
    the next request as soon as its last answer arrived. Bodies are serialised beforehand, so
    the clients' own cost per request stays small beside the server's on a shared machine."""
    import aiohttp

    bodies = [json.dumps(q).encode() for q in work]
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def client(session: aiohttp.ClientSession, record: bool) -> None:
        nonlocal next_index, errors
        while next_index < len(bodies):
            body = bodies[next_index]
            next_index += 1
            t = time.perf_counter_ns()
            try:
                async with session.post(f"{base}/recommend", data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            if record:
                latencies.append((time.perf_counter_ns() - t) / 1e6)
                errors += not ok

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm = bodies[:20]
        for body in warm:  # warm-up, one at a time
            async with session.post(f"{base}/recommend", data=body, headers=headers) as response:
                await response.read()
        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(session, True) for _ in range(clients)))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    result = summary(latencies, seconds, errors)
    result["client_cpu_ms_per_request"] = round(1000 * cpu / len(bodies), 3)
    return result


def http_run(
    bundle: Path, work: list[dict[str, Any]], clients: int, threads: int, batching: bool, spin: bool
) -> dict[str, Any]:
    options = ["--threads", str(threads), "--spin", "always" if spin else "never"]
    options += [] if batching else ["--max-batch", "1", "--max-wait-us", "0"]
    with serving(bundle, *options) as (base, pid):
        before = cpu_seconds(pid), cpu_seconds(pid, pid)
        result = asyncio.run(http_drive(base, work, clients))
        after = cpu_seconds(pid), cpu_seconds(pid, pid)
        keys = ("cpu_ms_per_request", "event_loop_cpu_ms_per_request")
        for key, b, a in zip(keys, before, after, strict=True):
            if a is not None and b is not None:
                result[key] = round(1000 * (a - b) / len(work), 3)
        metrics = httpx.get(f"{base}/metrics").text
        count = next(
            float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("recsys_batch_size_count")
        )
        total = next(
            float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("recsys_batch_size_sum")
        )
        result["mean_batch"] = round(total / count, 2) if count else None
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating repetitions; medians reported")
    parser.add_argument(
        "--spin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ONNX Runtime threads busy-wait between runs (engine and server alike)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeats):
        for mix in ("mixed", "text"):
            work = queries(args.bundle, args.requests, mix)
            for name, r in engine_runs(args.bundle, work, args.clients, args.threads, args.spin).items():
                runs.setdefault(f"engine {mix} {name}", []).append(r)
        work = queries(args.bundle, args.requests, "mixed")
        for batching in (False, True):
            name = f"http mixed {'micro_batched' if batching else 'no_batching'}"
            runs.setdefault(name, []).append(
                http_run(args.bundle, work, args.clients, args.threads, batching, args.spin)
            )
    results: dict[str, Any] = {}
    for name, reps in runs.items():
        results[name] = {
            key: float(np.median([r[key] for r in reps]))
            for key in (
                "throughput_rps",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "mean_batch",
                "cpu_ms_per_request",
                "event_loop_cpu_ms_per_request",
                "client_cpu_ms_per_request",
            )
            if all(r.get(key) is not None for r in reps)
        }
        results[name]["errors"] = sum(r["errors"] for r in reps)
        results[name]["throughput_rps_each"] = [r["throughput_rps"] for r in reps]
    for name, r in results.items():
        base_name = name.replace("micro_batched", "direct" if name.startswith("engine") else "no_batching")
        r["throughput_gain"] = round(r["throughput_rps"] / results[base_name]["throughput_rps"], 2)
        print(
            f"{name:32s} {r['throughput_rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
            f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}  mean batch {r.get('mean_batch', 1)}  "
            f"×{r['throughput_gain']}  cpu {r.get('cpu_ms_per_request', '-')} ms/req"
            + (
                f" (event loop {r.get('event_loop_cpu_ms_per_request')}, "
                f"client {r['client_cpu_ms_per_request']})"
                if "client_cpu_ms_per_request" in r
                else ""
            )
        )
    report = {
        "bundle": str(args.bundle),
        "clients": args.clients,
        "requests_per_run": args.requests,
        "repeats": args.repeats,
        "threads": args.threads,
        "spin": args.spin,
        "environment": {
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "cpu": platform.machine(),
        },
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
