"""One GenEval run as plain functions: check the config (before any work, once), prepare the run
directory, generate, detect and score, report. The Prefect flow wraps these same steps as tasks;
tests call them directly. `check` reads and hashes the prompt file; the Plan it returns carries
both, so no later step opens the file again.

A run directory holds the images in the official layout, `config.json` (generator, prompt set,
seeds, options, versions), `generation.json`, `detections.jsonl`, `results.jsonl`,
`summary.json`, `report.md` and `report.html`."""
from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from eval.geneval.generate import (MODEL_IDS, SCENES_ONLY, GeneratorSpec, LazyGenerator,
                                   check_generation_record, check_generator_name,
                                   check_prompt_folders, generate_images, generation_record)
from eval.geneval.detections_file import read_jsonl
from eval.geneval.rules import ScoringOptions, validate_metadata
from nexus_gen.data.shards import write_json_atomic
from nexus_gen.models.tiny.stable_diffusion import TINY_SD_SIZE
from nexus_gen.hashing import file_sha256

log = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parents[2]
PROMPT_SETS: dict[str, Path] = {
    "geneval": Path(__file__).resolve().parent / "prompts" / "evaluation_metadata.jsonl",
    "scenes": _REPO / "datasets_spec" / "geneval_scenes" / "evaluation_metadata.jsonl",
}
BENCHMARK_PROMPT_SET = {"geneval": "geneval", "geneval-scenes": "scenes"}
SCENES_DETECTOR = "scenes-pixel"
# The smallest image side the scenes pixel detector handles, measured with the ground-truth
# renderer (sizes in steps of 8; --size must be a multiple of 8). All 408 prompts, 2 images each,
# base seeds 0-1: the ground truth scores 0.0 at 8 px, 0.23 at 32, 0.85 at 64, 0.96 at 96,
# 0.98-0.999 at 128, 0.99-0.996 at 136, 1.0 from 184. Tag-balanced 60-prompt subsets, base
# seeds 0-5: 0.970-1.0 at 128, 0.985-1.0 at 136. 136 px is the first size at which every one
# of these runs reaches the benchmark's bar (ground truth >= 0.98).
SCENES_MIN_SIZE = 136
# Named generators' image side when --size is not given.
NATIVE_SIZES = {"ground-truth": 512, "noise": 512, "tiny": TINY_SD_SIZE}
CONFIG_FILE, SUMMARY_FILE = "config.json", "summary.json"


@dataclass
class GenEvalConfig:
    """Everything a GenEval run depends on. `benchmark` is `geneval` (COCO prompts, Mask2Former,
    CLIP colours) or `geneval-scenes` (scenes prompts, the pixel detector, fully offline)."""

    generator: str
    out: Path
    benchmark: str = "geneval"
    prompts: Optional[Path] = None  # default: the benchmark's prompt set
    limit: Optional[int] = None  # a tag-balanced subset of this many prompts
    n_images: int = 4
    seed: int = 0
    batch_size: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    steps: Optional[int] = None
    guidance: Optional[float] = None
    size: Optional[int] = None
    detector: Optional[str] = None  # geneval: paper | tiny | hub id | folder; scenes: scenes-pixel
    clip: str = "paper"  # colour classifier for geneval (see eval.geneval.color)
    precision: Optional[str] = None  # colour classifier: amp | fp32; None: amp on CUDA, else fp32
    options: ScoringOptions = field(default_factory=ScoringOptions)

    @classmethod
    def from_params(cls, benchmark: str, options: Optional[Mapping[str, Any]] = None,
                    **params: Any) -> "GenEvalConfig":
        """A config from plain parameters (a flow's or a command's): `options` as a dict of
        official scoring option names, values maybe strings; the rest are this class's fields."""
        return cls(benchmark=benchmark, options=ScoringOptions.from_mapping(options or {}), **params)

    def generator_spec(self) -> GeneratorSpec:
        return GeneratorSpec(self.generator, device=self.device, dtype=self.dtype, steps=self.steps,
                             guidance=self.guidance, size=self.size)


