"""Catalogue (re)indexing: a bundle's item tower over a catalogue, in resumable shards, into a
fresh index and a new bundle. Above the runtime and the data readers; torch-free. Encoding on a
cluster plugs in as a :class:`~recsys_infer.indexing.shards.ShardRunner`
(:class:`recsys_infer.scale.encoding.RayRunner`)."""

from .reindex import EncodingSettings, MilvusTarget, reindex_bundle
from .shards import EncodeReport, InProcess, ShardRunner, ShardWork, encode_catalog

__all__ = [
    "EncodeReport",
    "EncodingSettings",
    "InProcess",
    "MilvusTarget",
    "ShardRunner",
    "ShardWork",
    "encode_catalog",
    "reindex_bundle",
]
