"""The real stages through the training loop: the AR stage trains end to end (full fine-tune and
LoRA); with LoRA, the heads the base model lacks (vision_head, the prefill embeddings) train in
full while layers LoRA does not target stay as they were."""
from __future__ import annotations

import pytest
import torch
from ar_fixtures import scenes_run

from nexus_gen.train.train_config import config_from_dict
from nexus_gen.train.train_loop import train


def _ar_config(out, **train_extra):
    return config_from_dict({
        "stage": "ar", "model": {"path": "tiny"},
        "data": {"shards": str(scenes_run() / "data")},
        "train": {"seed": 0, "max_steps": 6, "batch_size": 2, "grad_accum": 1, "lr": 1e-3,
                  "warmup_steps": 1, "max_grad_norm": 1.0, **train_extra},
        "checkpoint": {"every_steps": 3, "keep_last": 1}, "log": {"every_steps": 1},
        "output_dir": str(out)})


def _final(out):
    from nexus_gen.models.nexus_ar import NexusGenAR

    return NexusGenAR.from_pretrained(out / "final")


def _base():
    from nexus_gen.models.nexus_ar import NexusGenAR
    from nexus_gen.models.tiny.ar_tiny import tiny_ar_dir

    return NexusGenAR.from_pretrained(tiny_ar_dir())


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_ar_stage_through_the_loop(tmp_path, lora):
    torch.set_num_threads(1)
    extra = {"lora": {"r": 4, "alpha": 8, "dropout": 0.0}} if lora else {}
    record = train(_ar_config(tmp_path / "run", **extra), progress=False)
    assert record["status"] == "complete" and record["step"] == 6
    assert record["final_loss"] is not None and record["final_loss"] == record["final_loss"]  # not NaN
    base, trained = _base().state_dict(), _final(tmp_path / "run").state_dict()
    assert set(base) == set(trained)
    head = [k for k in base if k.endswith("vision_head.weight")][0]
    prefill = [k for k in base if k.endswith("image_prefill_embeds.weight")][0]
    assert not torch.equal(base[head], trained[head])
    assert not torch.equal(base[prefill], trained[prefill])
    vit = [k for k in base if ".visual." in f".{k}" or k.startswith("visual.")]
    assert vit and all(torch.equal(base[k], trained[k]) for k in vit)  # the ViT is frozen
    mlp = [k for k in base if "language_model" in k and "mlp" in k]
    assert mlp
    changed = [k for k in mlp if not torch.equal(base[k], trained[k])]
    # LoRA targets the attention only: the MLP of the LLM stays; a full fine-tune moves it.
    assert (changed == []) if lora else changed
