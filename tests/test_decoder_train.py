"""The decoder stages on scenes data: each decoder trains 30 AdamW steps and its loss on fixed
(t, noise) draws falls; save -> load gives the same outputs; bad configs and data fail clearly."""
from __future__ import annotations

import io

import pytest
import torch

from decoder_fixtures import scenes_samples, write_store
from nexus_gen.models.edit_decoder import NexusGenEditingDecoder
from nexus_gen.models.gen_decoder import NexusGenGenerationDecoder
from nexus_gen.train.stage_edit_decoder import EditDecoderStage
from nexus_gen.train.stage_gen_decoder import GenDecoderStage

torch.set_num_threads(1)
# Measured on this data (tiny profile, lr 3e-3, batch 2, 30 steps): the fixed-draw loss falls from
# 1.24 to 0.72 (x1.72) for both decoders; the test asks for x1.4.
STEPS, LR, BATCH, MIN_FACTOR = 30, 3e-3, 2, 1.4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dec")
    samples = scenes_samples(8)
    write_store(folder / "emb", samples)
    return samples, folder / "emb"


def _fixed_loss(stage, model, batch) -> float:
    """Mean loss over 4 fixed (sigma, noise) draws."""
    total = 0.0
    with torch.no_grad():
        for k in range(4):
            g = torch.Generator().manual_seed(100 + k)
            if stage.name == "gen-decoder":
                loss, _ = model.training_loss(batch["embeds"], batch["image"], generator=g)
            else:
                loss, _ = model.training_loss(batch["predicted"], batch["source"], batch["image"], generator=g)
            total += float(loss)
    return total / 4


@pytest.mark.slow
@pytest.mark.parametrize("stage_cls", [GenDecoderStage, EditDecoderStage])
def test_decoder_trains_on_scenes(data, stage_cls):
    samples, store = data
    stage = stage_cls({"profile": "tiny"}, {"embeddings": str(store)})
    stage.check_data(samples[0])
    model = stage.build_model(torch.device("cpu"))
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == ({"dit", "adapter"} if stage_cls is GenDecoderStage else {"dit", "embedding_merger"})
    examples = [stage.example(s) for s in samples]
    reasons = [e for e in examples if isinstance(e, str)]
    examples = [e for e in examples if not isinstance(e, str)]
    assert len(examples) == 8 and len(reasons) == 8 and "is not" in reasons[0]  # the other task
    everything = stage.collate(examples)
    before = _fixed_loss(stage, model, everything)
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    vae_before = {k: v.clone() for k, v in model.vae.state_dict().items()}
    for step in range(STEPS):
        batch = stage.collate([examples[(step * BATCH + j) % len(examples)] for j in range(BATCH)])
        loss, parts = stage.loss(model, batch)
        assert torch.isfinite(loss) and set(parts) == {"mse"}
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _fixed_loss(stage, model, everything)
    assert before / after >= MIN_FACTOR, (before, after)
    assert all(torch.equal(v, model.vae.state_dict()[k]) for k, v in vae_before.items())  # frozen


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _perturb(model: torch.nn.Module, prefixes: tuple[str, ...]) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(prefixes):
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_generation_decoder_save_load_same_outputs(tmp_path):
    dec = NexusGenGenerationDecoder.from_base("tiny")
    _perturb(dec, ("dit.", "adapter."))
    dec.save_pretrained(tmp_path / "g")
    back = NexusGenGenerationDecoder.from_pretrained(tmp_path / "g")
    e = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    assert [_png(i) for i in dec.generate(e, steps=2, seed=3)] == \
        [_png(i) for i in back.generate(e, steps=2, seed=3)]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    la, _ = dec.training_loss(e, x, generator=torch.Generator().manual_seed(2))
    lb, _ = back.training_loss(e, x, generator=torch.Generator().manual_seed(2))
    assert la.item() == lb.item()
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "decoder.safetensors", "dit", "nexus_gen_decoder.json"]
    with pytest.raises(ValueError, match="holds a 'generation' decoder, not a 'editing' one"):
        NexusGenEditingDecoder.from_pretrained(tmp_path / "g")


def test_editing_decoder_save_load_same_outputs(tmp_path):
    dec = NexusGenEditingDecoder.from_base("tiny")
    _perturb(dec, ("dit.", "embedding_merger."))
    dec.save_pretrained(tmp_path / "e")
    back = NexusGenEditingDecoder.from_pretrained(tmp_path / "e")
    p = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(0))
    s = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(1))
    assert _png(dec.edit(p, s, steps=2, seed=4)[0]) == _png(back.edit(p, s, steps=2, seed=4)[0])
    assert dec.config["cfg"] == 1.0
    with pytest.raises(ValueError, match="source has 60 tokens: the decoder wants 64"):
        dec.edit(p, s[:, :60])
    with pytest.raises(ValueError, match=r"predicted has shape \(1, 16, 32\)"):
        dec.edit(p[..., :32], s)
    with pytest.raises(ValueError, match="multiples of 16"):
        dec.edit(p, s, height=72)


