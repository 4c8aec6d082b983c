"""Build recipes: a YAML file validated by pydantic before any work (unknown keys, roles, edit
types, non-positive counts and missing models are errors that name the file and the key).

A recipe says what one run builds: sources (procedural scenes, real images, existing datasets
through the converters), how many triplets of each edit type, the model for each role, seeds,
scoring metrics, the filter policy `select` applies later, shard size, outputs and splits."""
from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator,
                      model_validator)

RECIPES_DIR = Path(__file__).resolve().parents[2] / "datasets_spec" / "recipes"
EDIT_TYPES = ("add", "remove", "style")
PositiveInt = Annotated[StrictInt, Field(gt=0)]  # "3" or 2.5 is a recipe error, not a count
LANGUAGES = ("en", "zh")


class RecipeError(ValueError):
    """A recipe that cannot be built; the message names the file, the key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScenesSource(_Strict):
    """Procedural scenes (exact ground truth): `count` random scenes rendered at `size` px."""

    kind: Literal["scenes"]
    name: str = "scenes"
    count: PositiveInt
    size: Annotated[int, Field(ge=64, le=4096)] = 256
    min_objects: PositiveInt = 1
    max_objects: PositiveInt = 4

    @model_validator(mode="after")
    def _objects(self) -> "ScenesSource":
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) > max_objects ({self.max_objects})")
        return self


class ImagesSource(_Strict):
    """Real images (files, folders or globs, relative to the recipe file), centre-cropped to a
    square of `size` px; `captions` maps a file name to its caption (optional)."""

    kind: Literal["images"]
    name: str = "images"
    paths: Annotated[list[str], Field(min_length=1)]
    size: Annotated[int, Field(ge=64, le=4096)] = 256
    captions: dict[str, str] = {}
    # square: centre-cropped to size x size; keep: the longer side scaled to `size`, the aspect
    # kept (sides rounded to multiples of 16, what diffusers pipelines take; imagepulse only)
    aspect: Literal["square", "keep"] = "square"
    recursive: bool = False  # folders: also their sub-folders, every format the safe decoder takes


class HFDatasetSource(_Strict):
    """Images from a `datasets` dataset (a hub id, a local dataset folder, or a data file such as
    parquet), streamed: the first `count` rows of `split`, the image in `image_column`."""

    kind: Literal["hf_dataset"]
    name: str = "hf_dataset"
    path: Annotated[str, Field(min_length=1)]
    split: str = "train"
    image_column: str = "image"
    caption_column: Optional[str] = None
    count: PositiveInt
    size: Annotated[int, Field(ge=64, le=4096)] = 256
    aspect: Literal["square", "keep"] = "square"


class Text2ImageSource(_Strict):
    """Images generated from prompts by a diffusers text-to-image pipeline (`model`: tiny, paper
    = FLUX.1-dev as ImagePulse, a hub id or a folder): `images_per_prompt` seeds per prompt; each
    image records its prompt, seed and model id (the prompt is its caption)."""

    kind: Literal["text2image"]
    name: str = "generated"
    prompts: list[Annotated[str, Field(min_length=1)]] = []
    prompts_file: Optional[str] = None  # one prompt a line, relative to the recipe's folder
    model: str = "tiny"
    images_per_prompt: PositiveInt = 1
    size: Annotated[int, Field(ge=64, le=4096)] = 512
    steps: PositiveInt = 28
    guidance: Optional[Annotated[float, Field(ge=0)]] = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @model_validator(mode="after")
    def _some_prompts(self) -> "Text2ImageSource":
        if not self.prompts and not self.prompts_file:
            raise ValueError("give prompts (a list) or prompts_file")
        return self


class DatasetSource(_Strict):
    """Existing data in any converter format (several files or globs), scored, split and written
    beside the built triplets."""

    kind: Literal["dataset"]
    name: Optional[str] = None
    format: str
    inputs: Annotated[list[str], Field(min_length=1)]
    images_root: Optional[str] = None
    language: Optional[Literal["en", "zh"]] = None

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        from nexus_gen.data.convert import FORMATS

        if v not in FORMATS:
            raise ValueError(f"unknown format {v!r}; allowed: {', '.join(FORMATS)}")
        return v


Source = Annotated[Union[ScenesSource, ImagesSource, DatasetSource, HFDatasetSource, Text2ImageSource],
                  Field(discriminator="kind")]
SOURCE_KINDS = ("scenes", "images", "dataset", "hf_dataset", "text2image")


class Edits(_Strict):
    """How many triplets of each edit type (each gives samples in both directions)."""

    add: Optional[PositiveInt] = None
    remove: Optional[PositiveInt] = None
    style: Optional[PositiveInt] = None

    def counts(self) -> dict[str, int]:
        return {t: getattr(self, t) for t in EDIT_TYPES if getattr(self, t)}


class Models(_Strict):
    """The model for each role, by profile name (tiny, small, paper) or id. `editor` names the
    edit backend (nexus_gen/edit/backends); `clip` and `dino` score; the other roles are the
    backend's own models (`detector` verifies add/remove edits; the ImagePulse pipeline also has
    generator, grounder, inpainter, captioner, stylizer, refiner, and for InstantStyle controlnet
    and style_adapter). A role the backend does not
    use is an error."""

    editor: str
    clip: Optional[str] = None
    dino: Optional[str] = None
    detector: Optional[str] = None
    generator: Optional[str] = None
    grounder: Optional[str] = None
    inpainter: Optional[str] = None
    captioner: Optional[str] = None
    stylizer: Optional[str] = None
    refiner: Optional[str] = None
    segmenter: Optional[str] = None
    controlnet: Optional[str] = None
    style_adapter: Optional[str] = None

    def backend_roles(self) -> dict[str, str]:
        """The roles given for the backend (not editor, not the scorers)."""
        return {k: v for k, v in self.model_dump().items()
                if v is not None and k not in ("editor", "clip", "dino")}


UnitFloat = Annotated[float, Field(ge=0, le=1)]


class ImagePulseParams(_Strict):
    """Settings of the `imagepulse` backend (grounded add / remove by inpainting, style by
    image-to-image). Files are relative to the recipe's folder; unset: the shipped lists in
    datasets_spec/vocab/."""

    vocabulary: Optional[str] = None  # objects the detector looks for (en <TAB> zh per line)
    styles: Optional[str] = None  # named styles (key <TAB> en <TAB> zh <TAB> prompt per line)
    style_strength: Annotated[float, Field(gt=0, le=1)] = 0.6  # ImagePulse's img2img strength
    style_steps: PositiveInt = 28
    inpaint_steps: PositiveInt = 28
    # one value for every pipeline, or per role (FLUX Fill, SDXL and FLUX img2img want very
    # different scales); None or a role left out: that pipeline's default
    guidance: Optional[Union[Annotated[float, Field(ge=0)],
                             dict[Literal["inpainter", "stylizer", "refiner"], Annotated[float, Field(ge=0)]]]] = None
    detector_threshold: UnitFloat = 0.3
    mask_dilation: Annotated[int, Field(ge=0, le=256)] = 15  # px, AnyEdit's dilation
    blur: Annotated[float, Field(ge=0, le=64)] = 4.0  # px, sigma of the paste-back feather
    min_side: Annotated[int, Field(ge=16)] = 64  # a source whose shorter side is smaller: reject
    max_mask_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8  # a larger mask: reject
    add_methods: Annotated[list[Literal["reverse", "free_region"]], Field(min_length=1)] = \
        ["reverse", "free_region"]
    background_prompt: Annotated[str, Field(min_length=1)] = \
        "empty background, natural continuation of the surrounding scene"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA
    # InstantStyle (models.controlnet / models.style_adapter / models.refiner): canny thresholds on
    # the Sobel magnitude of 0..255 grey (OpenCV's Canny(img, 100, 200)), blur sigma in px
    canny_low: Annotated[float, Field(ge=0)] = 100.0
    canny_high: Annotated[float, Field(ge=0)] = 200.0
    canny_sigma: Annotated[float, Field(ge=0, le=16)] = 1.0
    controlnet_scale: Annotated[float, Field(ge=0, le=4)] = 1.0
    # one reference image per style, named by its key (oil_painting.png, ...): the IP-Adapter input
    style_references: Optional[str] = None
    # a number, or InstantStyle's per-block dict (SDXL's style blocks only, the default)
    style_adapter_scale: Union[Annotated[float, Field(ge=0)], dict[str, Any]] = \
        {"up": {"block_0": [0.0, 1.0, 0.0]}}
    refine_strength: Annotated[float, Field(gt=0, le=1)] = 0.6  # ImagePulse's FLUX img2img refine
    # pipeline calls of a shard's items that share a pipeline run this many at a time (1: each
    # alone, bytes independent of the shard's other items; > 1: faster on a GPU, each item still
    # seeded alone, pixels within a grey level or so of its unbatched output)
    batch_size: PositiveInt = 1

    @model_validator(mode="after")
    def _canny(self) -> "ImagePulseParams":
        if self.canny_low > self.canny_high:
            raise ValueError(f"canny_low ({self.canny_low}) > canny_high ({self.canny_high})")
        return self


class Scoring(_Strict):
    metrics: list[Literal["clip_t", "clipscore", "clip_i", "clip_dir", "dino", "l1", "l2",
                          "l1_masked"]] = ["clip_t", "clip_i", "clip_dir", "dino", "l1_masked"]
    batch_size: PositiveInt = 32


class Outputs(_Strict):
    """What the run writes besides the editing samples: generation samples (caption -> image)
    and understanding samples (scenes QA) of the same sources, and the triplet table."""

    generation: bool = False
    understanding: bool = False
    understanding_per_source: PositiveInt = 4
    # questions per understanding sample: > 1 makes multi-turn conversations about one image (the
    # `<image>` in the first user turn), so one image encoding supervises several answers
    understanding_turns: PositiveInt = 1
    triplets: bool = True


class Recipe(_Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    description: str = ""
    seed: Annotated[int, Field(ge=0)] = 0
    sources: Annotated[list[Source], Field(min_length=1)]
    edits: Edits = Edits()
    models: Models
    scoring: Scoring = Scoring()
    filter_policy: str = "auto"
    shard_size: PositiveInt = 16  # sources per shard (a shard is the unit of work and of resume)
    outputs: Outputs = Outputs()
    languages: Annotated[list[Literal["en", "zh"]], Field(min_length=1)] = ["en", "zh"]
    splits: dict[str, float] = {"train": 1.0}
    imagepulse: Optional[ImagePulseParams] = None

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: dict[str, float]) -> dict[str, float]:
        allowed = ("train", "validation", "test")
        bad = [k for k in v if k not in allowed]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; allowed: {', '.join(allowed)}")
        if any(not 0 < f <= 1 for f in v.values()):
            raise ValueError(f"every split fraction must be in (0, 1], got {v}")
        if abs(sum(v.values()) - 1) > 1e-9:
            raise ValueError(f"split fractions must sum to 1, got {sum(v.values())}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if self.edits.counts() and not any(s.kind != "dataset" for s in self.sources):
            raise ValueError("edits need a source of images to edit (scenes, images, hf_dataset, text2image)")
        names = [source_label(s, i) for i, s in enumerate(self.sources)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique, repeated: {dup} (set `name:`)")
        clip_metrics = {"clip_t", "clipscore", "clip_i", "clip_dir"} & set(self.scoring.metrics)
        if clip_metrics and not self.models.clip:
            raise ValueError(f"metrics {sorted(clip_metrics)} need models.clip (e.g. tiny, small, paper)")
        if "dino" in self.scoring.metrics and not self.models.dino:
            raise ValueError("metric dino needs models.dino (e.g. tiny, paper)")
        if self.models.editor != "imagepulse":
            if self.imagepulse is not None:
                raise ValueError(f"the imagepulse: settings need models.editor imagepulse, "
                                 f"not {self.models.editor!r}")
            keep = [i for i, s in enumerate(self.sources) if getattr(s, "aspect", "square") != "square"]
            if keep:
                raise ValueError(f"sources {keep}: aspect keep needs models.editor imagepulse "
                                 f"(the {self.models.editor!r} backend edits squares)")
        return self


def source_label(src: Any, index: int) -> str:
    """A source's name in ids and lineage (a dataset source defaults to its format and position)."""
    return src.name or f"{src.format}-{index}"


