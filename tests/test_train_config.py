"""Bad train configs fail with a message naming the file, the key and what is allowed, before
any model is built or any training file written."""
from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import toy_stage, toy_config, write_config, write_toy_shards  # noqa: F401 (toy_stage: an autouse fixture)

from nexus_gen.train import stages
from nexus_gen.train.train_config import TrainConfigError, config_from_dict, load_train_config


@pytest.fixture
def shards(tmp_path_factory) -> Path:
    return write_toy_shards(tmp_path_factory.mktemp("cfg") / "data", editing=8, other=4)


def _error(tmp_path: Path, cfg: dict) -> str:
    path = write_config(tmp_path / "bad.yaml", cfg)
    with pytest.raises(TrainConfigError) as e:
        load_train_config(path)
    assert str(path) in str(e.value)
    return str(e.value)


def test_unknown_stage_lists_the_stages(tmp_path, shards):
    msg = _error(tmp_path, toy_config(shards, stage="diffusion"))
    assert "stage: unknown stage 'diffusion'; allowed: ar, gen-decoder, edit-decoder, vae, toy" in msg


def test_unknown_keys_are_named_with_their_dotted_path(tmp_path, shards):
    msg = _error(tmp_path, toy_config(shards, train={"learning_rate": 1e-3}, extra_top=1))
    assert "train.learning_rate: unknown key" in msg
    assert "extra_top: unknown key" in msg


@pytest.mark.parametrize("section, value, expected", [
    ({"lr": -1}, None, "train.lr: Input should be greater than 0"),
    ({"precision": "fp16"}, None, "train.precision: 'fp16' is not allowed; expected 'fp32' or 'bf16'"),
    ({"betas": [0.9, 1.5]}, None, "train.betas: each beta must be in [0, 1), got [0.9, 1.5]"),
    ({"max_steps": 5, "epochs": 2}, None, "train: give max_steps or epochs, not both"),
    ({"warmup_steps": 5, "warmup_ratio": 0.1}, None, "train: give warmup_steps or warmup_ratio, not both"),
    ({"batch_size": 0}, None, "train.batch_size: Input should be greater than 0"),
    ({"schedule": "linear"}, None, "train.schedule: 'linear' is not allowed; expected 'cosine' or 'constant'"),
])
def test_bad_train_values(tmp_path, shards, section, value, expected):
    assert expected in _error(tmp_path, toy_config(shards, train=section))


def test_the_stage_validates_its_own_sections_during_config_validation(tmp_path, shards):
    msg = _error(tmp_path, toy_config(shards, model={"hiddn": 3}))
    assert "stage 'toy' rejects its model:/data: sections: model.hiddn: unknown key; allowed: size, hidden" in msg
    msg = _error(tmp_path, toy_config(shards, data={"shards": str(shards), "colour": 1}))
    assert "data.colour: unknown key; allowed: reject_every, nan_ids" in msg


def test_the_stage_sees_data_without_the_loops_keys(shards):
    cfg = config_from_dict(toy_config(shards, data={"shards": str(shards), "reject_every": 3, "split": "train"}))
    assert cfg.stage_obj().data_cfg == {"reject_every": 3}


def test_missing_shards(tmp_path, shards):
    msg = _error(tmp_path, toy_config(tmp_path / "nowhere"))
    assert f"data.shards: no shards at {tmp_path / 'nowhere'}" in msg
    msg = _error(tmp_path, toy_config(shards, data={"shards": str(shards), "split": "validation"}))
    assert "has no `validation-*.parquet` shards" in msg and "set data.split" in msg


def test_relative_shards_resolve_against_the_current_folder(tmp_path, shards, monkeypatch):
    monkeypatch.chdir(shards.parent)
    cfg = load_train_config(write_config(tmp_path / "cfgs" / "c.yaml", toy_config(shards.name)))
    assert all(Path(p).is_absolute() and Path(p).parent == shards for p in cfg.data.shard_list())
    assert [Path(p).name for p in cfg.data.shard_list()] == sorted(p.name for p in shards.glob("train-*.parquet"))


def test_a_stage_module_that_is_not_there_yet(tmp_path, shards, monkeypatch):
    monkeypatch.setitem(stages.STAGES, "ar", "nexus_gen.train.no_such_stage_module:ARStage")
    msg = _error(tmp_path, toy_config(shards, stage="ar"))
    assert "stage 'ar': its module nexus_gen.train.no_such_stage_module is not installed" in msg


def test_lora_targets_default_to_the_stages(shards):
    cfg = config_from_dict(toy_config(shards, train={"lora": {"r": 2}}))
    assert cfg.lora_targets() == ["fc1", "fc2"]
    cfg = config_from_dict(toy_config(shards, train={"lora": {"r": 2, "targets": ["fc1"]}}))
    assert cfg.lora_targets() == ["fc1"]


def test_overrides_and_the_hash_of_what_matters(tmp_path, shards):
    path = write_config(tmp_path / "c.yaml", toy_config(shards, train={"max_steps": None, "epochs": 2}))
    cfg = load_train_config(path, {"train.max_steps": 3})
    assert cfg.train.max_steps == 3 and cfg.train.epochs is None
    base = config_from_dict(toy_config(shards))
    same = config_from_dict(toy_config(shards, train={"lr": 1.0, "max_steps": 99}, log={"every_steps": 7}))
    assert base.config_hash(1) == same.config_hash(1)
    for other in (toy_config(shards, train={"batch_size": 2}), toy_config(shards, model={"hidden": 8}),
                  toy_config(shards, train={"seed": 1}), toy_config(shards, train={"lora": {"r": 2}})):
        assert config_from_dict(other).config_hash(1) != base.config_hash(1)
    assert base.config_hash(2) != base.config_hash(1)
