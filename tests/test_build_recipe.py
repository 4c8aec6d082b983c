"""Recipes are validated before any work: every error names the file, the key and what is allowed."""
from __future__ import annotations

import subprocess
import sys

import pytest

from build_fixtures import small_recipe, write_recipe
from nexus_gen.edit.recipe import RecipeError, load_recipe, recipe_hash


def _err(tmp_path, recipe) -> str:
    p = write_recipe(tmp_path, recipe)
    with pytest.raises(RecipeError) as ei:
        load_recipe(p)
    msg = str(ei.value)
    assert str(p) in msg
    return msg


def test_shipped_recipes_validate():
    for name in ("demo", "imagepulse"):
        recipe, path = load_recipe(name)
        assert path.name == f"{name}.yaml" and recipe.name == name


def test_unknown_key_named(tmp_path):
    msg = _err(tmp_path, small_recipe(colour="red"))
    assert "colour" in msg and "unknown key" in msg


def test_unknown_role_named(tmp_path):
    r = small_recipe()
    r["models"]["painter"] = "tiny"
    msg = _err(tmp_path, r)
    assert "models.painter" in msg and "unknown key" in msg


def test_unknown_edit_type_named(tmp_path):
    msg = _err(tmp_path, small_recipe(edits={"add": 2, "recolour": 3}))
    assert "edits.recolour" in msg


@pytest.mark.parametrize("bad", [0, -2, "3", 2.5, True])
def test_count_must_be_positive_integer(tmp_path, bad):
    msg = _err(tmp_path, small_recipe(edits={"add": bad}))
    assert "edits.add" in msg


def test_missing_model(tmp_path):
    r = small_recipe()
    del r["models"]["editor"]
    assert "models.editor" in _err(tmp_path, r)
    r = small_recipe()
    del r["models"]["clip"]
    assert "models.clip" in _err(tmp_path, r)


def test_unknown_backend_and_detector(tmp_path):
    r = small_recipe()
    r["models"]["editor"] = "flux-inpaint-v9"
    msg = _err(tmp_path, r)
    assert "models.editor" in msg and "scenes" in msg
    r = small_recipe()
    r["models"]["detector"] = "yolo"
    assert "models.detector" in _err(tmp_path, r)


def test_unknown_source_kind_and_splits(tmp_path):
    assert "sources.0" in _err(tmp_path, small_recipe(sources=[{"kind": "video", "count": 2}]))
    assert "splits" in _err(tmp_path, small_recipe(splits={"train": 0.5, "test": 0.3}))
    assert "splits" in _err(tmp_path, small_recipe(splits={"train": 0.5, "dev": 0.5}))


def test_missing_dataset_input_and_empty_glob(tmp_path):
    r = small_recipe(sources=[{"kind": "scenes", "count": 2},
                              {"kind": "dataset", "format": "llava", "inputs": ["nope.json"]}])
    assert "nope.json" in _err(tmp_path, r)
    r = small_recipe(sources=[{"kind": "images", "paths": ["pics/*.png"]}])
    assert "pics/*.png" in _err(tmp_path, r)
    r = small_recipe(sources=[{"kind": "dataset", "format": "not-a-format", "inputs": ["x"]}])
    assert "not-a-format" in _err(tmp_path, r)


def test_not_yaml(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)


def test_hash_ignores_key_order_and_sees_content(tmp_path):
    a = small_recipe()
    b = dict(reversed(list(small_recipe().items())))
    ha = recipe_hash(load_recipe(write_recipe(tmp_path / "a", a))[0])
    hb = recipe_hash(load_recipe(write_recipe(tmp_path / "b", b))[0])
    hc = recipe_hash(load_recipe(write_recipe(tmp_path / "c", small_recipe(seed=4)))[0])
    assert ha == hb != hc


def test_cli_bad_recipe_fails_before_any_work(tmp_path):
    p = write_recipe(tmp_path, small_recipe(edits={"add": 0}))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "flows.cli", "build", str(p), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "edits.add" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_role_the_backend_does_not_use(tmp_path):
    r = small_recipe()
    r["models"]["inpainter"] = "some/inpainting-model"
    msg = _err(tmp_path, r)
    assert "models.inpainter" in msg and "detector" in msg


def test_imagepulse_recipe_refuses_models_it_cannot_load(tmp_path):
    """imagepulse is a backend now: the paper recipe stops before any work on its model ids
    (offline: not in the Hugging Face cache)."""
    from nexus_gen.edit.build import RunError, prepare_run

    with pytest.raises(RunError, match="models.inpainter: 'paper -> black-forest-labs/FLUX.1-Fill-dev'"):
        prepare_run("imagepulse", tmp_path / "run")
    assert not (tmp_path / "run").exists()
