"""`nexus_gen.scoring.model_source`: specs, recorded ids and load errors shared by DINO and
Chinese-CLIP."""
import hashlib

import pytest
import torch

from nexus_gen.scoring.hub import ModelUnavailableError
from nexus_gen.scoring.model_source import default_dtype, loading, resolve_source


def test_a_local_folder_is_recorded_with_a_digest_of_its_weights(tmp_path):
    (tmp_path / "b.safetensors").write_bytes(b"second")
    (tmp_path / "a.safetensors").write_bytes(b"first")
    (tmp_path / "c.bin").write_bytes(b"ignored: safetensors come first")
    want = hashlib.sha256(b"first" + b"second").hexdigest()[:16]
    source, model_id = resolve_source("DINO", str(tmp_path), {}, lambda: None, "unused")
    assert (source, model_id) == (tmp_path.resolve(), f"{tmp_path.name}@sha256:{want}")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_source("DINO", str(empty), {}, lambda: None, "unused")[1] == "empty@sha256:no-weights"


def test_tiny_profiles_and_hub_ids(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"weights")
    want = hashlib.sha256(b"weights").hexdigest()[:16]
    assert resolve_source("DINO", "tiny", {}, lambda: tmp_path, "dino-tiny") == \
        (tmp_path, f"dino-tiny@sha256:{want}")
    profiles = {"paper": "facebook/dino-vits16"}
    assert resolve_source("DINO", "paper", profiles, lambda: None, "x") == ("facebook/dino-vits16",) * 2
    assert resolve_source("DINO", "org/other", profiles, lambda: None, "x") == ("org/other",) * 2
    for bad in ("", "  ", None):
        with pytest.raises(ValueError, match="Chinese-CLIP spec must be a non-empty string"):
            resolve_source("Chinese-CLIP", bad, profiles, lambda: None, "x")


def test_a_failed_load_is_one_model_unavailable_error(tmp_path):
    with pytest.raises(ModelUnavailableError, match=rf"cannot load DINO 'mine' \({tmp_path}\): no config; do this"):
        with loading("DINO", "mine", tmp_path, "do this"):
            raise OSError("no\n  config")
    with pytest.raises(KeyError):  # not a load failure: passes through unchanged
        with loading("DINO", "mine", tmp_path, "do this"):
            raise KeyError("x")


def test_default_dtype():
    assert default_dtype(torch.device("cpu")) is torch.float32
    assert default_dtype(torch.device("cuda")) is torch.bfloat16