def test_bad_configs_and_data_fail_clearly(data, tmp_path):
    samples, store = data
    with pytest.raises(ValueError, match="model.lr: unknown key for stage gen-decoder"):
        GenDecoderStage({"lr": 1}, {"embeddings": str(store)})
    with pytest.raises(ValueError, match="data.embeddings: stage edit-decoder needs"):
        EditDecoderStage({}, {})
    with pytest.raises(ValueError, match="data.shards: unknown key"):
        EditDecoderStage({}, {"embeddings": str(store), "shards": "x"})
    with pytest.raises(ValueError, match="model.profile: 'huge'"):
        GenDecoderStage({"profile": "huge"}, {"embeddings": str(store)})
    with pytest.raises(ValueError, match="model.embed_dim: must be a positive integer"):
        GenDecoderStage({"embed_dim": "64"}, {"embeddings": str(store)})
    with pytest.raises(ValueError, match="data.embeddings: embedding store .* does not exist"):
        GenDecoderStage({}, {"embeddings": str(tmp_path / "none")}).check_data(samples[0])
    # a store made for the generation decoder only
    gen_only = write_store(tmp_path / "gen_only", [s for s in samples if s["task"] == "generation"])
    with pytest.raises(ValueError, match=r"has no \['predicted', 'source'\] embeddings"):
        EditDecoderStage({}, {"embeddings": str(gen_only)}).check_data(samples[0])
    # D of the store vs the adapter; J vs the DiT
    narrow = write_store(tmp_path / "narrow", samples, dim=48)
    with pytest.raises(ValueError, match=r"target embeddings are \[16, 48\] .* model.embed_dim = 64"):
        GenDecoderStage({}, {"embeddings": str(narrow)}).build_model(torch.device("cpu"))
    with pytest.raises(ValueError, match="model.joint_dim 4096 does not match the DiT's joint_attention_dim 32"):
        GenDecoderStage({"joint_dim": 4096}, {"embeddings": str(store)}).build_model(torch.device("cpu"))
    with pytest.raises(ValueError, match=r"source embeddings are \[64, 64\] but the decoder takes \[16, 64\]"):
        EditDecoderStage({"source_tokens": 16}, {"embeddings": str(store)}).build_model(torch.device("cpu"))
    # a sample without embeddings is skipped with its reason
    stage = GenDecoderStage({}, {"embeddings": str(store)})
    lost = dict(samples[0], id="gen-unknown")
    assert stage.example(lost) == f"sample 'gen-unknown' has no embeddings in {store}"
    assert stage.example(dict(samples[0], images=[])) == "sample 'gen-0' has 0 image(s)"
    dec = NexusGenGenerationDecoder.from_base("tiny")
    with pytest.raises(ValueError, match=r"embeds has shape \(1, 16, 48\)"):
        dec.generate(torch.zeros(1, 16, 48))


def test_lora_targets_reach_only_the_dit(data):
    from peft import LoraConfig, get_peft_model

    stage = GenDecoderStage({}, {"embeddings": str(data[1])})
    model = stage.build_model(torch.device("cpu"))
    model.requires_grad_(False)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=list(stage.lora_targets)))
    wrapped = {n.split(".lora_")[0] for n, p in lora.named_parameters() if p.requires_grad}
    # double block: 7 attention projections + ff/ff_context proj; single block: to_q, to_k, to_v,
    # proj_mlp, proj_out; the DiT's final proj_out
    assert len(wrapped) == 15 and all(".dit." in n for n in wrapped)
    assert not any(n.startswith("vae") for n, _ in model.named_modules())
    batch = stage.collate([stage.example(s) for s in data[0][:1]])
    loss, _ = stage.loss(lora, batch)
    loss.backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if p.requires_grad)


