"""Pruning: attention heads, FFN neurons and whole layers removed from a checkpoint by measured
importance, recovered by distillation (:mod:`.pruning`), optionally through int8 as dynamic
quantization will compute it (:mod:`.fake_quant`)."""

from .pruning import PruneConfig, PruneResult, prune_checkpoint

__all__ = ["PruneConfig", "PruneResult", "prune_checkpoint"]
