"""The training loop on the toy stage: the lr schedule against a hand formula, gradient
accumulation, exact resume step by step, NaN stop, checkpoints from another config, LoRA,
metrics and the loss plot."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from train_fixtures import toy_stage, toy_config, write_toy_shards  # noqa: F401 (toy_stage: an autouse fixture)

from nexus_gen.train.train_checkpoint import CheckpointMismatch, checkpoints
from nexus_gen.train.train_config import config_from_dict
from nexus_gen.train.train_data import ExampleStream, NoStageSamples, SampleStream, scan_tasks
from nexus_gen.train.train_loop import NonFiniteLoss, TrainError, lr_factor, train
from nexus_gen.train.train_metrics import read_metrics


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_toy_shards(tmp_path_factory.mktemp("loop") / "data", editing=40, other=6)


def _losses(run):
    return [(m["step"], m["loss"]) for m in read_metrics(run)]


def _hand_lr(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    """Linear warmup over `warmup` updates, then a half cosine from base to floor*base."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / (total - warmup)
    return base * (floor + (1 - floor) * (1 + math.cos(math.pi * p)) / 2)


def test_lr_schedule_matches_the_hand_formula(tmp_path, shards):
    cfg = config_from_dict(toy_config(shards, train={"max_steps": 10, "warmup_ratio": 0.3, "min_lr_ratio": 0.1,
                                                      "lr": 0.02, "warmup_steps": None}))
    train(cfg, tmp_path / "run")
    got = [m["lr"] for m in read_metrics(tmp_path / "run")]
    want = [_hand_lr(s, 10, 3, 0.02, 0.1) for s in range(10)]
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert got[0] == pytest.approx(0.02 / 3) and got[3] == pytest.approx(0.02)
    assert lr_factor(5, 10, 0, "constant") == 1.0 and lr_factor(1, 10, 4, "constant") == 0.5


def test_grad_accumulation_equals_a_bigger_batch(tmp_path, shards):
    a = config_from_dict(toy_config(shards, train={"batch_size": 4, "grad_accum": 1, "max_steps": 6}))
    b = config_from_dict(toy_config(shards, train={"batch_size": 2, "grad_accum": 2, "max_steps": 6}))
    train(a, tmp_path / "a")
    train(b, tmp_path / "b")
    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [s for s, _ in la] == list(range(1, 7))
    assert [v for _, v in la] == pytest.approx([v for _, v in lb], rel=1e-5)
    wa, wb = (load_file(str(p / "final" / "model.safetensors")) for p in (tmp_path / "a", tmp_path / "b"))
    for k in wa:  # Adam divides by sqrt(v): float-rounding in near-zero gradients shows up at ~1e-5
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-4)
    assert la[-1][1] < la[0][1] / 2  # and it learns: the loss at least halves in 6 steps


class _Kill(Exception):
    pass


def _kill_at(n):
    def hook(step, row):
        if step == n:
            raise _Kill(f"killed after step {step}")
    return hook


def test_exact_resume_continues_the_loss_curve_step_by_step(tmp_path, shards):
    # 16 steps of 4 over 40 usable-or-skipped samples: the resumed part crosses an epoch boundary,
    # skips samples (counted), and starts in the middle of a shuffle window
    over = dict(train={"max_steps": 16}, data={"shards": str(shards), "reject_every": 5, "shuffle_window": 2},
                checkpoint={"every_steps": 5, "keep_last": 2})
    full = train(config_from_dict(toy_config(shards, **over)), tmp_path / "full")
    with pytest.raises(_Kill):
        train(config_from_dict(toy_config(shards, **over)), tmp_path / "cut", on_step=_kill_at(8))
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "failed"
    assert [s for s, _ in checkpoints(tmp_path / "cut")] == [5]
    resumed = train(config_from_dict(toy_config(shards, **over)), tmp_path / "cut", resume=True)
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert [s for s, _ in b] == list(range(1, 17))  # the lines logged after ckpt-5 were replaced
    for (sa, va), (sb, vb) in zip(a, b):
        assert sa == sb and vb == pytest.approx(va, abs=1e-6), f"step {sa}"
    assert [m["lr"] for m in read_metrics(tmp_path / "full")] == [m["lr"] for m in read_metrics(tmp_path / "cut")]
    wa = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    assert full["counts"] == resumed["counts"] and full["counts"]["skipped"] > 0
    assert full["counts"]["skipped_by_reason"] == {"toy: rejected by id hash": full["counts"]["skipped"]}
    assert resumed["resumed_from"] == "ckpt-5" and resumed["status"] == "complete"
    assert [s for s, _ in checkpoints(tmp_path / "cut")] == [15, 16]  # keep_last 2


