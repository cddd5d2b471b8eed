"""Beyond one machine: catalogue encoding on Ray Data, and the engine's replicas on Ray Serve.

Everything here imports ``ray`` only inside the functions that need it (the ``scale`` extra),
so the embedded, single-process path never pays for it. The item index in Milvus is part of
the runtime (:mod:`recsys_infer.runtime.milvus`), since every engine may connect to one.
"""
