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
    from nexus_gen.edit.instructions import CAPTION_PROMPT_FILE, CAPTION_PROMPT_VERSION

    cap = load_prompt(CAPTION_PROMPT_FILE)
    assert CAPTION_PROMPT_FILE.name == f"caption.{CAPTION_PROMPT_VERSION}.txt"
    assert "{task}" in cap and "{language}" in cap and "#" not in cap and "caption" in cap


def test_caption_validation_and_fallback():
    seen = []

    class Stub:
        def write(self, image, task, language, mention, prompt="instruction"):
            seen.append((prompt, task, mention))
            return {"en": "A grey cat sleeps on a wooden bench.", "zh": "一只狗在草地上。"}[language]

    template = {"en": "a photo", "zh": None}
    texts, by = written_instruction(Stub(), None, "", template, {"en": "cat", "zh": "猫"}, kind="caption")
    assert texts == {"en": "A grey cat sleeps on a wooden bench.", "zh": None}
    assert by == {"en": "vlm", "zh": "template:no_object"}
    assert seen[0] == ("caption", 'The caption must mention "cat".', "cat")
    texts, by = written_instruction(Stub(), None, "", template, {}, kind="caption")  # nothing to mention
    assert by == {"en": "vlm", "zh": "vlm"} and texts["zh"] == "一只狗在草地上。"
    assert seen[-1] == ("caption", "", "")
    long_en = "A cat " + "and a bench " * 20  # 246 chars: too long for an instruction, not a caption
    assert invalid_reason(long_en, "en", []) == "too_long"
    from nexus_gen.edit.instructions import CAPTION_MAX_CHARS

    assert invalid_reason(long_en, "en", [], CAPTION_MAX_CHARS) is None


def test_backend_writes_both_instructions_and_captions(monkeypatch):
    """A captioner that answers well for English and badly for Chinese: the English texts (both
    instructions, both captions) are its own, the Chinese ones the templates, each with its reason."""
    from nexus_gen.edit.backends import imagepulse_models as im
    from nexus_gen.edit.backends.base import EditSpec, SourceRef
    from nexus_gen.edit.backends.imagepulse_backend import ImagePulseBackend
    from nexus_gen.edit.recipe import ImagePulseParams

    class Stub:
        def write(self, image, task, language, mention, prompt="instruction"):
            if language == "zh":
                return ""
            if prompt == "caption":
                return f"A scene with a {mention}." if mention else "A quiet scene."
            return f"Please {task}."

    monkeypatch.setattr(im, "load_captioner", lambda *a: Stub())
    bk = ImagePulseBackend({"detector": "tiny", "inpainter": "tiny", "captioner": "tiny"},
                           ImagePulseParams(inpaint_steps=2, detector_threshold=0.05))
    out = bk.edit(SourceRef("image", "k", "photos", 64, path=str(EXAMPLE / "cat.png")), EditSpec("remove"), 5)
    obj = out.lineage["object"]
    assert out.instruction["en"] == f"Please remove the {obj}."
    assert out.reverse_instruction["en"] == f"Please add {'an' if obj[0] in 'aeiou' else 'a'} {obj}."
    assert out.source_caption["en"] == f"A scene with a {obj}."  # the object is in the source
    assert out.target_caption["en"] == "A quiet scene."
    assert out.instruction["zh"].startswith(("去掉", "把")) and out.source_caption["zh"] == "一张照片"
    lin = out.lineage
    assert lin["reverse_instruction_by"] == {"en": "vlm", "zh": "template:empty"}
    assert lin["caption_by"] == {"source": {"en": "vlm", "zh": "template:empty"},
                                 "target": {"en": "vlm", "zh": "template:empty"}}
    assert lin["caption_prompt"] == "v1" and lin["instruction_prompt"] == "v1"


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
    texts: dict[str, dict[str, int]] = {}
    for row in rows:
        lin = json.loads(row["lineage"])["backend"]
        for kind, by_lang in [("reverse_instruction", lin["reverse_instruction_by"]),
                              *((f"{side}_caption", v) for side, v in lin["caption_by"].items())]:
            for by in by_lang.values():
                texts.setdefault(kind, {})[by] = texts.setdefault(kind, {}).get(by, 0) + 1
    assert record["texts_by"] == texts
    assert {k: sum(v.values()) for k, v in texts.items()} == \
        {"reverse_instruction": 4, "source_caption": 4, "target_caption": 4}


def _style_names(lang):
    from nexus_gen.edit.vocab import load_styles

    return [s.en if lang == "en" else s.zh for s in load_styles()]