def _format_error(exc: ValidationError, where: str) -> str:
    lines = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"{e['input']!r} is not allowed; expected {e['ctx']['expected']}"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown source kind {e['input'].get('kind')!r}; allowed: {', '.join(SOURCE_KINDS)}" \
                if isinstance(e.get("input"), dict) else msg
        lines.append(f"{where}: {loc}: {msg}")
    return "\n".join(lines)


def recipe_from_dict(data: Any, where: str = "<recipe>") -> Recipe:
    """Validate a parsed recipe; raises `RecipeError` listing every problem with its key."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe must be a mapping, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_error(exc, where)) from None
    _check_models(recipe, where)
    return recipe


def _check_models(recipe: Recipe, where: str) -> None:
    """Roles name things that exist: a registered backend, a detector it knows."""
    from nexus_gen.edit.backends import BACKENDS, PLANNED_BACKENDS

    editor = recipe.models.editor
    if editor not in BACKENDS and editor not in PLANNED_BACKENDS:
        raise RecipeError(f"{where}: models.editor: unknown edit backend {editor!r}; "
                          f"allowed: {', '.join([*BACKENDS, *PLANNED_BACKENDS])}")
    roles = BACKENDS[editor].ROLES if editor in BACKENDS else PLANNED_BACKENDS[editor][0]
    for role in recipe.models.backend_roles():
        if role not in roles:
            raise RecipeError(f"{where}: models.{role}: the {editor!r} backend has no such role; "
                              f"its roles: {', '.join(roles) or 'none'} (plus clip, dino for scoring)")
    if editor not in BACKENDS:
        return
    backend = BACKENDS[editor]
    det = recipe.models.detector
    if det is not None and backend.DETECTORS is not None and det not in backend.DETECTORS:
        raise RecipeError(f"{where}: models.detector: {det!r} is not a detector of backend "
                          f"{recipe.models.editor!r}; allowed: {', '.join(backend.DETECTORS)}")


def load_recipe(path_or_name: Union[str, Path]) -> tuple[Recipe, Path]:
    """A recipe from a YAML file, or by name from `datasets_spec/recipes/<name>.yaml`.
    Returns the recipe and its resolved file (relative paths in it resolve against its folder)."""
    from nexus_gen.spec_files import load_spec_yaml

    data, p = load_spec_yaml(path_or_name, RECIPES_DIR, "recipe", RecipeError)
    recipe = recipe_from_dict(data, str(p))
    _check_paths(recipe, p.resolve().parent, str(p))
    return recipe, p.resolve()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def relative_to(base: Path, patterns: list[str]) -> list[str]:
    """Recipe paths and globs made absolute against the recipe's folder."""
    return [str(Path(p).expanduser()) if Path(p).expanduser().is_absolute() else str(base / p)
            for p in patterns]


