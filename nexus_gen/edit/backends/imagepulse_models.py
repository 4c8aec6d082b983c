"""The models of the `imagepulse` backend, by role: a profile name (`tiny`, `small`, `paper`), a
hub id or a local folder becomes something to load, is checked without loading weights (the
build stops before any work on an id that cannot be loaded), and loads once per process.

- detector: a zero-shot detector through transformers (`AutoModelForZeroShotObjectDetection`:
  OWLv2 or Grounding DINO), wrapped so both give boxes in source pixels.
- inpainter: any diffusers inpainting pipeline (`DiffusionPipeline` reads its class from the
  folder: FluxFillPipeline for FLUX.1-Fill-dev, StableDiffusionInpaintPipeline for SD).
- stylizer: a diffusers image-to-image pipeline (`AutoPipelineForImage2Image`).
- segmenter (optional): SAM through transformers, prompted with the detected box.
- generator (text2image sources): a diffusers text-to-image pipeline (`DiffusionPipeline`).
- captioner (optional): a VLM (Qwen2.5-VL class) writing the instructions (edit/instructions.py).
- controlnet (optional): a ControlNet by id (its config's class: ControlNetModel for SD / SDXL,
  FluxControlNetModel for FLUX); with it the stylizer loads as its ControlNet image-to-image
  pipeline (`AutoPipelineForImage2Image(..., controlnet=...)`), fed canny edges of the source.
- style_adapter (optional): an IP-Adapter, `<repo or folder>[:<subfolder>/<weight file>]`, loaded
  into the stylizer by diffusers' `load_ip_adapter` (InstantStyle: scale on the style blocks only).
- refiner (optional): an image-to-image pipeline run on the stylizer's output (ImagePulse: FLUX.1-dev
  at strength 0.6 after the SDXL InstantStyle stage).
`tiny` is a random-init model built locally (nexus_gen/models/tiny/)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

log = logging.getLogger(__name__)

# the file whose presence says a folder or hub repo holds this kind of model
_KIND_FILE = {"detector": "config.json", "inpainter": "model_index.json",
              "stylizer": "model_index.json", "generator": "model_index.json", "segmenter": "config.json",
              "captioner": "config.json", "controlnet": "config.json", "refiner": "model_index.json"}
IP_ADAPTER_DEFAULT_WEIGHT = "ip-adapter.safetensors"  # a style_adapter spec without `:<weight>`


# tiny variants besides `tiny` (role -> spec -> (name, builder)): another class of the same role
def _tiny_variants() -> dict[str, dict[str, tuple[str, Callable[[], Path]]]]:
    from nexus_gen.models.tiny import TINY_GROUNDING_DINO_NAME, tiny_grounding_dino_dir

    return {"detector": {"tiny-grounding-dino": (TINY_GROUNDING_DINO_NAME, tiny_grounding_dino_dir)}}


TINY_SPECS = ("tiny", "tiny-grounding-dino")


def is_tiny(spec: str) -> bool:
    """A random-init model built locally (`tiny`, or a tiny variant such as `tiny-grounding-dino`)."""
    return spec in TINY_SPECS


def _tiny(role: str) -> Path:
    from nexus_gen.models.tiny import (tiny_controlnet_dir, tiny_ip_adapter_dir, tiny_owlv2_dir,
                                       tiny_vlm_dir, tiny_sam_dir, tiny_sd_dir, tiny_sd_inpaint_dir)

    return {"detector": tiny_owlv2_dir, "inpainter": tiny_sd_inpaint_dir, "stylizer": tiny_sd_dir,
            "generator": tiny_sd_dir, "segmenter": tiny_sam_dir, "captioner": tiny_vlm_dir,
            "controlnet": tiny_controlnet_dir, "style_adapter": tiny_ip_adapter_dir,
            "refiner": tiny_sd_dir}[role]()


def _tiny_name(role: str) -> str:
    from nexus_gen.models.tiny import (TINY_CONTROLNET_NAME, TINY_IP_ADAPTER_NAME, TINY_OWLV2_NAME,
                                       TINY_VLM_NAME, TINY_SAM_NAME, TINY_SD_INPAINT_NAME, TINY_SD_NAME)

    return {"detector": TINY_OWLV2_NAME, "inpainter": TINY_SD_INPAINT_NAME, "stylizer": TINY_SD_NAME,
            "generator": TINY_SD_NAME, "segmenter": TINY_SAM_NAME, "captioner": TINY_VLM_NAME,
            "controlnet": TINY_CONTROLNET_NAME, "style_adapter": TINY_IP_ADAPTER_NAME,
            "refiner": TINY_SD_NAME}[role]


PROFILES: dict[str, dict[str, str]] = {
    "detector": {"paper": "IDEA-Research/grounding-dino-base",
                 "small": "google/owlv2-base-patch16-ensemble"},
    "inpainter": {"paper": "black-forest-labs/FLUX.1-Fill-dev",
                  "small": "stable-diffusion-v1-5/stable-diffusion-inpainting"},
    "stylizer": {"paper": "black-forest-labs/FLUX.1-dev",
                 "small": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
    "segmenter": {"paper": "facebook/sam-vit-huge", "small": "facebook/sam-vit-base"},
    "generator": {"paper": "black-forest-labs/FLUX.1-dev",
                  "small": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
    "captioner": {"paper": "Qwen/Qwen2.5-VL-7B-Instruct", "small": "Qwen/Qwen2.5-VL-3B-Instruct"},
    # InstantStyle (ImagePulse's style stage): SDXL + canny ControlNet + IP-Adapter, FLUX refine
    "controlnet": {"paper": "diffusers/controlnet-canny-sdxl-1.0", "small": "lllyasviel/sd-controlnet-canny"},
    "style_adapter": {"paper": "h94/IP-Adapter:sdxl_models/ip-adapter_sdxl.safetensors",
                      "small": "h94/IP-Adapter:models/ip-adapter_sd15.safetensors"},
    "refiner": {"paper": "black-forest-labs/FLUX.1-dev",
                "small": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
}
# the SDXL base of the paper InstantStyle stage (`stylizer:` names it by id in imagepulse.yaml)
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
# bf16 memory each role needs on the GPU (weights + activations at 1024 px; README table)
ROLE_MEMORY_GB = {"detector": {"paper": 2, "small": 1}, "inpainter": {"paper": 34, "small": 4},
                  "stylizer": {"paper": 34, "small": 4}, "segmenter": {"paper": 3, "small": 1},
                  "generator": {"paper": 34, "small": 4}, "captioner": {"paper": 17, "small": 8},
                  "controlnet": {"paper": 3, "small": 1}, "style_adapter": {"paper": 4, "small": 2},
                  "refiner": {"paper": 34, "small": 4}}
ID_MEMORY_GB = {SDXL_BASE: 10}  # models a recipe names by id rather than by profile


@dataclass(frozen=True)
class Resolved:
    role: str
    spec: str  # what the recipe says
    model_id: str  # the hub id, the folder, or `tiny:<name>` (lineage)
    source: str  # what from_pretrained gets: a folder or a hub id
    local: bool
    weight: Optional[str] = None  # style_adapter: `<subfolder>/<weight file>` inside `source`

    @property
    def kind_file(self) -> str:
        """The file whose presence says `source` holds this role's model."""
        return self.weight if self.weight is not None else _KIND_FILE[self.role]


