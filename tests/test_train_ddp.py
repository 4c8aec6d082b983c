"""DDP: `torchrun --nproc_per_node 2` (gloo, CPU) through the CLI matches one process with doubled
gradient accumulation (the same global batch of the same samples), loss per step and final weights.
(Without skipped samples: a rank that skips one takes the next of its own slice, so with skips the
global batches differ slightly from one process's.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import register_toy, toy_config, write_config, write_toy_shards

from nexus_gen.train.train_config import config_from_dict
from nexus_gen.train.train_loop import train
from nexus_gen.train.train_metrics import read_metrics


@pytest.mark.slow
def test_two_processes_match_one_with_doubled_accumulation(tmp_path, monkeypatch):
    register_toy(monkeypatch)
    shards = write_toy_shards(tmp_path / "data", editing=24, other=4)
    steps = dict(max_steps=5, batch_size=2)
    one = config_from_dict(toy_config(shards, train={**steps, "grad_accum": 2}, data={
        "shards": str(shards)}))
    rec1 = train(one, tmp_path / "one")
    cfg2 = write_config(tmp_path / "two.yaml", toy_config(shards, train={**steps, "grad_accum": 1}, data={
        "shards": str(shards)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "flows.cli", "train", "toy", str(cfg2), "-o", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"status"')]
    assert len(summary) == 1 and summary[0]["status"] == "complete"  # rank 0 prints, rank 1 does not
    rec2 = json.loads((tmp_path / "two" / "run.json").read_text())
    assert rec2["world_size"] == 2 and rec2["global_batch"] == rec1["global_batch"] == 4
    assert rec2["counts"] == rec1["counts"] == {"samples": 20, "skipped": 0, "skipped_by_reason": {}}  # summed
    l1 = [(m["step"], m["loss"]) for m in read_metrics(tmp_path / "one")]
    l2 = [(m["step"], m["loss"]) for m in read_metrics(tmp_path / "two")]
    assert [s for s, _ in l1] == [s for s, _ in l2] == [1, 2, 3, 4, 5]
    assert [v for _, v in l2] == pytest.approx([v for _, v in l1], rel=1e-5)
    w1 = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-4)
    state = json.loads((tmp_path / "two" / "ckpt-5" / "state.json").read_text())
    assert len(state["data"]) == 2 and all(d["epoch"] == 0 for d in state["data"])  # every rank's position
