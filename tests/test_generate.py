"""GenEval generation: the tiny real diffusers pipeline, the official layout, seeds and resume."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from eval.geneval import layout
from eval.geneval.generate import (GeneratorSpec, NoiseGenerator, check_generator_name,
                                   generate_images, make_generator, sample_seed)

PROMPTS = [
    (0, {"tag": "single_object", "include": [{"class": "cow", "count": 1}], "prompt": "a photo of a cow"}),
    (1, {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}],
         "prompt": "a photo of a red dog"}),
]


@pytest.fixture(scope="module")
def tiny():
    return make_generator(GeneratorSpec("tiny", steps=2))


def test_tiny_tokenizer_is_openai_clip_bpe(tiny):
    # OpenAI CLIP's published ids for this sentence; a wrong byte order or merge table changes them.
    ids = tiny.pipe.tokenizer("a photo of a cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tiny.pipe.tokenizer.model_max_length == 77


def test_official_layout_seeds_and_determinism(tiny, tmp_path):
    res = generate_images(tiny, PROMPTS, tmp_path / "a", n_images=3, base_seed=7, batch_size=2)
    assert (res.generated, res.kept) == (6, 0)
    for index, meta in PROMPTS:
        lines = (tmp_path / "a" / f"{index:05d}" / "metadata.jsonl").read_text().splitlines()
        assert [json.loads(x) for x in lines] == [meta]
        for n in range(3):
            p = tmp_path / "a" / f"{index:05d}" / "samples" / f"{n:04d}.png"
            with Image.open(p) as im:
                assert im.size == (64, 64) and im.mode == "RGB"
    found = [(i.index, i.sample) for i in layout.iter_images(tmp_path / "a")]
    assert found == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    gen = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert gen["seeds"]["00001"] == [sample_seed(7, 1, n) for n in range(3)]
    assert len({s for v in gen["seeds"].values() for s in v}) == 6
    # Same inputs (batch size included: batched kernels round differently), same bytes.
    generate_images(tiny, PROMPTS, tmp_path / "b", n_images=3, base_seed=7, batch_size=2)
    a = [p.read_bytes() for p in sorted((tmp_path / "a").rglob("*.png"))]
    b = [p.read_bytes() for p in sorted((tmp_path / "b").rglob("*.png"))]
    assert a == b
    assert len(set(a)) == 6


def test_resume_keeps_existing_and_fills_missing(tiny, tmp_path):
    out = tmp_path / "run"
    generate_images(tiny, PROMPTS[:1], out, n_images=2, base_seed=0)
    first = layout.sample_path(out, 0, 0)
    second = layout.sample_path(out, 0, 1)
    original_second = second.read_bytes()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(first)  # a kept image must not be overwritten
    marker = first.read_bytes()
    second.unlink()
    res = generate_images(tiny, PROMPTS, out, n_images=2, base_seed=0)
    assert (res.generated, res.kept) == (3, 1)
    assert first.read_bytes() == marker
    assert second.read_bytes() == original_second
    assert sorted(json.loads((out / "generation.json").read_text())["seeds"]) == ["00000", "00001"]


def test_resume_with_other_settings_is_refused(tmp_path):
    generate_images(NoiseGenerator(size=16), PROMPTS, tmp_path, n_images=1, base_seed=0)
    with pytest.raises(ValueError, match="base_seed"):
        generate_images(NoiseGenerator(size=16), PROMPTS, tmp_path, n_images=1, base_seed=1)
    other = [(0, {**PROMPTS[0][1], "prompt": "a photo of a bench"})]
    with pytest.raises(ValueError, match="different prompt"):
        generate_images(NoiseGenerator(size=16), other, tmp_path, n_images=1, base_seed=0)


def test_noise_is_seeded_uniform_pixels():
    a, b = NoiseGenerator(size=32).generate({"prompt": "x"}, [1, 2])
    again = NoiseGenerator(size=32).generate({"prompt": "x"}, [1])[0]
    assert a.tobytes() == again.tobytes() and a.tobytes() != b.tobytes()
    assert len(set(a.tobytes())) > 200  # covers the byte range, not a flat image


def test_generator_names_are_checked(tmp_path):
    from nexus_gen.models.tiny import tiny_sd_dir

    assert check_generator_name("tiny") == "named"
    assert check_generator_name(str(tiny_sd_dir())) == "local"
    assert check_generator_name("stabilityai/sdxl-turbo") == "hub"
    with pytest.raises(ValueError, match="unknown generator 'nope'"):
        check_generator_name("nope")
    with pytest.raises(ValueError, match="model_index.json"):
        check_generator_name(str(tmp_path))
    with pytest.raises(ValueError, match="cannot load diffusers pipeline"):
        make_generator(GeneratorSpec("nobody/no-such-model"))


def test_lazy_generator_loads_only_for_missing_images(tmp_path):
    from eval.geneval.generate import LazyGenerator

    class Named(NoiseGenerator):
        model_id = "nobody/no-such-model"

    generate_images(Named(size=16), PROMPTS, tmp_path, n_images=1)
    lazy = LazyGenerator(GeneratorSpec("nobody/no-such-model"))
    res = generate_images(lazy, PROMPTS, tmp_path, n_images=1)  # nothing missing: nothing loaded
    assert (res.generated, res.kept) == (0, 2)
    layout.sample_path(tmp_path, 1, 0).unlink()
    with pytest.raises(ValueError, match="cannot load diffusers pipeline 'nobody/no-such-model'"):
        generate_images(lazy, PROMPTS, tmp_path, n_images=1)
