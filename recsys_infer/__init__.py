"""recsys-infer: a pretrained language model as a fast two-tower recommender.

The public API is small::

    from recsys_infer import Engine
    engine = Engine.load("bundle/", device="cpu")
    engine.recommend(history=["1", "50", "260"], k=10)

Importing this package never imports torch; the training and export toolchain lives in
``recsys_infer.toolchain`` and needs the ``train`` extra.
"""

import logging

from . import errors
from .enums import Device, Pooling, Precision, Space
from .runtime import Catalog, Engine, Item, MicroBatcher, Query, Reason, Recommendation, RecommendOptions
from .version import __version__

__all__ = [
    "Catalog",
    "Device",
    "Engine",
    "Item",
    "MicroBatcher",
    "Pooling",
    "Precision",
    "Query",
    "Reason",
    "RecommendOptions",
    "Recommendation",
    "Space",
    "__version__",
    "errors",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