# what the safe decoder takes (nexus_gen.data.images), for folders read recursively
DECODER_SUFFIXES = IMAGE_SUFFIXES + (".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


def resolve_paths(patterns: list[str], base: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
                  recursive: bool = False) -> list[Path]:
    """Image files named by paths, folders (their files with these suffixes, sorted; `recursive`:
    every sub-folder too) or globs, relative to `base`."""
    out: list[Path] = []
    for pat in patterns:
        p = Path(relative_to(base, [pat])[0])
        if p.is_dir():
            files = p.rglob("*") if recursive else p.iterdir()
            out += sorted(x for x in files if x.is_file() and x.suffix.lower() in suffixes)
        elif any(c in pat for c in "*?["):
            out += [Path(m) for m in sorted(glob.glob(str(p), recursive=True)) if Path(m).is_file()]
        else:
            out.append(p)
    return out


def _check_paths(recipe: Recipe, base: Path, where: str) -> None:
    """Globs and folders that match nothing are config errors; a missing single file is not (it
    becomes a reject at build time, so one lost photo does not stop a nightly run)."""
    from nexus_gen.data.convert import check_header
    from nexus_gen.data.records import expand_inputs

    for i, s in enumerate(recipe.sources):
        if s.kind == "text2image" and s.prompts_file:
            pf = Path(relative_to(base, [s.prompts_file])[0])
            if not pf.is_file():
                raise RecipeError(f"{where}: sources.{i}.prompts_file: no such file: {pf}")
        if s.kind == "images":
            for pat in s.paths:
                if any(c in pat for c in "*?[") and not resolve_paths([pat], base):
                    raise RecipeError(f"{where}: sources.{i}: pattern {pat!r} matches no file (relative to {base})")
        if s.kind == "dataset":  # the converter's own input rules: files, folders, globs, datasets
            try:
                for p in expand_inputs(relative_to(base, s.inputs)):
                    check_header(s.format, p)
            except (ValueError, FileNotFoundError) as exc:
                raise RecipeError(f"{where}: sources.{i}.inputs: {exc}") from None


# Keys added after the first version, left out of the stored recipe and of its hash while they
# have their default: a recipe that does not use them hashes (and builds) as it did before.
_LATER_KEYS = {"models": {"segmenter": None, "controlnet": None, "style_adapter": None},
               "recipe": {"imagepulse": None},
               "source": {"aspect": "square", "recursive": False}}


def recipe_dump(recipe: Recipe) -> dict[str, Any]:
    """The validated recipe as JSON data (what `recipe.json` stores and the hash covers)."""
    d = recipe.model_dump(mode="json")

    def drop(x: dict[str, Any], kind: str) -> None:
        for k, default in _LATER_KEYS[kind].items():
            if k in x and x[k] == default:
                del x[k]

    drop(d, "recipe")
    drop(d["models"], "models")
    for s in d["sources"]:
        drop(s, "source")
    return d


def recipe_hash(recipe: Recipe) -> str:
    """A stable hash of what the recipe builds (its validated content, key order ignored)."""
    canon = json.dumps(recipe_dump(recipe), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]
