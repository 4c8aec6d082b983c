"""`nexus-gen precompute` through its Prefect flow (the session's test server): the store it
writes holds every generation sample's target embedding, equal to the model's own ViT output,
and the same command again computes nothing."""
from __future__ import annotations

import json

import torch
from ar_fixtures import scenes_run, tiny_ar
from typer.testing import CliRunner

from flows.cli import app
from nexus_gen.data.shards import iter_samples
from nexus_gen.train.embedding_store import EmbeddingStore


def test_precompute_command_writes_the_store_and_resumes(tmp_path, prefect_harness):
    torch.set_num_threads(1)
    data = scenes_run() / "data"
    gen = [s for s in iter_samples(data) if s["task"] == "generation"]
    assert gen
    out = tmp_path / "emb"
    args = ["precompute", "gen", str(data), "--ar", "tiny", "-o", str(out), "--chunk-size", "4", "--batch-size", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    first = json.loads(res.stdout.strip().splitlines()[-1])  # stdout only: bars go to stderr
    assert first["embedded"] == len(gen) and first["computed"] == first["units"] == -(-len(gen) // 4)
    store = EmbeddingStore(out)
    assert sorted(store.ids()) == sorted(s["id"] for s in gen)
    # the target is the AR model's frozen ViT + merger of the output image (its last image)
    from io import BytesIO

    from PIL import Image

    model = tiny_ar()
    s = gen[0]
    image = Image.open(BytesIO(s["images"][-1]["bytes"])).convert("RGB")
    size = model.geometry["image_size"]
    with torch.no_grad():
        ref = model.image_embeddings([image], size, fit="crop")[0]
    assert torch.allclose(store.get(s["id"])["target"], ref, atol=1e-5)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.strip().splitlines()[-1])["computed"] == 0
