"""Check a staged hub folder the way its users will read it, before anything is uploaded: every
config is loaded with `datasets.load_dataset(staged_dir, config)` offline (the card's `configs`
resolve to exactly the staged files of each split, the features in the card are those of the
files, the row counts are the run's, and the first row of each split decodes, images to PIL)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq

from nexus_gen.hub.hub_layout import StagedConfig


class StagedCheckError(ValueError):
    """The staged folder does not load as it should; nothing was uploaded."""


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """`datasets` and `huggingface_hub` offline for the duration (restored after)."""
    import datasets.config as dconf

    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    saved = dconf.HF_HUB_OFFLINE
    os.environ.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    dconf.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconf.HF_HUB_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _image_columns(features: Any) -> list[str]:
    import datasets

    out = []
    for name, f in features.items():
        inner = getattr(f, "feature", f)
        if isinstance(f, list):
            inner = f[0]
        if isinstance(inner, datasets.Image):
            out.append(name)
    return out


def _check_images(row: dict[str, Any], columns: list[str], where: str) -> int:
    from PIL import Image

    n = 0
    for c in columns:
        vals = row[c] if isinstance(row[c], list) else [row[c]]
        for v in vals:
            if v is None:
                continue
            if not isinstance(v, Image.Image):
                raise StagedCheckError(f"{where}: column {c} does not decode to a PIL image (got {type(v).__name__})")
            n += 1
    return n


def check_staged(staged: Path, configs: dict[str, StagedConfig], cache_dir: Path) -> dict[str, dict[str, int]]:
    """Load each config of `staged` (see module doc); returns config -> split -> rows as loaded.
    Raises StagedCheckError naming the config and what differs."""
    import datasets

    loaded: dict[str, dict[str, int]] = {}
    with _offline():
        for name, cfg in configs.items():
            where = f"staged config {name!r} ({staged})"
            try:
                builder = datasets.load_dataset_builder(str(staged), name, cache_dir=str(cache_dir))
            except Exception as exc:  # any loader failure is a broken layout or card
                raise StagedCheckError(f"{where}: datasets cannot load it: {type(exc).__name__}: {exc}") from exc
            files = {str(s): sorted(Path(os.path.relpath(f, staged)).as_posix() for f in fl)
                     for s, fl in (builder.config.data_files or {}).items()}
            want = {s: sorted(v) for s, v in cfg.files.items()}
            if files != want:
                raise StagedCheckError(f"{where}: the card's data_files resolve to {files}, not the staged {want}")
            if builder.info.features != datasets.Features.from_dict(cfg.features):
                raise StagedCheckError(f"{where}: the card's features differ from the files' features")
            rows = {s: sum(pq.ParquetFile(staged / f).metadata.num_rows for f in fl) for s, fl in want.items()}
            if rows != cfg.rows:
                raise StagedCheckError(f"{where}: {rows} rows, expected {cfg.rows}")
            images = _image_columns(builder.info.features)
            for split in want:
                try:
                    ds = datasets.load_dataset(str(staged), name, split=split, streaming=True, cache_dir=str(cache_dir))
                    first = next(iter(ds))
                except Exception as exc:
                    raise StagedCheckError(f"{where} split {split}: loading failed: {type(exc).__name__}: {exc}") from exc
                _check_images(first, images, f"{where} split {split}")
            loaded[name] = rows
    return loaded
