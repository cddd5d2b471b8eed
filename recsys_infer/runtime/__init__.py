"""The torch-free runtime: bundle loading, tower encoders, item index and the engine.

Imports only the standard library, numpy, onnxruntime, tokenizers and hnswlib.
"""

from .batcher import MicroBatcher
from .bundle import SCHEMA_VERSION, Manifest, read_manifest
from .catalog import Catalog, Item
from .encoder import Encoder, OnnxEncoder
from .engine import Engine
from .index import ExactIndex, HnswIndex, HnswParams, Index
from .options import RecommendOptions, Where
from .types import Query, Reason, Recommendation
from .userinput import UserInputFormat

__all__ = [
    "SCHEMA_VERSION",
    "Catalog",
    "Encoder",
    "Engine",
    "ExactIndex",
    "HnswIndex",
    "HnswParams",
    "Index",
    "Item",
    "Manifest",
    "MicroBatcher",
    "OnnxEncoder",
    "Query",
    "Reason",
    "RecommendOptions",
    "Recommendation",
    "UserInputFormat",
    "Where",
    "read_manifest",
]