@dataclass
class Plan:
    """A checked config with its resolved prompt set: what the steps run on (so no step reads
    the prompt file again)."""

    config: GenEvalConfig
    out: Path
    prompt_file: Path
    prompt_set: str
    prompts: list[tuple[int, dict[str, Any]]]
    n_total: int
    detector: str
    prompt_sha256: str
    precision: Optional[str] = None  # the colour classifier's, resolved (None: no CLIP colours)
    earlier_generation: dict[str, Any] = field(default_factory=dict)  # generation.json on resume


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """Every record of a GenEval prompt file, validated; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    out = []
    for where, rec in read_jsonl(path):
        try:
            validate_metadata(rec)
        except ValueError as e:
            raise ValueError(f"{where}: not a GenEval prompt record: {e}") from e
        out.append(rec)
    if not out:
        raise ValueError(f"prompt file {path} has no prompts")
    return out


def select_prompts(records: list[dict[str, Any]], limit: Optional[int]) -> list[tuple[int, dict[str, Any]]]:
    """(index, record) pairs: all of them, or `limit` taken round-robin over the tags (in file
    order) so a small subset still covers every tag; indices stay those of the full file."""
    indexed = list(enumerate(records))
    if limit is None or limit >= len(indexed):
        return indexed
    by_tag: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for item in indexed:
        by_tag.setdefault(item[1]["tag"], []).append(item)
    queues = list(by_tag.values())
    chosen: list[tuple[int, dict[str, Any]]] = []
    depth = 0
    while len(chosen) < limit:
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen, key=lambda x: x[0])


def _check_hub_source(name: str, what: str, probe: str) -> None:
    """With the hub offline, a hub id must already be in the local cache: say so before any work."""
    if Path(name).is_dir():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, probe), str):
        raise ValueError(f"{what} {name!r} is not in the local Hugging Face cache and the hub is "
                         f"offline (HF_HUB_OFFLINE=1): download it first, pass a local folder, "
                         f"or use a tiny/offline choice")


def check(config: GenEvalConfig) -> Plan:
    """Check every option and input without writing anything; return the plan (with the prompts
    read and hashed, once). Raises ValueError/FileNotFoundError with a message naming the bad
    input and the problem."""
    c = config
    if c.benchmark not in BENCHMARK_PROMPT_SET:
        raise ValueError(f"unknown benchmark {c.benchmark!r}; use one of {sorted(BENCHMARK_PROMPT_SET)}")
    if c.limit is not None and c.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {c.limit}")
    for name, v, lo in (("--n-images", c.n_images, 1), ("--batch-size", c.batch_size, 1)):
        if v < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")
    if c.steps is not None and c.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {c.steps}")
    if c.size is not None and (c.size < 8 or c.size % 8):
        raise ValueError(f"--size must be a multiple of 8 and >= 8, got {c.size}")
    kind = check_generator_name(c.generator)
    scenes = c.benchmark == "geneval-scenes"
    if c.generator in SCENES_ONLY and not scenes:
        raise ValueError(f"generator {c.generator!r} renders scenes prompts only: use "
                         f"`nexus-gen eval geneval-scenes`")
    if kind == "hub":
        _check_hub_source(c.generator, "generator", "model_index.json")
    import torch

    try:
        dev = torch.device(c.device)
    except RuntimeError as e:
        raise ValueError(f"--device {c.device!r} is not a torch device ({e})") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {c.device!r}: CUDA is not available on this machine")
    if not isinstance(getattr(torch, c.dtype, None), torch.dtype):
        raise ValueError(f"--dtype {c.dtype!r} is not a torch dtype (float32, float16, bfloat16)")
    detector = c.detector or (SCENES_DETECTOR if scenes else "paper")
    if scenes and detector != SCENES_DETECTOR:
        raise ValueError(f"geneval-scenes scores with the pixel detector only ({SCENES_DETECTOR!r}), "
                         f"got --detector {detector!r}")
    precision = None
    if scenes and c.precision is not None:
        raise ValueError("geneval-scenes takes colours from the pixel detector, not CLIP: "
                         "--precision does not apply")
    side = c.size if c.size is not None else NATIVE_SIZES.get(c.generator)
    if scenes and side is not None and side < SCENES_MIN_SIZE:
        given = f"--size {c.size}" if c.size is not None else f"generator {c.generator!r} makes {side} px images"
        raise ValueError(f"{given}: geneval-scenes needs images of at least {SCENES_MIN_SIZE} px (the "
                         f"pixel detector misses objects below that, so even the ground truth scores "
                         f"low); use --size {SCENES_MIN_SIZE} or more")
    if not scenes:
        if detector == SCENES_DETECTOR:
            raise ValueError(f"detector {SCENES_DETECTOR!r} knows only the scenes shapes: use "
                             f"`nexus-gen eval geneval-scenes`")
        from eval.geneval.mask2former import resolve_detector

        from eval.geneval.color import resolve_precision

        precision = resolve_precision(c.precision, dev)
        source = resolve_detector(detector, build=False)
        if source is not None:  # None: `tiny`, built locally on first use
            _check_hub_source(source, "detector", "config.json")
        if c.clip != "tiny":  # `tiny` is built on first use; any other spec must parse now
            from nexus_gen.scoring.clip import resolve_clip_spec

            try:
                resolve_clip_spec(c.clip)
            except ValueError as e:
                raise ValueError(f"--clip {c.clip!r}: {e}") from e
    prompt_set = BENCHMARK_PROMPT_SET[c.benchmark] if c.prompts is None else "custom"
    prompt_file = Path(c.prompts) if c.prompts is not None else PROMPT_SETS[prompt_set]
    if not prompt_file.is_file():
        raise FileNotFoundError(f"prompt file {prompt_file} (prompt set {prompt_set!r}) does not exist")
    records = read_prompts(prompt_file)
    prompts = select_prompts(records, c.limit)
    out = Path(c.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if precision is not None:
        _check_stored_colours(out, precision)
    plan = Plan(config=c, out=out, prompt_file=prompt_file, prompt_set=prompt_set, prompts=prompts,
                n_total=len(records), detector=detector, prompt_sha256=file_sha256(prompt_file),
                precision=precision)
    if out.is_dir():
        plan.earlier_generation = check_run_dir(plan)
    return plan


def check_run_dir(plan: Plan) -> dict[str, Any]:
    """An existing run directory must hold this run's earlier work only (a resume), checked before
    anything is written: images made the same way, the same prompts at the same indices, no
    prompt folders outside this run's prompts. Returns the earlier generation record ({} if none)."""
    c = plan.config
    earlier = check_generation_record(plan.out, generation_record(
        MODEL_IDS.get(c.generator, c.generator), c.seed, c.generator_spec().to_json(), c.n_images))
    check_prompt_folders(plan.out, plan.prompts)
    wanted = {f"{i:05d}" for i, _ in plan.prompts}
    stray = sorted(p.name for p in plan.out.iterdir()
                   if p.is_dir() and p.name.isdigit() and p.name not in wanted)
    if stray:
        raise ValueError(f"{plan.out} holds prompt folders outside this run's prompts "
                         f"({', '.join(stray[:5])}...): use a new --out or the same --limit")
    return earlier


