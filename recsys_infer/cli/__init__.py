"""The ``recsys-infer`` command line: thin commands over the library, grouped by what users do.

- :mod:`.training`: ``quickstart``, ``train``, ``sample-data``;
- :mod:`.bundles`: ``export``, ``optimize``, ``quantize``, ``prune``, ``build``, ``convert``, ``index``;
- :mod:`.inspection`: ``info``, ``recommend``, ``evaluate``, ``bench``;
- :mod:`.serving`: ``serve``.

Options shared by several commands are defined once in :mod:`.common`. Heavy imports (torch,
the toolchain, even the runtime) happen inside the command bodies, so ``recsys-infer --help``
is instant and the runtime commands work without torch.
"""

from __future__ import annotations

from .app import app
from .common import GATE_FAILED

# isort: off
# Registration order is the order of --help's panels: the order users meet the commands in.
from . import training, bundles, inspection, serving

# isort: on

__all__ = ["GATE_FAILED", "app", "bundles", "inspection", "main", "serving", "training"]


def main() -> None:
    app()