def test_gradient_checkpointing_keeps_loss_and_gradients():
    dec = NexusGenEditingDecoder.from_base("tiny")
    dec.train()
    p = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    s = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(1))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1

    def run():
        dec.zero_grad()
        loss, _ = dec(predicted=p, source=s, target_images=x, generator=torch.Generator().manual_seed(3))
        loss.backward()
        return loss.item(), {n: q.grad.clone() for n, q in dec.named_parameters() if q.grad is not None}

    plain_loss, plain = run()
    dec.gradient_checkpointing_enable()
    assert dec.dit.gradient_checkpointing and dec.embedding_merger.layers[0].gradient_checkpointing
    ckpt_loss, ckpt = run()
    assert ckpt_loss == plain_loss and set(ckpt) == set(plain)
    assert all(torch.allclose(ckpt[n], plain[n], atol=1e-6) for n in plain)


@pytest.mark.slow
@pytest.mark.parametrize("stage,cls,lora", [("gen-decoder", NexusGenGenerationDecoder, False),
                                            ("edit-decoder", NexusGenEditingDecoder, False),
                                            ("gen-decoder", NexusGenGenerationDecoder, True),
                                            ("edit-decoder", NexusGenEditingDecoder, True)])
def test_decoder_stage_through_the_training_loop(data, tmp_path, stage, cls, lora):
    from decoder_fixtures import write_shards

    from nexus_gen.train.train_config import config_from_dict
    from nexus_gen.train.train_loop import train
    from nexus_gen.train.train_metrics import read_metrics

    samples, store = data
    shards = write_shards(tmp_path / "data", samples)
    # diffusers' FLUX LoRA list names modules by a dotted suffix ("attn.to_out.0"), as peft allows
    dotted = {"targets": ["to_q", "to_k", "to_v", "attn.to_out.0"]} if stage == "gen-decoder" else {}
    cfg = config_from_dict({
        "stage": stage, "model": {"profile": "tiny"},
        "data": {"shards": str(shards), "embeddings": str(store), "shuffle_window": 2},
        "train": {"seed": 0, "max_steps": 6, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1,
                  **({"lora": {"r": 4, "alpha": 4, **dotted}} if lora else {})},
        "checkpoint": {"every_steps": 3, "keep_last": 1}, "log": {"every_steps": 1}})
    start = cls.from_base("tiny")
    record = train(cfg, tmp_path / "run")
    assert record["status"] == "complete" and record["step"] == 6, record
    assert len(read_metrics(tmp_path / "run")) == 6
    dec = cls.from_pretrained(tmp_path / "run" / "final")
    # the DiT and the new module (adapter / merger: in full, also under LoRA) have moved
    new = "adapter" if stage == "gen-decoder" else "embedding_merger"
    for part in ("dit", new):
        a, b = getattr(start, part).state_dict(), getattr(dec, part).state_dict()
        assert set(a) == set(b) and any(not torch.equal(a[k], b[k]) for k in a), part
    out = dec.generate(torch.zeros(1, 16, 64)) if stage == "gen-decoder" else \
        dec.edit(torch.zeros(1, 16, 64), torch.zeros(1, 64, 64))
    assert out[0].size == (64, 64)


def test_stages_take_the_tiny_ar_precompute(tmp_path):
    """The stores `nexus-gen precompute {gen,edit}` writes with the tiny AR model fit the stages."""
    from decoder_fixtures import write_shards

    from nexus_gen.train.precompute import load_ar_model, precompute

    samples = scenes_samples(2, seed=50)
    write_shards(tmp_path / "data", samples)
    ar = load_ar_model("tiny")
    for mode, stage in (("gen", GenDecoderStage({}, {"embeddings": str(tmp_path / "gen")})),
                        ("edit", EditDecoderStage({"ar": "tiny"}, {"embeddings": str(tmp_path / "edit")}))):
        precompute(mode, [str(tmp_path / "data")], tmp_path / mode, ar)
        stage.check_data(samples[0])
        model = stage.build_model(torch.device("cpu"))
        examples = [e for e in map(stage.example, samples) if not isinstance(e, str)]
        assert len(examples) == 2
        loss, _ = stage.loss(model, stage.collate(examples))
        assert torch.isfinite(loss)


@pytest.mark.parametrize("name", ["gen_decoder_tiny", "gen_decoder_paper", "edit_decoder_tiny",
                                  "edit_decoder_paper"])
def test_shipped_decoder_configs_fit_the_stages(name):
    import yaml
    from conftest import REPO

    from nexus_gen.train.stages import stage_class
    from nexus_gen.train.train_config import LOOP_DATA_KEYS

    cfg = yaml.safe_load((REPO / "datasets_spec" / "train" / f"{name}.yaml").read_text())
    data = {k: v for k, v in cfg["data"].items() if k not in LOOP_DATA_KEYS}
    stage = stage_class(cfg["stage"])(cfg["model"], data)  # checks every model/data key
    assert stage.setting("image_size") == (64 if name.endswith("tiny") else 512)
