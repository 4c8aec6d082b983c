"""The imagepulse backend: ImagePulse / AnyEdit-style edits of real images through real models
chosen by id (`tiny` random-init models run the same code paths offline; their output is noise).

- remove: a zero-shot detector finds objects of the vocabulary (datasets_spec/vocab/objects.tsv),
  one is picked (by the item's seed), its box becomes a mask (rows = y, cols = x: right for
  non-square images, where ImagePulse's box-to-mask swaps them) or, with a segmenter, SAM's mask
  for that box, dilated; an inpainting pipeline
  redraws the region from a background prompt, and the result is pasted back through the dilated
  mask feathered by a blur, so every pixel outside the dilated mask is the source's (AnyEdit).
- add: the same pair reversed (ImagePulse's add and remove come from one pair), or an object of
  the vocabulary inpainted into a free region (no detection there); `add_methods` and the seed
  choose.
- style: an image-to-image pipeline with a named style's prompt (datasets_spec/vocab/styles.tsv)
  at the recipe's strength. As ImagePulse's InstantStyle stage when the recipe names them: a
  ControlNet fed the source's canny edges (edit/canny.py, no OpenCV), an IP-Adapter fed the
  style's reference image (`imagepulse.style_references/<key>.*`; only styles with one are
  planned), then a refiner image-to-image pass at `refine_strength` (ImagePulse: 0.6).
With a captioner (a VLM by id) both instructions and both captions are written by it from
versioned prompts and validated; invalid output falls back to the template, counted per reason
in run.json (`instruction_by`, `texts_by`).
The detector then checks the target: add -> the object is found inside the mask, remove -> it is
gone; the verdict and the detector's best score there become triplet columns.
Anything one item cannot survive (a source too small to inpaint, no detection, a mask covering
the image, a pipeline raising) is an `EditError`: a counted reject, the run goes on."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from nexus_gen.edit.backends import imagepulse_models as im
from nexus_gen.edit.backends import pipeline_batch as pb
from nexus_gen.edit.backends.base import EditError, EditOutput, EditSpec, SourceRef
from nexus_gen.edit.sources import SIDE_MULTIPLE, fit_source, read_source_image
from nexus_gen.edit.vocab import Style, VocabError, Word, load_objects, load_styles

FREE_REGION_SIDE = (0.25, 0.4)  # side of an inserted object's box, as a fraction of the short side
FREE_REGION_TRIES = 32


# -- pure image helpers (no model)
def box_to_mask(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """A boolean (height, width) mask of an (x0, y0, x1, y1) pixel box: rows are y, columns are x;
    the box's pixels are every pixel it touches, clipped to the image."""
    x0, y0, x1, y1 = box
    c0, c1 = max(0, int(np.floor(x0))), min(width, int(np.ceil(x1)))
    r0, r1 = max(0, int(np.floor(y0))), min(height, int(np.ceil(y1)))
    mask = np.zeros((height, width), bool)
    mask[r0:r1, c0:c1] = True
    return mask


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """The mask grown by `px` pixels in every direction (Euclidean distance <= px)."""
    if px <= 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= px


def paste_back(source: Image.Image, edited: Image.Image, core: np.ndarray, region: np.ndarray,
               blur: float) -> Image.Image:
    """`edited` over `source` through `region` feathered by a Gaussian of sigma `blur`: fully the
    edit on `core` (the object's own mask), blended towards the region's edge, and exactly the
    source's bytes outside `region`."""
    a = np.asarray(source.convert("RGB"), dtype=np.float32)
    b = np.asarray(edited.convert("RGB").resize(source.size, Image.Resampling.BICUBIC), dtype=np.float32)
    alpha = ndimage.gaussian_filter(region.astype(np.float32), blur) if blur > 0 else region.astype(np.float32)
    alpha = np.where(core, 1.0, np.where(region, alpha, 0.0))[..., None]
    mixed = np.clip(np.rint(a + alpha * (b - a)), 0, 255).astype(np.uint8)
    src = np.asarray(source.convert("RGB"))
    return Image.fromarray(np.where(region[..., None], mixed, src), "RGB")


