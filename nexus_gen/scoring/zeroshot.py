"""Zero-shot CLIP classification as clip-benchmark (and so GenEval's colour check) does it:
per class, encode each prompt, L2-normalise, average, renormalise; logits = 100 * image @ W."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from nexus_gen.scoring.clip import ClipEncoder
from nexus_gen.scoring.image_inputs import ImageInput

LOGIT_SCALE = 100.0  # fixed, the model's own logit_scale is not used


def zeroshot_classifier(enc: ClipEncoder, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
    """Class weights W [D, C] from one list of prompt texts per class."""
    if not prompts:
        raise ValueError("zeroshot_classifier: no classes given")
    cols = []
    for c, texts in enumerate(prompts):
        if isinstance(texts, str) or not texts:
            raise ValueError(f"class {c}: expected a non-empty list of prompt texts, got {texts!r}")
        emb = F.normalize(enc.encode_texts(list(texts)), dim=-1)
        cols.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(cols, dim=1)


def zeroshot_logits(enc: ClipEncoder, images: Iterable[ImageInput], W: torch.Tensor,
                    batch_size: int = 32) -> torch.Tensor:
    """Logits [N, C] = 100 * normalize(encode_image(x)) @ W, on cpu. The product runs on the
    encoder's device, so an autocast context around this call covers it (as clip-benchmark's
    `amp` does: reduced-precision logits, whose ties then decide the argmax)."""
    feats = F.normalize(enc.encode_images(images, batch_size=batch_size), dim=-1).to(enc.device)
    return (LOGIT_SCALE * feats @ W.to(feats.device, feats.dtype)).cpu()
