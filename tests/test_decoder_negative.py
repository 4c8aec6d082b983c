"""The decoders' CFG negative branch: with a T5 in the FLUX base it is T5("") as the reference
encodes its negative prompt (512 tokens: `</s>` + 511 `<pad>`, no attention mask, zero text ids),
checked against stock transformers calls; cached and saved so a loaded decoder needs no T5; without
T5 it stays the all-zero sequence, and the decoder json says which."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nexus_gen.models import flow_matching as fm
from nexus_gen.models.gen_decoder import NexusGenGenerationDecoder
from t5_negative_fixtures import stock_t5_empty

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def t5_base() -> str:
    return fm.resolve_flux_base("tiny-t5")


@pytest.fixture(scope="module")
def dec(t5_base) -> NexusGenGenerationDecoder:
    return NexusGenGenerationDecoder.from_base("tiny", base="tiny-t5")


def test_negative_is_t5_of_the_empty_prompt(dec, t5_base):
    from transformers import T5EncoderModel

    want = stock_t5_empty(t5_base)
    assert dec.config["negative"] == "t5-empty"
    assert dec.negative_prompt.shape == (1, 512, dec.joint_dim)
    assert torch.allclose(dec.negative_prompt, want, atol=1e-6)
    assert want.abs().max() > 0 and not torch.allclose(want[0, 0], want[0, 1])  # a real sequence
    assert not any(isinstance(m, T5EncoderModel) for m in dec.modules())  # T5 is not kept
    assert "negative_prompt" not in dec.state_dict()  # not a trained weight
    neg, ids = dec.negative_branch(torch.zeros(2, 16, dec.joint_dim), torch.ones(16, 3))
    assert neg.shape == (2, 512, dec.joint_dim) and torch.equal(ids, torch.zeros(512, 3))


def test_without_t5_the_negative_stays_zeros():
    plain = NexusGenGenerationDecoder.from_base("tiny")
    assert plain.config["negative"] == "zeros" and plain.negative_prompt is None
    ids = torch.rand(16, 3)
    neg, neg_ids = plain.negative_branch(torch.ones(1, 16, plain.joint_dim), ids)
    assert torch.equal(neg, torch.zeros(1, 16, plain.joint_dim)) and neg_ids is ids


def test_one_step_cfg_equals_hand_euler_step_with_the_t5_negative(dec, t5_base):
    e = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(1))
    got = dec.generate(e, height=64, width=64, steps=1, cfg=2.5, guidance=3.5, seed=11)[0]
    negative = stock_t5_empty(t5_base)
    with torch.no_grad():
        noise = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(11))
        packed = noise.reshape(1, 16, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 16, 64)
        img_ids = torch.tensor([[0.0, r, c] for r in range(4) for c in range(4)])

        def v(prompt):
            return dec.dit(hidden_states=packed, timestep=torch.tensor([1.0]),
                           guidance=torch.tensor([3.5]), pooled_projections=dec.pooled_empty,
                           encoder_hidden_states=prompt, txt_ids=torch.zeros(prompt.shape[1], 3),
                           img_ids=img_ids, return_dict=False)[0]

        v_pos, v_neg = v(dec.adapter(e)), v(negative)
        x = packed + (0.0 - 1.0) * (v_neg + 2.5 * (v_pos - v_neg))  # sigma 1 -> 0
        lat = x.reshape(1, 4, 4, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 8, 8)
        img = dec.vae.decode(lat / 0.3611 + 0.1159).sample
    arr = ((img[0] / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(got), arr)


def test_saved_decoder_reproduces_images_without_t5(dec, tmp_path, monkeypatch):
    import transformers

    folder = dec.save_pretrained(tmp_path / "gen")
    assert json.loads((folder / fm.DECODER_CONFIG).read_text())["negative"] == "t5-empty"
    assert (folder / fm.NEGATIVE_FILE).is_file()

    def no_t5(*args, **kwargs):
        raise AssertionError("T5 loaded at inference")

    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", no_t5)
    loaded = NexusGenGenerationDecoder.from_pretrained(folder, base="tiny")  # a base without T5
    assert loaded.config["negative"] == "t5-empty" and torch.equal(loaded.negative_prompt, dec.negative_prompt)
    e = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(3))
    kw = dict(steps=2, cfg=3.0, seed=5)
    want = [np.asarray(i) for i in dec.generate(e, **kw)]
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(loaded.generate(e, **kw), want))
    loaded.negative_prompt = None  # the zeros negative gives other images: the constant matters
    assert not np.array_equal(np.asarray(loaded.generate(e[:1], **kw)[0]), want[0])


def test_editing_decoder_takes_the_same_negative(t5_base):
    from nexus_gen.models.edit_decoder import NexusGenEditingDecoder

    edit = NexusGenEditingDecoder.from_base("tiny", base="tiny-t5")
    assert edit.config["negative"] == "t5-empty"
    assert torch.allclose(edit.negative_prompt, stock_t5_empty(t5_base), atol=1e-6)
    prompt, ids = edit.prompt(torch.zeros(1, edit.image_tokens, edit.embed_dim),
                              torch.zeros(1, edit.source_tokens, edit.embed_dim), 64, 64)
    assert ids.abs().sum() > 0  # the positive branch keeps its positional text ids ...
    neg, neg_ids = edit.negative_branch(prompt, ids)
    assert neg_ids.shape == (512, 3) and not neg_ids.any()  # ... the negative's are zeros


def test_bad_negatives_fail_clearly(dec, tmp_path):
    folder = dec.save_pretrained(tmp_path / "gen")
    (folder / fm.NEGATIVE_FILE).unlink()
    with pytest.raises(ValueError, match="negative 't5-empty' but negative_prompt.safetensors is missing"):
        NexusGenGenerationDecoder.from_pretrained(folder)
    cfg = json.loads((folder / fm.DECODER_CONFIG).read_text())
    (folder / fm.DECODER_CONFIG).write_text(json.dumps(dict(cfg, negative="t5")))
    with pytest.raises(ValueError, match="negative 't5' is not one of"):
        NexusGenGenerationDecoder.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"expected \[1, L, 32\]"):
        NexusGenGenerationDecoder(dict(dec.config), dec.dit, dec.vae, dec.scheduler, dec.pooled_empty,
                                  negative_prompt=torch.zeros(1, 512, 4096))


def test_hub_bases_have_t5_when_cached_or_online(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    seen = []

    def cache(found):
        return lambda repo, name: seen.append((repo, name)) or (f"/cache/{repo}/{name}" if found else None)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache(False))
    assert not fm.base_has_t5("paper")  # offline and not cached: zeros (with a warning)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache(True))
    assert fm.base_has_t5("paper")
    assert ("black-forest-labs/FLUX.1-dev", "text_encoder_2/config.json") in seen
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache(False))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert fm.base_has_t5("paper")  # online: T5 is fetched with the rest of the base
