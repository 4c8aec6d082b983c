"""The shipped imagepulse recipes and `nexus-gen build --dry-run`: every model id resolved and the
plan printed, no weights loaded, nothing written."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from nexus_gen.edit.recipe import load_recipe


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", "build", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def test_shipped_imagepulse_recipes_validate():
    for name in ("imagepulse", "small", "demo_imagepulse"):
        rec, _ = load_recipe(name)
        assert rec.models.editor == "imagepulse"


def test_dry_run_paper_recipe_names_every_id(tmp_path):
    out = tmp_path / "run"
    r = _cli("imagepulse", "--out", str(out), "--dry-run")
    assert r.returncode == 1 and "Traceback" not in r.stderr  # the paper weights are not here
    info = json.loads(r.stdout.strip().splitlines()[-1])
    ids = {k: m["id"] for k, m in info["models"].items()}
    assert ids["detector"] == "IDEA-Research/grounding-dino-base"
    assert ids["inpainter"] == "black-forest-labs/FLUX.1-Fill-dev"
    assert ids["stylizer"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert ids["controlnet"] == "diffusers/controlnet-canny-sdxl-1.0"
    assert ids["style_adapter"] == "h94/IP-Adapter:sdxl_models/ip-adapter_sdxl.safetensors"
    assert ids["refiner"] == "black-forest-labs/FLUX.1-dev"
    assert ids["clip"] == "ViT-L-14-quickgelu:openai" and ids["dino"] == "facebook/dino-vits16"
    # no style_references folder here: no style has its IP-Adapter reference, none is planned
    assert info["by_edit_type"] == {"add": 20000, "remove": 20000}
    # six hub ids not in the cache, and the style reference folder the user provides
    assert info["planned"] == 40000 and len(info["problems"]) == 7
    assert any("imagepulse.style_references: no such folder" in p for p in info["problems"])
    assert info["models"]["inpainter"]["gpu_memory_gb"] > 0 and info["models"]["stylizer"]["gpu_memory_gb"] > 0
    assert not out.exists()


def test_dry_run_small_recipe_ids(tmp_path):
    r = _cli("small", "--out", str(tmp_path / "run"), "--dry-run")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["models"]["segmenter"]["id"] == "facebook/sam-vit-base"
    assert info["models"]["captioner"]["id"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert sum(m.get("gpu_memory_gb", 0) for m in info["models"].values()) <= 24


def test_dry_run_tiny_builds_and_loads_nothing(tmp_path):
    cache = tmp_path / "cache"
    r = _cli("demo_imagepulse", "--out", str(tmp_path / "run"), "--dry-run",
             env={"NEXUS_GEN_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["models"]["sources.1.generator"]["id"] == "tiny:tiny-stable-diffusion-v1"
    assert info["problems"] == [] and info["planned"] == 18
    assert not cache.exists() and not (tmp_path / "run").exists()


def test_guidance_per_role():
    """One number for every pipeline, or a value per role (FLUX Fill wants ~30, SDXL ~5, FLUX
    img2img ~3.5); a role left out keeps its pipeline's default (None)."""
    import pytest
    from pydantic import ValidationError

    from nexus_gen.edit.backends.imagepulse_backend import ImagePulseBackend
    from nexus_gen.edit.recipe import ImagePulseParams

    b = ImagePulseBackend({}, ImagePulseParams(guidance={"inpainter": 30.0, "stylizer": 5.0}))
    assert (b.guidance("inpainter"), b.guidance("stylizer"), b.guidance("refiner")) == (30.0, 5.0, None)
    b = ImagePulseBackend({}, ImagePulseParams(guidance=7.5))
    assert {b.guidance(r) for r in ("inpainter", "stylizer", "refiner")} == {7.5}
    with pytest.raises(ValidationError):
        ImagePulseParams(guidance={"detector": 3.0})
    paper, _ = load_recipe("imagepulse")
    assert paper.imagepulse.guidance == {"inpainter": 30.0, "stylizer": 5.0, "refiner": 3.5}
