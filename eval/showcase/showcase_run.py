"""The showcase phases, each through the project's own library entry points: the build
(`nexus_gen.edit.build.build`), the training loop (`nexus_gen.train.train_loop.train`, the loop
`nexus-gen train` runs), the pre-compute (`nexus_gen.train.precompute.precompute`) and the three
benchmarks (`eval.geneval.run.run_geneval`, `eval.editing.edit_run.run`, the understanding steps)
on a saved `NexusGenPipeline` folder, named `nexus-gen:FOLDER` as a user would.

Resumable: OUT/state.json records finished phases, training segments and evaluation points; a
rerun skips what is recorded and the loop resumes from its checkpoints (`resume=True`)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

from eval.showcase.showcase_plan import (ABLATION_PHASES, DIT_SIZE, EVAL_SEED, HELD_OUT_TAGS, IMAGE_SIZE, PHASES,
                                         PROMPT_RENDER_SEED, TRAIN_SCENES_SEED, VAE_DATA, VAE_LR, VAE_MODEL, ShowcasePlan,
                                         make_plan)
from nexus_gen.data.shards import write_json_atomic

log = logging.getLogger(__name__)
STATE, PLAN = "state.json", "plan.json"
# questions per understanding sample: one ViT pass of a scene supervises 4 answers (measured: with
# one question per sample QA was still at chance on colour / presence / position after 1100 steps)
QA_TURNS = 4


class ShowcaseStopped(RuntimeError):
    """The run stopped on request after a phase (`stop_after`); a rerun continues."""


# ----- state
def _write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj, sort_keys=True)


class State:
    """OUT/state.json: finished phases, wall-clock seconds spent so far, evaluation points."""

    def __init__(self, root: Path) -> None:
        self.path = root / STATE
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else \
            {"done": [], "seconds": 0.0, "points": [], "segments": {}, "phase_seconds": {}}
        self.t0 = time.time()
        self.base = float(self.data["seconds"])

    def minutes(self) -> float:
        """Minutes of wall clock spent by this run, over every (re)start."""
        return (self.base + time.time() - self.t0) / 60.0

    def save(self) -> None:
        self.data["seconds"] = round(self.base + time.time() - self.t0, 2)
        _write_json(self.path, self.data)

    def done(self, phase: str) -> bool:
        return phase in self.data["done"]

    def finish(self, phase: str, seconds: float) -> None:
        self.data["done"].append(phase)
        self.data["phase_seconds"][phase] = round(seconds, 1)
        self.save()

    def add_point(self, point: dict[str, Any]) -> None:
        self.data["points"].append(point)
        self.save()


# ----- data
def write_prompt_dataset(plan: ShowcasePlan) -> tuple[Path, int]:
    """Generation samples in the reference's jsonl (nexus-gen-jsonl): the GenEval-scenes prompts
    except the held-out tags, each rendered `prompt_renders` times with seeds from
    PROMPT_RENDER_SEED (the benchmark renders nothing for a generator; its ground truth uses small
    seeds). Returns the file and the number of held-out prompts."""
    from eval.geneval.run import PROMPT_SETS as PROMPT_FILES
    from nexus_gen.scenes.prompts import render_prompt

    root = plan.root / "data" / "prompts"
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in PROMPT_FILES["scenes"].read_text().splitlines() if x.strip()]
    lines, held = [], 0
    for i, meta in enumerate(rows):
        if meta["tag"] in HELD_OUT_TAGS:
            held += 1
            continue
        for j in range(plan.prompt_renders):
            seed = PROMPT_RENDER_SEED + 1000 * i + j
            name = f"images/p{i:04d}_{j:02d}.png"
            if not (root / name).is_file():
                render_prompt(meta, seed, size=IMAGE_SIZE).convert("RGB").save(root / name)
            lines.append({"id": f"prompt{i:04d}-{j:02d}", "source": "geneval-scenes-train", "images": [name],
                          "messages": [{"role": "user", "content": "Generate an image according to the "
                                        f"following description: {meta['prompt']}"},
                                       {"role": "assistant", "content": "Here is an image based on the "
                                        "description: <image>"}]})
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path, held


def write_recipe(plan: ShowcasePlan, prompts: Path) -> Path:
    """The build recipe: random scenes (add / remove edits, generation and understanding samples)
    plus the prompt renders, all at IMAGE_SIZE, train split only."""
    import yaml

    recipe = {"name": "showcase", "description": "Showcase training data (issue 17)", "seed": TRAIN_SCENES_SEED,
              "sources": [{"kind": "scenes", "name": "scenes", "count": plan.scenes, "size": IMAGE_SIZE,
                           "max_objects": 4},
                          {"kind": "dataset", "name": "prompts", "format": "nexus-gen-jsonl",
                           "inputs": [str(prompts)], "images_root": str(prompts.parent)}],
              "edits": {"add": plan.edits, "remove": plan.edits},
              "models": {"editor": "scenes", "detector": "scenes-pixel", "clip": "tiny", "dino": "tiny"},
              "scoring": {"metrics": ["l1"]}, "shard_size": 1000,
              "outputs": {"generation": True, "understanding": True, "understanding_per_source": 4,
                          "understanding_turns": QA_TURNS, "triplets": False},
              "languages": ["en"], "splits": {"train": 1.0}}
    path = plan.root / "data" / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def check_disjoint(plan: ShowcasePlan) -> dict[str, Any]:
    """The training scenes' seeds (the build's derive_seed(recipe seed, source, k)) against the
    evaluation seeds (EVAL_SEED + i for edits and QA scenes) and the held-out prompt texts
    against every training caption. Raises when they meet."""
    from nexus_gen.data.shards import iter_samples
    from nexus_gen.edit.plan import derive_seed
    from eval.geneval.run import PROMPT_SETS as PROMPT_FILES

    train = {derive_seed(TRAIN_SCENES_SEED, "scenes", k) for k in range(plan.scenes)}
    evals = set(range(EVAL_SEED, EVAL_SEED + max(plan.edit_items, plan.qa_scenes) + 1))
    if train & evals:
        raise ValueError(f"training scene seeds meet the evaluation seeds: {sorted(train & evals)[:5]}")
    held = {json.loads(x)["prompt"] for x in PROMPT_FILES["scenes"].read_text().splitlines()
            if x.strip() and json.loads(x)["tag"] in HELD_OUT_TAGS}
    seen = 0
    for s in iter_samples(plan.root / "data" / "build" / "data"):
        seen += 1
        for m in s["messages"]:
            for p in held:
                if p in m["content"]:
                    raise ValueError(f"held-out prompt {p!r} in training sample {s['id']}")
    return {"train_scene_seeds": len(train), "eval_seeds": f"{min(evals)}..{max(evals)}",
            "held_out_prompts": len(held), "samples_checked": seen}


def phase_data(plan: ShowcasePlan) -> dict[str, Any]:
    """Build the training data through the build flow and check the hold-outs."""
    from nexus_gen.edit.build import build

    prompts, held = write_prompt_dataset(plan)
    recipe = write_recipe(plan, prompts)
    record = build(recipe, plan.root / "data" / "build")
    info = check_disjoint(plan)
    info.update(counts=record.get("counts"), held_out_tags=list(HELD_OUT_TAGS))
    _write_json(plan.root / "data" / "holdout.json", info)
    return info


# ----- training through the loop, in segments
def train_config(plan: ShowcasePlan, stage: str, model: dict[str, Any], data: dict[str, Any],
                 name: str, lr: float) -> Path:
    """A train config for `stage` in OUT/configs/NAME.yaml (constant LR after warmup, so segments
    of more steps continue one schedule; max_steps is set per segment)."""
    import yaml

    cfg = {"stage": stage, "model": model, "data": data,
           "train": {"seed": 0, "max_steps": 1, "batch_size": plan.batch[name.replace("_baseline", "")],
                     "grad_accum": 1, "lr": lr, "warmup_steps": 10, "schedule": "constant",
                     "max_grad_norm": 1.0, "precision": "fp32", "device": plan.device},
           "checkpoint": {"every_steps": 100000, "keep_last": 2}, "log": {"every_steps": 5},
           "output_dir": str(plan.root / "train" / name)}
    path = plan.root / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def train_segments(plan: ShowcasePlan, state: State, name: str, config: Path,
                   on_segment: Optional[Callable[[int], None]] = None) -> Path:
    """Train `name` for its share of the budget in `plan.segments` segments: the first segment's
    steps/s sets how many steps fit; each segment resumes the loop from its checkpoint and ends
    with an evaluation (`on_segment(step)`). Returns the final model folder."""
    from nexus_gen.train.train_checkpoint import latest_checkpoint
    from nexus_gen.train.train_config import load_train_config
    from nexus_gen.train.train_loop import train

    seg = state.data["segments"].setdefault(name, {"done": 0, "step": 0, "seconds": 0.0, "points": []})
    budget = plan.train_seconds[name]
    out = plan.root / "train" / name
    while seg["done"] < plan.segments:
        if seg["step"] == 0:
            target = 3  # calibration segment: measures seconds per step
        else:
            rate = seg["seconds"] / max(seg["step"], 1)  # seconds per step so far
            left = budget - seg["seconds"]
            target = seg["step"] + max(1, int(left / rate / (plan.segments - seg["done"])))
        t = time.time()
        # resume whenever the loop left a checkpoint (also one a killed run wrote before state.json)
        resume = latest_checkpoint(out) is not None
        record = train(load_train_config(config, {"train.max_steps": target}), out, resume=resume)
        seg["seconds"] += time.time() - t
        seg["step"] = int(record["step"])
        seg["done"] += 1
        seg.setdefault("log", []).append({"step": seg["step"], "seconds": round(seg["seconds"], 1),
                                          "loss": record.get("final_loss")})
        state.save()
        if on_segment is not None and seg["done"] < plan.segments:  # the last one: the final evaluation
            on_segment(seg["step"])
    return out / "final"


# ----- pipelines and evaluations
def save_pipeline(plan: ShowcasePlan, folder: Path, ar: str, gen: Optional[str], edit: Optional[str],
                  prefill: bool = True) -> Path:
    """A NexusGenPipeline folder from stage outputs (None: the untrained decoder on the scenes VAE base);
    `prefill=False`: the ablation's baseline, each predicted embedding fed back at inference."""
    from nexus_gen.models.edit_decoder import NexusGenEditingDecoder
    from nexus_gen.models.gen_decoder import NexusGenGenerationDecoder
    from nexus_gen.models.nexus_ar import NexusGenAR
    from nexus_gen.models.nexus_pipeline import PIPELINE_CONFIG, NexusGenPipeline
    from nexus_gen.train.stage_ar import resolve_ar_path

    if (folder / PIPELINE_CONFIG).is_file():
        return folder
    base = str(plan.root / "models" / "flux_base")
    arm = NexusGenAR.from_pretrained(resolve_ar_path(ar)).eval()
    d = arm.config.text_config.hidden_size
    g = NexusGenGenerationDecoder.from_pretrained(gen, base=base) if gen else \
        NexusGenGenerationDecoder.from_base("tiny", base=base, embed_dim=d, image_size=IMAGE_SIZE)
    e = NexusGenEditingDecoder.from_pretrained(edit, base=base) if edit else \
        NexusGenEditingDecoder.from_base("tiny", base=base, ar=resolve_ar_path(ar), image_size=IMAGE_SIZE)
    tmp = folder.with_name(folder.name + ".tmp")
    config: dict[str, Any] = {"source": str(folder), "max_pixels": None}
    if not prefill:
        config["prefill"] = False
    NexusGenPipeline(arm, g, e, config).save_pretrained(tmp)
    tmp.replace(folder)
    return folder


