"""The offline toolchain: training, export and verification. Needs the ``train`` extra (torch).

Import the submodules directly (``recsys_infer.toolchain.train``, ``.export``); this package
imports nothing heavy by itself.
"""