def model_id_of(role: str, spec: str) -> str:
    """The id a role's recipe value names (lineage, fingerprints), without building or loading."""
    if spec == "tiny":
        return f"tiny:{_tiny_name(role)}"
    if spec in _tiny_variants().get(role, {}):
        return f"tiny:{_tiny_variants()[role][spec][0]}"
    hub = PROFILES.get(role, {}).get(spec, spec)
    p = Path(hub).expanduser()
    return str(p.resolve()) if p.exists() else hub


def _split_weight(role: str, where: str) -> tuple[str, Optional[str]]:
    """A style_adapter's `<repo or folder>[:<subfolder>/<weight file>]` as its two parts."""
    if role != "style_adapter":
        return where, None
    repo, sep, weight = where.partition(":")
    return (repo, weight) if sep and weight else (where, IP_ADAPTER_DEFAULT_WEIGHT)


def resolve(role: str, spec: str) -> Resolved:
    """A role's recipe value as what to load (builds a `tiny` model on first use)."""
    if spec == "tiny":
        d = _tiny(role)
        return Resolved(role, spec, model_id_of(role, spec), str(d), True, _split_weight(role, "")[1])
    if spec in _tiny_variants().get(role, {}):
        return Resolved(role, spec, model_id_of(role, spec), str(_tiny_variants()[role][spec][1]()), True)
    hub = PROFILES.get(role, {}).get(spec, spec)
    where, weight = _split_weight(role, hub)
    p = Path(where).expanduser()
    if p.exists():
        full = str(p.resolve())
        return Resolved(role, spec, full + (f":{weight}" if weight else ""), full, True, weight)
    return Resolved(role, spec, hub, where, False, weight)