def eval_geneval(plan: ShowcasePlan, pipe: Path, out: Path) -> dict[str, Any]:
    """GenEval-scenes on a tag-balanced subset; per-image correctness for the bootstrap."""
    from eval.geneval.run import GenEvalConfig, run_geneval

    s = run_geneval(GenEvalConfig.from_params(
        "geneval-scenes", options={}, generator=f"nexus-gen:{pipe}", out=out, limit=plan.geneval_prompts,
        n_images=plan.geneval_images, seed=EVAL_SEED, batch_size=4, device=plan.device, dtype="float32",
        steps=plan.decode_steps, guidance=None, size=IMAGE_SIZE, prompts=None))
    return {"geneval_scenes": s["overall"], "summary": s}


def eval_editing(plan: ShowcasePlan, pipe: Path, out: Path) -> dict[str, Any]:
    """The scenes editing benchmark (add / remove verified by the detector, pixel errors)."""
    from eval.editing.edit_run import EditingConfig, check, run

    s = run(check(EditingConfig(data="scenes", editor=f"nexus-gen:{pipe}", out=out, limit=plan.edit_items,
                                size=IMAGE_SIZE, seed=EVAL_SEED, device=plan.device, steps=plan.decode_steps,
                                clip="tiny", dino="tiny")))
    return {"edit_success": s["overall"].get("success"), "summary": s}


