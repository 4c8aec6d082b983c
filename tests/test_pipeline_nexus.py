"""NexusGenPipeline on the tiny profile: the three methods end to end, batched and seeded, what
reaches the decoders, save -> load same bytes, the published layout -> the same model, bad input."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from nexus_gen.data.templates import editing_messages, generation_messages
from nexus_gen.models.nexus_pipeline import NexusGenPipeline, bound_pixels
from reference_layout_fixtures import write_published_from_pipeline

STEPS = 2


def _digest(images) -> list[str]:
    return [hashlib.sha256(im.tobytes()).hexdigest() for im in images]


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)  # 2 threads stall on the shared 2-core machine
    return NexusGenPipeline.from_pretrained("tiny")


@pytest.fixture(scope="module")
def sources():
    a = Image.new("RGB", (96, 64), (200, 30, 30))
    b = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    return [a, b]


def test_generate_is_batched_seeded_and_fed_by_one_prefilled_prediction(pipe):
    prompts = ["a red circle left of a blue square", "a green star"]
    calls = []
    real = pipe.generation_decoder.generate

    def spy(embeds, **kw):
        calls.append((embeds.clone(), kw))
        return real(embeds, **kw)

    pipe.generation_decoder.generate = spy
    try:
        images = pipe.generate(prompts, seed=7, steps=STEPS)
        again = pipe.generate(prompts, seed=7, steps=STEPS)
        single = pipe.generate(prompts[1], seed=[12], steps=STEPS)
    finally:
        del pipe.generation_decoder.generate
    assert [im.size for im in images] == [(64, 64), (64, 64)] and all(im.mode == "RGB" for im in images)
    assert _digest(images) == _digest(again)
    assert _digest(images)[0] != _digest(images)[1]
    assert len(calls) == 3 and calls[0][1]["seed"] == 7 and calls[2][1]["seed"] == 12
    # what the decoder got: the AR model's prefilled prediction for the generation template
    expected = pipe.ar.predict_image_embeds([generation_messages(p) for p in prompts], [[], []], prefill=True)
    assert calls[0][0].shape == (2, 16, 64) and torch.equal(calls[0][0], expected)
    # a Chinese prompt takes the Chinese template
    zh = pipe.image_embeddings_for_prompts(["一只红色的圆"])
    assert torch.equal(zh, pipe.ar.predict_image_embeds([generation_messages("一只红色的圆", "zh")], [[]]))
    assert not torch.equal(zh, pipe.ar.predict_image_embeds([generation_messages("一只红色的圆", "en")], [[]]))


def test_seed_lists_give_each_image_its_own_seed(pipe):
    two = pipe.generate(["a cat", "a cat"], seed=[5, 9], steps=STEPS)
    assert _digest(two) == _digest(pipe.generate("a cat", seed=[5], steps=STEPS) +
                                   pipe.generate("a cat", seed=[9], steps=STEPS))
    with pytest.raises(ValueError, match="2 seeds for 1 images"):
        pipe.generate("a cat", seed=[1, 2])


def test_edit_uses_prediction_and_source_embeddings(pipe, sources):
    instructions = ["Add a blue square", "Remove the red circle"]
    calls = []
    real = pipe.editing_decoder.edit

    def spy(predicted, source, **kw):
        calls.append((predicted.clone(), source.clone(), kw))
        return real(predicted, source, **kw)

    pipe.editing_decoder.edit = spy
    try:
        edited = pipe.edit(sources, instructions, seed=3, steps=STEPS)
    finally:
        del pipe.editing_decoder.edit
    assert [im.size for im in edited] == [(64, 64), (64, 64)]
    predicted, source, kw = calls[0]
    assert kw["cfg"] == 1.0  # the reference edits without classifier-free guidance
    expected = pipe.ar.predict_image_embeds([editing_messages(i) for i in instructions],
                                            [[s] for s in sources], prefill=True)
    assert torch.equal(predicted, expected)
    # the source at S2 = 224 px squashed (as the reference's resize to 504 x 504): M = 64 tokens
    squashed = [s.resize((224, 224), Image.BICUBIC) for s in sources]
    assert source.shape == (2, 64, 64)
    assert torch.allclose(source, pipe.ar.image_embeddings(squashed, 224, fit="crop"), atol=1e-5)
    assert _digest(edited) == _digest(pipe.edit(sources, instructions, seed=3, steps=STEPS))
    via_gen = pipe.edit(sources[:1], instructions[:1], seed=3, steps=STEPS, use_generation_decoder=True)
    assert via_gen[0].size == (64, 64) and _digest(via_gen) != _digest(edited[:1])


def test_understand_batches_like_single_calls(pipe, sources):
    questions = ["What colour is the star?", "How many red circles are there in the image?"]
    batch = pipe.understand(sources, questions, max_new_tokens=6)
    assert len(batch) == 2 and all(isinstance(a, str) for a in batch)
    assert batch == [pipe.understand(s, q, max_new_tokens=6)[0] for s, q in zip(sources, questions)]
    assert pipe.understand([None], ["Please answer yes or no."], max_new_tokens=3)[0] == \
        pipe.ar.answer(None, "Please answer yes or no.", max_new_tokens=3)


@pytest.mark.slow
def test_save_then_load_gives_the_same_bytes(pipe, sources, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "saved")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert "nexus_gen_pipeline.json" in files
    assert {f.split("/")[0] for f in files} == {"ar", "generation_decoder", "editing_decoder",
                                                "nexus_gen_pipeline.json"}
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for f in files)
    assert json.loads((folder / "nexus_gen_pipeline.json").read_text())["format"] == "nexus-gen-pipeline"
    loaded = NexusGenPipeline.from_pretrained(folder)
    kw = dict(seed=11, steps=STEPS)
    assert _digest(loaded.generate(["a green star"], **kw)) == _digest(pipe.generate(["a green star"], **kw))
    assert _digest(loaded.edit(sources[:1], ["Add a star"], **kw)) == _digest(pipe.edit(sources[:1], ["Add a star"], **kw))
    q = ["What colour is the star?"]
    assert loaded.understand(sources[:1], q, max_new_tokens=5) == pipe.understand(sources[:1], q, max_new_tokens=5)
    only_gen = NexusGenPipeline.from_pretrained(folder, decoders=("generation",))
    assert only_gen.editing_decoder is None
    with pytest.raises(ValueError, match="without its editing decoder"):
        only_gen.edit(sources[:1], ["Add a star"])


@pytest.mark.slow
def test_published_layout_loads_the_same_model(pipe, sources, tmp_path):
    from nexus_gen.models.tiny.ar_tiny import tiny_ar_geometry

    folder = tmp_path / "Nexus-GenV2"
    write_published_from_pipeline(pipe, folder)
    published = NexusGenPipeline.from_pretrained(folder, base="tiny", geometry=tiny_ar_geometry())
    assert published.config["version"] == "v2"
    ours, theirs = pipe.ar.state_dict(), published.ar.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    kw = dict(seed=2, steps=STEPS, height=64, width=64)
    assert _digest(published.generate(["a red circle"], **kw)) == _digest(pipe.generate(["a red circle"], **kw))
    assert _digest(published.edit(sources[:1], ["Add a star"], **kw)) == \
        _digest(pipe.edit(sources[:1], ["Add a star"], **kw))
    # V1: no prefill tensor, no editing decoder: edits go through the generation decoder
    v1 = tmp_path / "Nexus-Gen"
    write_published_from_pipeline(pipe, v1, v1=True)
    old = NexusGenPipeline.from_pretrained(v1, base="tiny", geometry=tiny_ar_geometry())
    assert old.editing_decoder is None and old.config["edit_decoder"] == "generation"
    pad = old.ar.get_input_embeddings().weight[old.ar.config.image_token_id]
    assert torch.equal(old.ar.image_prefill_embeds.weight, pad.expand(16, -1))
    assert old.edit(sources[:1], ["Add a star"], **kw)[0].size == (64, 64)


def test_bad_input_fails_before_work(pipe, sources, tmp_path):
    with pytest.raises(ValueError, match="2 source images for 1 instructions"):
        pipe.edit(sources, ["one"])
    with pytest.raises(ValueError, match="prompts: empty"):
        pipe.generate([])
    with pytest.raises(ValueError, match="language 'fr'"):
        pipe.generate("a cat", language="fr")
    with pytest.raises(ValueError, match="unknown \\['vae'\\]"):
        NexusGenPipeline.from_pretrained("tiny", decoders=("vae",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a saved NexusGenPipeline"):
        NexusGenPipeline.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a folder and not a published id"):
        NexusGenPipeline.from_pretrained("someone/else")
    with pytest.raises(ValueError, match="takes D = 32 but the AR model gives D = 64"):
        NexusGenPipeline(pipe.ar, type("Dec", (), {"embed_dim": 32})())


def test_input_images_are_bounded_as_the_reference():
    # Qwen2.5-VL's smart_resize with max_pixels 262640, by hand: 1024 x 1024 is 1036 x 1036 rounded
    # to 28, too many pixels, so scaled by sqrt(1024 * 1024 / 262640) and floored to 28: 504 x 504
    assert bound_pixels(Image.new("RGB", (1024, 1024)), 262640).size == (504, 504)
    # small images only round to multiples of 28: 300 -> 308, 200 -> 196
    assert bound_pixels(Image.new("RGB", (300, 200)), 262640).size == (308, 196)
    assert bound_pixels(Image.new("L", (300, 200)), None).mode == "RGB"


def test_prefill_off_feeds_predictions_back_for_the_ablation(pipe, tmp_path):
    """`"prefill": false` in the pipeline config: the AR baseline (N forwards, each fed the last
    prediction) reaches the decoder; saved and loaded with the pipeline; anything but a bool is refused."""
    prompts = ["a red circle", "a blue square"]
    convs = [generation_messages(p) for p in prompts]
    baseline = torch.stack([pipe.ar.predict_image_embeds(c, [], prefill=False)[0] for c in convs])
    prefilled = pipe.ar.predict_image_embeds(convs, [[], []], prefill=True)
    assert not torch.allclose(baseline, prefilled)
    pipe.config["prefill"] = False
    try:
        assert torch.allclose(pipe.image_embeddings_for_prompts(prompts), baseline, atol=1e-5)
        pipe.save_pretrained(tmp_path / "abl")
        again = NexusGenPipeline.from_pretrained(tmp_path / "abl")
        assert again.prefill is False
        pipe.config["prefill"] = "no"
        with pytest.raises(ValueError, match="prefill"):
            pipe.generate("a red circle", steps=STEPS)
    finally:
        pipe.config.pop("prefill")
    assert torch.equal(pipe.image_embeddings_for_prompts(prompts), prefilled)