def check(r: Resolved) -> Optional[str]:
    """Why this model cannot be loaded (None: it can), found without loading weights: a local
    folder must hold the model's index file; a hub id must give it from the local cache, else
    from the hub, and fails at once, without retries, when the hub is offline or unreachable
    (nexus_gen.scoring.hub)."""
    want = r.kind_file
    if r.local:
        p = Path(r.source)
        if not (p / want).is_file():
            return f"{p} is not a {r.role} model folder ({want} missing)"
        return None
    if r.source.startswith((".", "/", "~")) or r.source.count("/") != 1:
        return f"no such folder, and {r.source!r} is not a hub id (owner/name)"
    from huggingface_hub import hf_hub_download

    from nexus_gen.scoring import hub

    fix = f"download it first (huggingface-cli download {r.source}) or name a local folder"
    why = hub.unavailable_reason(r.source, [want])
    if why:
        return f"{why} ({want}); {fix}"
    try:
        hf_hub_download(r.source, want)
    except Exception as exc:  # gated, no such repo, no such file, ...
        first = (str(exc).strip().splitlines() or [""])[0].rstrip(".")
        return f"{want} cannot be fetched from the hub: {type(exc).__name__}: {first}; {fix}"
    return None


def torch_dtype(name: str, device: str):
    """The recipe's dtype: `auto` is bfloat16 on CUDA and float32 elsewhere."""
    from nexus_gen.models.pipelines import torch_dtype as named_dtype

    if name == "auto":
        return named_dtype("bfloat16" if str(device).startswith("cuda") else "float32")
    return named_dtype(name)


def cached(role: str, r: Resolved, device: str, dtype: str, load: Callable[[], Any]) -> Any:
    from nexus_gen.models.loaded import cached_model

    return cached_model(f"imagepulse-{role}", r.model_id, str(device), dtype, load)


@dataclass(frozen=True)
class Box:
    label: int  # index into the query list
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels


