"""The showcase plan: phases, the split of the wall-clock budget, data and evaluation sizes.

Everything scales with `minutes` (M, the whole budget: data, training, evaluation). Training
phases get fractions of what is left after the fixed costs (building data, evaluations), and each
trains in segments (resumed from the loop's own checkpoints) so evaluations can sit between them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# fractions of the training time (after data and evaluations are set aside). Measured at --minutes 25
# (2 shared cores): the AR reached 89 steps and QA 0.0; 700 steps give QA 0.50; the x8 VAE at 144 px
# reconstructs to GenEval-scenes 0.07 after 137 steps and 0.0 after 299: the AR gets the largest share
# With a trainable ViT and 4 QA turns per sample (this session) QA reached 0.54 after 400 steps and
# was rising; it is the number training moves most, so the AR gets the largest share
TRAIN_SPLIT = {"vae": 0.15, "ar": 0.4, "gen_decoder": 0.25, "edit_decoder": 0.2}
# phases in order; `eval_*` are evaluations at checkpoints, `precompute` after the AR model
PHASES = ("data", "vae", "eval_untrained", "ar", "ar_baseline", "precompute", "gen_decoder", "edit_decoder",
          "eval_final", "eval_baseline", "report")
# only with --ablation: the AR trained with model.prefill: false and its pipeline (prefill false at
# inference, the same decoders) evaluated on the same three numbers
ABLATION_PHASES = ("ar_baseline", "eval_baseline")
EVAL_SEED = 0               # evaluation draws: scenes seeds EVAL_SEED .. EVAL_SEED + n (edits, QA)
TRAIN_SCENES_SEED = 1700    # the build recipe's seed (per-scene seeds are hashes of it, checked disjoint)
PROMPT_RENDER_SEED = 1_000_000  # renders of the training prompts start here (eval renders use small seeds)
HELD_OUT_TAGS = ("position", "color_attr")
IMAGE_SIZE = 144            # px: geneval-scenes refuses < 136 (its pixel detector's measured minimum)
# The scenes VAE. Measured with bench/vae_scenes.py at 144 px (GenEval-scenes of encode -> decode
# reconstructions, 48 prompts; ground truth 0.96; 1 torch thread, 7 minutes of training):
#   x8 [8, 16, 32, 32], L1, whole images, lr 1e-3:                              0.04 (PSNR 23.1)
#   x8 [16, 32, 32, 32], L1 + MSE + hard pixels, 72 px crops, lr 2e-3:          0.40 (PSNR 23.9)
#   x4 [16, 32, 32],     L1 + MSE + hard pixels, 72 px crops, lr 2e-3:  3.5 min 0.33, 7 min 0.67 (PSNR 30.0)
# x4: 144 px -> a 36 x 36 latent -> 324 DiT tokens (2x2 packing)
VAE_BLOCKS = [16, 32, 32]
VAE_MODEL = {"init": "tiny", "size": IMAGE_SIZE, "latent_channels": 16, "block_out_channels": VAE_BLOCKS,
             "layers_per_block": 1, "norm_num_groups": 8, "l1_weight": 1.0, "mse_weight": 1.0,
             "hard_weight": 1.0, "hard_fraction": 0.05, "kl_weight": 1.0e-4}
VAE_DATA = {"fit": "crop", "crop": 72}
VAE_LR = 2e-3
# The decoders' DiT: the tiny FLUX's (82 k parameters, 2 heads of 16) is too small to learn; a fresh
# seeded one of 1.9 M (2 double + 2 single blocks, 4 heads of 32): 0.55 s a step at batch 16 on 2
# threads with the x4 VAE (the tiny one: 0.35 s, most of it the VAE encoding the targets)
DIT_SIZE = {"num_layers": 2, "num_single_layers": 2, "num_attention_heads": 4, "attention_head_dim": 32}


@dataclass
class ShowcasePlan:
    """What one showcase run does; saved as OUT/plan.json (a rerun must agree with it)."""

    out: str
    minutes: float
    device: str = "cpu"
    ablation: bool = False
    threads: int = 2
    # data
    scenes: int = 0
    edits: int = 0
    prompt_renders: int = 0
    # evaluation sizes (denominators)
    geneval_prompts: int = 0
    geneval_images: int = 1
    edit_items: int = 0
    qa_scenes: int = 0
    decode_steps: int = 8
    segments: int = 3
    batch: dict[str, int] = field(default_factory=dict)
    train_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.out)

    def to_json(self) -> dict[str, Any]:
        """The plan as a plain dict (plan.json)."""
        return asdict(self)


def make_plan(out: str, minutes: float, device: str = "cpu", ablation: bool = False,
              threads: int = 2) -> ShowcasePlan:
    """The plan for a budget of `minutes` (must be > 0): data and evaluation sizes grow with it,
    the rest of the time goes to training by TRAIN_SPLIT."""
    if not minutes > 0:
        raise ValueError(f"--minutes {minutes}: must be > 0")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device {device!r}: use cpu, cuda or cuda:N")
    m = float(minutes)
    small = m < 10
    p = ShowcasePlan(out=str(out), minutes=m, device=device, ablation=ablation, threads=threads)
    p.scenes = 150 if small else int(min(3000, 80 * m))
    p.edits = max(20, p.scenes // 2)
    p.prompt_renders = 2 if small else int(min(40, 2 + m))
    p.geneval_prompts = 12 if small else int(min(96, 24 + m))
    p.geneval_images = 1
    p.edit_items = 8 if small else int(min(80, 20 + m))
    p.qa_scenes = 3 if small else int(min(30, 6 + m // 4))
    p.decode_steps = 4 if small else 10
    p.segments = 2 if small else 3
    if m < 2:  # a smoke run (tests): the smallest data and evaluations that still exercise every phase
        p.scenes, p.edits, p.prompt_renders = 40, 20, 1
        p.geneval_prompts, p.edit_items, p.qa_scenes, p.decode_steps = 6, 4, 1, 2
    p.batch = {"vae": 8, "ar": 8, "gen_decoder": 16, "edit_decoder": 8}
    # fixed costs measured on 2 shared CPU cores: the build (~40 scenes / s with edits and QA),
    # evaluations (untrained, segment ends, trained) about 30 % of the budget; what is left trains
    fixed = 30 + p.scenes / 40 + 0.3 * m * 60
    # a smoke run trains each stage just past its calibration segment (every step still a real one)
    left = (24.0 if m < 2 else max(m * 60 - fixed, 60.0)) * (0.8 if ablation else 1.0)
    p.train_seconds = {k: round(left * f, 1) for k, f in TRAIN_SPLIT.items()}
    if ablation:  # the baseline AR trains as long as the prefilled one, from the 20 % set aside
        p.train_seconds["ar_baseline"] = p.train_seconds["ar"]
    return p
