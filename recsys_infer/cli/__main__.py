"""``python -m recsys_infer.cli``: the same as the ``recsys-infer`` command."""

from . import main

main()
