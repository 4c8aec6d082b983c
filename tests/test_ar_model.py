"""NexusGenAR: prefilled autoregression (inputs never depend on targets, one forward), the
one-by-one baseline, the loss against a hand computation, the forced span at generation, and
save / load."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ar_fixtures import tiny_ar
from nexus_gen.data.templates import editing_messages, generation_messages, understanding_messages

N, D = 16, 64


def _img(color, size=(80, 64)):
    return Image.new("RGB", size, color)


class _Calls:
    """Counts forward calls of the language model (a forward hook)."""

    def __init__(self, model):
        self.n = 0
        self.h = model.model.language_model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1

    def close(self):
        self.h.remove()


def test_prefill_ignores_targets_and_takes_one_forward():
    m = tiny_ar()
    msgs = editing_messages("Remove the red circle.")
    src = _img((200, 30, 30))
    calls = _Calls(m)
    a = m.predict_image_embeds(msgs, [src, _img((0, 0, 255), (112, 112))])
    assert calls.n == 1
    b = m.predict_image_embeds(msgs, [src, _img((255, 255, 0), (64, 64))])
    calls.close()
    assert a.shape == (1, N, D)
    assert torch.equal(a, b)
    # the training forward too: other targets change the loss, never the predictions
    from nexus_gen.train.stage_ar import ARStage

    st = ARStage({"path": "tiny"}, {})
    sample = {"id": "x", "task": "editing", "messages": msgs,
              "images": [_png(src), _png(_img((0, 0, 255)))]}
    batch = st.collate([st.example(sample)])
    with torch.no_grad():
        o1 = m(**{k: v for k, v in batch.items() if k != "ids" and v is not None})
        batch["target_pixel_values"] = batch["target_pixel_values"].flip(0) * -1.0
        o2 = m(**{k: v for k, v in batch.items() if k != "ids" and v is not None})
    assert torch.equal(o1.image_embeds, o2.image_embeds)
    assert not torch.equal(o1.target_embeds, o2.target_embeds) and o1.loss != o2.loss
    assert torch.allclose(o1.image_embeds, a[0], atol=1e-5)


def _png(im):
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def test_one_by_one_baseline_takes_n_forwards_and_differs():
    m = tiny_ar()
    msgs = generation_messages("a red circle on a white background")
    pre = m.predict_image_embeds(msgs)
    calls = _Calls(m)
    base = m.predict_image_embeds(msgs, prefill=False)
    calls.close()
    assert calls.n == N
    # embedding 0 is read at <|vision_start|>: the same prefix, the same value; the rest differ
    assert torch.allclose(base[0, 0], pre[0, 0], atol=1e-5)
    assert (base[0, 1:] - pre[0, 1:]).abs().max() > 1e-3
    # teacher forcing with the baseline's own predictions as inputs reproduces it in one forward
    enc, _, _ = m._encode_for_prediction(msgs, [])
    from nexus_gen.models.nexus_ar import pad_conversations

    t = pad_conversations([enc], 0)
    tf = m.nexus_forward(t["input_ids"], t["attention_mask"], t["output_image_mask"], t["rope_grid_thw"],
                         target_image_embeds=base[0], prefill=False)
    assert torch.allclose(tf.image_embeds, base[0], atol=1e-4)


def test_loss_equals_a_hand_computation():
    from nexus_gen.train.stage_ar import ARStage

    m = tiny_ar()
    st = ARStage({"path": "tiny", "token_loss_weight": 2.0, "image_loss_weight": 0.5}, {})
    samples = [{"id": "g", "task": "generation", "messages": generation_messages("two blue squares"),
                "images": [_png(_img((10, 20, 230), (96, 96)))]},
               {"id": "u", "task": "understanding",
                "messages": understanding_messages("How many squares are there?", "two"),
                "images": [_png(_img((40, 200, 40)))]}]
    batch = st.collate([st.example(s) for s in samples])
    with torch.no_grad():
        loss, parts = st.loss(m, batch)
        # independently: stock modules, our own input construction, torch.nn.functional losses
        ids, am = batch["input_ids"], batch["attention_mask"]
        out_mask = batch["output_image_mask"]
        pad = m.config.image_token_id
        emb = m.model.language_model.embed_tokens(ids).clone()
        vit_in = m.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
        emb[(ids == pad) & ~out_mask] = vit_in
        emb[out_mask] = m.image_prefill_embeds.weight  # one output image: prefill rows 0..N-1
        pos, _ = m.model.get_rope_index(ids, (ids == pad).int(), image_grid_thw=batch["rope_grid_thw"],
                                        attention_mask=am)
        h = m.model.language_model(inputs_embeds=emb, position_ids=pos, attention_mask=am).last_hidden_state
        logits = m.lm_head(h)
        labels = batch["labels"].clone()
        labels[labels == pad] = -100
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                             ignore_index=-100)
        rows = out_mask.nonzero()
        pred = m.vision_head(h[rows[:, 0], rows[:, 1] - 1])
        tgt = m.model.visual(batch["target_pixel_values"], grid_thw=batch["target_grid_thw"]).pooler_output
        mse = F.mse_loss(pred, tgt)
        cos = F.cosine_similarity(pred, tgt, dim=-1).mean()
        expect = 2.0 * ce + 0.5 * (0.5 * mse + 0.5 * (1 - cos))
    assert pred.shape == (N, D)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert parts["ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert parts["mse"] == pytest.approx(mse.item(), rel=1e-5)
    assert parts["cos"] == pytest.approx(cos.item(), rel=1e-5)
    assert parts["total"] == pytest.approx(loss.item())


def test_generation_emits_the_forced_span():
    m = tiny_ar()
    tok = m.processor.tokenizer
    vs, ve, pad = (tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>"))
    msgs = generation_messages("a green star")
    for prefill in (True, False):
        new, emb = m.generate_image(msgs[:1], assistant_prefix="Here is an image based on the description: <image>",
                                    max_new_tokens=40, prefill=prefill)
        k = new.index(vs)
        assert new[k:k + N + 2] == [vs] + [pad] * N + [ve]
        assert new.count(vs) == emb.shape[0] >= 1
        assert tok.decode(new[:k]) == "Here is an image based on the description: "
        # the cached incremental path gives what the full forward gives
        assert torch.allclose(emb[0], m.predict_image_embeds(msgs, prefill=prefill)[0], atol=1e-4)
    # free generation never emits <|vision_end|> or a pad except inside a forced span
    new, emb = m.generate_image(msgs[:1], max_new_tokens=30)
    i = 0
    while i < len(new):
        if new[i] == vs:
            assert new[i:i + N + 2] == [vs] + [pad] * N + [ve]
            i += N + 2
            continue
        assert new[i] not in (ve, pad)
        i += 1


def test_save_load_round_trip(tmp_path):
    from nexus_gen.models.nexus_ar import NexusGenAR

    m = tiny_ar()
    m.save_pretrained(tmp_path / "ar")
    m.processor.save_pretrained(tmp_path / "ar")
    back = NexusGenAR.from_pretrained(tmp_path / "ar").eval()
    msgs = editing_messages("Add a blue square on the left.")
    src = _img((120, 120, 120))
    assert torch.equal(m.predict_image_embeds(msgs, [src]), back.predict_image_embeds(msgs, [src]))
    assert json.loads((tmp_path / "ar" / "config.json").read_text())["nexus_gen"]["image_tokens"] == N


def test_stock_folder_gets_seeded_heads(tmp_path, caplog):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from nexus_gen.models.nexus_ar import NexusGenAR
    from nexus_gen.models.tiny.ar_tiny import tiny_ar_dir

    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_ar_dir())
    stock.save_pretrained(tmp_path / "stock")
    with caplog.at_level(logging.INFO, logger="nexus_gen.models.nexus_ar"):
        a = NexusGenAR.from_pretrained(tmp_path / "stock")
    assert "initialised vision_head and image_prefill_embeds with seed 0" in caplog.text
    b = NexusGenAR.from_pretrained(tmp_path / "stock")
    assert torch.equal(a.vision_head.weight, b.vision_head.weight)
    assert torch.equal(a.image_prefill_embeds.weight, b.image_prefill_embeds.weight)
    std = a.config.text_config.initializer_range
    g = torch.Generator().manual_seed(0)
    assert torch.equal(a.vision_head.weight, torch.randn((D, D), generator=g) * std)
    # the stock weights themselves are loaded unchanged
    assert torch.equal(a.model.visual.merger.mlp[0].weight, tiny_ar().model.visual.merger.mlp[0].weight)


def test_checkpoint_from_another_config_is_refused(tmp_path):
    from nexus_gen.models.nexus_ar import NexusGenAR
    from nexus_gen.models.tiny.ar_tiny import tiny_ar_dir

    shutil.copytree(tiny_ar_dir(), tmp_path / "ar")
    cfg = json.loads((tmp_path / "ar" / "config.json").read_text())
    cfg["nexus_gen"] = {"image_tokens": 9, "image_size": 84, "source_image_size": 224, "source_tokens": 64}
    (tmp_path / "ar" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="another config"):
        NexusGenAR.from_pretrained(tmp_path / "ar")


@pytest.mark.parametrize("over, key", [
    ({"nexus_gen": {"image_tokens": 15}}, "model.nexus_gen.image_tokens = 15 is not a square"),
    ({"nexus_gen": {"image_size": 100}}, "model.nexus_gen.image_size = 100 is not a positive multiple of 28"),
    ({"nexus_gen": {"image_tokens": 25}}, "model.nexus_gen.image_tokens = 25 does not fit"),
    ({"embed_dim": 32}, "model.embed_dim = 32 does not fit the AR model's hidden size 64"),
    ({"frobnicate": 1}, "model.frobnicate: unknown key"),
])
def test_bad_model_config(over, key):
    from nexus_gen.train.stage_ar import ARStage

    with pytest.raises(ValueError, match=key.replace("(", r"\(").replace("^", r"\^")):
        ARStage({"path": "tiny", **over}, {})


def test_understanding_answer_runs():
    m = tiny_ar()
    ans = m.answer(_img((200, 0, 0)), "What colour is the square? Please answer yes or no.", max_new_tokens=4)
    assert isinstance(ans, str)


def test_tiny_ar_build_is_byte_identical_across_caches(tmp_path, monkeypatch):
    from nexus_gen.models.tiny.ar_tiny import tiny_ar_dir

    digests = []
    for k in range(2):
        monkeypatch.setenv("NEXUS_GEN_CACHE", str(tmp_path / f"c{k}"))
        d = tiny_ar_dir()
        digests.append({p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()})
    assert digests[0] == digests[1]
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= set(digests[0])


def test_a_stock_qwen_folder_loads_every_language_model_weight(tmp_path):
    """A stock Qwen2.5-VL folder (the layout Qwen/Qwen2.5-VL-7B-Instruct and transformers 5 write
    for the stock class) gives NexusGenAR the stock class's own weights, not random ones."""
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2_5_VLForConditionalGeneration

    from nexus_gen.models.nexus_ar import NexusGenAR
    from nexus_gen.models.tiny.vlm import tiny_vlm_dir

    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_vlm_dir()).state_dict()
    ours = NexusGenAR.from_pretrained(tiny_vlm_dir()).state_dict()
    assert set(stock) <= set(ours)
    assert all(torch.equal(stock[k], ours[k]) for k in stock)
    # a folder whose language-model weights are absent is refused, not silently random
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_vlm_dir(), broken)
    weights = load_file(str(broken / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "layers.0.mlp" not in k}, str(broken / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not in the checkpoint"):
        NexusGenAR.from_pretrained(broken)
