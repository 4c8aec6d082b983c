"""Loading a tiny checkpoint written in the published Nexus-Gen layout: every tensor where it belongs
(by value), nothing left over, dtype kept or cast, V1 specifics, and clear errors before loading."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from nexus_gen.models import reference_checkpoint as rc
from reference_layout_fixtures import (CONFIG_449, FLUX, GEOMETRY, ar_like_class, merger_state,
                                       write_published)
from t5_negative_fixtures import stock_t5_empty


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nexus-genv2")
    return folder, write_published(folder)


@pytest.fixture(scope="module")
def published_v1(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nexus-gen-v1")
    return folder, write_published(folder, v1=True)


def test_the_fixture_is_in_the_449_layout(published):
    folder, _ = published
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    keys = set(index["weight_map"])
    assert len(set(index["weight_map"].values())) == 2
    assert "lm_head.weight" in keys and "vision_head.weight" in keys and "image_prefill_embeds.weight" in keys
    assert all(k.startswith(("visual.", "model.layers.", "model.embed_tokens", "model.norm", "lm_head",
                             "vision_head", "image_prefill_embeds")) for k in keys)
    assert not any(k.startswith(("model.language_model.", "model.visual.")) for k in keys)


def test_ar_loads_every_tensor_in_place_and_keeps_bf16(published, caplog):
    folder, source = published
    with caplog.at_level(logging.INFO, logger="nexus_gen.models.reference_checkpoint"):
        model = rc.load_reference_ar(folder, model_cls=ar_like_class(), geometry=GEOMETRY)
    assert "ignoring auto_map" in caplog.text
    state = model.state_dict()
    assert set(state) == set(source["ar"])  # untied lm_head: every tensor is its own
    for key, tensor in source["ar"].items():
        assert state[key].dtype == torch.bfloat16, key
        assert torch.equal(state[key], tensor), key
    assert model.config.nexus_gen == GEOMETRY
    assert "auto_map" not in model.config.to_dict()
    assert model.config.text_config.hidden_size == 32 and model.config.text_config.num_hidden_layers == 2


def test_ar_cast_and_paper_geometry_by_default(published):
    folder, source = published
    config = rc.reference_ar_config(folder)
    assert config.nexus_gen == {"image_tokens": 81, "image_size": 252, "source_image_size": 504,
                                "source_tokens": 324}
    # 81 prefill rows (paper) do not fit the tiny file's 4: caught by name and shape before loading
    with pytest.raises(ValueError, match=r"image_prefill_embeds\.weight', \(4, 32\), \(81, 32\)"):
        rc.load_reference_ar(folder, model_cls=ar_like_class())
    model = rc.load_reference_ar(folder, model_cls=ar_like_class(), geometry=GEOMETRY, dtype=torch.float32)
    weight = model.model.visual.patch_embed.proj.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, source["ar"]["model.visual.patch_embed.proj.weight"].float())


def test_v1_prefill_is_the_image_pad_embedding(published_v1):
    folder, source = published_v1
    ckpt = rc.inspect_reference(folder)
    assert ckpt.version == "v1" and ckpt.editing_decoder is None
    model = rc.load_reference_ar(folder, model_cls=ar_like_class(), geometry=GEOMETRY)
    pad = source["ar"]["model.language_model.embed_tokens.weight"][CONFIG_449["image_token_id"]]
    assert torch.equal(model.image_prefill_embeds.weight, pad.expand(GEOMETRY["image_tokens"], -1))
    assert torch.equal(model.vision_head.weight, source["ar"]["vision_head.weight"])


def test_generation_decoder_lands_in_stock_modules(published, published_v1):
    from diffusers import FluxTransformer2DModel

    for folder, source in (published, published_v1):
        ckpt = rc.inspect_reference(folder)
        state = rc.generation_decoder_state(ckpt.generation_decoder)
        assert set(state) == set(source["generation"])
        for key, tensor in source["generation"].items():
            assert torch.equal(state[key], tensor), key
        config = rc.dit_config_of(state, axes_dims_rope=FLUX["axes_dims_rope"])
        assert config == FLUX
        dit = FluxTransformer2DModel(**config).to(torch.bfloat16)
        dit.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("dit.")}, strict=True)
        adapter = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.LayerNorm(32), torch.nn.ReLU(),
                                      torch.nn.Linear(32, 32), torch.nn.LayerNorm(32))
        adapter.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("adapter.")}, strict=True)
    cast = rc.generation_decoder_state(rc.inspect_reference(published[0]).generation_decoder, dtype=torch.float32)
    assert all(v.dtype == torch.float32 for v in cast.values())


def test_editing_decoder_lands_in_a_qwen_layer_and_projector(published):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer, Qwen2_5_VLRMSNorm

    folder, source = published
    state = rc.editing_decoder_state(rc.inspect_reference(folder).editing_decoder)
    assert set(state) == set(source["editing"])
    for key, tensor in source["editing"].items():
        assert torch.equal(state[key], tensor), key
    config = rc.reference_ar_config(folder)
    merger = torch.nn.Module()
    merger.layers = torch.nn.ModuleList([Qwen2_5_VLDecoderLayer(config.text_config, 0)])
    merger.projector = torch.nn.Sequential(Qwen2_5_VLRMSNorm(32), torch.nn.Linear(32, 128), Qwen2_5_VLRMSNorm(128),
                                           torch.nn.SiLU(), torch.nn.Linear(128, 32), Qwen2_5_VLRMSNorm(32))
    holder = torch.nn.Module()
    holder.embedding_merger = merger
    holder.load_state_dict({k: v for k, v in state.items() if k.startswith("embedding_merger.")}, strict=True)


def test_published_ids_download_weights_only(published, monkeypatch):
    import huggingface_hub

    folder, _ = published
    calls = []

    def fake_download(repo_id, allow_patterns=None, cache_dir=None):
        calls.append((repo_id, tuple(allow_patterns)))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert rc.resolve_reference("modelscope/Nexus-GenV2") == folder
    assert rc.resolve_reference("DiffSynth-Studio/Nexus-Gen", hub="huggingface") == folder
    ids = ["modelscope/Nexus-GenV2", "DiffSynth-Studio/Nexus-Gen"]
    try:
        import modelscope  # noqa: F401
    except ImportError:  # the ModelScope id falls back to its Hugging Face mirror
        assert rc.resolve_reference("DiffSynth-Studio/Nexus-GenV2") == folder
        ids.append("modelscope/Nexus-GenV2")
    assert [c[0] for c in calls] == ids
    assert all("*.safetensors" in p and not any(x.endswith(".py") for x in p) for _, p in calls)
    with pytest.raises(ValueError, match="not a folder and not a published id"):
        rc.resolve_reference("someone/Nexus-GenV3")

    def offline(repo_id, allow_patterns=None, cache_dir=None):
        raise OSError("offline and not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="cannot fetch black-forest-labs/FLUX.1-dev .*offline and not in the cache"):
        rc.resolve_flux_base()


def test_published_decoders_take_the_bases_t5_negative(published, tmp_path, monkeypatch):
    import huggingface_hub

    from nexus_gen.models import flow_matching as fm

    folder, _ = published
    ckpt = rc.inspect_reference(folder)
    text_config = rc.reference_ar_config(folder, GEOMETRY).text_config
    flux = tmp_path / "FLUX.1-dev"  # a tiny copy of a FLUX.1-dev folder, T5 included
    shutil.copytree(fm.resolve_flux_base("tiny-t5"), flux)
    calls = []
    real = fm.empty_prompt_t5
    monkeypatch.setattr(fm, "empty_prompt_t5", lambda *a, **k: calls.append(a) or real(*a, **k))
    gen, edit = rc.load_reference_decoders(ckpt, text_config, GEOMETRY, base=flux)
    want = stock_t5_empty(flux)
    for dec in (gen, edit):
        assert dec.config["negative"] == "t5-empty"
        assert torch.allclose(dec.negative_prompt, want, atol=1e-6)
    assert len(calls) == 1  # T5("") computed once for both decoders
    shutil.rmtree(flux / "text_encoder_2")
    shutil.rmtree(flux / "tokenizer_2")
    gen, edit = rc.load_reference_decoders(ckpt, text_config, GEOMETRY, base=flux)
    assert gen.config["negative"] == edit.config["negative"] == "zeros" and gen.negative_prompt is None

    patterns = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, allow_patterns=None, cache_dir=None: patterns.extend(allow_patterns) or str(flux))
    rc.resolve_flux_base()
    assert {"text_encoder_2/*", "tokenizer_2/*", "text_encoder/*", "vae/*"} <= set(patterns)


def test_bad_checkpoints_fail_before_loading(published, tmp_path):
    folder, _ = published
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match=r"absent: \['model-00002-of-00002.safetensors'\]"):
        rc.inspect_reference(broken)

    other = tmp_path / "other-config"
    shutil.copytree(folder, other)
    config = {**CONFIG_449, "intermediate_size": 48}
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit its config.*mlp"):
        rc.load_reference_ar(other, model_cls=ar_like_class(), geometry=GEOMETRY)

    extra = tmp_path / "extra-tensor"
    shutil.copytree(folder, extra)
    from safetensors.torch import load_file, save_file
    shard = extra / "model-00001-of-00002.safetensors"
    tensors = load_file(str(shard))
    save_file({**tensors, "visual.extra.weight": torch.zeros(2)}, str(shard), metadata={"format": "pt"})
    index = json.loads((extra / "model.safetensors.index.json").read_text())
    index["weight_map"]["visual.extra.weight"] = shard.name
    (extra / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"unexpected \['model\.visual\.extra\.weight'\]"):
        rc.load_reference_ar(extra, model_cls=ar_like_class(), geometry=GEOMETRY)

    from transformers import Qwen2_5_VLForConditionalGeneration
    with pytest.raises(ValueError, match="no vision_head module"):
        rc.load_reference_ar(folder, model_cls=Qwen2_5_VLForConditionalGeneration, geometry=GEOMETRY)

    bad = tmp_path / "bad.bin"
    torch.save({**{f"embedding_merger.{k}": v for k, v in merger_state(1).items()}, "extra.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match=r"unexpected keys.*extra\.weight"):
        rc.editing_decoder_state(bad)
    torch.save({"adapter.0.weight": [1, 2]}, bad)
    with pytest.raises(ValueError, match="not a flat"):
        rc.generation_decoder_state(bad)
    no_dec = tmp_path / "no-decoder"
    shutil.copytree(folder, no_dec)
    (no_dec / "generation_decoder.bin").unlink()
    with pytest.raises(ValueError, match="no decoder file"):
        rc.inspect_reference(no_dec)
