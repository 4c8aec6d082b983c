"""Text-to-image generation for GenEval behind one small adapter, written in the official layout.

Any generator with a `model_id` and `generate(metadata, seeds) -> images` fits: a diffusers pipeline
(hub id or local directory), the tiny random pipeline (`tiny`), and for the scenes prompt set the
`ground-truth` renderer and `noise`. Each image has its own seed, a pure function of (base seed,
prompt index, sample number), so a resumed run regenerates exactly the missing images. A Nexus-Gen
pipeline is named `nexus-gen[:SOURCE]` or by its saved folder (`NexusGenGenerator`)."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
from PIL import Image

from eval.geneval import layout

log = logging.getLogger(__name__)

GENERATION_FILE = "generation.json"


class Generator(Protocol):
    """A text-to-image generator: one image per seed, for one GenEval prompt record."""

    model_id: str

    def generate(self, metadata: dict[str, Any], seeds: Sequence[int]) -> list[Image.Image]:
        """Return `len(seeds)` images for the prompt record `metadata` (its `prompt` key at least)."""
        ...


def sample_seed(base_seed: int, index: int, sample: int) -> int:
    """The seed of image `sample` of prompt `index`: a stable hash, independent of batch and order."""
    digest = hashlib.sha256(f"geneval:{base_seed}:{index}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class NoiseGenerator:
    """Uniform random pixels from the seed: the floor a scorer must give (close to) zero."""

    model_id = "noise"

    def __init__(self, size: int = 512):
        self.size = int(size)

    def generate(self, metadata: dict[str, Any], seeds: Sequence[int]) -> list[Image.Image]:
        out = []
        for s in seeds:
            rng = np.random.default_rng(s)
            out.append(Image.fromarray(rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)))
        return out


class GroundTruthGenerator:
    """Renders the scenes world's exact picture of a scenes prompt: the ceiling a scorer must pass."""

    model_id = "ground-truth"

    def __init__(self, size: int = 512):
        self.size = int(size)

    def generate(self, metadata: dict[str, Any], seeds: Sequence[int]) -> list[Image.Image]:
        from nexus_gen.scenes.prompts import render_prompt

        return [render_prompt(metadata, s, size=self.size).convert("RGB") for s in seeds]


class DiffusersGenerator:
    """Any diffusers text-to-image pipeline, loaded with `DiffusionPipeline.from_pretrained`."""

    def __init__(self, source: str | Path, model_id: Optional[str] = None, device: str = "cpu",
                 dtype: str = "float32", steps: Optional[int] = None, guidance: Optional[float] = None,
                 size: Optional[int] = None, threads: Optional[int] = None):
        from nexus_gen.models.pipelines import load_pipeline

        self.pipe = load_pipeline(source, device=device, dtype=dtype)
        self.model_id = model_id or str(source)
        self.steps, self.guidance, self.size = steps, guidance, size
        self.threads = threads  # CPU intra-op threads while generating (None: torch's setting)

    def generate(self, metadata: dict[str, Any], seeds: Sequence[int]) -> list[Image.Image]:
        import torch

        from nexus_gen.models.pipelines import sampling_kwargs

        kwargs = sampling_kwargs(self.steps, self.guidance)
        if self.size is not None:
            kwargs["height"] = kwargs["width"] = int(self.size)
        # CPU generators, one per image: the same latents on every device and in every batch shape.
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                result = self.pipe(prompt=metadata["prompt"], num_images_per_prompt=len(seeds),
                                   generator=generators, output_type="pil", **kwargs)
        finally:
            torch.set_num_threads(previous)
        return [im.convert("RGB") for im in result.images]


class NexusGenGenerator:
    """A `NexusGenPipeline` (generation decoder only); `guidance` is its classifier-free scale."""

    def __init__(self, source: str, device: str = "cpu", dtype: str = "float32", steps: Optional[int] = None,
                 guidance: Optional[float] = None, size: Optional[int] = None):
        from nexus_gen.models.nexus_pipeline import load_nexus_pipeline

        self.pipe = load_nexus_pipeline(source, device, dtype, decoders=("generation",))
        self.model_id = self.pipe.model_id
        self.steps, self.guidance, self.size = steps, guidance, size

    def generate(self, metadata: dict[str, Any], seeds: Sequence[int]) -> list[Image.Image]:
        return self.pipe.generate([metadata["prompt"]] * len(seeds), height=self.size, width=self.size,
                                  steps=self.steps, cfg=self.guidance, seed=list(seeds))