def _check_stored_colours(out: Path, precision: str) -> None:
    """A resumed run reuses the colours stored in its detections file: they must have been
    classified in this run's precision (runs recorded before precision was, ran in fp32)."""
    config = out / CONFIG_FILE
    if not (config.is_file() and (out / "detections.jsonl").is_file()):
        return
    try:
        old = json.loads(config.read_text(encoding="utf-8")).get("classifier", {})
    except (ValueError, AttributeError):
        return  # an unreadable config is the resume checks' business, not this one's
    stored = old.get("precision", "fp32") if isinstance(old, dict) else "fp32"
    if stored != precision:
        raise ValueError(f"--out {out} holds detections whose colours were classified in "
                         f"{stored}; this run asks for {precision}: use a new --out or "
                         f"--precision {stored}")


def prepare(plan: Plan) -> Plan:
    """Create the checked plan's run directory and write `config.json` (the first work done)."""
    plan.out.mkdir(parents=True, exist_ok=True)
    write_config(plan)
    log.info("GenEval run %s: %s on %d of %d prompts (%s), %d images each", plan.out,
             plan.config.generator, len(plan.prompts), plan.n_total, plan.prompt_set,
             plan.config.n_images)
    return plan


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("nexus-gen", "torch", "diffusers", "transformers", "open_clip_torch", "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _display_path(path: Path) -> str:
    """A path relative to the repository when inside it (same config on every checkout)."""
    try:
        return str(Path(path).resolve().relative_to(_REPO))
    except ValueError:
        return str(path)


def config_record(plan: Plan) -> dict[str, Any]:
    """The run's `config.json` content (no timestamps: the same run gives the same bytes)."""
    c = plan.config
    return {
        "benchmark": c.benchmark,
        "generator": c.generator_spec().to_json(),
        "prompt_set": {"name": plan.prompt_set, "file": _display_path(plan.prompt_file),
                       "sha256": plan.prompt_sha256, "n_total": plan.n_total,
                       "n_used": len(plan.prompts), "limit": c.limit, "rewriting": False,
                       "indices": [i for i, _ in plan.prompts] if c.limit is not None else "all"},
        "n_images": c.n_images,
        "base_seed": c.seed,
        "batch_size": c.batch_size,
        "detector": {"name": plan.detector},
        "classifier": {"name": "detector colours (scenes palette)"}
        if plan.detector == SCENES_DETECTOR else
        {"name": c.clip, "precision": plan.precision, "device": c.device},
        "options": c.options.to_dict(),
        "versions": versions(),
    }


def write_config(plan: Plan, **extra: Any) -> dict[str, Any]:
    """(Re)write `config.json`, keeping what later steps added (generation record, model ids)."""
    path = plan.out / CONFIG_FILE
    record = config_record(plan)
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if "generation" in old:
            record["generation"] = old["generation"]
        if "model_id" in old.get("detector", {}):
            record["detector"]["model_id"] = old["detector"]["model_id"]
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(record.get(key), dict):
            record[key] = {**record[key], **value}
        else:
            record[key] = value
    write_json_atomic(path, record, sort_keys=True)
    return record


def generate_step(plan: Plan) -> dict[str, int]:
    """Load the generator and write the missing images; record model id and seeds."""
    c = plan.config
    generator = LazyGenerator(c.generator_spec())
    res = generate_images(generator, plan.prompts, plan.out, n_images=c.n_images, base_seed=c.seed,
                          batch_size=c.batch_size, settings=c.generator_spec().to_json(),
                          earlier=plan.earlier_generation)
    write_config(plan, generation=res.record)
    return {"generated": res.generated, "kept": res.kept}


def _scenes_detector():
    from nexus_gen.scenes.detect import detect

    return detect


def score_step(plan: Plan) -> dict[str, Any]:
    """Detect (resumable) and score the run's images of this plan's prompts; write summary.json."""
    from eval.geneval.score import score_folder

    c = plan.config
    if plan.detector == SCENES_DETECTOR:
        detector, model_id = _scenes_detector(), "nexus_gen.scenes.detect (pixel detector, no weights)"
    else:
        from eval.geneval.mask2former import load_detector

        detector = load_detector(plan.detector, device=c.device)
        model_id = detector.model_id
    write_config(plan, detector={"model_id": model_id})
    _, summary = score_folder(plan.out, detector, options=c.options, clip=c.clip, device=c.device,
                              precision=plan.precision)
    if plan.precision is not None:
        summary["color_precision"] = plan.precision
    write_json_atomic(plan.out / SUMMARY_FILE, summary, sort_keys=True)
    return summary


def report_step(plan: Plan):
    """Write report.md and report.html into the run directory; return (Report, md, html)."""
    from eval.report import write_run_report

    return write_run_report(plan.out)


def run_geneval(config: GenEvalConfig) -> dict[str, Any]:
    """The whole benchmark without Prefect: check, prepare, generate, score, report; returns the
    summary."""
    plan = prepare(check(config))
    generate_step(plan)
    summary = score_step(plan)
    report_step(plan)
    log.info("GenEval %s: overall %.4f (%s)", config.generator, summary["overall"], plan.out)
    return summary

