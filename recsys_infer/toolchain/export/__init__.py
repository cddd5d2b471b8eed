"""Export: a checkpoint to a verified bundle (:mod:`.bundle`, run as :mod:`.recipe` configures
it): the towers to ONNX (:mod:`.onnx_export`), checked against PyTorch (:mod:`.parity`), the
weights of a two-space bundle (:mod:`.fusion`) and the width its index searches
(:mod:`.search_width`); the fidelity measures and gate every later step uses (:mod:`.fidelity`);
and conversion to sentence-transformers folders (:mod:`.convert`)."""

from .bundle import ExportResult, export_bundle
from .recipe import ExportConfig, export_config_from_recipe, read_recipe

__all__ = ["ExportConfig", "ExportResult", "export_bundle", "export_config_from_recipe", "read_recipe"]