@dataclass
class GeneratorSpec:
    """How to build a generator: a name (`tiny`, `ground-truth`, `noise`), a local directory or a
    hub id, and the sampling settings that go with diffusers pipelines."""

    name: str
    device: str = "cpu"
    dtype: str = "float32"
    steps: Optional[int] = None
    guidance: Optional[float] = None
    size: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


TINY_MODEL_ID = "tiny-sd (random init, nexus-gen tiny profile)"


def _tiny(spec: GeneratorSpec) -> Generator:
    from nexus_gen.models.tiny import tiny_sd_dir

    # One thread: kernels this small gain nothing from more, and lose a lot on a busy CPU.
    return DiffusersGenerator(tiny_sd_dir(), model_id=TINY_MODEL_ID,
                              device=spec.device, dtype=spec.dtype, steps=spec.steps or 2,
                              guidance=spec.guidance, size=spec.size, threads=1)


# Named generators; other parts (e.g. the Nexus-Gen pipeline) add theirs here.
NAMED_GENERATORS: dict[str, Callable[[GeneratorSpec], Generator]] = {
    "tiny": _tiny,
    "ground-truth": lambda spec: GroundTruthGenerator(size=spec.size or 512),
    "noise": lambda spec: NoiseGenerator(size=spec.size or 512),
}
SCENES_ONLY = {"ground-truth"}
MODEL_IDS = {"tiny": TINY_MODEL_ID}  # named generators whose model id is not their name


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts) and " " not in name


def check_generator_name(name: str) -> str:
    """Return the kind of generator `name` denotes (`named`, `local`, `hub`) or raise ValueError."""
    if name in NAMED_GENERATORS:
        return "named"
    from nexus_gen.models.nexus_pipeline import check_nexus_source, nexus_source

    source = nexus_source(name)
    if source is not None:
        check_nexus_source(source, "generator")
        return "nexus"
    if Path(name).is_dir():
        if not (Path(name) / "model_index.json").is_file():
            raise ValueError(f"generator directory {name!r} has no model_index.json: not a diffusers "
                             f"pipeline saved with save_pretrained")
        return "local"
    if _looks_like_hub_id(name):
        return "hub"
    raise ValueError(f"unknown generator {name!r}: use one of {sorted(NAMED_GENERATORS)}, a local "
                     f"diffusers pipeline directory, a hub id like 'owner/model', or nexus-gen[:SOURCE]")


def make_generator(spec: GeneratorSpec) -> Generator:
    """Build (load) the generator `spec` names."""
    kind = check_generator_name(spec.name)
    if kind == "named":
        return NAMED_GENERATORS[spec.name](spec)
    if kind == "nexus":
        from nexus_gen.models.nexus_pipeline import nexus_source

        return NexusGenGenerator(nexus_source(spec.name), spec.device, spec.dtype, spec.steps, spec.guidance,
                                 spec.size)
    return DiffusersGenerator(spec.name, device=spec.device, dtype=spec.dtype, steps=spec.steps,
                              guidance=spec.guidance, size=spec.size)


class LazyGenerator:
    """The generator `spec` names, loaded only when an image is actually missing, so resuming a
    finished generation (e.g. to re-score) never loads a large pipeline."""

    def __init__(self, spec: GeneratorSpec):
        check_generator_name(spec.name)
        self.spec = spec
        self.model_id = MODEL_IDS.get(spec.name, spec.name)
        self._inner: Optional[Generator] = None

    def generate(self, metadata: dict[str, Any], seeds: Sequence[int]) -> list[Image.Image]:
        if self._inner is None:
            self._inner = make_generator(self.spec)
        return self._inner.generate(metadata, seeds)


@dataclass
class GenerationResult:
    generated: int = 0
    kept: int = 0
    seeds: dict[str, list[int]] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # what generation.json now holds


def _save_png(image: Image.Image, path: Path) -> None:
    """Write through a temporary name so a killed run never leaves a half-written sample behind."""
    with layout.atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


