"""The tiny profile's models: one home (`nexus_gen.models.tiny`), deterministic builds, and the
same cache folders as before the builders moved there (so existing caches stay valid)."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from conftest import REPO
from nexus_gen.models.cache import cache_root


def _builders():
    from eval.geneval.mask2former import object_names
    from nexus_gen.models.tiny import tiny_clip_dir, tiny_dino_dir, tiny_mask2former_dir, tiny_sd_dir

    return {"clip-tiny": tiny_clip_dir, "dino-tiny": tiny_dino_dir,
            "tiny-stable-diffusion-v1": tiny_sd_dir,
            "geneval-mask2former-tiny": lambda: tiny_mask2former_dir(object_names())}


def _file_hashes(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_every_tiny_build_is_byte_identical_across_caches(tmp_path, monkeypatch):
    builds = []
    for run in ("a", "b"):
        monkeypatch.setenv("NEXUS_GEN_CACHE", str(tmp_path / run))
        builds.append({name: _file_hashes(build()) for name, build in _builders().items()})
    assert builds[0] == builds[1]
    for name, files in builds[0].items():  # real weights were written, not only a marker
        assert any(f.endswith(".safetensors") for f in files), (name, sorted(files))


def test_tiny_models_keep_their_cache_folders_and_callers_load_them_from_there():
    from eval.geneval.mask2former import load_detector, resolve_detector
    from nexus_gen.scoring.clip import resolve_clip_spec

    # the folder names the builders had before they moved: existing caches stay valid
    folders = {name: build() for name, build in _builders().items()}
    for name, folder in folders.items():
        assert folder == cache_root() / "tiny" / name and (folder / ".complete").is_file()
    assert resolve_clip_spec("tiny").model_name == f"local-dir:{folders['clip-tiny']}"
    assert resolve_detector("tiny") == str(folders["geneval-mask2former-tiny"])
    detector = load_detector("tiny")
    assert detector.model_id == "tiny:geneval-mask2former-tiny"
    assert detector.labels == (REPO / "eval/geneval/prompts/object_names.txt").read_text(
        encoding="utf-8").splitlines()


def test_every_tiny_builder_lives_in_models_tiny():
    callers = []
    for package in ("nexus_gen", "eval", "flows"):
        for path in (REPO / package).rglob("*.py"):
            if re.search(r"\bbuild_once\(", path.read_text(encoding="utf-8")):
                callers.append(path.relative_to(REPO).as_posix())
    assert callers and all(p.startswith("nexus_gen/models/tiny/") or p == "nexus_gen/models/cache.py"
                           for p in callers), callers


def test_a_cached_tiny_detector_with_other_labels_is_refused(tmp_path, monkeypatch):
    from nexus_gen.models.tiny import tiny_mask2former_dir

    monkeypatch.setenv("NEXUS_GEN_CACHE", str(tmp_path))
    folder = tiny_mask2former_dir(["cat", "dog"])
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "cat", "1": "dog"}
    with pytest.raises(ValueError, match="other labels than asked"):
        tiny_mask2former_dir(["cat", "bird"])