def eval_qa(plan: ShowcasePlan, pipe: Path, out: Path) -> dict[str, Any]:
    """The scenes QA (understanding benchmark, `scenes:N:SEED`)."""
    from eval.understanding import understanding_run as u

    p = u.prepare(u.check(u.UnderstandingConfig("scenes", f"scenes:{plan.qa_scenes}:{EVAL_SEED}",
                                                f"nexus-gen:{pipe}", out, device=plan.device)))
    u.predict_step(p, progress=False)
    s = u.score_step(p)
    u.report_step(p.out)
    acc = s["headline"]["accuracy"]  # the benchmark reports percent
    return {"qa_accuracy": None if acc is None else acc / 100.0, "summary": s}


EVALS = {"geneval_scenes": eval_geneval, "edit_success": eval_editing, "qa_accuracy": eval_qa}


def evaluate(plan: ShowcasePlan, state: State, label: str, pipe: Path, metrics: tuple[str, ...]) -> None:
    """Evaluate `pipe` on `metrics` (skipping points already recorded) and record a curve point."""
    for metric in metrics:
        if any(p["label"] == label and p["metric"] == metric for p in state.data["points"]):
            continue
        out = plan.root / "evals" / label / metric
        t = time.time()
        r = EVALS[metric](plan, pipe, out)
        state.add_point({"label": label, "metric": metric, "value": r[metric], "minutes": round(state.minutes(), 2),
                         "eval_seconds": round(time.time() - t, 1), "run": str(out)})
        log.info("showcase %s %s = %s", label, metric, r[metric])


