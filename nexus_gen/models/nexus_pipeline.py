"""`NexusGenPipeline`: the AR model, its processor and the two decoders behind three methods.

- `understand(images, questions)`: the AR model answers (stock greedy `generate`, batched).
- `generate(prompts)`: the generation template (`Generate an image according to the following
  description: ...` / `Here is an image based on the description: <image>`) -> the AR model's N
  embeddings of the forced output span from one prefilled forward (the whole batch at once) ->
  the generation decoder.
- `edit(images, instructions)`: the editing template (`<image> {instruction}` / `Here is the image:
  <image>`) with the source as the input image -> the N predicted embeddings, plus the M source
  embeddings (the source squashed to S2 x S2 through the frozen ViT + merger, as the reference) ->
  the editing decoder (or the generation decoder, `use_generation_decoder=True`, for large edits).

Seeds: an int `seed` gives image i the seed `seed + i` (the decoders' rule); a list gives each
image its own. Same inputs and seeds -> the same bytes.

A saved pipeline is a folder: `ar/` (the `NexusGenAR` folder + processor), `generation_decoder/`,
`editing_decoder/` (the decoders' own `save_pretrained` folders: safetensors + json) and
`nexus_gen_pipeline.json`. `from_pretrained` takes such a folder, `"tiny"` (the offline random-init
tiny profile) or a published checkpoint (`DiffSynth-Studio/Nexus-GenV2`, `modelscope/Nexus-GenV2`,
`DiffSynth-Studio/Nexus-Gen`, or a folder in that layout; `nexus_gen.models.reference_checkpoint`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

log = logging.getLogger(__name__)

PIPELINE_CONFIG = "nexus_gen_pipeline.json"
PIPELINE_FORMAT = "nexus-gen-pipeline"
PARTS = {"ar": "ar", "generation": "generation_decoder", "editing": "editing_decoder"}
DECODERS = ("generation", "editing")
PAPER_MAX_PIXELS = 262640  # the reference bounds input images to this many pixels (smart_resize)
Seeds = Union[int, Sequence[int]]


def _as_list(x: Any, what: str) -> list:
    items = [x] if isinstance(x, str) or not isinstance(x, (list, tuple)) else list(x)
    if not items:
        raise ValueError(f"{what}: empty")
    return items


def _seeds(seed: Seeds, n: int) -> list[int]:
    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise ValueError(f"seed: {len(seed)} seeds for {n} images")
        return [int(s) for s in seed]
    return [int(seed) + i for i in range(n)]


def _language(text: str, language: Optional[str]) -> str:
    from nexus_gen.data.templates import LANGUAGES, detect_language

    if language is not None:
        if language not in LANGUAGES:
            raise ValueError(f"language {language!r}: use one of {LANGUAGES}")
        return language
    return detect_language([{"role": "user", "content": text}])


def bound_pixels(image: Any, max_pixels: Optional[int]) -> Any:
    """An RGB copy of `image` within `max_pixels` (Qwen2.5-VL's smart_resize: sides multiples of 28);
    as is when `max_pixels` is None (the processor's own bounds apply)."""
    image = image.convert("RGB")
    if max_pixels is None:
        return image
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(image.height, image.width, factor=28, min_pixels=28 * 28, max_pixels=int(max_pixels))
    return image if (w, h) == image.size else image.resize((w, h))


class NexusGenPipeline:
    """Understanding, generation and editing with one Nexus-Gen model (see the module docstring)."""

    def __init__(self, ar: Any, generation_decoder: Any = None, editing_decoder: Any = None,
                 config: Optional[dict[str, Any]] = None) -> None:
        if getattr(ar, "processor", None) is None:
            raise ValueError("the AR model has no processor (set `ar.processor`)")
        self.ar, self.generation_decoder, self.editing_decoder = ar, generation_decoder, editing_decoder
        self.config = dict(config or {})
        d = ar.config.text_config.hidden_size
        geo = ar.geometry
        for name, dec in (("generation", generation_decoder), ("editing", editing_decoder)):
            if dec is not None and int(dec.embed_dim) != d:
                raise ValueError(f"{name} decoder takes D = {dec.embed_dim} but the AR model gives D = {d}")
        if editing_decoder is not None and (editing_decoder.image_tokens, editing_decoder.source_tokens) != \
                (geo["image_tokens"], geo["source_tokens"]):
            raise ValueError(f"editing decoder takes N, M = {editing_decoder.image_tokens}, "
                             f"{editing_decoder.source_tokens} but the AR model gives "
                             f"{geo['image_tokens']}, {geo['source_tokens']}")
        tok = getattr(ar.processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"

    @property
    def prefill(self) -> bool:
        """Prefilled autoregression (the default, one forward for all N embeddings) or, with the
        pipeline config's `"prefill": false`, the baseline feeding each prediction back (ablation)."""
        value = self.config.get("prefill", True)
        if not isinstance(value, bool):
            raise ValueError(f"pipeline config prefill = {value!r}: use true or false")
        return value

    # ----- building
    @classmethod
    def tiny(cls, decoders: Sequence[str] = DECODERS) -> "NexusGenPipeline":
        """The offline `tiny` profile: the tiny AR model and tiny-FLUX decoders, seeded random init."""
        from nexus_gen.models.edit_decoder import NexusGenEditingDecoder
        from nexus_gen.models.gen_decoder import NexusGenGenerationDecoder
        from nexus_gen.models.nexus_ar import NexusGenAR
        from nexus_gen.models.tiny.ar_tiny import tiny_ar_dir

        _check_decoders(decoders)
        folder = tiny_ar_dir()
        ar = NexusGenAR.from_pretrained(str(folder)).eval()
        d = ar.config.text_config.hidden_size
        gen = NexusGenGenerationDecoder.from_base("tiny", embed_dim=d) if "generation" in decoders else None
        edit = NexusGenEditingDecoder.from_base("tiny", ar=folder) if "editing" in decoders else None
        return cls(ar, gen, edit, {"source": "tiny", "max_pixels": None})

    @classmethod
    def from_pretrained(cls, source: Union[str, Path], *, device: str = "cpu",
                        dtype: torch.dtype = torch.float32, base: Optional[str] = None,
                        decoders: Sequence[str] = DECODERS,
                        geometry: Optional[dict[str, int]] = None) -> "NexusGenPipeline":
        """A saved pipeline folder, `"tiny"`, or a published checkpoint (id or folder in its layout;
        `base` = the FLUX.1-dev folder or id for its VAE and CLIP; `geometry` overrides the paper's
        N, S, S2, M, which the published config does not hold). `decoders` picks which to load."""
        _check_decoders(decoders)
        if str(source) == "tiny":
            return cls.tiny(decoders).to(device, dtype)
        folder = Path(str(source)).expanduser()
        if (folder / PIPELINE_CONFIG).is_file():
            return cls._from_folder(folder, base, decoders, dtype).to(device, dtype)
        from nexus_gen.models import reference_checkpoint as rc

        if folder.is_dir() and not (folder / "config.json").is_file():
            raise ValueError(f"{folder}: neither a saved NexusGenPipeline ({PIPELINE_CONFIG}) nor a "
                             "published Nexus-Gen checkpoint (config.json)")
        ar, gen, edit, info = rc.load_reference_pipeline_parts(source, base=base or rc.FLUX_BASE, dtype=dtype,
                                                              decoders=tuple(decoders), geometry=geometry)
        return cls(ar, gen, edit, {"source": str(source), "max_pixels": PAPER_MAX_PIXELS, **info}).to(device, dtype)

    @classmethod
    def _from_folder(cls, folder: Path, base: Optional[str], decoders: Sequence[str],
                     dtype: torch.dtype) -> "NexusGenPipeline":
        from nexus_gen.models.edit_decoder import NexusGenEditingDecoder
        from nexus_gen.models.gen_decoder import NexusGenGenerationDecoder
        from nexus_gen.models.nexus_ar import NexusGenAR

        config = json.loads((folder / PIPELINE_CONFIG).read_text(encoding="utf-8"))
        if config.get("format") != PIPELINE_FORMAT:
            raise ValueError(f"{folder / PIPELINE_CONFIG}: format {config.get('format')!r}, expected "
                             f"{PIPELINE_FORMAT!r}")
        for name in ("ar", *decoders):
            if name != "ar" and not config.get("decoders", {}).get(name):
                raise ValueError(f"{folder}: this pipeline was saved without its {name} decoder")
            if not (folder / PARTS[name]).is_dir():
                raise ValueError(f"{folder}: missing {PARTS[name]}/")
        ar = NexusGenAR.from_pretrained(str(folder / PARTS["ar"]), dtype=dtype).eval()
        if ar.processor is None:
            raise ValueError(f"{folder / PARTS['ar']}: no processor files")
        gen = NexusGenGenerationDecoder.from_pretrained(folder / PARTS["generation"], base=base, dtype=dtype) \
            if "generation" in decoders else None
        edit = NexusGenEditingDecoder.from_pretrained(folder / PARTS["editing"], base=base, dtype=dtype) \
            if "editing" in decoders else None
        return cls(ar, gen, edit, {k: v for k, v in config.items() if k not in ("format", "decoders")})

    def to(self, device: str, dtype: Optional[torch.dtype] = None) -> "NexusGenPipeline":
        """Move every part to `device` (and `dtype`)."""
        for part in (self.ar, self.generation_decoder, self.editing_decoder):
            if part is not None:
                part.to(device=device, dtype=dtype) if dtype is not None else part.to(device)
        return self

    def save_pretrained(self, folder: Union[str, Path]) -> Path:
        """`ar/`, `generation_decoder/`, `editing_decoder/` and `nexus_gen_pipeline.json` (safetensors only)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.ar.save_pretrained(str(folder / PARTS["ar"]), safe_serialization=True)
        self.ar.processor.save_pretrained(str(folder / PARTS["ar"]))
        for name, dec in (("generation", self.generation_decoder), ("editing", self.editing_decoder)):
            if dec is not None:
                dec.save_pretrained(folder / PARTS[name])
        record = dict(self.config, format=PIPELINE_FORMAT,
                      decoders={"generation": self.generation_decoder is not None,
                                "editing": self.editing_decoder is not None})
        (folder / PIPELINE_CONFIG).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return folder

    @property
    def model_id(self) -> str:
        """What the pipeline was loaded from (for benchmark records)."""
        return f"nexus-gen:{self.config.get('source', 'unknown')}"

    # ----- the three tasks
    @torch.no_grad()
    def understand(self, images: Any, questions: Union[str, Sequence[str]], max_new_tokens: int = 64) -> list[str]:
        """Greedy answers, one per (image(s), question); an item's images may be one PIL image, a
        list of them, or None."""
        questions = _as_list(questions, "questions")
        per_item = [images] * len(questions) if len(questions) == 1 and not isinstance(images, (list, tuple)) \
            else list(images) if isinstance(images, (list, tuple)) else [images]
        if len(per_item) != len(questions):
            raise ValueError(f"{len(per_item)} image entries for {len(questions)} questions")
        proc = self.ar.processor
        texts, flat = [], []
        for item, question in zip(per_item, questions):
            ims = [] if item is None else list(item) if isinstance(item, (list, tuple)) else [item]
            content = [{"type": "image"} for _ in ims] + [{"type": "text", "text": question}]
            texts.append(proc.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False))
            flat += [bound_pixels(im, self.config.get("max_pixels")) for im in ims]
        device = self.ar.get_input_embeddings().weight.device
        inputs = proc(text=texts, images=flat or None, return_tensors="pt", padding=True).to(device)
        out = self.ar.generate(**inputs, max_new_tokens=int(max_new_tokens), do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in proc.batch_decode(new, skip_special_tokens=True)]

    @torch.no_grad()
    def image_embeddings_for_prompts(self, prompts: Sequence[str], language: Optional[str] = None) -> torch.Tensor:
        """[B, N, D]: the AR model's prefilled prediction for the generation template of each prompt."""
        from nexus_gen.data.templates import generation_messages

        convs = [generation_messages(p, _language(p, language)) for p in prompts]
        return self.ar.predict_image_embeds(convs, [[] for _ in convs], prefill=self.prefill)

    @torch.no_grad()
    def generate(self, prompts: Union[str, Sequence[str]], height: Optional[int] = None,
                 width: Optional[int] = None, steps: Optional[int] = None, cfg: Optional[float] = None,
                 guidance: Optional[float] = None, seed: Seeds = 0, language: Optional[str] = None) -> list:
        """Images for text prompts (decoder defaults: paper 512 px, 50 steps, cfg 3.0, guidance 3.5)."""
        prompts = [str(p) for p in _as_list(prompts, "prompts")]
        if self.generation_decoder is None:
            raise ValueError("this pipeline was loaded without its generation decoder")
        seeds = _seeds(seed, len(prompts))
        embeds = self.image_embeddings_for_prompts(prompts, language)
        return self._decode(self.generation_decoder.generate, (embeds,), seeds,
                            dict(height=height, width=width, steps=steps, cfg=cfg, guidance=guidance))

    @torch.no_grad()
    def edit(self, images: Any, instructions: Union[str, Sequence[str]], height: Optional[int] = None,
             width: Optional[int] = None, steps: Optional[int] = None, cfg: Optional[float] = None,
             guidance: Optional[float] = None, seed: Seeds = 0, use_generation_decoder: Optional[bool] = None,
             language: Optional[str] = None) -> list:
        """Edited images, one per (source image, instruction). Editing uses cfg 1.0 by default (the
        reference's), with either decoder; by default the editing decoder (V1 checkpoints have
        none: their edits go through the generation decoder)."""
        from nexus_gen.data.templates import editing_messages

        instructions = [str(i) for i in _as_list(instructions, "instructions")]
        sources = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(sources) != len(instructions):
            raise ValueError(f"{len(sources)} source images for {len(instructions)} instructions")
        if use_generation_decoder is None:
            use_generation_decoder = self.config.get("edit_decoder", "editing") == "generation"
        decoder = self.generation_decoder if use_generation_decoder else self.editing_decoder
        if decoder is None:
            raise ValueError(f"this pipeline was loaded without its "
                             f"{'generation' if use_generation_decoder else 'editing'} decoder")
        seeds = _seeds(seed, len(sources))
        sources = [im.convert("RGB") for im in sources]
        convs = [editing_messages(i, _language(i, language)) for i in instructions]
        bounded = [[bound_pixels(im, self.config.get("max_pixels"))] for im in sources]
        predicted = self.ar.predict_image_embeds(convs, bounded, prefill=self.prefill)
        kwargs = dict(height=height, width=width, steps=steps, guidance=guidance,
                      cfg=1.0 if cfg is None else cfg)
        if use_generation_decoder:
            return self._decode(decoder.generate, (predicted,), seeds, kwargs)
        source = self.ar.image_embeddings(sources, self.ar.geometry["source_image_size"], fit="resize")
        return self._decode(decoder.edit, (predicted, source), seeds, kwargs)

    @staticmethod
    def _decode(fn: Any, tensors: tuple, seeds: list[int], kwargs: dict[str, Any]) -> list:
        """One batched call when the seeds are consecutive, else one call per image."""
        if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
            return fn(*tensors, seed=seeds[0], **kwargs)
        out = []
        for i, s in enumerate(seeds):
            out += fn(*(t[i:i + 1] for t in tensors), seed=s, **kwargs)
        return out


def _check_decoders(decoders: Sequence[str]) -> None:
    unknown = set(decoders) - set(DECODERS)
    if unknown:
        raise ValueError(f"decoders: unknown {sorted(unknown)}; use {list(DECODERS)}")



# ----- naming a pipeline in the benchmarks
NEXUS_NAME = "nexus-gen"
DEFAULT_PUBLISHED = "modelscope/Nexus-GenV2"


def nexus_source(name: str) -> Optional[str]:
    """The pipeline source a benchmark model name denotes, None when it names no Nexus-Gen pipeline:
    `nexus-gen` -> the published V2 (`modelscope/Nexus-GenV2`), `nexus-gen:SOURCE` -> SOURCE
    (`tiny`, a folder, a published id), a saved pipeline folder -> itself."""
    if name == NEXUS_NAME:
        return DEFAULT_PUBLISHED
    if name.startswith(NEXUS_NAME + ":"):
        return name[len(NEXUS_NAME) + 1:]
    if (Path(name).expanduser() / PIPELINE_CONFIG).is_file():
        return name
    return None


def check_nexus_source(source: str, what: str = "model") -> None:
    """Fail before any work on a pipeline source that cannot be loaded (offline: an id must be cached)."""
    from nexus_gen.models.reference_checkpoint import PUBLISHED

    if source == "tiny":
        return
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not ((folder / PIPELINE_CONFIG).is_file() or (folder / "config.json").is_file()):
            raise ValueError(f"{what} {NEXUS_NAME}:{source}: the folder holds neither a saved NexusGenPipeline "
                             f"({PIPELINE_CONFIG}) nor a published Nexus-Gen checkpoint (config.json)")
        return
    if source not in PUBLISHED:
        raise ValueError(f"{what} {NEXUS_NAME}:{source}: use tiny, a folder, or a published id "
                         f"({', '.join(PUBLISHED)})")
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(source, "config.json"), str):
        raise ValueError(f"{what} {NEXUS_NAME}:{source} is not in the local Hugging Face cache and the hub is "
                         "offline (HF_HUB_OFFLINE=1): download it first, or pass a local folder")


def load_nexus_pipeline(source: str, device: str = "cpu", dtype: str = "float32",
                        decoders: Sequence[str] = DECODERS) -> NexusGenPipeline:
    """`NexusGenPipeline.from_pretrained` with the dtype given by name (the benchmarks' options)."""
    from nexus_gen.models.pipelines import torch_dtype

    return NexusGenPipeline.from_pretrained(source, device=device, dtype=torch_dtype(dtype), decoders=decoders)
