"""FSDP (`train.strategy: fsdp`, FSDP2 `fully_shard` on CPU with gloo): 2 processes match 1
process with doubled accumulation (losses, gradient norms, final weights) on the toy stage and on
the tiny AR stage; the checkpoint is really sharded (each rank wrote half of each weight and Adam
state); a resume continues the loss curve exactly, launched through `accelerate launch` with the
shipped FSDP config (which maps a `ddp` config to fsdp); the bad combinations fail before work."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import TESTS, register_toy, toy_config, write_config, write_toy_shards

from nexus_gen.train.train_config import TrainConfigError, config_from_dict
from nexus_gen.train.train_loop import TrainError, preflight, train
from nexus_gen.train.train_metrics import read_metrics
from nexus_gen.train.train_sharding import resolve_strategy

REPO = TESTS.parent
SPECS = REPO / "datasets_spec" / "train"


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: str, stage: str, cfg, out, *extra: str) -> subprocess.CompletedProcess:
    if launcher == "torchrun":
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:  # the shipped accelerate config (8 GPUs), as 2 CPU processes
        head = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(SPECS / "accelerate_fsdp.yaml"),
                "--num_processes", "2", "--main_process_port", str(_free_port())]
    proc = subprocess.run([*head, "-m", "flows.cli", "train", stage, str(cfg), "-o", str(out), *extra],
                          env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _rows(run):
    return [(m["step"], m["loss"], m["grad_norm"]) for m in read_metrics(run)]


def _same_weights(a, b, atol):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=atol, msg=k)


TOY = dict(max_steps=6, batch_size=2, schedule="constant", warmup_steps=2)


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """One process with grad_accum 2 and two FSDP processes with grad_accum 1, 6 steps each."""
    mp = pytest.MonkeyPatch()
    register_toy(mp)
    tmp = tmp_path_factory.mktemp("fsdp")
    shards = write_toy_shards(tmp / "data", editing=24, other=4)
    one = config_from_dict(toy_config(shards, train={**TOY, "grad_accum": 2}, data={"shards": str(shards)},
                                      checkpoint={"every_steps": 3, "keep_last": 2}))
    train(one, tmp / "one")
    two = toy_config(shards, train={**TOY, "grad_accum": 1, "strategy": "fsdp"}, data={"shards": str(shards)},
                     checkpoint={"every_steps": 3, "keep_last": 2})
    _launch("torchrun", "toy", write_config(tmp / "two.yaml", two), tmp / "two")
    yield tmp, shards, two
    mp.undo()


@pytest.mark.slow
def test_two_fsdp_processes_match_one_with_doubled_accumulation(toy_runs):
    tmp, _, _ = toy_runs
    rec = json.loads((tmp / "two" / "run.json").read_text())
    assert rec["strategy"] == "fsdp" and rec["world_size"] == 2 and rec["global_batch"] == 4
    assert rec["counts"] == {"samples": 24, "skipped": 0, "skipped_by_reason": {}}
    one, two = _rows(tmp / "one"), _rows(tmp / "two")
    assert [r[0] for r in two] == list(range(1, 7))
    assert [r[1] for r in two] == pytest.approx([r[1] for r in one], rel=1e-5)
    assert [r[2] for r in two] == pytest.approx([r[2] for r in one], rel=1e-5)  # clipped on the global norm
    assert two[-1][1] < two[0][1] / 2  # it learns
    _same_weights(tmp / "one" / "final" / "model.safetensors", tmp / "two" / "final" / "model.safetensors", 1e-5)
    # the checkpoint is sharded: no full weights; each weight and Adam moment in 2 row blocks, one per rank
    from torch.distributed.checkpoint import FileSystemReader

    ck = tmp / "two" / "ckpt-6"
    assert json.loads((ck / "state.json").read_text())["format"] == "sharded"
    assert not (ck / "trainable.safetensors").exists() and not (ck / "optimizer.pt").exists()
    assert sorted(p.name for p in (ck / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    meta = FileSystemReader(str(ck / "sharded")).read_metadata().state_dict_metadata
    for key in ("model.fc1.weight", "optim.state.fc1.weight.exp_avg", "optim.state.fc2.weight.exp_avg_sq"):
        assert list(meta[key].size) == ([16, 64] if "fc1" in key else [64, 16])
        rows = list(meta[key].size)[0]
        assert sorted((list(c.offsets), list(c.sizes)) for c in meta[key].chunks) == [
            ([0, 0], [rows // 2, list(meta[key].size)[1]]), ([rows // 2, 0], [rows // 2, list(meta[key].size)[1]])]


@pytest.mark.slow
def test_fsdp_resume_through_accelerate_continues_the_loss_curve(toy_runs):
    """Stopped at step 3 (torchrun, strategy fsdp), resumed through `accelerate launch` with the
    shipped FSDP config and a config saying `ddp`: the launch makes it fsdp (a ddp run would refuse
    the sharded checkpoint), and steps 4-6 are those of the uninterrupted run."""
    tmp, shards, two = toy_runs
    cut = write_config(tmp / "cut.yaml", {**two, "train": {**two["train"], "max_steps": 3}})
    _launch("torchrun", "toy", cut, tmp / "cut")
    as_ddp = write_config(tmp / "as_ddp.yaml", {**two, "train": {**two["train"], "strategy": "ddp"}})
    proc = _launch("accelerate", "toy", as_ddp, tmp / "cut", "--resume")
    assert "accelerate FSDP launch (ACCELERATE_USE_FSDP): train.strategy ddp -> fsdp" in proc.stderr
    rec = json.loads((tmp / "cut" / "run.json").read_text())
    assert rec["resumed_from"] == "ckpt-3" and rec["strategy"] == "fsdp" and rec["step"] == 6
    full, resumed = _rows(tmp / "two"), _rows(tmp / "cut")
    assert [r[0] for r in resumed] == list(range(1, 7))
    for a, b in zip(full, resumed):
        assert b[1] == pytest.approx(a[1], abs=1e-7) and b[2] == pytest.approx(a[2], abs=1e-7), f"step {a[0]}"
    _same_weights(tmp / "two" / "final" / "model.safetensors", tmp / "cut" / "final" / "model.safetensors", 1e-7)


@pytest.mark.slow
def test_ar_stage_under_fsdp_matches_one_process(tmp_path):
    """The tiny AR model: LLM decoder layers as units, the frozen ViT whole; 3 steps of 2 processes x
    1 sample vs 1 process x 2 accumulated samples."""
    from ar_fixtures import scenes_run

    base = {"stage": "ar", "model": {"path": "tiny"}, "data": {"shards": str(scenes_run() / "data")},
            "train": {"seed": 0, "max_steps": 3, "batch_size": 1, "lr": 1e-3, "warmup_steps": 1,
                      "max_grad_norm": 1.0},
            "checkpoint": {"every_steps": 3, "keep_last": 1}, "log": {"every_steps": 1}}
    torch.set_num_threads(1)
    train(config_from_dict({**base, "train": {**base["train"], "grad_accum": 2}}), tmp_path / "one")
    cfg = write_config(tmp_path / "two.yaml", {**base, "train": {**base["train"], "strategy": "fsdp"}})
    proc = _launch("torchrun", "ar", cfg, tmp_path / "two")
    assert "FSDP over 2 processes: 2 Qwen2_5_VLDecoderLayer units + the root" in proc.stderr
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r[1] for r in two] == pytest.approx([r[1] for r in one], rel=1e-5)
    assert [r[2] for r in two] == pytest.approx([r[2] for r in one], rel=1e-4)
    _same_weights(tmp_path / "one" / "final" / "model.safetensors", tmp_path / "two" / "final" / "model.safetensors",
                  1e-4)
    w = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    from ar_fixtures import tiny_ar

    start = tiny_ar().state_dict()
    vit = [k for k in w if ".visual." in k]
    assert vit and all(torch.equal(w[k], start[k]) for k in vit)  # frozen, kept whole, saved unchanged
    assert not torch.equal(w["vision_head.weight"], start["vision_head.weight"])


@pytest.mark.slow
def test_edit_decoder_under_fsdp_matches_ddp(tmp_path):
    """The tiny editing decoder (FLUX double and single blocks and the merger's Qwen2.5-VL layer as
    units, VAE and CLIP whole): 2 FSDP processes give DDP's losses, gradient norms and weights.
    (Against DDP, not 1 process: flow matching draws noise per rank, and DDP's ranks draw as FSDP's.)
    diffusers' FluxSingleTransformerBlock returns views, which FSDP2 warns about (an in-place op on
    them would skip its backward hook); the equality here shows the stock forward does none."""
    from decoder_fixtures import scenes_samples, write_shards, write_store

    samples = scenes_samples(8)
    write_store(tmp_path / "emb", samples)
    cfg = {"stage": "edit-decoder", "model": {"profile": "tiny"},
           "data": {"shards": str(write_shards(tmp_path / "data", samples)), "embeddings": str(tmp_path / "emb"),
                    "shuffle_window": 2},
           "train": {"seed": 0, "max_steps": 3, "batch_size": 1, "lr": 1e-3, "warmup_steps": 1},
           "checkpoint": {"every_steps": 3, "keep_last": 1}, "log": {"every_steps": 1}}
    runs = {}
    for strategy in ("ddp", "fsdp"):
        path = write_config(tmp_path / f"{strategy}.yaml", {**cfg, "train": {**cfg["train"], "strategy": strategy}})
        runs[strategy] = _launch("torchrun", "edit-decoder", path, tmp_path / strategy)
    assert ("FSDP over 2 processes: 1 Qwen2_5_VLDecoderLayer, 1 FluxSingleTransformerBlock, "
            "1 FluxTransformerBlock units + the root") in runs["fsdp"].stderr
    ddp, fsdp = _rows(tmp_path / "ddp"), _rows(tmp_path / "fsdp")
    assert [r[0] for r in fsdp] == [1, 2, 3]
    assert [v for r in fsdp for v in r[1:]] == pytest.approx([v for r in ddp for v in r[1:]], rel=1e-5)
    files = sorted(p.relative_to(tmp_path / "ddp") for p in (tmp_path / "ddp" / "final").rglob("*.safetensors"))
    assert len(files) == 2  # decoder (adapter-side modules) + dit/
    for f in files:
        _same_weights(tmp_path / "ddp" / f, tmp_path / "fsdp" / f, 1e-4)


def test_strategy_resolution(monkeypatch, caplog):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert resolve_strategy("ddp", 2) == "ddp" and resolve_strategy("fsdp", 2) == "fsdp"
    with caplog.at_level("WARNING", logger="nexus_gen.train.train_sharding"):
        assert resolve_strategy("fsdp", 1) == "ddp"
    assert "train.strategy fsdp with 1 process: nothing to shard over" in caplog.text
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets for an FSDP config
    assert resolve_strategy("ddp", 2) == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="accelerate DeepSpeed config .*shards with FSDP, not DeepSpeed"):
        resolve_strategy("ddp", 2)


def test_bad_fsdp_set_ups_fail_before_training(tmp_path, monkeypatch):
    register_toy(monkeypatch)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    shards = write_toy_shards(tmp_path / "data", editing=8, other=0, tasks=("editing",))
    with pytest.raises(TrainConfigError, match="train: strategy fsdp with lora: not supported"):
        config_from_dict(toy_config(shards, train={"strategy": "fsdp", "lora": {"r": 2}}))
    with pytest.raises(TrainConfigError, match=r"train.strategy: 'zero3' is not allowed; expected 'ddp' or 'fsdp'"):
        config_from_dict(toy_config(shards, train={"strategy": "zero3"}))
    # a full (DDP) checkpoint resumed under FSDP, and the other way round: refused (2 processes:
    # the checkpoint's state says it was written by 2, as the config's hash requires)
    cfg = config_from_dict(toy_config(shards, train={"max_steps": 2}))
    train(cfg, tmp_path / "run")
    state_file = tmp_path / "run" / "ckpt-2" / "state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "config_hash": cfg.config_hash(2),
                                      "hashed_fields": cfg.hashed_fields(2)}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainError, match="ckpt-2 holds full weights .*resume it with train.strategy ddp"):
        preflight(config_from_dict(toy_config(shards, train={"max_steps": 2, "strategy": "fsdp"})), tmp_path / "run",
                  resume=True)
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "format": "sharded"}))
    with pytest.raises(TrainError, match="ckpt-2 holds sharded weights .*an FSDP.*resume it with train.strategy fsdp"):
        preflight(config_from_dict(toy_config(shards, train={"max_steps": 2})), tmp_path / "run", resume=True)


def test_shard_units_that_name_no_module_fail_clearly():
    from nexus_gen.train.train_sharding import shard_model

    with pytest.raises(ValueError, match=r"the toy stage's shard units \['Block'\] name no module of its model "
                                         r"\(Sequential; its module classes include \['Linear', 'Sequential'\]\)"):
        shard_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), ("Block",), torch.device("cpu"), "fp32", "toy")


def test_the_stages_shard_units_are_the_library_block_classes():
    """The unit names are real classes of transformers / diffusers (the blocks of the stages' models)."""
    from diffusers.models.transformers import transformer_flux
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    from nexus_gen.train.stages import stage_class

    assert stage_class("ar").shard_units == ("Qwen2_5_VLDecoderLayer",)
    assert stage_class("gen-decoder").shard_units == ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    assert stage_class("edit-decoder").shard_units == ("FluxTransformerBlock", "FluxSingleTransformerBlock",
                                                       "Qwen2_5_VLDecoderLayer")
    for name in ("FluxTransformerBlock", "FluxSingleTransformerBlock"):
        assert isinstance(getattr(transformer_flux, name), type)
    assert isinstance(modeling_qwen2_5_vl.Qwen2_5_VLDecoderLayer, type)
    from ar_fixtures import tiny_ar

    names = [type(m).__name__ for m in tiny_ar().modules()]
    assert names.count("Qwen2_5_VLDecoderLayer") == tiny_ar().config.text_config.num_hidden_layers