SEED_RULE = "sha256('geneval:{base}:{index}:{sample}')[:4] & 0x7fffffff"


def generation_record(model_id: str, base_seed: int, settings: Optional[dict[str, Any]],
                      n_images: int) -> dict[str, Any]:
    """What identifies a generation in `generation.json` (seeds are added as images are made)."""
    return {"model_id": model_id, "base_seed": base_seed, "settings": settings or {},
            "n_images": n_images, "seed_rule": SEED_RULE}


def check_generation_record(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The earlier run's generation record in `out` ({} if none), after checking that it made its
    images the same way (else resuming would mix two generations). Reads only."""
    p = Path(out) / GENERATION_FILE
    if not p.is_file():
        return {}
    try:
        old = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p} is not valid JSON ({e}); use a new --out directory") from None
    if not isinstance(old, dict):
        raise ValueError(f"{p} is not a generation record (a JSON object); use a new --out directory")
    for key in ("model_id", "base_seed", "settings", "n_images"):
        if old.get(key) != record.get(key):
            raise ValueError(
                f"{out} already holds images from another generation ({key}: {old.get(key)!r} there, "
                f"{record.get(key)!r} now); use a new --out directory or the same settings to resume")
    return old


def check_prompt_folders(out: Path, prompts: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """Refuse a run directory whose prompt folders hold other prompts than these (at the same
    indices: another prompt file). Reads only."""
    for index, metadata in prompts:
        meta_path = layout.prompt_dir(out, index) / "metadata.jsonl"
        if meta_path.is_file() and layout.read_metadata(out, index) != metadata:
            raise ValueError(f"{meta_path} holds a different prompt than prompt {index} of this "
                             f"prompt set; use a new --out directory")


def generate_images(generator: Generator, prompts: Sequence[tuple[int, dict[str, Any]]], out: Path,
                    n_images: int = 4, base_seed: int = 0, batch_size: int = 1,
                    settings: Optional[dict[str, Any]] = None,
                    earlier: Optional[dict[str, Any]] = None) -> GenerationResult:
    """Write `n_images` samples per (index, metadata) prompt into `out` in the official layout.

    Existing sample PNGs are kept (resume); `generation.json` records the model id, settings and
    every image's seed. Batched kernels round differently from single ones, so images are
    byte-identical across runs (and resumes) only at the same `batch_size`; 1, the default, is
    the exact choice, larger batches trade that for GPU throughput.

    `earlier`: the run directory's generation record as `check_generation_record` returned it
    when the caller checked `out` already (with `check_prompt_folders`); None: check here."""
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out)
    record = generation_record(generator.model_id, base_seed, settings, n_images)
    if earlier is None:
        earlier = check_generation_record(out, record)
        check_prompt_folders(out, prompts)
    out.mkdir(parents=True, exist_ok=True)
    result = GenerationResult()
    from tqdm import tqdm

    progress = tqdm(prompts, desc=f"generate ({generator.model_id})", unit="prompt")
    for index, metadata in progress:
        layout.write_metadata(out, index, metadata)
        seeds = [sample_seed(base_seed, index, n) for n in range(n_images)]
        result.seeds[f"{index:05d}"] = seeds
        missing = [n for n in range(n_images) if not layout.sample_path(out, index, n).is_file()]
        result.kept += n_images - len(missing)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            images = generator.generate(metadata, [seeds[n] for n in chunk])
            if len(images) != len(chunk):
                raise RuntimeError(f"generator {generator.model_id!r} returned {len(images)} images "
                                   f"for {len(chunk)} seeds (prompt {index})")
            for n, image in zip(chunk, images):
                _save_png(image, layout.sample_path(out, index, n))
            result.generated += len(chunk)
    record["seeds"] = result.seeds
    if earlier:  # keep the seeds of prompts generated by earlier (e.g. larger --limit) runs
        record["seeds"] = dict(sorted({**earlier.get("seeds", {}), **result.seeds}.items()))
    with layout.atomic_path(out / GENERATION_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    result.record = record
    log.info("generation: %d images generated, %d kept from an earlier run, in %s",
             result.generated, result.kept, out)
    return result
