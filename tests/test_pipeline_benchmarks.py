"""The tiny NexusGenPipeline through the three benchmarks (no Prefect, a handful of items): GenEval
scenes as a generator, the editing benchmark as an editor, the understanding benchmark as a model;
names checked before any work."""
from __future__ import annotations

import json

import pytest
from PIL import Image

TINY = "nexus-gen:tiny"


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads stall on the shared 2-core machine
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_geneval_scenes_with_the_tiny_pipeline(tmp_path):
    from eval.geneval import layout
    from eval.geneval.run import GenEvalConfig, run_geneval

    out = tmp_path / "geneval"
    summary = run_geneval(GenEvalConfig(generator=TINY, out=out, benchmark="geneval-scenes", limit=2,
                                        n_images=2, size=144, steps=1))
    assert summary["n_images"] == 4 and summary["n_prompts"] == 2
    images = list(layout.iter_images(out))
    assert len(images) == 4
    for path in (p for p in out.rglob("*.png") if "samples" in p.parts):
        with Image.open(path) as im:
            assert im.size == (144, 144)
    record = json.loads((out / "config.json").read_text())
    assert record["generator"]["name"] == TINY
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    again = run_geneval(GenEvalConfig(generator=TINY, out=out, benchmark="geneval-scenes", limit=2,
                                      n_images=2, size=144, steps=1))
    assert again == summary and {p: p.read_bytes() for p in out.rglob("*.png")} == before


@pytest.mark.slow
def test_editing_benchmark_with_the_tiny_pipeline(tmp_path):
    from eval.editing.edit_run import EditingConfig, check, run

    out = tmp_path / "editing"
    summary = run(check(EditingConfig(data="scenes", editor=TINY, out=out, limit=2, size=64, steps=1,
                                      clip="tiny", dino="tiny")))
    assert summary["editor_model_id"] == "nexus-gen:tiny"
    edited = sorted((out / "edited").glob("*.png"))
    assert len(edited) == 2
    for p in edited:
        with Image.open(p) as im:
            assert im.size == (64, 64) and im.mode == "RGB"  # the tiny decoders' resolution


@pytest.mark.slow
def test_understanding_benchmark_with_the_tiny_pipeline(tmp_path):
    from eval.understanding.understanding_run import (PRED_FILE, UnderstandingConfig, check, predict_step,
                                                      prepare, score_step)

    out = tmp_path / "und"
    plan = prepare(check(UnderstandingConfig("scenes", "scenes:1:3", TINY, out, max_new_tokens=3)))
    counts = predict_step(plan, progress=False)
    assert counts["predicted"] == len(plan.items) > 0 and counts["failed"] == 0
    preds = [json.loads(x) for x in (out / PRED_FILE).read_text().splitlines()]
    assert all(p["model"] == TINY and isinstance(p["prediction"], str) for p in preds)
    summary = score_step(plan)
    assert summary["denominator"]["items"] == len(plan.items)
    assert any("tiny model" in w for w in summary["not_comparable"])


def test_names_are_checked_before_any_work(tmp_path):
    from eval.editing.editors import EditorSpec
    from eval.geneval.generate import check_generator_name
    from eval.understanding.understanding_run import UnderstandingConfig, check

    assert check_generator_name(TINY) == "nexus"
    with pytest.raises(ValueError, match="nexus-gen:modelscope/Nexus-GenV2 is not in the local Hugging Face cache"):
        check_generator_name("nexus-gen")
    with pytest.raises(ValueError, match="use tiny, a folder, or a published id"):
        EditorSpec("nexus-gen:someone/model").check()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a saved NexusGenPipeline"):
        check(UnderstandingConfig("scenes", "scenes:1:3", f"nexus-gen:{tmp_path / 'empty'}", tmp_path / "o"))
    assert not (tmp_path / "o").exists()
