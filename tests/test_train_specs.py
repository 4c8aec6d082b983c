"""The shipped train configs and the accelerate FSDP config: they parse, name known stages and
loop keys, carry the reference's hyperparameters, and accelerate reads the FSDP file as FSDP."""
from __future__ import annotations

import os

import pytest
import yaml
from conftest import REPO

from nexus_gen.train.train_config import TrainConfig
from nexus_gen.train.train_loop import TrainError, preflight
from nexus_gen.train.train_sharding import resolve_strategy

SPECS = REPO / "datasets_spec" / "train"
STAGE_FILES = {"ar": "ar", "gen-decoder": "gen_decoder", "edit-decoder": "edit_decoder"}


@pytest.mark.parametrize("stage, profile", [(s, p) for s in STAGE_FILES for p in ("tiny", "paper")])
def test_shipped_configs_validate(stage, profile):
    data = yaml.safe_load((SPECS / f"{STAGE_FILES[stage]}_{profile}.yaml").read_text())
    cfg = TrainConfig.model_validate(data)  # the loop's sections and the stage name (not the stage's own)
    assert cfg.stage == stage
    t = cfg.train
    if profile == "tiny":
        assert t.max_steps and 20 <= t.max_steps <= 60 and t.device == "cpu" and t.precision == "fp32"
    else:
        assert t.lr == 1e-5 and t.precision == "bf16" and t.device == "cuda"


def test_paper_hyperparameters_are_the_references():
    ar = TrainConfig.model_validate(yaml.safe_load((SPECS / "ar_paper.yaml").read_text()))
    assert ar.train.epochs == 2 and ar.train.warmup_ratio == 0.05 and ar.data.stage_keys()["max_length"] == 4096
    assert ar.train.batch_size * 8 * ar.train.grad_accum == 128  # global batch 128 on 8 GPUs
    assert ar.model["token_loss_weight"] == ar.model["image_loss_weight"] == 3.0
    for name in ("gen_decoder_paper.yaml", "edit_decoder_paper.yaml"):
        dec = TrainConfig.model_validate(yaml.safe_load((SPECS / name).read_text()))
        assert dec.train.batch_size * dec.train.grad_accum == 16 and dec.train.warmup_steps == 100
        assert dec.model["profile"] == "paper"  # FLUX.1-dev at 512 x 512


def test_accelerate_reads_the_fsdp_config_as_fsdp(monkeypatch):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(SPECS / "accelerate_fsdp.yaml"), "x.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and args.num_processes == 8 and args.mixed_precision == "bf16"
    env = prepare_multi_gpu_env(args)
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD" and env["FSDP_VERSION"] == "2"
    for k, v in env.items():
        if k.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(k, v)
    plugin = FullyShardedDataParallelPlugin()  # reads the launcher's environment, as in the launched process
    assert plugin.transformer_cls_names_to_wrap == ["FluxTransformerBlock", "FluxSingleTransformerBlock"]
    assert plugin.activation_checkpointing and plugin.fsdp_version == 2
    # and our loop shards under it (FSDP; a config saying ddp does not silently run unsharded)
    cfg = TrainConfig.model_validate(yaml.safe_load((SPECS / "ar_tiny.yaml").read_text()))
    assert os.environ["ACCELERATE_USE_FSDP"] == "true" and cfg.train.strategy == "ddp"
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert resolve_strategy(cfg.train.strategy, 8) == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # DeepSpeed is still refused, before any work
    with pytest.raises(TrainError, match="accelerate DeepSpeed config .*shards with FSDP, not DeepSpeed"):
        preflight(cfg, "unused")
