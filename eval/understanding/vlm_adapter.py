"""Model adapters for the understanding benchmarks: questions (prompt + images) in, answers out.

`TransformersVLM` runs any transformers image-text-to-text model by hub id or local folder
(`AutoModelForImageTextToText` + `AutoProcessor`; Qwen2.5-VL and its kin) in batches, greedy,
with its own chat template. `tiny` is the offline random-init Qwen2.5-VL
(`nexus_gen.models.tiny.vlm`). `NexusGenVLM` answers with a Nexus-Gen pipeline's AR model
(`nexus-gen`, `nexus-gen:SOURCE` or a saved pipeline folder)."""
from __future__ import annotations

import io
import logging
from typing import Protocol, Sequence

log = logging.getLogger(__name__)


class Question(Protocol):
    prompt: str
    images: list[bytes]


class VLMAdapter(Protocol):
    name: str

    def answer(self, batch: Sequence[Question]) -> list[str]:
        """One answer per question, in order."""


def _open(data: bytes):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    return im.convert("RGB")


class TransformersVLM:
    """A transformers image-text-to-text model. Each question becomes one user turn holding its
    images then its text; the batch is left-padded and decoded greedily."""

    def __init__(self, model_id: str, device: str = "cpu", dtype: str = "float32",
                 max_new_tokens: int = 16) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name = model_id
        path = model_id
        if model_id == "tiny":
            from nexus_gen.models.tiny import tiny_vlm_dir

            path = str(tiny_vlm_dir())
        from nexus_gen.models.pipelines import torch_dtype as named_dtype

        try:
            torch_dtype = named_dtype(dtype)
        except ValueError as exc:
            raise ValueError(f"--{exc}") from None
        try:
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype)
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"--model {model_id}: cannot load an image-text-to-text model "
                             f"({first}); give `tiny`, a local folder or a cached hub id") from None
        self.model.to(device).eval()
        self.device = device
        self.max_new_tokens = max_new_tokens
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"

    def answer(self, batch: Sequence[Question]) -> list[str]:
        import torch

        texts, images = [], []
        for q in batch:
            content = [{"type": "image"} for _ in q.images] + [{"type": "text", "text": q.prompt}]
            texts.append(self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False))
            images += [_open(b) for b in q.images]
        inputs = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]


class NexusGenVLM:
    """`NexusGenPipeline.understand` (the AR model only: no decoder is loaded)."""

    def __init__(self, model_id: str, source: str, device: str = "cpu", dtype: str = "float32",
                 max_new_tokens: int = 16) -> None:
        from nexus_gen.models.nexus_pipeline import load_nexus_pipeline

        self.name = model_id
        self.pipe = load_nexus_pipeline(source, device, dtype, decoders=())
        self.max_new_tokens = max_new_tokens

    def answer(self, batch: Sequence[Question]) -> list[str]:
        return self.pipe.understand([[_open(b) for b in q.images] for q in batch], [q.prompt for q in batch],
                                    max_new_tokens=self.max_new_tokens)


def load_model(model_id: str, device: str = "cpu", dtype: str = "float32",
               max_new_tokens: int = 16) -> VLMAdapter:
    """The adapter for `model_id` (`tiny`, a hub id, a local folder, or a Nexus-Gen pipeline name)."""
    from nexus_gen.models.nexus_pipeline import nexus_source

    source = nexus_source(model_id)
    if source is not None:
        return NexusGenVLM(model_id, source, device, dtype, max_new_tokens)
    return TransformersVLM(model_id, device, dtype, max_new_tokens)

