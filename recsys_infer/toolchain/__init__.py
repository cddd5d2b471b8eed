"""The offline toolchain, one package per stage in the order a model goes through them. Needs
the ``train`` extra (torch).

- :mod:`.train`: the two-tower model, its training loops, checkpoints and resumable state;
- :mod:`.export`: checkpoints to verified bundles (ONNX towers, parity, fusion weights, the
  index), the fidelity measures every later step uses, and conversion to sentence-transformers;
- :mod:`.compress`: graph transforms on bundles (fusions, int8 in its forms, fp16, smoothing,
  outlier channels, the mixed-precision search);
- :mod:`.prune`: heads, neurons and layers removed from a checkpoint, recovered by distillation;
- :mod:`.build`: a recipe that runs the stages in turn.

A stage imports only the stages before it (an import-linter contract in ``pyproject.toml``).
This package imports nothing heavy by itself.
"""
