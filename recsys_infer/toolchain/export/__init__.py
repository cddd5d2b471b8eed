"""Export: a checkpoint to a verified bundle (:mod:`.bundle`), the weights of a two-space bundle
(:mod:`.fusion`), the fidelity measures and gate every later step uses (:mod:`.fidelity`), and
conversion to sentence-transformers folders (:mod:`.convert`)."""

from .bundle import ExportConfig, ExportResult, export_bundle, export_config_from_recipe, read_recipe

__all__ = ["ExportConfig", "ExportResult", "export_bundle", "export_config_from_recipe", "read_recipe"]
