"""The editing benchmark's metrics against independent references (numpy + PIL): the identity
baseline's exact values on scenes edits and on a MagicBrush table whose targets have another
size (L1 / L2 after bicubic resizing to the target), and the scenes' exact success both ways."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from eval.editing import edit_run
from eval.editing.edit_run import EditingConfig, check, edit_step, prepare, score_step, summarize
from nexus_gen.scenes.edits import random_edit


def _unit(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _run(tmp_path: Path, **kw):
    plan = check(EditingConfig(out=tmp_path / "run", clip="tiny", dino="tiny", **kw))
    prepare(plan)
    edits = edit_step(plan)
    rows = score_step(plan)
    return plan, edits, rows, summarize(plan, edits, rows)


@pytest.fixture(scope="module")
def identity_scenes(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ids"), data="scenes", editor="identity", limit=4, size=64, seed=5)


def test_identity_on_scenes_gives_the_hand_computed_values(identity_scenes):
    plan, edits, rows, summary = identity_scenes
    assert edits == {"edited": 4, "kept": 0, "failed": {}}
    for i, row in enumerate(rows):
        res = random_edit(5 + i, 64)  # the same edit, made again independently
        src, tgt = _unit(res.source), _unit(res.target)
        assert row["edit_type"] == res.edit_type
        assert row["l1"] == pytest.approx(np.mean(np.abs(src - tgt)), abs=1e-7)
        assert row["l2"] == pytest.approx(np.mean((src - tgt) ** 2), abs=1e-7)
        inside = res.mask
        assert row["l1_inside"] == pytest.approx(np.mean(np.abs(src[inside] - tgt[inside])), abs=1e-7)
        if inside.all():  # a whole-image restyle: no pixel outside, no value (never a made-up 0)
            assert row["l1_outside"] is None
        else:  # scenes edits change nothing outside their mask
            assert row["l1_outside"] == 0.0
        # against the source the identity edit is perfect
        assert row["l1_source"] == 0.0
        assert row["clip_i_source"] == pytest.approx(1.0, abs=1e-5)
        assert row["dino_source"] == pytest.approx(1.0, abs=1e-5)
        if res.edit_type in ("add", "remove"):  # the source still has / lacks the object
            assert row["success"] is False and row["edit_done"] is False
            assert row["preserved"] is True  # but everything else is there
    overall = summary["overall"]
    assert overall["n"] == 4
    assert overall["l1"] == pytest.approx(np.mean([r["l1"] for r in rows]))
    by_type = summary["by_edit_type"]
    assert sum(v["n"] for v in by_type.values()) == 4


def test_the_target_as_the_edit_succeeds_exactly(tmp_path):
    """Edited images put in place before the run are kept (resume): the ground truth as the edit
    gives L1 0 and success on every add / remove."""
    plan = check(EditingConfig(data="scenes", editor="identity", out=tmp_path / "gt", limit=4,
                               size=64, seed=5, clip="tiny", dino="tiny"))
    prepare(plan)
    for item in plan.items:
        path = plan.out / item.edited_path
        path.parent.mkdir(parents=True, exist_ok=True)
        item.target.save(path)
    edits = edit_step(plan)
    assert edits["kept"] == 4 and edits["edited"] == 0
    rows = score_step(plan)
    for item, row in zip(plan.items, rows):
        assert row["l1"] == 0.0 and row["l2"] == 0.0 and row["l1_inside"] == 0.0
        if item.edit_type in ("add", "remove"):
            assert row["success"] is True


def test_a_blurred_edit_is_no_success_even_when_the_object_is_gone(tmp_path):
    """The ground truth blurred until nothing is detected: a removal is 'done' (the object is not
    found) but the scene's other objects are gone too, so it is no success; an addition is neither."""
    from PIL import ImageFilter

    plan = check(EditingConfig(data="scenes", editor="identity", out=tmp_path / "blur", limit=10,
                               size=128, seed=5, clip="tiny", dino="tiny"))
    prepare(plan)
    for item in plan.items:
        path = plan.out / item.edited_path
        path.parent.mkdir(parents=True, exist_ok=True)
        item.target.filter(ImageFilter.GaussianBlur(12)).save(path)
    edit_step(plan)
    rows = score_step(plan)
    seen = {"add": 0, "remove": 0}
    for i, (item, row) in enumerate(zip(plan.items, rows)):
        res = random_edit(5 + i, 128)  # the same edit, made again: its scenes say what must stay
        if res.edit_type not in seen:
            assert row["success"] is None and row["preserved"] is None
            continue
        others = len(res.target_scene.objects) - (1 if res.edit_type == "add" else 0)
        assert others > 0  # every scene has an object besides the edited one
        seen[res.edit_type] += 1
        assert row["edit_done"] is (res.edit_type == "remove")
        assert row["preserved"] is False and row["success"] is False
    assert seen["add"] and seen["remove"]
    overall = summarize(plan, {"edited": 0, "kept": 10, "failed": {}}, rows)["overall"]
    assert overall["success"] == 0.0 and overall["preserved"] == 0.0
    assert overall["edit_done"] == pytest.approx(seen["remove"] / (seen["add"] + seen["remove"]))


