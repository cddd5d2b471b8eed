"""How long one large body holds up other clients of `recsys-infer serve`.

    python benchmarks/studies/large_body.py BUNDLE [--requests 38] [--ids 5000] [--rounds 5]

Runs ``recsys-infer serve BUNDLE --threads 1`` in its own process (``load_test.serving``, as
``overload.py`` does) and sends a batch body of ``--requests`` requests, each excluding
``--ids`` ids and carrying a 1,990-character text (about 3.9 MB with the defaults), while a
second client calls ``GET /healthz`` every 5 ms. Reports, per round,
the big request's time and the worst and median /healthz latency during it: what the body's
parsing, validation and filter building take from the event loop that every client shares.
This justifies ``_INLINE_IDS`` in ``recsys_infer/serve/app.py``. Before serving, it times the
same body's three steps alone in this process (best of 5): ``json.loads``, pydantic's
validation of the parsed body (and, for comparison, its one-pass ``validate_json``), and the
requests' ``options()``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: load_test's server

from load_test import serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--requests", type=int, default=38)
    parser.add_argument("--ids", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    request = {"text": "x" * 1990, "exclude": [f"exclude-id-{i:05d}" for i in range(args.ids)], "k": 5}
    body = json.dumps({"requests": [request] * args.requests}).encode()
    steps = time_steps(body)
    print(steps)
    rounds = []
    with (
        serving(args.bundle, "--threads", "1") as (base, _),
        httpx.Client(base_url=base, timeout=60) as big,
        httpx.Client(base_url=base, timeout=60) as probe,
    ):
        probe.get("/healthz")
        for _ in range(args.rounds):
            waits: list[float] = []
            done = threading.Event()

            def health(waits: list[float] = waits, done: threading.Event = done) -> None:
                while not done.is_set():
                    t = time.perf_counter()
                    probe.get("/healthz")
                    waits.append(time.perf_counter() - t)
                    time.sleep(0.005)

            thread = threading.Thread(target=health)
            thread.start()
            time.sleep(0.2)
            t = time.perf_counter()
            status = big.post("/recommend/batch", content=body, headers={"content-type": "application/json"})
            elapsed = time.perf_counter() - t
            time.sleep(0.2)
            done.set()
            thread.join()
            rounds.append(
                {
                    "status": status.status_code,
                    "request_ms": round(1000 * elapsed, 1),
                    "healthz_worst_ms": round(1000 * max(waits), 1),
                    "healthz_median_ms": round(1000 * statistics.median(waits), 2),
                }
            )
            print(rounds[-1])
    report = {"body_mb": round(len(body) / 1e6, 2), "steps_ms": steps, "rounds": rounds}
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def time_steps(body: bytes) -> dict[str, float]:
    """Each step a body goes through before the batcher, alone: best of 5, in ms."""
    from pydantic import TypeAdapter

    from recsys_infer.serve import ServeSettings
    from recsys_infer.serve.models import make_bodies

    adapter = TypeAdapter(make_bodies(ServeSettings()).batch)
    parsed = json.loads(body)
    model = adapter.validate_python(parsed)
    steps = {
        "json_loads": lambda: json.loads(body),
        "validate_parsed": lambda: adapter.validate_python(parsed),
        "validate_json_one_pass": lambda: adapter.validate_json(body),
        "options": lambda: [r.options() for r in model.requests],
    }
    best = {}
    for name, step in steps.items():
        times = []
        for _ in range(5):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        best[name] = round(1000 * min(times), 1)
    return best


if __name__ == "__main__":
    main()
