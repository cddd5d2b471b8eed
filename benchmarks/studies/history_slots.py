"""How many of a bundle's top 10 are the user's own history, when history items are left in.

    python benchmarks/studies/history_slots.py BUNDLE DATA [--users 2000] [--json FILE]

For the first ``--users`` test users of DATA (leave-one-out, history up to 50 items), asks the
bundle for 10 items with ``exclude_seen=False`` and counts the history items among them, by
rank, how often the newest history item comes first, and how many targets are history items.
It is why ``export`` chooses a seen penalty (benchmarks/QUALITY.md, "The seen penalty"). A
bundle exported with ``--no-seen-penalty`` shows the model's own ranking; a default one, what
the penalty leaves.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from recsys_infer import Engine, Query
from recsys_infer.data.readers import load_dataset
from recsys_infer.data.split import leave_one_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    examples = leave_one_out(load_dataset(args.data)).test[: args.users]
    engine = Engine.load(args.bundle, device="cpu")
    queries = [Query(history=e.history[-50:]) for e in examples]
    results = engine.recommend_batch(queries, k=10, exclude_seen=False)
    by_rank: Counter[int] = Counter()
    newest_first = 0
    for example, recs in zip(examples, results, strict=True):
        ids = [r.item_id for r in recs]
        by_rank.update(rank for rank, item in enumerate(ids, 1) if item in set(example.history))
        newest_first += bool(ids) and ids[0] == example.history[-1]
    n = len(examples)
    report = {
        "bundle": str(args.bundle),
        "data": str(args.data),
        "users": n,
        "seen_penalty": {"history": engine.seen.penalty, "history + request": engine.seen.with_request},
        "history_items_per_top_10": round(sum(by_rank.values()) / n, 3),
        "history_items_by_rank": dict(sorted(by_rank.items())),
        "newest_item_first": round(newest_first / n, 3),
        "targets_in_history": sum(e.target in set(e.history) for e in examples),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
