"""GenEval's object detector through transformers: Mask2Former instance segmentation (the official
scorer's model family, Swin-S COCO) returning `Detection`s with masks, on any device.

Post-processing follows the official (mmdet 2.x Mask2Former) instance head rather than
transformers' helper (which scores masks at a fixed 384x384): class probabilities without the
no-object column, top `max_per_image` (query, class) pairs, mask logits resized bilinearly to the
input then to the original size, mask = logit > 0, score = class prob x mean mask probability
inside the mask, box = the mask's extent `[x_min, y_min, x_max + 1, y_max + 1]`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from eval.geneval.rules import PAPER_DETECTOR, PAPER_NAMES  # noqa: F401  (PAPER_DETECTOR: re-exported)
from nexus_gen.detection import Detection
from nexus_gen.models.tiny import TINY_MASK2FORMER_NAME, tiny_mask2former_dir

log = logging.getLogger(__name__)

# The official (mmdet) test scale: keep-ratio resize to short side 800, long side at most 1333.
OFFICIAL_TEST_SIZE = {"shortest_edge": 800, "longest_edge": 1333}
OBJECT_NAMES_FILE = Path(__file__).resolve().parent / "prompts" / "object_names.txt"


def object_names() -> list[str]:
    """The official 80 class names, in the COCO detector's label order."""
    return OBJECT_NAMES_FILE.read_text(encoding="utf-8").splitlines()


def resolve_detector(name: str, build: bool = True) -> Optional[str]:
    """`paper` (or `default`) -> the hub id; `tiny` -> the locally built random model's folder
    (built on first use; with `build=False` None, for checks that must not build it);
    anything else is passed to `from_pretrained` as is (a hub id or a local folder)."""
    if name in PAPER_NAMES:
        return PAPER_DETECTOR
    if name == "tiny":
        return str(tiny_mask2former_dir(object_names())) if build else None
    return name


def mask_to_box(mask: torch.Tensor) -> tuple[float, float, float, float]:
    """Extent of a bool [H, W] mask as `[x_min, y_min, x_max + 1, y_max + 1]`; zeros if empty."""
    xs = torch.nonzero(mask.any(dim=0)).flatten()
    ys = torch.nonzero(mask.any(dim=1)).flatten()
    if len(xs) == 0 or len(ys) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))


class Mask2FormerDetector:
    """A loaded Mask2Former; call it on a PIL image to get every candidate instance.
    `size` overrides the image processor's resize (default for `paper`: the official test
    scale, whatever the hub checkpoint's processor says; else the processor's own)."""

    def __init__(self, name: str = "paper", device: Union[str, torch.device] = "cpu",
                 dtype: torch.dtype = torch.float32, max_per_image: int = 100,
                 size: Optional[dict[str, int]] = None) -> None:
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        source = resolve_detector(name)
        try:
            self.processor = AutoImageProcessor.from_pretrained(source)
            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(source, dtype=dtype)
        except OSError as e:
            raise OSError(f"cannot load the GenEval detector {name!r} ({source}): {e}. Use a local "
                          "folder, a cached hub id, or 'tiny' for the offline random model.") from e
        self.model.to(device).eval()
        self.device, self.dtype = torch.device(device), dtype
        self.model_id = source if name != "tiny" else f"tiny:{TINY_MASK2FORMER_NAME}"
        self.max_per_image = max_per_image
        self.size = size if size is not None else (
            OFFICIAL_TEST_SIZE if name in PAPER_NAMES else None)
        self.labels = self._label_names()

    def _label_names(self) -> list[str]:
        """Model label index -> official class name. A COCO (80-label) model maps by index, as the
        official scorer does; other models use their own `id2label`."""
        n = self.model.config.num_labels
        id2label = self.model.config.id2label
        own = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(n)]
        names = object_names()
        if n == len(names):
            differ = [(a, b) for a, b in zip(own, names) if a != b]
            if differ:
                log.info("detector labels mapped by COCO index to official names (%d renamed, "
                         "e.g. %s -> %s)", len(differ), *differ[0])
            return names
        return own

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> list[Detection]:
        """Every (query, class) candidate among the top `max_per_image`, sorted by score."""
        image = ImageOps.exif_transpose(image).convert("RGB")
        width, height = image.size
        extra = {"size": self.size} if self.size is not None else {}
        inputs = self.processor(images=image, return_tensors="pt", **extra)
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        out = self.model(pixel_values=pixel_values)
        cls_logits = out.class_queries_logits[0].float()  # [Q, C+1]
        mask_logits = out.masks_queries_logits[0].float()  # [Q, h, w]
        num_classes = cls_logits.shape[1] - 1
        probs = cls_logits.softmax(-1)[:, :-1].flatten()
        k = min(self.max_per_image, probs.numel())
        top_scores, top_idx = probs.topk(k)  # sorted: deterministic order
        queries = torch.div(top_idx, num_classes, rounding_mode="floor")
        labels = top_idx % num_classes
        # only the queries that were picked are resized (each once), to keep memory down
        unique_q, inverse = torch.unique(queries, return_inverse=True)
        masks = F.interpolate(mask_logits[unique_q][None], size=pixel_values.shape[-2:],
                              mode="bilinear", align_corners=False)
        masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)[0]
        masks = masks[inverse]  # [k, H, W]
        binary = masks > 0
        mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        scores = top_scores * mask_scores
        dets = [
            Detection(label=self.labels[int(labels[i])], box=mask_to_box(binary[i]),
                      score=float(scores[i]), mask=binary[i].cpu().numpy())
            for i in range(k)
        ]
        dets.sort(key=lambda d: -d.score)
        return dets


def load_detector(name: str = "paper", device: Union[str, torch.device] = "cpu",
                  dtype: Optional[torch.dtype] = None,
                  size: Optional[dict[str, int]] = None) -> Mask2FormerDetector:
    """The GenEval detector by name (`paper`, `tiny`, a hub id or a folder); fp32 unless told."""
    return Mask2FormerDetector(name, device=device, dtype=dtype or torch.float32, size=size)

