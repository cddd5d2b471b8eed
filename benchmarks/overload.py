"""Past saturation: does the bounded queue keep accepted requests fast and refuse the rest fast?

    python benchmarks/overload.py BUNDLE [--clients 4,64] [--seconds 20] [--max-pending 8,32] [--json FILE]

``recsys-infer serve`` runs as a separate process on 127.0.0.1 twice: once with
each ``--max-pending`` bound (the bounded queue) and once with a bound too large to matter
(100,000: what an unbounded queue does). For each, closed-loop clients (httpx, keep-alive) send
text ``POST /recommend`` bodies for ``--seconds``: first a few clients (below saturation, the
baseline), then many (far past it). A client that gets 429 honours ``Retry-After`` (sleeps that
long) and sends again, as a well-behaved client does; the clients share the machine's cores
with the server.
Reported per run: answered requests/s, latency p50/p99 of the answered (200) requests, the
number of 429s and their latency p50/p99, and any other status. Modes alternate, and nothing is
asserted: the tests check behaviour; this script writes the figures down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from load_test import serving  # this folder's load test: the server in its own process

TEXTS = [
    "a quiet film about a family by the sea",
    "wireless noise cancelling headphones",
    "space opera",
    "cozy mystery novel set in Scotland",
    "trail running shoes",
    "heist thriller",
]


def _load(base: str, clients: int, seconds: float) -> dict[str, Any]:
    stop = time.monotonic() + seconds
    ok: list[float] = []
    refused: list[float] = []
    other: dict[int, int] = {}
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            i = n
            while time.monotonic() < stop:
                started = time.perf_counter()
                r = c.post("/recommend", json={"text": TEXTS[i % len(TEXTS)] + f" {i}", "k": 10})
                took = time.perf_counter() - started
                i += clients
                with lock:
                    if r.status_code == 200:
                        ok.append(took)
                    elif r.status_code == 429:
                        refused.append(took)
                    else:
                        other[r.status_code] = other.get(r.status_code, 0) + 1
                if r.status_code == 429:
                    time.sleep(float(r.headers.get("retry-after", "1")))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    begun = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - begun

    def pct(xs: list[float], q: float) -> float | None:
        return round(float(np.percentile(xs, q)) * 1e3, 2) if xs else None

    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "answered_per_s": round(len(ok) / wall, 1),
        "answered": len(ok),
        "answered_p50_ms": pct(ok, 50),
        "answered_p99_ms": pct(ok, 99),
        "refused_429": len(refused),
        "refused_p50_ms": pct(refused, 50),
        "refused_p99_ms": pct(refused, 99),
        "other_statuses": other,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--clients", default="4,64")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-pending", default="8,32", help="bounds to try, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    rows = []
    for bound in [*(int(b) for b in args.max_pending.split(",")), 100_000]:
        with serving(args.bundle, "--threads", str(args.threads), "--max-pending", str(bound)) as (base, _):
            _load(base, 2, 3)  # warm-up
            for clients in levels:
                row = {"max_pending": bound, **_load(base, clients, args.seconds)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    report = {
        "command": " ".join(sys.argv),
        "environment": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
