"""Data sets: loading folders (MovieLens, generic), the built-in sample, and splitting."""

from .dataset import Dataset
from .readers import load_dataset, write_generic
from .sample import sample_dataset
from .split import Example, Split, leave_one_out
from .text import compose_text

__all__ = [
    "Dataset",
    "Example",
    "Split",
    "compose_text",
    "leave_one_out",
    "load_dataset",
    "sample_dataset",
    "write_generic",
]
