"""Training: the two-tower model (:mod:`.model`), its text encoders (:mod:`.encoders`), the
text-kind and sequence-kind loops (:mod:`.loop`, :mod:`.sequence`), checkpoints and the
resumable state of an interrupted run."""

from .loop import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