def test_checkpoint_from_another_config_fails_before_training(tmp_path, shards):
    train(config_from_dict(toy_config(shards, train={"max_steps": 4})), tmp_path / "run")
    other = config_from_dict(toy_config(shards, train={"max_steps": 8, "batch_size": 2}, model={"hidden": 8}))
    before = (tmp_path / "run" / "run.json").read_text()
    with pytest.raises(CheckpointMismatch, match=r"ckpt-4 was written by another config .*differing: "
                                                 r"batch_size: checkpoint 4 vs config 2; model: "):
        train(other, tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "run.json").read_text() == before  # nothing touched
    with pytest.raises(TrainError, match="already holds a training run .*use --resume"):
        train(config_from_dict(toy_config(shards)), tmp_path / "run")
    with pytest.raises(TrainError, match="no checkpoint to resume from"):
        train(config_from_dict(toy_config(shards)), tmp_path / "new", resume=True)


def test_longer_max_steps_goes_on_from_the_last_checkpoint(tmp_path, shards):
    train(config_from_dict(toy_config(shards, train={"max_steps": 4})), tmp_path / "run")
    rec = train(config_from_dict(toy_config(shards, train={"max_steps": 6})), tmp_path / "run", resume=True)
    assert rec["step"] == 6 and [s for s, _ in _losses(tmp_path / "run")] == list(range(1, 7))


def test_shards_without_the_stages_tasks_fail_before_any_work(tmp_path):
    folder = write_toy_shards(tmp_path / "d", editing=0, other=3, tasks=("generation",))
    with pytest.raises(NoStageSamples, match=r"learns from \(editing\); their tasks: \{'generation': 3\}"):
        train(config_from_dict(toy_config(folder)), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_nan_loss_stops_with_step_and_batch_ids_and_keeps_the_last_good_checkpoint(tmp_path, shards):
    cfg0 = config_from_dict(toy_config(shards, train={"max_steps": 10}, checkpoint={"keep_last": 5}))
    train(cfg0, tmp_path / "probe")
    # the sample ids of each step: an identical data stream, read directly
    stage = cfg0.stage_obj()
    index = scan_tasks([Path(f) for f in cfg0.data.shard_list()], stage.tasks)
    ex = ExampleStream(SampleStream(index, 0, window=2), stage)
    order = [[i for i, _ in ex.take(4)] for _ in range(7)]
    bad = order[6][2]
    cfg = config_from_dict(toy_config(shards, train={"max_steps": 10}, data={"shards": str(shards), "nan_ids": [bad]}))
    with pytest.raises(NonFiniteLoss) as e:
        train(cfg, tmp_path / "run")
    msg = str(e.value)
    assert f"non-finite loss (nan) at step 7; batch ids: {order[6]}" in msg and "ckpt-4" in msg
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["status"] == "failed" and rec["step"] == 6 and "step 7" in rec["last_error"]
    assert [s for s, _ in checkpoints(tmp_path / "run")] == [4]
    assert not (tmp_path / "run" / "final").exists()
    probe = load_file(str(tmp_path / "probe" / "ckpt-4" / "trainable.safetensors"))
    kept = load_file(str(tmp_path / "run" / "ckpt-4" / "trainable.safetensors"))
    for k in probe:
        assert torch.equal(probe[k], kept[k])  # the good checkpoint, untouched by the bad step


def test_lora_trains_only_the_adapters(tmp_path, shards):
    cfg = config_from_dict(toy_config(shards, train={"max_steps": 6, "lora": {"r": 2, "alpha": 4}}))
    torch.manual_seed(0)  # the loop seeds with train.seed before building the model
    base = cfg.stage_obj().build_model(torch.device("cpu"))
    rec = train(cfg, tmp_path / "run")
    weights = load_file(str(tmp_path / "run" / "ckpt-6" / "trainable.safetensors"))
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    assert sorted(weights) == [f"base_model.model.{m}.lora_{ab}.default.weight" for m in ("fc1", "fc2") for ab in "AB"]
    merged = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert set(merged) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}  # merged back, stage layout
    # the base is unchanged: biases (not adapted) equal the initial ones; weights moved only by B @ A
    assert torch.equal(merged["fc1.bias"], base.fc1.bias.detach())
    a = weights["base_model.model.fc1.lora_A.default.weight"]
    b = weights["base_model.model.fc1.lora_B.default.weight"]
    torch.testing.assert_close(merged["fc1.weight"], base.fc1.weight.detach() + (4 / 2) * b @ a)
    assert b.abs().sum() > 0 and rec["status"] == "complete"
    assert (tmp_path / "run" / "lora_adapter" / "adapter_config.json").is_file()


