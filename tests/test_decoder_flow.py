"""Flow-matching pieces checked by hand: packing, the reference's training sigmas and weights, the
loss, the sampler (deterministic; one step = one hand Euler step with true CFG) and the pooled CLIP
embedding of the empty prompt."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nexus_gen.models import flow_matching as fm
from nexus_gen.models.gen_decoder import NexusGenGenerationDecoder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dec() -> NexusGenGenerationDecoder:
    return NexusGenGenerationDecoder.from_base("tiny")


def test_pack_matches_hand_layout_and_roundtrips():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    p = fm.pack_latents(x)
    assert p.shape == (2, 2 * 3, 12)
    for b in range(2):
        for r in range(2):
            for c in range(3):
                want = [x[b, ch, 2 * r + dy, 2 * c + dx] for ch in range(3) for dy in (0, 1) for dx in (0, 1)]
                assert p[b, r * 3 + c].tolist() == [float(v) for v in want]
    assert torch.equal(fm.unpack_latents(p, 4, 6), x)
    ids = fm.latent_image_ids(4, 6)
    assert ids.tolist()[:4] == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0]]
    with pytest.raises(ValueError, match="even H and W"):
        fm.pack_latents(torch.zeros(1, 16, 5, 4))


def test_training_sigmas_and_weights_follow_diffsynth_formulas():
    sig = fm.training_sigmas()
    assert sig.numel() == 1000
    s_min = 0.003 / 1.002
    for i in (0, 1, 500, 999):
        s = 1.0 + (s_min - 1.0) * i / 999
        assert sig[i].item() == pytest.approx(3 * s / (1 + 2 * s), rel=1e-6)
    w = fm.training_weights(sig)
    ys = [math.exp(-2 * ((float(t) * 1000 - 500) / 1000) ** 2) for t in sig.double()]
    lo = min(ys)
    total = sum(y - lo for y in ys)
    for i in (0, 123, 999):
        assert w[i].item() == pytest.approx((ys[i] - lo) * 1000 / total, rel=1e-5)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)


def test_loss_equals_hand_computation():
    x0 = torch.tensor([[[1.0, 2.0], [0.0, -1.0]], [[0.5, 0.5], [0.5, 0.5]]])
    noise = torch.tensor([[[0.0, 1.0], [1.0, 1.0]], [[-1.0, 0.0], [2.0, 0.0]]])
    pred = torch.tensor([[[-1.0, -1.0], [1.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]])
    w = torch.tensor([2.0, 0.5])
    # sample 0: target (noise - x0) = [-1, -1, 1, 2] = pred -> 0; sample 1: target
    # [-1.5, -0.5, 1.5, -0.5] -> mean sq (2.25 + .25 + 2.25 + .25) / 4 = 1.25
    assert fm.flow_matching_loss(pred, x0, noise, w).item() == pytest.approx((2 * 0 + 0.5 * 1.25) / 2)
    assert fm.flow_matching_loss(pred, x0, noise).item() == pytest.approx(1.25 / 2)
    xt = fm.noisy_latents(x0, noise, torch.tensor([0.25, 1.0]))
    assert torch.allclose(xt[0], 0.75 * x0[0] + 0.25 * noise[0]) and torch.equal(xt[1], noise[1])


def test_sampling_schedule_is_the_reference_shift(dec):
    fm.set_sampling_timesteps(dec.scheduler, 4, 16, shift=3.0)
    s = np.linspace(1.0, 0.003 / 1.002, 4)
    want = list(3 * s / (1 + 2 * s)) + [0.0]
    assert dec.scheduler.sigmas.tolist() == pytest.approx(want, rel=1e-5)
    fm.set_sampling_timesteps(dec.scheduler, 4, 16, shift=None)  # FluxPipeline's schedule
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (16 - 256)
    s = np.linspace(1.0, 0.25, 4)
    want = [math.exp(mu) / (math.exp(mu) + (1 / v - 1)) for v in s] + [0.0]
    assert dec.scheduler.sigmas.tolist() == pytest.approx(want, rel=1e-5)


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_sampler_is_seeded(dec):
    e = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    a = [_png(i) for i in dec.generate(e, steps=2, seed=7)]
    b = [_png(i) for i in dec.generate(e, steps=2, seed=7)]
    c = [_png(i) for i in dec.generate(e, steps=2, seed=8)]
    assert a == b and a != c
    single = _png(dec.generate(e[1:], steps=2, seed=8)[0])
    assert single == a[1]  # sample i uses seed + i: batching does not change an image


def test_one_step_equals_hand_euler_step_with_true_cfg(dec):
    e = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(1))
    got = dec.generate(e, height=64, width=64, steps=1, cfg=2.5, guidance=3.5, seed=11)[0]
    with torch.no_grad():
        noise = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(11))
        packed = noise.reshape(1, 16, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 16, 64)
        img_ids = torch.tensor([[0.0, r, c] for r in range(4) for c in range(4)])
        pos = dec.adapter(e)

        def v(prompt):
            return dec.dit(hidden_states=packed, timestep=torch.tensor([1.0]),
                           guidance=torch.tensor([3.5]), pooled_projections=dec.pooled_empty,
                           encoder_hidden_states=prompt, txt_ids=torch.zeros(16, 3),
                           img_ids=img_ids, return_dict=False)[0]

        v_pos, v_neg = v(pos), v(torch.zeros_like(pos))
        x = packed + (0.0 - 1.0) * (v_neg + 2.5 * (v_pos - v_neg))  # sigma 1 -> 0
        lat = x.reshape(1, 4, 4, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 8, 8)
        img = dec.vae.decode(lat / 0.3611 + 0.1159).sample
    arr = ((img[0] / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(got), arr)


def test_pooled_empty_prompt_is_clip_eos_state(dec):
    from transformers import CLIPTextModel, CLIPTokenizer

    d = fm.resolve_flux_base("tiny")
    tok = CLIPTokenizer.from_pretrained(d, subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(d, subfolder="text_encoder")
    ids = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, :2].tolist() == [tok.bos_token_id, tok.eos_token_id] and ids.shape[1] == 77
    with torch.no_grad():
        eos_state = enc(ids).last_hidden_state[0, 1]  # the pooled output is the EOS token's state
    assert torch.allclose(dec.pooled_empty[0], eos_state, atol=1e-6)
    assert dec.pooled_empty.shape == (1, dec.dit.config.pooled_projection_dim)