# ----- the whole run
def check_continuation(plan: ShowcasePlan) -> ShowcasePlan:
    """`plan` if OUT is new or holds a run of the same budget and ablation; else ValueError (a
    rerun continues a run, it never mixes two budgets in one folder)."""
    path = plan.root / PLAN
    if path.is_file():
        old = json.loads(path.read_text())
        if (old["minutes"], old["ablation"]) != (plan.minutes, plan.ablation):
            raise ValueError(f"{plan.root}: a showcase of --minutes {old['minutes']} (ablation {old['ablation']}) "
                             f"is there; rerun with the same options to continue, or choose another --out")
    return plan


def run_showcase(out: str, minutes: float = 60.0, device: str = "cpu", ablation: bool = False,
                 stop_after: Optional[str] = None, threads: int = 2) -> dict[str, Any]:
    """Run (or continue) the showcase in OUT; returns the report's JSON summary."""
    import torch

    root = Path(out)
    plan = check_continuation(make_plan(out, minutes, device, ablation, threads))
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / PLAN, plan.to_json())
    torch.set_num_threads(threads)
    state = State(root)
    build = str(root / "data" / "build" / "data")
    ar_final = root / "train" / "ar" / "final"
    pipes = root / "pipelines"

    def phase(name: str, fn: Callable[[], Any]) -> None:
        if state.done(name):
            return
        t = time.time()
        log.info("showcase phase %s (minute %.1f of %.0f)", name, state.minutes(), plan.minutes)
        fn()
        state.finish(name, time.time() - t)
        if stop_after == name:
            raise ShowcaseStopped(f"stopped after phase {name}; rerun to continue")

    def vae() -> None:
        from nexus_gen.models.scenes_vae import assemble_flux_base

        cfg = train_config(plan, "vae", dict(VAE_MODEL), {"shards": build, **VAE_DATA}, "vae", VAE_LR)
        final = train_segments(plan, state, "vae", cfg)
        base = root / "models" / "flux_base"
        if not (base / "vae").is_dir():
            import shutil
            shutil.rmtree(base, ignore_errors=True)
            assemble_flux_base(final, base, base="tiny", link=True, dit=DIT_SIZE)

    def untrained() -> None:
        pipe = save_pipeline(plan, pipes / "untrained", "tiny", None, None)
        evaluate(plan, state, "untrained", pipe, tuple(EVALS))

    def ar(name: str = "ar", prefill: bool = True) -> None:
        # train_vit: the tiny ViT is random-init (the reference's is pre-trained, so it freezes it):
        # frozen, its features stay fixed random projections and QA only learns the answer prior
        cfg = train_config(plan, "ar", {"path": "tiny", "prefill": prefill, "train_vit": True}, {"shards": build},
                           name, 1e-3)

        def point(step: int) -> None:
            pipe = save_pipeline(plan, pipes / f"{name}-{step}", str(root / "train" / name / "final"), None, None,
                                 prefill)
            evaluate(plan, state, f"{name}-{step}", pipe, ("qa_accuracy",))
        train_segments(plan, state, name, cfg, point)

    def precompute() -> None:
        from nexus_gen.train.precompute import load_ar_model, precompute as run_pre

        model = load_ar_model(str(ar_final), device=device)
        for mode in ("gen", "edit"):
            run_pre(mode, [build], root / "embeddings" / mode, model, chunk_size=256, batch_size=16)

    def decoder(name: str) -> None:
        base = str(root / "models" / "flux_base")
        stage = "gen-decoder" if name == "gen_decoder" else "edit-decoder"
        model = {"profile": "tiny", "base": base, "image_size": IMAGE_SIZE}
        if name == "edit_decoder":
            model["ar"] = str(ar_final)
        emb = str(root / "embeddings" / ("gen" if name == "gen_decoder" else "edit"))
        cfg = train_config(plan, stage, model, {"shards": build, "embeddings": emb}, name, 1e-3)
        metric = "geneval_scenes" if name == "gen_decoder" else "edit_success"

        def point(step: int) -> None:
            fin = str(root / "train" / name / "final")
            gen = fin if name == "gen_decoder" else None
            edit = fin if name == "edit_decoder" else None
            if name == "edit_decoder" and (root / "train" / "gen_decoder" / "final").is_dir():
                gen = str(root / "train" / "gen_decoder" / "final")
            pipe = save_pipeline(plan, pipes / f"{name}-{step}", str(ar_final), gen, edit)
            evaluate(plan, state, f"{name}-{step}", pipe, (metric,))
        train_segments(plan, state, name, cfg, point)

    def final() -> None:
        pipe = save_pipeline(plan, pipes / "trained", str(ar_final), str(root / "train" / "gen_decoder" / "final"),
                             str(root / "train" / "edit_decoder" / "final"))
        evaluate(plan, state, "trained", pipe, tuple(EVALS))

    def baseline() -> None:
        pipe = save_pipeline(plan, pipes / "baseline", str(root / "train" / "ar_baseline" / "final"),
                             str(root / "train" / "gen_decoder" / "final"),
                             str(root / "train" / "edit_decoder" / "final"), prefill=False)
        evaluate(plan, state, "baseline", pipe, tuple(EVALS))

    def report() -> None:
        from eval.showcase.showcase_report import write_report
        write_report(plan, state.data)

    steps = {"data": lambda: phase_data(plan), "vae": vae, "eval_untrained": untrained, "ar": ar,
             "ar_baseline": lambda: ar("ar_baseline", prefill=False), "eval_baseline": baseline,
             "precompute": precompute, "gen_decoder": lambda: decoder("gen_decoder"),
             "edit_decoder": lambda: decoder("edit_decoder"), "eval_final": final, "report": report}
    for name in PHASES:
        if name in ABLATION_PHASES and not plan.ablation:
            continue
        phase(name, steps[name])
    from eval.showcase.showcase_report import summary_line
    return summary_line(plan, state.data)
