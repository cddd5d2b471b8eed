"""A loaded data set: the item catalogue plus each user's interactions in order."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from recsys_infer.runtime.catalog import Catalog


@dataclass(frozen=True)
class Dataset:
    """Items and per-user interaction sequences (item ids, oldest first). Ids are strings."""

    name: str
    source: str
    catalog: Catalog
    sequences: Mapping[str, tuple[str, ...]]
    files: Mapping[str, str] = field(default_factory=dict)
    """File name → sha256 of every file that was read (empty for the built-in sample)."""

    @property
    def fingerprint(self) -> str:
        """sha256 over the name and the files' checksums: what the data was, in one string."""
        h = hashlib.sha256(self.name.encode())
        for name in sorted(self.files):
            h.update(f"\0{name}\0{self.files[name]}".encode())
        if not self.files:
            h.update(self.source.encode())
        return h.hexdigest()

    @property
    def num_interactions(self) -> int:
        return sum(len(s) for s in self.sequences.values())

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.catalog)} items, {len(self.sequences)} users, "
            f"{self.num_interactions} interactions"
        )
