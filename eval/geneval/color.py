"""GenEval's colour classifier: each object is masked onto a `#999` background, cropped to its
box and classified zero-shot by CLIP over the 10 GenEval colours with the 3 official templates
(per colour: templates encoded, L2-normalised, averaged, renormalised; logits = 100 x normalised
image embedding @ classifier; argmax). Always fp32; `paper` is ViT-L-14-quickgelu / openai."""
from __future__ import annotations

import logging
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from eval.geneval.rules import COLORS
from nexus_gen.detection import Detection

log = logging.getLogger(__name__)

TEMPLATES: tuple[str, ...] = (
    "a photo of a {c} {cls}",
    "a photo of a {c}-colored {cls}",
    "a photo of a {c} object",
)
BACKGROUND = "#999"


def color_prompts(classname: str) -> list[list[str]]:
    """Per colour (in `COLORS` order), the 3 official template texts for `classname`."""
    return [[t.format(c=c, cls=classname) for t in TEMPLATES] for c in COLORS]


def object_crop(image: Image.Image, det: Detection, background: str = BACKGROUND) -> Image.Image:
    """The object's pixels over a plain background (if it has a mask), cropped to its box.
    PIL rounds the float box, as the official crop does; an empty box becomes 1 px."""
    image = image.convert("RGB")
    if det.mask is not None:
        mask = np.asarray(det.mask)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask of {det.label!r} is {mask.shape}, image is "
                             f"{(image.height, image.width)} (H, W): they must match")
        blank = Image.new("RGB", image.size, color=background)
        image = Image.composite(image, blank, Image.fromarray(mask.astype(bool)))
    x1, y1, x2, y2 = det.box
    crop = image.crop((x1, y1, x2, y2))
    if crop.width < 1 or crop.height < 1:
        x, y = int(round(x1)), int(round(y1))
        crop = image.crop((x, y, x + 1, y + 1))
    return crop


class ColorClassifier:
    """A CLIP encoder plus one zero-shot colour classifier per object class (built on demand)."""

    def __init__(self, encoder, background: str = BACKGROUND) -> None:
        if getattr(encoder, "dtype", torch.float32) != torch.float32:
            raise ValueError(f"GenEval colour classification runs in fp32; encoder "
                             f"{encoder.model_id} is {encoder.dtype}")
        self.encoder = encoder
        self.background = background
        self._weights: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, clip: str = "paper", device: Union[str, torch.device] = "cpu") -> "ColorClassifier":
        """Load CLIP by profile or spec (`paper` = the official ViT-L-14 QuickGELU, `tiny`)."""
        from nexus_gen.scoring.clip import load_clip

        return cls(load_clip(clip, device=device, dtype=torch.float32))

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    def weights(self, classname: str) -> torch.Tensor:
        """The [D, 10] zero-shot classifier for one object class."""
        if classname not in self._weights:
            from nexus_gen.scoring.zeroshot import zeroshot_classifier

            self._weights[classname] = zeroshot_classifier(self.encoder, color_prompts(classname))
        return self._weights[classname]

    def classify(self, image: Image.Image, classname: str,
                 objects: Sequence[Detection]) -> list[str]:
        """One colour name per object, in order."""
        if not objects:
            return []
        from nexus_gen.scoring.zeroshot import zeroshot_logits

        crops = [object_crop(image, d, self.background) for d in objects]
        logits = zeroshot_logits(self.encoder, crops, self.weights(classname))
        return [COLORS[int(i)] for i in logits.argmax(dim=1)]
