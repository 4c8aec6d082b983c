"""The editing decoder's merger: rescaled mRoPE positions and FLUX text ids by hand, bidirectional
attention, and the layer initialised from an AR folder's text layer 0 (both key layouts)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nexus_gen.models.edit_decoder import (EmbeddingMerger, default_text_config, edit_text_ids,
                                           merger_position_ids, read_ar_merger_init)

torch.set_num_threads(1)


def test_positions_by_hand_for_tiny_grids():
    # target: 4x4 tokens = 8x8 ViT patches -> scale 72 / 8 = 9; source: 8x8 tokens = 16 patches
    # -> scale 72 / 16 = 4.5; t is always 0.
    t = merger_position_ids(16, "target")
    assert t[0].tolist() == [0.0] * 16
    assert t[1].tolist() == [0, 0, 0, 0, 9, 9, 9, 9, 18, 18, 18, 18, 27, 27, 27, 27]
    assert t[2].tolist() == [0, 9, 18, 27] * 4
    s = merger_position_ids(64, "source")
    assert s[1].tolist()[::8] == [0, 4.5, 9, 13.5, 18, 22.5, 27, 31.5]
    assert s[2].tolist()[:8] == [0, 4.5, 9, 13.5, 18, 22.5, 27, 31.5]
    # paper: 9x9 target (18 patches) rows 0, 4, ..., 32; 18x18 source (36 patches) 0, 2, ..., 34
    assert merger_position_ids(81, "target")[1].tolist()[::9] == [4.0 * i for i in range(9)]
    assert merger_position_ids(324, "source")[2].tolist()[:18] == [2.0 * i for i in range(18)]
    with pytest.raises(ValueError, match="source: 60 tokens is not a square grid"):
        merger_position_ids(60, "source")


def test_merger_orders_target_then_source_positions():
    with torch.device("meta"):
        m = EmbeddingMerger(default_text_config(64), joint_dim=32)
    pos = m.position_ids(16, 64)
    assert pos.shape == (3, 80)
    assert torch.equal(pos[:, :16], merger_position_ids(16, "t")) and pos[1, 16 + 8].item() == 4.5


def test_flux_text_ids_by_hand():
    # 64 px output -> 8x8 latent; target grid 8 patches -> scale 1, source 16 patches -> 0.5
    ids = edit_text_ids(16, 64, 8, 8)
    assert ids.shape == (80, 3)
    assert ids[:5].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 1, 0]]
    assert ids[16:19].tolist() == [[1, 0, 0], [1, 0, 0.5], [1, 0, 1]]
    assert ids[16 + 8].tolist() == [1, 0.5, 0]
    # paper: 512 px -> 64 latent; target 18 patches -> 64/18 per row, source 36 -> 64/36
    paper = edit_text_ids(81, 324, 64, 64)
    assert paper[9, 1].item() == pytest.approx(64 / 18) and paper[81 + 18, 1].item() == pytest.approx(64 / 36)


def test_merger_attention_is_bidirectional():
    torch.manual_seed(0)
    m = EmbeddingMerger(default_text_config(64), joint_dim=32)
    t, s = torch.randn(1, 16, 64), torch.randn(1, 64, 64)
    out = m(t, s)
    assert out.shape == (1, 80, 32)
    s2 = s.clone()
    s2[0, -1] += 1.0
    out2 = m(t, s2)
    assert not torch.allclose(out[0, 0], out2[0, 0])  # the first token sees the last one


def _tiny_ar(folder: Path) -> torch.nn.Module:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                         rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=64, fullatt_block_indexes=[0]))
    cfg.nexus_gen = {"image_tokens": 16, "image_size": 112, "source_tokens": 64, "source_image_size": 224}
    torch.manual_seed(3)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.save_pretrained(folder)
    return model


def test_merger_layer_initialised_from_ar_layer0(tmp_path):
    from safetensors.torch import load_file, save_file

    from nexus_gen.models.edit_decoder import NexusGenEditingDecoder

    ar = _tiny_ar(tmp_path / "ar")
    want = {k: v for k, v in ar.model.language_model.layers[0].state_dict().items()}
    cfg, state, geo = read_ar_merger_init(tmp_path / "ar")
    assert geo["image_tokens"] == 16 and cfg.hidden_size == 64
    assert set(state) == set(want) and all(torch.equal(state[k], want[k]) for k in want)
    # the other layout on disk (model.language_model.layers.0.*) reads the same
    other = tmp_path / "ar2"
    other.mkdir()
    shutil.copy(tmp_path / "ar" / "config.json", other / "config.json")
    tensors = load_file(str(tmp_path / "ar" / "model.safetensors"))
    save_file({k.replace("model.layers.", "model.language_model.layers."): v for k, v in tensors.items()},
              str(other / "model.safetensors"))
    _, state2, _ = read_ar_merger_init(other)
    assert all(torch.equal(state2[k], want[k]) for k in want)

    dec = NexusGenEditingDecoder.from_base("tiny", ar=tmp_path / "ar")
    layer = dec.embedding_merger.layers[0].state_dict()
    assert all(torch.equal(layer[k], want[k]) for k in want)
    assert dec.embedding_merger.projector[0].variance_epsilon == 1e-6
    assert (dec.image_tokens, dec.source_tokens, dec.embed_dim) == (16, 64, 64)
    with pytest.raises(ValueError, match="embed_dim 32 does not match the AR model's hidden size 64"):
        NexusGenEditingDecoder.from_base("tiny", ar=tmp_path / "ar", embed_dim=32)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps(json.loads(
        (tmp_path / "ar" / "config.json").read_text())))
    with pytest.raises(ValueError, match="no model.safetensors"):
        read_ar_merger_init(tmp_path / "bad")


def test_merger_from_the_tiny_ar_model():
    from nexus_gen.models.edit_decoder import NexusGenEditingDecoder
    from nexus_gen.models.nexus_ar import NexusGenAR
    from nexus_gen.models.tiny.ar_tiny import tiny_ar_dir

    ar = NexusGenAR.from_pretrained(tiny_ar_dir())
    want = ar.model.language_model.layers[0].state_dict()
    dec = NexusGenEditingDecoder.from_base("tiny", ar="tiny")
    got = dec.embedding_merger.layers[0].state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    geo = ar.config.nexus_gen
    assert (dec.image_tokens, dec.source_tokens) == (geo["image_tokens"], geo["source_tokens"])
    assert dec.embed_dim == ar.config.text_config.hidden_size
