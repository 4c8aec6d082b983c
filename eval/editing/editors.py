"""Instruction editors behind one adapter: `edit(image, instruction, seed) -> image`.

- `identity`: returns the source unchanged (the baseline every metric must place: L1 to the
  target = the edit's own size, CLIP-I to the source = 1).
- `tiny`: a random-init diffusers `StableDiffusionInstructPix2PixPipeline` built offline (64 px;
  its outputs are noise-like: it exercises the real pipeline path, not editing quality).
- any other name: a diffusers InstructPix2Pix pipeline by hub id or local folder (e.g.
  `timbrooks/instruct-pix2pix`), loaded with `StableDiffusionInstructPix2PixPipeline.from_pretrained`.
- `nexus-gen` (the published Nexus-GenV2), `nexus-gen:SOURCE` (`tiny`, a folder, a published id) or
  a saved `NexusGenPipeline` folder: Nexus-Gen's editing (`NexusGenEditor`; `guidance` is its
  classifier-free scale, 1.0 by default as the reference's)."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from PIL import Image

log = logging.getLogger(__name__)

TINY_STEPS = 2  # the tiny pipeline's default: its output is noise whatever the step count


class Editor(Protocol):
    """An instruction editor."""

    model_id: str

    def edit(self, image: Image.Image, instruction: str, seed: int) -> Image.Image:
        """The edited image (RGB) for one source image and instruction."""
        ...


def item_seed(base_seed: int, item_id: str) -> int:
    """An item's seed: a stable hash of (base seed, item id), independent of order and resume."""
    digest = hashlib.sha256(f"editing:{base_seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class IdentityEditor:
    """Returns the source: the do-nothing baseline."""

    model_id = "identity"

    def edit(self, image: Image.Image, instruction: str, seed: int) -> Image.Image:
        return image.convert("RGB").copy()


class InstructPix2PixEditor:
    """A diffusers InstructPix2Pix pipeline (hub id or local folder)."""

    def __init__(self, source: str | Path, model_id: Optional[str] = None, device: str = "cpu",
                 dtype: str = "float32", steps: Optional[int] = None, guidance: Optional[float] = None,
                 image_guidance: Optional[float] = None) -> None:
        from nexus_gen.models.pipelines import load_pipeline

        self.pipe = load_pipeline(source, "StableDiffusionInstructPix2PixPipeline", device=device,
                                  dtype=dtype, what="InstructPix2Pix pipeline")
        self.model_id = model_id or str(source)
        self.steps, self.guidance, self.image_guidance = steps, guidance, image_guidance

    def edit(self, image: Image.Image, instruction: str, seed: int) -> Image.Image:
        import torch

        from nexus_gen.models.pipelines import sampling_kwargs

        kwargs = sampling_kwargs(self.steps, self.guidance)
        if self.image_guidance is not None:
            kwargs["image_guidance_scale"] = float(self.image_guidance)
        with torch.inference_mode():
            out = self.pipe(prompt=instruction, image=image.convert("RGB"),
                            generator=torch.Generator("cpu").manual_seed(int(seed)),
                            output_type="pil", **kwargs)
        return out.images[0].convert("RGB")


class NexusGenEditor:
    """A `NexusGenPipeline`'s `edit` (its editing decoder; V1 checkpoints: the generation decoder)."""

    def __init__(self, source: str, device: str = "cpu", dtype: str = "float32", steps: Optional[int] = None,
                 guidance: Optional[float] = None) -> None:
        from nexus_gen.models.nexus_pipeline import load_nexus_pipeline

        self.pipe = load_nexus_pipeline(source, device, dtype)
        self.model_id = self.pipe.model_id
        self.steps, self.guidance = steps, guidance

    def edit(self, image: Image.Image, instruction: str, seed: int) -> Image.Image:
        return self.pipe.edit([image], [instruction], steps=self.steps, cfg=self.guidance, seed=[seed])[0]


@dataclass
class EditorSpec:
    """How to build an editor: `identity`, `tiny`, `nexus-gen` or a pipeline id / folder, and the
    sampling settings of diffusers pipelines."""

    name: str
    device: str = "cpu"
    dtype: str = "float32"
    steps: Optional[int] = None
    guidance: Optional[float] = None
    image_guidance: Optional[float] = None

    def check(self) -> None:
        """Fail before any work on an editor that cannot be used."""
        if not self.name or not self.name.strip():
            raise ValueError("--editor is empty: use identity, tiny, or an InstructPix2Pix id / folder")
        from nexus_gen.models.nexus_pipeline import check_nexus_source, nexus_source

        source = nexus_source(self.name)
        if source is not None:
            check_nexus_source(source, "--editor")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")

    @property
    def model_name(self) -> str:
        """The editor's name in file layouts (GEdit's `{model}` folder)."""
        return Path(self.name).name if Path(self.name).exists() else self.name.replace("/", "__")


def build_editor(spec: EditorSpec) -> Editor:
    """The editor a spec names (the pipeline is loaded here, so only when something is edited)."""
    spec.check()
    if spec.name == "identity":
        return IdentityEditor()
    from nexus_gen.models.nexus_pipeline import nexus_source

    source = nexus_source(spec.name)
    if source is not None:
        return NexusGenEditor(source, spec.device, spec.dtype, spec.steps, spec.guidance)
    if spec.name == "tiny":
        from nexus_gen.models.tiny import tiny_ip2p_dir

        return InstructPix2PixEditor(tiny_ip2p_dir(), "tiny-instruct-pix2pix (random init)",
                                     spec.device, spec.dtype, spec.steps or TINY_STEPS,
                                     spec.guidance, spec.image_guidance)
    return InstructPix2PixEditor(spec.name, None, spec.device, spec.dtype, spec.steps, spec.guidance,
                                 spec.image_guidance)
