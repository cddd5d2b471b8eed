"""Compression: each step reads a bundle and writes a new one (:mod:`.steps`) through graph
transforms (:mod:`.graphs`: fusions, int8, fp16), smoothing (:mod:`.smooth`), outlier channels
(:mod:`.outliers`) and the mixed-precision search (:mod:`.mixed`)."""

from .steps import QuantizeConfig, StepResult, optimize_bundle, quantize_bundle

__all__ = ["QuantizeConfig", "StepResult", "optimize_bundle", "quantize_bundle"]
