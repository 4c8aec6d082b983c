"""`nexus-gen train`: end to end through the Prefect flow with the toy stage (registered for the
test through NEXUS_GEN_TRAIN_STAGES), --resume, and the errors printed before anything starts."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner
from train_fixtures import toy_stage, toy_config, write_config, write_toy_shards  # noqa: F401 (toy_stage: an autouse fixture)

from flows.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_toy_shards(tmp_path_factory.mktemp("cli") / "data", editing=24, other=4)


def _last_json(output: str) -> dict:
    """The command's JSON summary line (a stale log handler of an earlier in-process run may
    print after it)."""
    return json.loads([line for line in output.splitlines() if line.startswith('{"status"')][-1])


def _run(*args: str):
    return runner.invoke(app, ["train", *map(str, args)], catch_exceptions=False)


@pytest.mark.slow
def test_cli_trains_through_the_flow_and_resumes(tmp_path, shards, prefect_harness):
    cfg = write_config(tmp_path / "toy.yaml", toy_config(shards, train={"max_steps": 4}))
    res = _run("toy", cfg, "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output
    last = _last_json(res.output)
    assert last["status"] == "complete" and last["step"] == 4 and last["samples"] == 16
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "loss.png").is_file()
    from prefect.artifacts import Artifact

    art = Artifact.get("train-summary")
    assert art is not None and "# train `toy` (complete)" in art.data and "data:image/png;base64," in art.data
    again = _run("toy", cfg, "-o", tmp_path / "run")
    assert again.exit_code == 2 and "already holds a training run (checkpoint ckpt-4); use --resume" in again.output
    more = _run("toy", cfg, "-o", tmp_path / "run", "--resume", "--max-steps", 6)
    assert more.exit_code == 0, more.output
    assert "resuming from ckpt-4" in more.output and _last_json(more.output)["step"] == 6


def test_cli_errors_before_anything_starts(tmp_path, shards):
    cfg = write_config(tmp_path / "toy.yaml", toy_config(shards))
    res = _run("ar", cfg, "-o", tmp_path / "run")
    assert res.exit_code == 2
    assert f"{cfg}: stage: the config trains 'toy', but the command says 'ar'" in res.output
    res = _run("painter", cfg, "-o", tmp_path / "run")
    assert res.exit_code == 2 and "unknown stage 'painter'; allowed: ar, gen-decoder, edit-decoder, vae, toy" in res.output
    bad = write_config(tmp_path / "bad.yaml", toy_config(shards, train={"lr": "fast"}))
    res = _run("toy", bad, "-o", tmp_path / "run")
    assert res.exit_code == 2 and "bad.yaml: train.lr: Input should be a valid number" in res.output
    res = _run("toy", cfg)
    assert res.exit_code == 2 and "no output folder: give -o DIR or output_dir in the config" in res.output
    res = _run("toy", cfg, "-o", tmp_path / "run", "--resume")
    assert res.exit_code == 2 and "no checkpoint to resume from" in res.output
    gen_only = write_toy_shards(tmp_path / "gen", editing=0, other=3, tasks=("generation",))
    res = _run("toy", cfg, "-o", tmp_path / "run", "--shards", gen_only)
    assert res.exit_code == 2 and "hold no sample of the tasks stage 'toy' learns from (editing)" in res.output
    assert not (tmp_path / "run").exists()  # nothing written by any of them