def test_magicbrush_targets_of_another_size_are_compared_after_bicubic_resizing(tmp_path):
    rng = np.random.default_rng(0)
    rows, expect = [], []
    for k in range(2):
        src = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        tgt = Image.fromarray(rng.integers(0, 256, (32, 30, 3), dtype=np.uint8))
        rows.append({"img_id": str(100 + k), "turn_index": 1, "source_img": {"bytes": _png(src), "path": None},
                     "mask_img": {"bytes": _png(src), "path": None}, "instruction": "make it blue",
                     "target_img": {"bytes": _png(tgt), "path": None}})
        resized = _unit(src.resize(tgt.size, Image.Resampling.BICUBIC))
        expect.append((np.mean(np.abs(resized - _unit(tgt))), np.mean((resized - _unit(tgt)) ** 2)))
    table = tmp_path / "dev-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), table)
    plan, _, scored, summary = _run(tmp_path, data=str(table), editor="identity")
    assert plan.loaded.kind == "magicbrush"
    assert [r["id"] for r in scored] == ["100-1", "101-1"]
    for row, (l1, l2) in zip(scored, expect):
        assert row["l1"] == pytest.approx(l1, abs=1e-6)
        assert row["l2"] == pytest.approx(l2, abs=1e-6)
        assert row["clip_t"] is None and row["clip_dir"] is None  # MagicBrush rows have no captions
    assert summary["by_edit_type"]["turn-1"]["n"] == 2


def test_rescoring_needs_no_editor_and_reuses_rows(identity_scenes, monkeypatch):
    plan = identity_scenes[0]

    def no_editor(spec):
        raise AssertionError("the editor was loaded although every edited image exists")

    monkeypatch.setattr(edit_run, "build_editor", no_editor)
    before = (plan.out / edit_run.SCORES_FILE).read_bytes()
    assert edit_step(plan)["kept"] == 4
    score_step(plan)
    assert (plan.out / edit_run.SCORES_FILE).read_bytes() == before


def test_directional_clip_is_undefined_for_an_unchanged_image(identity_scenes):
    """cos(E(edited) - E(source), ...) has no direction when edited == source: None, never 0."""
    rows = identity_scenes[2]
    assert all(r["clip_dir"] is None for r in rows)
    assert not any(isinstance(r["clip_dir"], float) and math.isnan(r["clip_dir"]) for r in rows)


def test_a_longer_run_extends_a_shorter_one(identity_scenes, monkeypatch):
    """--limit may grow on resume: the first items are the same, only the new ones are edited."""
    plan = identity_scenes[0]
    first = {p.name: p.read_bytes() for p in (plan.out / "edited").glob("*.png")}
    longer = check(EditingConfig(data="scenes", editor="identity", out=plan.out, limit=6, size=64,
                                 seed=5, clip="tiny", dino="tiny"))
    prepare(longer)
    assert edit_step(longer) == {"edited": 2, "kept": 4, "failed": {}}
    now = {p.name: p.read_bytes() for p in (plan.out / "edited").glob("*.png")}
    assert len(now) == 6 and all(now[k] == v for k, v in first.items())
    with pytest.raises(ValueError, match="differs in: seed"):
        prepare(check(EditingConfig(data="scenes", editor="identity", out=plan.out, limit=6, size=64,
                                    seed=6, clip="tiny", dino="tiny")))