class ZeroShotDetector:
    """OWLv2 / Grounding DINO behind one call: `detect(image, labels, threshold)` -> boxes in the
    image's pixels. OWLv2 pads to a square before resizing, so its boxes are scaled by the longer
    side (for both axes); Grounding DINO's by height and width."""

    def __init__(self, r: Resolved, device: str, dtype) -> None:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(r.source)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(r.source, dtype=dtype)
        self.model = self.model.to(device).eval()
        self.kind = self.model.config.model_type
        self.device, self.dtype = device, dtype
        self.model_id = r.model_id

    def detect(self, image, labels: Sequence[str], threshold: float) -> list[Box]:
        import torch

        w, h = image.size
        if self.kind == "owlv2":
            queries = [f"a photo of a {x}" for x in labels]
            inputs = self.processor(text=[queries], images=image, return_tensors="pt").to(self.device)
        else:  # Grounding DINO's prompt: the names, each ended by a full stop
            inputs = self.processor(text=" ".join(f"{x.lower()}." for x in labels), images=image,
                                    return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model(**inputs)
        if self.kind == "owlv2":
            side = max(w, h)
            res = self.processor.post_process_grounded_object_detection(
                out, threshold=threshold, target_sizes=[(side, side)])[0]
            found = zip([int(i) for i in res["labels"]], res["scores"].float().tolist(),
                        res["boxes"].float().tolist())
        else:
            found = self._grounded(out, inputs["input_ids"][0].tolist(), len(labels), threshold, w, h)
        boxes = []
        for i, s, b in found:
            x0, y0, x1, y1 = max(0.0, b[0]), max(0.0, b[1]), min(float(w), b[2]), min(float(h), b[3])
            if i >= 0 and x1 - x0 >= 1 and y1 - y0 >= 1:  # on the image and not degenerate
                boxes.append(Box(i, round(s, 6), (x0, y0, x1, y1)))
        return boxes

    def _grounded(self, out, ids: list[int], n_labels: int, threshold: float, w: int, h: int):
        """Grounding DINO's queries as (label index, score, pixel box): each query goes to the name
        whose tokens (between full stops) it scores highest, rather than to the decoded token
        phrase, which need not spell a whole name."""
        tok = self.processor.tokenizer
        stop, special = tok.convert_tokens_to_ids("."), set(tok.all_special_ids)
        spans: list[list[int]] = [[]]
        for pos, t in enumerate(ids):
            if t == stop:
                spans.append([])
            elif t not in special:
                spans[-1].append(pos)
        spans = [sp for sp in spans if sp][:n_labels]  # a name cut off by the text limit is not asked
        if not spans:
            return []
        probs = out.logits[0].float().sigmoid()  # (queries, text positions)
        per_name = probs.new_zeros((probs.shape[0], len(spans)))
        for k, sp in enumerate(spans):
            per_name[:, k] = probs[:, sp].max(dim=1).values
        score, label = per_name.max(dim=1)
        found = []
        for q in range(probs.shape[0]):
            if float(score[q]) > threshold:
                cx, cy, bw, bh = out.pred_boxes[0, q].float().tolist()
                found.append((int(label[q]), float(score[q]),
                              [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]))
        return found


def load_detector(r: Resolved, device: str, dtype: str) -> ZeroShotDetector:
    return cached("detector", r, device, dtype,
                  lambda: ZeroShotDetector(r, device, torch_dtype(dtype, device)))


def _pipeline(r: Resolved, device: str, dtype: str, image_to_image: bool):
    if image_to_image:
        from diffusers import AutoPipelineForImage2Image as Cls
    else:
        from diffusers import DiffusionPipeline as Cls
    pipe = Cls.from_pretrained(r.source, dtype=torch_dtype(dtype, device))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_inpainter(r: Resolved, device: str, dtype: str):
    return cached("inpainter", r, device, dtype, lambda: _pipeline(r, device, dtype, False))


def load_stylizer(r: Resolved, device: str, dtype: str, controlnet: Optional[Resolved] = None,
                  adapter: Optional[Resolved] = None, adapter_scale: Any = 1.0):
    """The style stage's pipeline: the stylizer's image-to-image pipeline; with a ControlNet, its
    ControlNet variant (diffusers picks the class from the stylizer's and the ControlNet's: SD,
    SDXL or FLUX); with an IP-Adapter, that loaded into it at `adapter_scale` (a number, or
    InstantStyle's per-block dict, e.g. {"up": {"block_0": [0.0, 1.0, 0.0]}} for SDXL's style
    blocks). Loaded once per process for each combination."""
    if controlnet is None and adapter is None:
        return cached("stylizer", r, device, dtype, lambda: _pipeline(r, device, dtype, True))
    key = "+".join([r.model_id, controlnet.model_id if controlnet else "-", adapter.model_id if adapter else "-",
                    json.dumps(adapter_scale, sort_keys=True)])

    def load():
        from diffusers import AutoPipelineForImage2Image

        kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype, device)}
        if controlnet is not None:
            kwargs["controlnet"] = _controlnet(controlnet, kwargs["dtype"])
        pipe = AutoPipelineForImage2Image.from_pretrained(r.source, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        if adapter is not None:
            if not hasattr(pipe, "load_ip_adapter"):
                raise ValueError(f"{type(pipe).__name__} ({r.model_id}) takes no IP-Adapter in this diffusers")
            sub, _, weight = adapter.weight.rpartition("/")
            pipe.load_ip_adapter(adapter.source, subfolder=sub, weight_name=weight)
            pipe.set_ip_adapter_scale(adapter_scale)
        return pipe.to(device)

    from nexus_gen.models.loaded import cached_model

    return cached_model("imagepulse-stylizer", key, str(device), dtype, load)


def _controlnet(r: Resolved, dtype):
    """A ControlNet of the class its config names (ControlNetModel, FluxControlNetModel, ...)."""
    import diffusers
    from huggingface_hub import hf_hub_download

    cfg = Path(r.source) / "config.json" if r.local else Path(hf_hub_download(r.source, "config.json"))
    name = json.loads(cfg.read_text(encoding="utf-8")).get("_class_name", "ControlNetModel")
    cls = getattr(diffusers, name, None)
    if cls is None or "ControlNet" not in name:
        raise ValueError(f"{r.model_id}: config class {name!r} is not a diffusers ControlNet")
    return cls.from_pretrained(r.source, dtype=dtype)


def load_refiner(r: Resolved, device: str, dtype: str):
    """The image-to-image pipeline run after the style stage (ImagePulse: FLUX.1-dev, strength 0.6)."""
    return cached("refiner", r, device, dtype, lambda: _pipeline(r, device, dtype, True))


def load_generator(r: Resolved, device: str, dtype: str):
    """A text-to-image pipeline (`DiffusionPipeline`: FluxPipeline for FLUX.1-dev)."""
    return cached("generator", r, device, dtype, lambda: _pipeline(r, device, dtype, False))


class BoxSegmenter:
    """SAM prompted with one box: `segment(image, box)` -> a boolean (height, width) mask."""

    def __init__(self, r: Resolved, device: str, dtype) -> None:
        from transformers import SamModel, SamProcessor

        self.processor = SamProcessor.from_pretrained(r.source)
        self.model = SamModel.from_pretrained(r.source, dtype=dtype).to(device).eval()
        self.device, self.dtype = device, dtype
        self.model_id = r.model_id

    def segment(self, image, box: tuple[float, float, float, float]):
        import torch

        inputs = self.processor(images=image, input_boxes=[[list(box)]], return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model(**inputs, multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu())
        return masks[0][0, 0].numpy().astype(bool)


def load_segmenter(r: Resolved, device: str, dtype: str) -> BoxSegmenter:
    return cached("segmenter", r, device, dtype, lambda: BoxSegmenter(r, device, torch_dtype(dtype, device)))


def load_captioner(r: Resolved, device: str, dtype: str):
    from nexus_gen.edit.instructions import VLMWriter

    return cached("captioner", r, device, dtype,
                  lambda: VLMWriter(r.source, r.model_id, device, torch_dtype(dtype, device)))