def _pipeline_size(img: Image.Image) -> tuple[int, int]:
    w, h = img.size
    return max(SIDE_MULTIPLE, w // SIDE_MULTIPLE * SIDE_MULTIPLE), max(SIDE_MULTIPLE, h // SIDE_MULTIPLE * SIDE_MULTIPLE)


# -- texts (templates; EN and ZH)
ADD_TEXT = (("Add {a} {en}.", "添加一个{zh}。"), ("Put {a} {en} in the picture.", "在图中放一个{zh}。"))
REMOVE_TEXT = (("Remove the {en}.", "去掉{zh}。"), ("Take the {en} out of the picture.", "把{zh}从图中移除。"))
STYLE_TEXT = ("Turn this image into {en} style.", "把这张图片变成{zh}风格。")
UNSTYLE_TEXT = ("Turn this {en} image back into a photo.", "把这张{zh}风格的图片还原成照片。")
PLAIN_CAPTION = ("a photo", "一张照片")


def article(en: str) -> str:
    """`a` or `an` before an English noun (by its first letter)."""
    return "an" if en[:1].lower() in "aeiou" else "a"


def _texts(pair: tuple[str, str], en: str, zh: str) -> dict[str, str]:
    return {"en": pair[0].format(en=en, a=article(en)), "zh": pair[1].format(zh=zh)}


class _Failing:
    """Stands in for a captioner that could not load: every text falls back (counted)."""

    def write(self, *a: Any) -> str:
        raise RuntimeError("the captioner could not be loaded")


class ImagePulseBackend:
    NAME = "imagepulse"
    ROLES = ("detector", "inpainter", "stylizer", "segmenter", "captioner", "controlnet", "style_adapter",
             "refiner")
    STYLE_ONLY = ("controlnet", "style_adapter", "refiner")  # parts of the style stage
    DETECTORS = None  # any zero-shot detector id, folder or profile (tiny, small, paper)

    def __init__(self, models: dict[str, str], params: Any = None, base: Optional[Path] = None,
                 device: str = "cpu", verify: bool = True) -> None:
        from nexus_gen.edit.recipe import ImagePulseParams

        self.models = {k: v for k, v in models.items() if k in self.ROLES and v}
        self.p = params or ImagePulseParams()
        self.base = Path(base) if base is not None else Path.cwd()
        self.device = device
        self.verifies = verify and "detector" in self.models
        self._resolved: dict[str, im.Resolved] = {}
        self._vocab: Optional[tuple[Word, ...]] = None
        self._styles: Optional[tuple[Style, ...]] = None

    @classmethod
    def from_recipe(cls, recipe: Any, base: Any, device: str = "cpu",
                    verify: bool = True) -> "ImagePulseBackend":
        return cls(recipe.models.backend_roles(), recipe.imagepulse, base, device, verify)

    # -- word lists
    def _file(self, name: Optional[str]) -> Optional[Path]:
        if name is None:
            return None
        p = Path(name).expanduser()
        return p if p.is_absolute() else self.base / p

    def vocabulary(self) -> tuple[Word, ...]:
        if self._vocab is None:
            self._vocab = load_objects(self._file(self.p.vocabulary))
        return self._vocab

    def styles(self) -> tuple[Style, ...]:
        if self._styles is None:
            self._styles = load_styles(self._file(self.p.styles))
        return self._styles

    # -- models
    def resolved(self, role: str) -> im.Resolved:
        if role not in self._resolved:
            self._resolved[role] = im.resolve(role, self.models[role])
        return self._resolved[role]

    def check_models(self) -> list[str]:
        problems = []
        for role in self.models:
            r = self.resolved(role)
            why = im.check(r)
            if why:
                shown = r.spec if r.spec == r.source else f"{r.spec} -> {r.source}"
                problems.append(f"models.{role}: {shown!r} cannot be loaded: {why}")
        return problems + self.config_problems()

    def config_problems(self) -> list[str]:
        """Problems of the settings (word lists, style references, roles that need another),
        found without building or loading any model (`--dry-run` reports them too)."""
        problems = []
        for what, load, needed in (("vocabulary", self.vocabulary, "detector"),
                                   ("styles", self.styles, "stylizer")):
            if needed in self.models:
                try:
                    load()
                except VocabError as exc:
                    problems.append(f"imagepulse.{what}: {exc}")
        lone = [r for r in self.STYLE_ONLY if r in self.models and "stylizer" not in self.models]
        if lone:
            problems.append(f"models.{lone[0]}: is part of the style stage and needs models.stylizer")
        if "style_adapter" in self.models and "stylizer" in self.models:
            problems += self._reference_problems()
        return problems

    def _reference_problems(self) -> list[str]:
        folder = self._file(self.p.style_references)
        if folder is None:
            return ["models.style_adapter: needs imagepulse.style_references, a folder with one reference "
                    "image per style named by its key (e.g. oil_painting.png)"]
        if not folder.is_dir():
            return [f"imagepulse.style_references: no such folder: {folder}"]
        try:
            if not self.style_references():
                keys = ", ".join(s.key for s in self.styles()[:3])
                return [f"imagepulse.style_references: {folder} has no image named by a style key "
                        f"({keys}, ...): no style could be planned"]
        except VocabError:
            pass  # reported above
        return []

    def style_references(self) -> dict[str, Path]:
        """Style key -> its reference image in `imagepulse.style_references` (any decoder format)."""
        from nexus_gen.edit.recipe import DECODER_SUFFIXES

        folder = self._file(self.p.style_references)
        if folder is None or not folder.is_dir():
            return {}
        files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in DECODER_SUFFIXES}
        return {s.key: files[s.key] for s in self.styles() if s.key in files}

    def describe_models(self) -> dict[str, str]:
        return {role: self.resolved(role).model_id for role in self.models}

    def model_report(self) -> dict[str, dict[str, Any]]:
        """Role -> spec, id and status, without building a tiny model or loading any weights."""
        out = {}
        for role, spec in self.models.items():
            mid = im.model_id_of(role, spec)
            if im.is_tiny(spec):
                status = "tiny: random-init, built locally on first use"
            else:
                why = im.check(im.resolve(role, spec))
                status = "ok" if why is None else f"cannot be loaded: {why}"
            mem = im.ROLE_MEMORY_GB.get(role, {}).get(spec, im.ID_MEMORY_GB.get(mid))
            out[role] = {"spec": spec, "id": mid, "status": status,
                         **({"gpu_memory_gb": mem} if mem is not None else {})}
        return out

    def _detector(self) -> im.ZeroShotDetector:
        return im.load_detector(self.resolved("detector"), self.device, self.p.dtype)

    # -- planning
    def styles_for(self, source_kind: str) -> tuple[str, ...]:
        if source_kind != "image" or "stylizer" not in self.models:
            return ()
        if "style_adapter" in self.models:  # only styles with a reference image for the IP-Adapter
            refs = self.style_references()
            return tuple(s.key for s in self.styles() if s.key in refs)
        return tuple(s.key for s in self.styles())

    def supports(self, source_kind: str, edit_type: str) -> bool:
        if source_kind != "image":
            return False
        if edit_type == "style":
            return "stylizer" in self.models
        return edit_type in ("add", "remove") and {"detector", "inpainter"} <= set(self.models)

    # -- execution
    def edit(self, source: SourceRef, spec: EditSpec, seed: int) -> EditOutput:
        return pb.drive_one(self._steps(source, spec, seed), self._run)

    def edit_batch(self, items: list[tuple[SourceRef, EditSpec, int]]) -> list[Any]:
        """Every item's EditOutput or the exception that rejects it, in order; the pipeline
        calls of items that share a pipeline and its settings run in batches of
        `imagepulse.batch_size` (pipeline_batch.py)."""
        return pb.drive_all([self._steps(*it) for it in items], self._run)

    def _run(self, calls: list[pb.PipeCall]) -> list[Any]:
        loaders = {"inpainter": lambda: im.load_inpainter(self.resolved("inpainter"), self.device, self.p.dtype),
                   "stylizer": self._style_pipeline,
                   "refiner": lambda: im.load_refiner(self.resolved("refiner"), self.device, self.p.dtype)}
        return pb.run_calls(calls, self.p.batch_size, lambda role: loaders[role](),
                            lambda role: self.resolved(role).model_id)

    def _style_pipeline(self):
        cn = self.resolved("controlnet") if "controlnet" in self.models else None
        ad = self.resolved("style_adapter") if "style_adapter" in self.models else None
        return im.load_stylizer(self.resolved("stylizer"), self.device, self.p.dtype, cn, ad,
                                self.p.style_adapter_scale)

    def _steps(self, source: SourceRef, spec: EditSpec, seed: int) -> pb.Steps:
        """One edit as a generator of its pipeline calls (pipeline_batch.py)."""
        img = read_source_image(source, self.device)
        if min(img.size) < self.p.min_side:
            raise EditError(f"source image {source.path or source.key} is {img.size[0]}x{img.size[1]}: too small to "
                            f"inpaint (shorter side < imagepulse.min_side {self.p.min_side})")
        img = fit_source(img, source.size, source.aspect)
        lineage = {"backend": self.NAME, "edit": spec.to_json(), "seed": seed,
                   "models": self.describe_models(), "size": list(img.size),
                   **({"generated": source.generated} if source.generated else {}),
                   **({"dataset": source.dataset} if source.dataset else {})}
        base = {"en": source.caption or PLAIN_CAPTION[0], "zh": None if source.caption else PLAIN_CAPTION[1]}
        if spec.type == "style":
            return (yield from self._style(img, spec, seed, base, lineage))
        if spec.type == "remove":
            return (yield from self._remove(img, seed, base, lineage, reverse=False))
        method = self.p.add_methods[seed % len(self.p.add_methods)]
        if method == "reverse":
            return (yield from self._remove(img, seed, base, lineage, reverse=True))
        return (yield from self._add_free(img, seed, base, lineage))

    def _written(self, out: EditOutput, forward_task: str, reverse_task: str, mention: dict[str, str],
                 object_in: Optional[str]) -> EditOutput:
        """With a captioner, the triplet's texts rewritten by it: the forward instruction (seeing
        the source), the reverse one (seeing the target), and each image's caption (the one
        named by `object_in`, source or target, must mention the object); each text that fails
        validation keeps its template. Lineage says which per text and language, and the
        prompt versions."""
        from nexus_gen.edit.instructions import CAPTION_PROMPT_VERSION, PROMPT_VERSION, written_instruction

        if "captioner" not in self.models:
            return out
        try:
            writer = im.load_captioner(self.resolved("captioner"), self.device, self.p.dtype)
        except Exception:
            writer = _Failing()
        out.instruction, fwd_by = written_instruction(writer, out.source, forward_task, out.instruction, mention)
        out.reverse_instruction, rev_by = written_instruction(writer, out.target, reverse_task,
                                                              out.reverse_instruction, mention)
        cap_by = {}
        for side, img in (("source", out.source), ("target", out.target)):
            attr = f"{side}_caption"
            text, cap_by[side] = written_instruction(writer, img, "", getattr(out, attr),
                                                     mention if object_in == side else {}, kind="caption")
            setattr(out, attr, text)
        out.lineage.update(instruction_by=fwd_by, reverse_instruction_by=rev_by, caption_by=cap_by,
                           instruction_prompt=PROMPT_VERSION, caption_prompt=CAPTION_PROMPT_VERSION)
        return out

    def _detect(self, img: Image.Image, labels: list[str], threshold: float) -> list[im.Box]:
        try:
            return self._detector().detect(img, labels, threshold)
        except Exception as exc:
            raise EditError(f"detector {self.resolved('detector').model_id} failed: "
                            f"{type(exc).__name__}: {exc}") from None

    def _masks(self, img: Image.Image, box: tuple[float, float, float, float],
               segment: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The object's mask (the segmenter's, prompted with the box, else the box) and the
        dilated region the edit may change."""
        w, h = img.size
        core = box_to_mask(box, h, w)
        if segment and "segmenter" in self.models:
            r = self.resolved("segmenter")
            try:
                core = im.load_segmenter(r, self.device, self.p.dtype).segment(img, box)
            except Exception as exc:
                raise EditError(f"segmenter {r.model_id} failed: {type(exc).__name__}: {exc}") from None
            if core.shape != (h, w) or not core.any():
                raise EditError(f"segmenter {r.model_id} gave an empty mask for the box {[round(v) for v in box]}")
        region = dilate(core, self.p.mask_dilation)
        frac = float(region.mean())
        if frac > self.p.max_mask_fraction:
            raise EditError(f"the dilated mask covers {frac:.0%} of the image (more than "
                            f"imagepulse.max_mask_fraction {self.p.max_mask_fraction:.0%}): nothing is left to keep")
        return core, region

    def guidance(self, role: str) -> Optional[float]:
        """The guidance scale of this role's pipeline (None: the pipeline's default)."""
        g = self.p.guidance
        return g.get(role) if isinstance(g, dict) else g

    def _inpaint(self, img: Image.Image, region: np.ndarray, prompt: str, seed: int) -> pb.PipeCall:
        """The inpainting call for `region` of `img` (at the pipeline's size)."""
        w, h = _pipeline_size(img)
        mask = Image.fromarray(np.where(region, 255, 0).astype(np.uint8), "L")
        shared: dict[str, Any] = dict(height=h, width=w, num_inference_steps=self.p.inpaint_steps)
        if self.guidance("inpainter") is not None:
            shared["guidance_scale"] = self.guidance("inpainter")
        return pb.PipeCall("inpainter", seed, dict(prompt=prompt, image=img.resize((w, h), Image.Resampling.BICUBIC),
                                                   mask_image=mask.resize((w, h), Image.Resampling.NEAREST)), shared)

    def _remove(self, img: Image.Image, seed: int, base: dict, lineage: dict, reverse: bool) -> pb.Steps:
        vocab = self.vocabulary()
        dets = self._detect(img, [w.en for w in vocab], self.p.detector_threshold)
        if not dets:
            raise EditError(f"the detector found none of the {len(vocab)} vocabulary objects "
                            f"(threshold {self.p.detector_threshold})")
        dets = sorted(dets, key=lambda d: (-d.score, d.label, d.box))
        pick = random.Random(seed).choice(dets)
        word = vocab[pick.label]
        core, region = self._masks(img, pick.box)
        inpainted = yield self._inpaint(img, region, self.p.background_prompt, seed)
        removed = paste_back(img, inpainted, core, region, self.p.blur)
        with_cap = base
        without_cap = {"en": f"{base['en']}, without the {word.en}",
                       "zh": f"{base['zh']}，没有{word.zh}" if base["zh"] else None}
        variant = seed % len(REMOVE_TEXT)
        rem, add = _texts(REMOVE_TEXT[variant], en=word.en, zh=word.zh), _texts(ADD_TEXT[variant], en=word.en, zh=word.zh)
        lin = {**lineage, "object": word.en, "box": [float(v) for v in pick.box],
               "detector_score": pick.score, "mask_fraction": round(float(region.mean()), 6),
               "method": "reverse" if reverse else "remove"}
        verify = {"object": word.en}
        mention = {"en": word.en, "zh": word.zh}
        add_task, rem_task = f"add {article(word.en)} {word.en}", f"remove the {word.en}"
        if reverse:  # add: the inpainted image gets the object back
            out = EditOutput("add", removed, img, region, add, rem, without_cap, with_cap, lin, verify)
            return self._written(out, add_task, rem_task, mention, "target")
        out = EditOutput("remove", img, removed, region, rem, add, with_cap, without_cap, lin, verify)
        return self._written(out, rem_task, add_task, mention, "source")

    def _free_box(self, img: Image.Image, rng: random.Random,
                  taken: list[im.Box]) -> tuple[float, float, float, float]:
        w, h = img.size
        for _ in range(FREE_REGION_TRIES):
            side = rng.uniform(*FREE_REGION_SIDE) * min(w, h)
            x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
            box = (x0, y0, x0 + side, y0 + side)
            if all(box[2] <= t.box[0] or t.box[2] <= box[0] or box[3] <= t.box[1] or t.box[3] <= box[1]
                   for t in taken):
                return box
        raise EditError(f"no free region for a new object: {len(taken)} detections cover the image")

    def _add_free(self, img: Image.Image, seed: int, base: dict, lineage: dict) -> pb.Steps:
        vocab = self.vocabulary()
        rng = random.Random(seed)
        word = vocab[rng.randrange(len(vocab))]
        taken = self._detect(img, [w.en for w in vocab], self.p.detector_threshold)
        box = self._free_box(img, rng, taken)
        core, region = self._masks(img, box, segment=False)  # nothing there to segment
        inpainted = yield self._inpaint(img, region, f"a photo of a {word.en}", seed)
        added = paste_back(img, inpainted, core, region, self.p.blur)
        with_cap = {"en": f"{base['en']}, with {article(word.en)} {word.en}",
                    "zh": f"{base['zh']}，有一个{word.zh}" if base["zh"] else None}
        variant = seed % len(ADD_TEXT)
        add, rem = _texts(ADD_TEXT[variant], en=word.en, zh=word.zh), _texts(REMOVE_TEXT[variant], en=word.en, zh=word.zh)
        lin = {**lineage, "object": word.en, "box": [float(v) for v in box],
               "mask_fraction": round(float(region.mean()), 6), "method": "free_region"}
        out = EditOutput("add", img, added, region, add, rem, base, with_cap, lin, {"object": word.en})
        return self._written(out, f"add {article(word.en)} {word.en}", f"remove the {word.en}",
                             {"en": word.en, "zh": word.zh}, "target")

    def _style(self, img: Image.Image, spec: EditSpec, seed: int, base: dict, lineage: dict) -> pb.Steps:
        styles = {s.key: s for s in self.styles()}
        if spec.style not in styles:
            raise EditError(f"style {spec.style!r} is not in the style list ({len(styles)} styles)")
        st = styles[spec.style]
        out, extra = yield from self._stylize(img, st, seed)
        target = out.convert("RGB").resize(img.size, Image.Resampling.BICUBIC)
        styled = {"en": f"{base['en']}, in {st.en} style", "zh": f"{base['zh']}，{st.zh}风格" if base["zh"] else None}
        out = EditOutput("style", img, target, np.ones((img.size[1], img.size[0]), bool),
                         _texts(STYLE_TEXT, en=st.en, zh=st.zh), _texts(UNSTYLE_TEXT, en=st.en, zh=st.zh), base,
                         styled, {**lineage, "style": st.key, "strength": self.p.style_strength, **extra}, {})
        return self._written(out, f"restyle it as {st.en}", f"turn this {st.en} image back into a photo",
                             {"en": st.en, "zh": st.zh}, None)

    def _stylize(self, img: Image.Image, st: Style, seed: int):
        """The style stage: image-to-image with the style's prompt; with a ControlNet on the
        source's canny edges and an IP-Adapter on the style's reference image when the recipe
        names them (InstantStyle); then the refiner's image-to-image pass. Yields its pipeline
        calls; returns the image at the pipeline's size and lineage of what ran."""
        from nexus_gen.edit.canny import canny_control_image

        p, extra = self.p, {}
        w, h = _pipeline_size(img)
        src = img.resize((w, h), Image.Resampling.BICUBIC)
        per_item: dict[str, Any] = dict(prompt=st.prompt, image=src)
        shared: dict[str, Any] = dict(strength=p.style_strength, num_inference_steps=p.style_steps)
        if self.guidance("stylizer") is not None:
            shared["guidance_scale"] = self.guidance("stylizer")
        share_key: tuple = ()
        if "controlnet" in self.models:
            control = canny_control_image(src, p.canny_low, p.canny_high, p.canny_sigma)
            per_item["control_image"] = control
            shared["controlnet_conditioning_scale"] = p.controlnet_scale
            extra["canny"] = {"low": p.canny_low, "high": p.canny_high, "sigma": p.canny_sigma,
                              "edge_fraction": round(float(np.asarray(control)[..., 0].mean() / 255), 6)}
        if "style_adapter" in self.models:
            ref = self.style_references().get(st.key)
            if ref is None:
                raise EditError(f"style {st.key!r} has no reference image in imagepulse.style_references")
            from nexus_gen.edit.backends.scenes import read_photo

            shared["ip_adapter_image"] = read_photo(str(ref))  # one per batch: batches share the style
            share_key = (str(ref),)
            extra["style_reference"] = ref.name
        out = yield pb.PipeCall("stylizer", seed, per_item, shared, share_key)
        if "refiner" in self.models:
            rshared: dict[str, Any] = dict(strength=p.refine_strength, num_inference_steps=p.style_steps)
            if self.guidance("refiner") is not None:
                rshared["guidance_scale"] = self.guidance("refiner")
            out = yield pb.PipeCall("refiner", seed, dict(prompt=st.prompt, image=out), rshared)
            extra["refine_strength"] = p.refine_strength
        return out, extra

    # -- verification
    def verify(self, out: EditOutput) -> dict[str, Any]:
        """The detector on the target, for the edit's object: its best score with the box centre
        inside the mask, and the verdict (score >= the threshold): add -> `object_in_mask`,
        remove -> `object_present` (True means the removal failed)."""
        verdict: dict[str, Any] = {"object_in_mask": None, "object_present": None, "detector_score": None}
        obj = out.verify.get("object")
        if not self.verifies or obj is None or out.edit_type not in ("add", "remove"):
            return verdict
        best = 0.0
        for d in self._detect(out.target, [obj], 0.0):
            cx, cy = int((d.box[0] + d.box[2]) / 2), int((d.box[1] + d.box[3]) / 2)
            if 0 <= cy < out.mask.shape[0] and 0 <= cx < out.mask.shape[1] and out.mask[cy, cx]:
                best = max(best, d.score)
        verdict["object_in_mask" if out.edit_type == "add" else "object_present"] = \
            best >= self.p.detector_threshold
        verdict["detector_score"] = best
        return verdict
