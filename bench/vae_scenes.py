"""Bench (not a test): how good can a scenes VAE's latent be, for the CPU showcase (issue 17)?

1. builds scenes data with the build flow (generation samples of `--scenes` random scenes at
   `--size` px; unless `--shards` names a build);
2. trains the `vae` stage through the project's loop (`nexus-gen train`'s `train()`) for the
   largest of `--minutes` (wall-clock from the start of training), saving the VAE at each budget
   point on the way (a constant lr after warmup: the budget, not a step count, ends the run);
3. at each budget point (and untrained, at 0) measures the representation's ceiling:
   GenEval-scenes (the pixel detector, the ordinary scorer) of the ground-truth generator's images
   passed through encode -> decode (posterior mean), against the ground truth itself, on a
   tag-balanced cut of the scenes prompts at `--size` px, plus PSNR and L1 of the reconstructions.

Prints a JSON line per point and, last, the whole result (also written to OUT/results.json).

    python bench/vae_scenes.py --out runs/bench/vae_x4 --minutes 2 5 10 --blocks 16 32 64
    python bench/vae_scenes.py --out runs/bench/vae_x8 --minutes 2 5 10 --blocks 16 32 64 64

GenEval-scenes' own CLI refuses sizes under 136 px (its bar is the ground truth >= 0.98); this
bench calls the same generate and score steps directly at 64 px, where the ground truth scores
~0.87 (issue 17), so the ground-truth row is the ceiling to compare with.

Measured (2 shared CPU cores, load 4-7, two runs at a time, 1 torch thread each; 3000 scenes,
120 prompts x 2 images; ground truth 0.868; a difference of ~0.03 is one or two images):
  x4 (16x16x16), batch 16, lr 1e-3, L1:      2/5/10/15 min -> 0.00/0.00/0.02/0.01, PSNR 19.7/22.6/24.1/24.8
  x8 (8x8x16),   batch 16, lr 1e-3, L1:      2/5/10/15 min -> 0.00/0.00/0.03/0.01, PSNR 19.4/20.0/23.5/24.1
  x4, batch 8, lr 2e-3, L1 + MSE:            5/10/15 min   -> 0.03/0.03/0.06,      PSNR 24.0/24.3/24.3
  x8, batch 8, lr 2e-3, L1 + MSE:            5/10/15 min   -> 0.02/0.04/0.02,      PSNR 23.4/23.5/24.1
  x2 (32x32x16), batch 8, lr 2e-3, L1 + MSE: 5/10 min      -> 0.01/0.10,           PSNR 26.1/27.6
1-5 s a step (batch 8-16) on the loaded machine: 15 minutes are 340-630 steps, and the
reconstructions are still soft blobs in drifting colours (backgrounds first), which the pixel
detector does not find.

Measured later on a quiet machine at 144 px (the showcase's size; its 3000-scene build, 48 prompts
x 1 image, ground truth 0.958; two runs at a time, 1 thread each, batch 8):
  x8 [8, 16, 32, 32], L1, whole images, lr 1e-3:        3.5/7 min -> 0.04/0.04, PSNR 20.2/23.1
  x8 [16, 32, 32, 32] --crop 72 --hard-weight 1 --mse-weight 1 --lr 2e-3:
                                                       3.5/7 min -> 0.17/0.40, PSNR 23.4/23.9
  x4 [16, 32, 32]     --crop 72 --hard-weight 1 --mse-weight 1 --lr 2e-3:
                                                       3.5/7 min -> 0.33/0.67, PSNR 25.3/30.0
Crops make a step 2-4x cheaper (the network is convolutional and encodes whole images after), and
the worst 5 % of pixels (outlines, small objects) stop being outvoted by the background."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("bench.vae_scenes")


class BudgetReached(Exception):
    """Raised from the step callback to end a time-budgeted run."""


def build_scenes(out: Path, scenes: int, size: int, seed: int) -> Path:
    """A build of `scenes` random scenes (generation samples) -> its data folder."""
    import yaml

    from nexus_gen.edit.build import build

    data = out / "build" / "data"
    if data.is_dir() and any(data.glob("train-*.parquet")):
        return data
    recipe = {"name": "vae-scenes", "seed": seed,
              "sources": [{"kind": "scenes", "name": "scenes", "count": scenes, "size": size, "max_objects": 4}],
              "models": {"editor": "scenes", "detector": "scenes-pixel", "clip": "tiny", "dino": "tiny"},
              "scoring": {"metrics": ["l1"]}, "shard_size": 500,
              "outputs": {"generation": True, "understanding": False, "triplets": False},
              "languages": ["en"], "splits": {"train": 1.0}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    t = time.time()
    build(out / "recipe.yaml", out / "build")
    log.info("built %d scenes in %.1f s", scenes, time.time() - t)
    return data


class ReconstructionGenerator:
    """The ground-truth scenes renderer at `size` px, each image passed through the VAE
    (encode -> posterior mean -> decode); keeps PSNR and L1 of every image."""

    def __init__(self, vae: Any, size: int, model_id: str) -> None:
        self.vae, self.size, self.model_id = vae, size, model_id
        self.psnr: list[float] = []
        self.l1: list[float] = []

    def generate(self, metadata: dict[str, Any], seeds: Sequence[int]) -> list:
        from nexus_gen.models.scenes_vae import reconstruct
        from nexus_gen.scenes.prompts import render_prompt
        from nexus_gen.train.stage_vae import fit_images

        gt = [render_prompt(metadata, s, size=self.size).convert("RGB") for s in seeds]
        x = fit_images(gt, self.size)
        rec = reconstruct(self.vae, x)
        # the saved PNGs are uint8: measure what the scorer sees
        q = ((rec + 1) * 127.5).round().clamp(0, 255)
        ref = (x + 1) * 127.5
        for a, b in zip(q, ref):
            mse = float(((a - b) ** 2).mean())
            self.psnr.append(10 * math.log10(255 ** 2 / max(mse, 1e-10)))
            self.l1.append(float((a - b).abs().mean()) / 255)
        from PIL import Image

        return [Image.fromarray(a.permute(1, 2, 0).to(torch.uint8).numpy(), "RGB") for a in q]


def geneval_scenes(generator: Any, out: Path, limit: int, n_images: int) -> dict[str, Any]:
    """GenEval-scenes of `generator` on a tag-balanced cut of the scenes prompts -> summary."""
    from eval.geneval.generate import generate_images
    from eval.geneval.run import PROMPT_SETS, read_prompts, select_prompts
    from eval.geneval.score import score_folder
    from nexus_gen.scenes.detect import detect

    prompts = select_prompts(read_prompts(PROMPT_SETS["scenes"]), limit)
    generate_images(generator, prompts, out, n_images=n_images, base_seed=0)
    _, summary = score_folder(out, detect)
    return summary


def measure(name: str, vae: Optional[Any], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """GenEval-scenes (+ PSNR / L1 for a VAE) of one point."""
    from eval.geneval.generate import GroundTruthGenerator

    t = time.time()
    gen = GroundTruthGenerator(args.size) if vae is None else ReconstructionGenerator(vae, args.size, name)
    summary = geneval_scenes(gen, out / "geneval" / name, args.limit, args.n_images)
    tags = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    row: dict[str, Any] = {"point": name, "geneval_scenes": round(summary["overall"], 4),
                           "per_tag": {k: round(summary[k], 4) for k in tags if k in summary},
                           "n_images": summary["n_images"], "eval_seconds": round(time.time() - t, 1)}
    if vae is not None:
        row["psnr"] = round(sum(gen.psnr) / len(gen.psnr), 2)
        row["l1"] = round(sum(gen.l1) / len(gen.l1), 4)
    print(json.dumps(row), flush=True)
    return row


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the bench; returns the result dict (printed last as one JSON line)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, nargs="+", default=[2, 5, 10])
    p.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64], help="block_out_channels")
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--groups", type=int, default=8, help="norm_num_groups")
    p.add_argument("--kl-weight", type=float, default=1e-4)
    p.add_argument("--mse-weight", type=float, default=0.0)
    p.add_argument("--hard-weight", type=float, default=0.0, help="weight of the worst pixels' L1")
    p.add_argument("--hard-fraction", type=float, default=0.05)
    p.add_argument("--crop", type=int, default=None, help="train on crops of this side")
    p.add_argument("--latent-channels", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--scenes", type=int, default=4000)
    p.add_argument("--shards", type=Path, default=None, help="a build's data folder instead of building")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--limit", type=int, default=60, help="scenes prompts (tag-balanced)")
    p.add_argument("--n-images", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from nexus_gen.train.stage_vae import VAEStage
    from nexus_gen.train.train_config import config_from_dict
    from nexus_gen.train.train_loop import train

    out = args.out
    load0 = os.getloadavg()
    data = args.shards or build_scenes(out, args.scenes, args.size, seed=1000 + args.seed)
    model_cfg = {"size": args.size, "block_out_channels": args.blocks, "layers_per_block": args.layers_per_block,
                 "norm_num_groups": args.groups, "kl_weight": args.kl_weight, "mse_weight": args.mse_weight,
                 "hard_weight": args.hard_weight, "hard_fraction": args.hard_fraction,
                 "latent_channels": args.latent_channels}
    cfg = config_from_dict({
        "stage": "vae", "model": model_cfg, "data": {"shards": str(data), "crop": args.crop},
        "train": {"seed": args.seed, "max_steps": 10 ** 6, "batch_size": args.batch, "lr": args.lr,
                  "warmup_steps": 20, "schedule": "constant", "max_grad_norm": 1.0, "device": "cpu"},
        "checkpoint": {"every_steps": 10 ** 6}, "log": {"every_steps": 20}, "output_dir": str(out / "train")})
    stage: VAEStage = cfg.stage_obj()
    result: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "compression": stage.compression, "latent": [args.latent_channels, stage.latent_size, stage.latent_size],
                              "points": []}
    result["points"].append(measure("ground-truth", None, out, args))
    untrained = stage.build_model(torch.device("cpu")).vae.eval()
    result["points"].append({**measure("untrained", untrained, out, args), "minutes": 0, "steps": 0})

    budgets = sorted(args.minutes)
    built = stage.build_model
    holder: dict[str, Any] = {}

    def keep_model(device: torch.device) -> torch.nn.Module:
        holder["model"] = built(device)
        return holder["model"]

    stage.build_model = keep_model  # type: ignore[method-assign]
    start = time.time()
    snapshots: list[tuple[float, int, float, Path]] = []

    def on_step(step: int, row: dict[str, Any]) -> None:
        elapsed = time.time() - start
        while budgets and elapsed >= budgets[0] * 60:
            m = budgets.pop(0)
            folder = out / f"vae-{m:g}min"
            stage.save(holder["model"], folder)
            snapshots.append((m, step, elapsed, folder))
            log.info("budget %g min: step %d, loss %.4f -> %s", m, step, row["loss"], folder)
        if not budgets:
            raise BudgetReached

    try:
        train(cfg, progress=False, on_step=on_step)
    except BudgetReached:
        pass
    from nexus_gen.models.scenes_vae import load_scenes_vae

    for m, step, elapsed, folder in snapshots:
        row = measure(f"{m:g}min", load_scenes_vae(folder), out, args)
        stats = json.loads((folder / "vae_stats.json").read_text())
        result["points"].append({**row, "minutes": m, "steps": step, "s_per_step": round(elapsed / step, 3),
                                 "scaling_factor": stats["scaling_factor"], "shift_factor": stats["shift_factor"]})
    result["loadavg"] = {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in os.getloadavg()]}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
