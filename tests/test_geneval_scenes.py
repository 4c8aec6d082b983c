"""geneval-scenes, scorer side: the same official rules with the scenes prompt set and the pixel
detector (colours from the detector, no CLIP, no weights): ground-truth renders pass, noise fails."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from eval.geneval.layout import sample_path, write_metadata
from eval.geneval.rules import TAGS, validate_metadata
from eval.geneval.score import rescore_file, score_folder
from nexus_gen.scenes.detect import detect
from nexus_gen.scenes.prompts import SHIPPED, generate_prompts, render_prompt


class NoClip:
    """Stands in for the CLIP colour classifier to prove it is never needed here."""

    def classify(self, image, classname, objects):
        raise AssertionError("the scenes detector gives every colour: CLIP must not be asked")


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    rows = [json.loads(line) for line in SHIPPED.read_text().splitlines()]
    for r in rows:
        validate_metadata(r)
    return rows


def test_shipped_scenes_prompts_are_geneval_records(prompts):
    assert prompts == generate_prompts()
    assert sorted({r["tag"] for r in prompts}) == sorted(TAGS)


def test_ground_truth_renders_score_at_least_098(prompts, tmp_path):
    out = tmp_path / "gt"
    for i, meta in enumerate(prompts):
        write_metadata(out, i, meta)
        render_prompt(meta, seed=i, size=256).convert("RGB").save(sample_path(out, i, 0))
    rows, s = score_folder(out, detect, classifier=NoClip())
    assert s["n_images"] == len(prompts) and s["n_prompts"] == len(prompts)
    assert s["overall"] >= 0.98, [r["reason"] for r in rows if not r["correct"]][:5]
    assert all(s[t] >= 0.95 for t in TAGS)
    # the stored detections (with colours) re-score without images or CLIP
    again = rescore_file(out / "detections.jsonl", tmp_path / "again.jsonl", classifier=NoClip())
    assert again == s


def test_noise_images_score_at_most_005(prompts, tmp_path):
    out = tmp_path / "noise"
    rng = np.random.default_rng(0)
    chosen = [i for t in TAGS for i in [j for j, r in enumerate(prompts) if r["tag"] == t][:6]]
    for i in chosen:
        write_metadata(out, i, prompts[i])
        for n in range(2):
            pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(sample_path(out, i, n))
    rows, s = score_folder(out, detect, classifier=NoClip())
    assert s["n_images"] == 2 * len(chosen) and set(s) >= set(TAGS)
    assert s["overall"] <= 0.05 and s["correct_prompts"] <= 0.05