def test_metrics_plot_and_run_record(tmp_path, shards):
    import os
    import socket

    seen = []  # the record while running names this process, so `nexus-gen runs` can tell a dead one
    rec = train(config_from_dict(toy_config(shards, train={"max_steps": 6}, log={"every_steps": 4})), tmp_path / "run",
                on_step=lambda step, row: seen.append(json.loads((tmp_path / "run" / "run.json").read_text())))
    assert seen and all(r["status"] == "running" and r["pid"] == os.getpid() and r["host"] == socket.gethostname()
                        for r in seen)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [4, 6]
    assert set(rows[0]) == {"step", "loss", "parts", "lr", "grad_norm", "samples_per_s", "epoch"}
    assert set(rows[0]["parts"]) == {"mse", "l1"} and rows[0]["parts"]["mse"] == pytest.approx(rows[0]["loss"])
    assert rows[-1]["epoch"] == pytest.approx(6 * 4 / 40)
    with Image.open(tmp_path / "run" / "loss.png") as im:
        assert im.format == "PNG" and im.width > 300
    on_disk = json.loads((tmp_path / "run" / "run.json").read_text())
    assert on_disk == rec
    assert {k: rec[k] for k in ("kind", "status", "stage", "step", "max_steps", "last_error")} == {
        "kind": "train", "status": "complete", "stage": "toy", "step": 6, "max_steps": 6, "last_error": None}
    assert rec["counts"] == {"samples": 24, "skipped": 0, "skipped_by_reason": {}}
    assert rec["final_loss"] == pytest.approx(rows[-1]["loss"])


def test_epochs_set_the_number_of_steps(tmp_path, shards):
    cfg = config_from_dict(toy_config(shards, train={"max_steps": None, "epochs": 0.5, "batch_size": 3}))
    rec = train(cfg, tmp_path / "run")
    assert rec["max_steps"] == math.ceil(0.5 * 40 / 3) == rec["step"]


def test_bf16_on_cpu_falls_back_to_fp32_and_says_so(tmp_path, shards, caplog):
    cfg = config_from_dict(toy_config(shards, train={"max_steps": 2, "precision": "bf16", "device": "cpu"}))
    ref = config_from_dict(toy_config(shards, train={"max_steps": 2}))
    with caplog.at_level("WARNING", logger="nexus_gen.train.train_loop"):
        rec = train(cfg, tmp_path / "bf16")
    assert rec["precision"] == "fp32" and "autocast is used on CUDA only" in caplog.text
    train(ref, tmp_path / "fp32")
    assert _losses(tmp_path / "bf16") == _losses(tmp_path / "fp32")  # the same fp32 computation


def test_gradient_checkpointing_is_switched_on_or_refused(tmp_path, shards, monkeypatch):
    import train_toy_stage

    seen = []
    real = train_toy_stage.ToyNet.gradient_checkpointing_enable
    monkeypatch.setattr(train_toy_stage.ToyNet, "gradient_checkpointing_enable",
                        lambda self, **kw: seen.append(kw) or real(self, **kw))
    train(config_from_dict(toy_config(shards, train={"max_steps": 1, "gradient_checkpointing": True})), tmp_path / "a")
    assert seen == [{"gradient_checkpointing_kwargs": {"use_reentrant": False}}]
    monkeypatch.delattr(train_toy_stage.ToyNet, "gradient_checkpointing_enable")
    with pytest.raises(TrainError, match="train.gradient_checkpointing: the toy model \\(ToyNet\\) has no "
                                         "gradient_checkpointing_enable\\(\\); set it to false"):
        train(config_from_dict(toy_config(shards, train={"max_steps": 1, "gradient_checkpointing": True})),
              tmp_path / "b")
