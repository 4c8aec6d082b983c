"""Instructions written by a VLM (tiny Qwen2.5-VL) from a versioned prompt: invalid output falls
back to the template, counted per reason in run.json."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from build_fixtures import write_recipe
from conftest import EXAMPLE
from nexus_gen.edit.instructions import invalid_reason, load_prompt, written_instruction


@pytest.mark.parametrize("text, lang, mention, why", [
    ("", "en", "cat", "empty"),
    ("   ", "zh", "猫", "empty"),
    ("Remove the cat " + "please " * 30, "en", "cat", "too_long"),
    ("去掉猫", "en", "cat", "wrong_language"),
    ("12345 !!", "en", "cat", "wrong_language"),
    ("remove the cat", "zh", "猫", "wrong_language"),
    ("Remove the dog.", "en", "cat", "no_object"),
    ("去掉狗。", "zh", "猫", "no_object"),
    ("Remove the Cat.", "en", "cat", None),
    ("把猫去掉。", "zh", "猫", None),
])
def test_invalid_reason(text, lang, mention, why):
    assert invalid_reason(text, lang, [mention]) == why


def test_fallback_per_language():
    class Stub:
        def write(self, image, task, language, mention):
            return {"en": "  Please remove the cat.  ", "zh": "remove it"}[language]

    class Broken:
        def write(self, *a):
            raise RuntimeError("out of memory")

    template = {"en": "Remove the cat.", "zh": "去掉猫。"}
    mention = {"en": "cat", "zh": "猫"}
    texts, by = written_instruction(Stub(), None, "remove the cat", template, mention)
    assert texts == {"en": "Please remove the cat.", "zh": "去掉猫。"}
    assert by == {"en": "vlm", "zh": "template:wrong_language"}
    texts, by = written_instruction(Broken(), None, "remove the cat", template, mention)
    assert texts == template and by == {"en": "template:vlm_error", "zh": "template:vlm_error"}


def test_prompt_file_is_versioned():
    text = load_prompt()
    assert "{task}" in text and "{language}" in text and "{mention}" in text and "#" not in text


def test_build_with_tiny_vlm_counts_fallbacks(tmp_path):
    from nexus_gen.edit.build import build

    r = {"name": "vlm", "seed": 0,
         "sources": [{"kind": "images", "size": 64, "paths": [str(EXAMPLE / "cat.png")]}],
         "edits": {"style": 2},
         "models": {"editor": "imagepulse", "stylizer": "tiny", "captioner": "tiny"},
         "imagepulse": {"style_steps": 2}, "scoring": {"metrics": ["l1"]}, "languages": ["en", "zh"]}
    record = build(write_recipe(tmp_path, r), tmp_path / "run")
    assert record["counts"]["triplets"] == 2
    rows = pq.read_table(next((tmp_path / "run" / "triplets").glob("*.parquet"))).to_pylist()
    counted: dict[str, int] = {}
    for row in rows:
        lin = json.loads(row["lineage"])["backend"]
        assert lin["instruction_prompt"] == "v1"
        for lang, by in lin["instruction_by"].items():
            counted[by] = counted.get(by, 0) + 1
            text = row["instruction" if lang == "en" else "instruction_zh"]
            if by.startswith("template:"):  # the template, as the backend writes it
                assert text in (f"Turn this image into {s} style." for s in _style_names("en")) or \
                    text.startswith("把这张图片变成")
            else:  # accepted VLM text is valid and names the style
                from nexus_gen.edit.vocab import load_styles

                st = {x.key: x for x in load_styles()}[lin["style"]]
                assert invalid_reason(text, lang, [st.en if lang == "en" else st.zh]) is None
    assert record["instruction_by"] == counted and sum(counted.values()) == 4


def _style_names(lang):
    from nexus_gen.edit.vocab import load_styles

    return [s.en if lang == "en" else s.zh for s in load_styles()]
