"""``recsys-infer bench``: compressed variants side by side with the uncompressed PyTorch model
and the sentence-transformers peers, in one interleaved run.

    from recsys_infer.bench import BenchConfig, run_bench
    report = run_bench([bundle, int8_bundle], data, reference=checkpoint)

The report is a JSON document (``SCHEMA``, ``SCHEMA_VERSION``; documented in
``benchmarks/README.md``); :func:`markdown` and :func:`plot` render it. The runtime parts import
no torch; the PyTorch reference and the peers are imported only when a reference is given.
"""

from .report import markdown, plot
from .run import SCHEMA, SCHEMA_VERSION, BenchConfig, run_bench

__all__ = ["SCHEMA", "SCHEMA_VERSION", "BenchConfig", "markdown", "plot", "run_bench"]
