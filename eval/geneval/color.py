"""GenEval's colour classifier: each object is masked onto a `#999` background, cropped to its
box and classified zero-shot by CLIP over the 10 GenEval colours with the 3 official templates
(per colour: templates encoded, L2-normalised, averaged, renormalised; logits = 100 x normalised
image embedding @ classifier; argmax). `paper` is ViT-L-14-quickgelu / openai.

Precision: the official script runs clip-benchmark's classifier build and classification with its
default `amp=True`, i.e. under `torch.autocast` (fp16) on CUDA, over fp32 weights; near-tie
colours can get another verdict in fp32. So `amp` (the default on CUDA) runs both steps under
autocast, and `fp32` (the default elsewhere, and always available) runs them in full precision.
The weights stay fp32 either way."""
from __future__ import annotations

import contextlib
import copy
import logging
from typing import ContextManager, Optional, Sequence, Union

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
PRECISIONS: tuple[str, ...] = ("amp", "fp32")
AMP_DTYPE = torch.float16  # what clip-benchmark's autocast gives on CUDA


def default_precision(device: Union[str, torch.device]) -> str:
    """The official precision where it can run: `amp` on CUDA, `fp32` elsewhere."""
    return "amp" if torch.device(device).type == "cuda" else "fp32"


def resolve_precision(precision: Optional[str], device: Union[str, torch.device]) -> str:
    """`precision` checked against `device` (None: the device's default). `amp` is the official
    fp16 autocast, which needs CUDA: asked for elsewhere it is an error, not a silent change."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device {device!r} is not a torch device ({e})") from e
    if precision is None:
        return default_precision(dev)
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "amp" and dev.type != "cuda":
        raise ValueError(f"--precision amp is the official fp16 autocast on CUDA; the device is "
                         f"{dev.type!r}: use --precision fp32 (the default off CUDA)")
    return precision


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

    def __init__(self, encoder, background: str = BACKGROUND, precision: str = "fp32",
                 amp_dtype: torch.dtype = AMP_DTYPE) -> None:
        """`precision` `amp` runs the classifier build and the crops under
        `torch.autocast(<encoder device>, amp_dtype)` (officially fp16 on CUDA), `fp32` without."""
        if getattr(encoder, "dtype", torch.float32) != torch.float32:
            raise ValueError(f"GenEval colour classification keeps fp32 weights (amp autocasts "
                             f"over them); encoder {encoder.model_id} is {encoder.dtype}")
        if precision not in PRECISIONS:
            raise ValueError(f"colour classifier precision {precision!r}: use one of {PRECISIONS}")
        if precision == "amp":
            # Autocast embeddings must never reach fp32 users of the same model through the
            # shared embedding cache (keyed by model and weight dtype), nor the reverse.
            from nexus_gen.scoring.embedding_cache import EmbeddingCache

            encoder = copy.copy(encoder)
            encoder.cache = EmbeddingCache()
        self.encoder = encoder
        self.background = background
        self.precision = precision
        self.amp_dtype = amp_dtype
        self._weights: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, clip: str = "paper", device: Union[str, torch.device] = "cpu",
             precision: Optional[str] = None) -> "ColorClassifier":
        """Load CLIP by profile or spec (`paper` = the official ViT-L-14 QuickGELU, `tiny`);
        `precision` None is the device's default (`amp` on CUDA, else `fp32`)."""
        from nexus_gen.scoring.clip import load_clip

        precision = resolve_precision(precision, device)
        return cls(load_clip(clip, device=device, dtype=torch.float32), precision=precision)

    def _autocast(self) -> ContextManager:
        """The precision context both steps run in."""
        if self.precision == "amp":
            return torch.autocast(device_type=self.encoder.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    def weights(self, classname: str) -> torch.Tensor:
        """The [D, 10] zero-shot classifier for one object class."""
        if classname not in self._weights:
            from nexus_gen.scoring.zeroshot import zeroshot_classifier

            with self._autocast():
                self._weights[classname] = zeroshot_classifier(self.encoder, color_prompts(classname))
        return self._weights[classname]

    def logits(self, image: Image.Image, classname: str,
               objects: Sequence[Detection]) -> torch.Tensor:
        """[N, 10] colour logits of the objects' crops, in this classifier's precision (under
        amp the product with the classifier runs in reduced precision too, as officially)."""
        from nexus_gen.scoring.zeroshot import zeroshot_logits

        weights = self.weights(classname)
        crops = [object_crop(image, d, self.background) for d in objects]
        with self._autocast():
            return zeroshot_logits(self.encoder, crops, weights)

    def classify(self, image: Image.Image, classname: str,
                 objects: Sequence[Detection]) -> list[str]:
        """One colour name per object, in order."""
        if not objects:
            return []
        return [COLORS[int(i)] for i in self.logits(image, classname, objects).argmax(dim=1)]
