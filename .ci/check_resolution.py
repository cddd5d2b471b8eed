"""Check a `pip install --dry-run --report` resolution: the wanted ONNX Runtime build is in it,
the other is not (the two install the same module over each other).

    python3 .ci/check_resolution.py REPORT.json --want onnxruntime-gpu --refuse onnxruntime
"""

import argparse
import json
import re
import sys


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


parser = argparse.ArgumentParser()
parser.add_argument("report")
parser.add_argument("--want", required=True)
parser.add_argument("--refuse", required=True)
args = parser.parse_args()
with open(args.report) as f:
    names = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in json.load(f)["install"]}
problems = []
if canonical(args.want) not in names:
    problems.append(f"{args.want} is not in the resolution")
if canonical(args.refuse) in names:
    problems.append(f"{args.refuse} {names[canonical(args.refuse)]} is in the resolution beside {args.want}")
if problems:
    sys.exit(f"{args.report}: " + "; ".join(problems))
print(f"{args.report}: {len(names)} packages, {args.want} {names[canonical(args.want)]}, no {args.refuse}")
