"""The Nexus-Gen autoregressive model: stock transformers `Qwen2_5_VLForConditionalGeneration` plus
`vision_head` and `image_prefill_embeds` (NEXUS_GEN.md, "Model").

An output image is the forced span `<|vision_start|>` + N x `<|image_pad|>` + `<|vision_end|>`.
**Prefilled autoregression**: at the N pad positions the inputs are the learned prefill embeddings
`image_prefill_embeds[0..N-1]`, never ground truth or predictions; embedding i is read from
`vision_head` at the position before pad i (`<|vision_start|>` for i = 0). Inputs never depend on
outputs, so all N come from one forward pass at training and inference alike.

Facts followed from the reference (modelscope/Nexus-Gen, train/ar/template.py and its vendored
modeling code): images in assistant turns are outputs, images in user turns inputs (dynamic
resolution through the processor); an output image's labels are `<|image_pad|>` and are excluded
from the cross entropy; the loss is `w_tok*CE + w_img*(0.5*MSE + 0.5*(1 - cos))` (3.0 / 3.0 by
default) between the shifted `vision_head` outputs and the detached ViT + merger embeddings of the
output image resized to S x S; the output span gets Qwen2.5-VL's 3D image mRoPE positions of a
(1, S/14, S/14) grid (`get_rope_index` over the whole sequence, text after it continuing from the
largest position + 1); generation never samples `<|vision_end|>` freely and forces N pads after
`<|vision_start|>`, then `<|vision_end|>`.

The plain autoregressive baseline (`prefill=False`, for ablation), as the paper describes it:
training uses teacher forcing, the ground-truth embeddings as the inputs at the image positions
(the reference's `USE_IMG_EMBED_AS_INPUT`); inference feeds each predicted embedding back as the
next input, one forward per embedding (exposure bias: the inputs differ between the two)."""
from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.utils import ModelOutput

log = logging.getLogger(__name__)

PAPER_GEOMETRY = {"image_tokens": 81, "image_size": 252, "source_image_size": 504, "source_tokens": 324}
HEAD_SEED = 0  # vision_head / image_prefill_embeds of a stock Qwen2.5-VL start from this seed
# The transformers 4.49 key layout (`visual.*`, `model.layers.*`: Qwen/Qwen2.5-VL-7B-Instruct, the
# published Nexus-Gen AR model) -> the current one; current-layout keys are left as they are.
AR_KEY_MAPPING = {r"^visual\.": "model.visual.", r"^model\.(?!language_model\.|visual\.)": "model.language_model."}
HEAD_KEYS = ("vision_head.weight", "image_prefill_embeds.weight")
DEFAULT_LOSS_WEIGHTS = (3.0, 3.0)  # (w_tok, w_img), V2; V1 used (0.1, 1.0)
IMAGE_TAG = "<image>"
SYSTEM_PROMPT = "You are a helpful assistant."
IGNORE = -100


def nexus_geometry(config: Any) -> dict[str, int]:
    """`config.nexus_gen` (the paper's geometry when absent), checked against the vision config:
    sizes multiples of patch * merge, token counts = (size / (patch * merge))^2. ValueError names
    the key."""
    geo = dict(PAPER_GEOMETRY)
    extra = getattr(config, "nexus_gen", None) or {}
    unknown = set(extra) - set(PAPER_GEOMETRY)
    if unknown:
        raise ValueError(f"nexus_gen.{sorted(unknown)[0]}: unknown key; allowed: {sorted(PAPER_GEOMETRY)}")
    geo.update({k: int(v) for k, v in extra.items()})
    vc = config.vision_config
    unit = vc.patch_size * vc.spatial_merge_size
    for size_key, tok_key in (("image_size", "image_tokens"), ("source_image_size", "source_tokens")):
        s = geo[size_key]
        if s <= 0 or s % unit:
            raise ValueError(f"nexus_gen.{size_key} = {s} is not a positive multiple of {unit} "
                             f"(patch {vc.patch_size} x merge {vc.spatial_merge_size})")
        n = geo[tok_key]
        if math.isqrt(n) ** 2 != n:
            raise ValueError(f"nexus_gen.{tok_key} = {n} is not a square number")
        if n != (s // unit) ** 2:
            raise ValueError(f"nexus_gen.{tok_key} = {n} does not fit nexus_gen.{size_key} = {s}: "
                             f"({s}/{unit})^2 = {(s // unit) ** 2}")
    d_text = config.text_config.hidden_size
    if vc.out_hidden_size != d_text:
        raise ValueError(f"vision_config.out_hidden_size = {vc.out_hidden_size} differs from "
                         f"text_config.hidden_size = {d_text}: the ViT + merger embedding must be the "
                         "AR model's hidden size")
    return geo


def square_image(image: Any, size: int, fit: str = "crop") -> Any:
    """An RGB `size` x `size` copy of a PIL image: `crop` scales the short side to `size` (bilinear)
    and centre-crops (the reference's generation targets); `resize` squashes it (the reference's AR
    training template and editing pre-compute)."""
    from PIL import Image

    image = image.convert("RGB")
    if fit == "resize":
        return image.resize((size, size), Image.BICUBIC)
    if fit != "crop":
        raise ValueError(f"fit {fit!r}: use 'crop' or 'resize'")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def square_pixels(image_processor: Any, images: Sequence[Any], size: int, fit: str = "crop"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values, image_grid_thw) of images made `size` x `size` (`square_image`), with the
    processor's normalisation and no further resizing."""
    squares = [square_image(im, size, fit) for im in images]
    out = image_processor(images=squares, return_tensors="pt", do_resize=False)
    return out["pixel_values"], out["image_grid_thw"]


def input_pixels(image_processor: Any, images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values, image_grid_thw) of input images at dynamic resolution (the processor's
    min/max pixels), as stock Qwen2.5-VL takes them."""
    out = image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


@dataclass
class EncodedConversation:
    """One conversation as token ids: labels (-100 outside assistant text and at output pads), the
    mask of output-image pads, and the image grids (t, h, w) in sequence order (for mRoPE)."""
    input_ids: list[int]
    labels: list[int]
    output_mask: list[bool]
    grids: list[tuple[int, int, int]]
    roles: list[str]  # "input" / "output", per image in order


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for c in content:  # transformers-style [{"type": "image"}, {"type": "text", "text": ...}]
        parts.append(IMAGE_TAG if c.get("type") == "image" else c.get("text", ""))
    return "".join(parts)


def encode_conversation(tokenizer: Any, messages: Sequence[dict[str, Any]],
                        input_grids: Sequence[Sequence[int]], image_tokens: int, output_grid: Sequence[int],
                        merge: int, token_ids: dict[str, int], add_generation_prompt: bool = False,
                        stop_at_output: bool = False) -> EncodedConversation:
    """Token ids of a Qwen-format conversation whose `<image>` tags are images: in a user turn an
    input (its pads as many as its grid has merged tokens), in an assistant turn an output (N pads).
    Labels cover assistant text, `<|vision_start|>`, `<|vision_end|>` and `<|im_end|>`.
    `stop_at_output` ends the sequence after the first output span (what prediction needs)."""
    vs, ve, pad = token_ids["vision_start"], token_ids["vision_end"], token_ids["image_pad"]
    ids: list[int] = []
    labels: list[int] = []
    out_mask: list[bool] = []
    grids: list[tuple[int, int, int]] = []
    roles: list[str] = []
    inputs = list(input_grids)

    def text(t: str, train: bool) -> None:
        toks = tokenizer.encode(t, add_special_tokens=False) if t else []
        ids.extend(toks)
        labels.extend(toks if train else [IGNORE] * len(toks))
        out_mask.extend([False] * len(toks))

    msgs = list(messages)
    if not msgs or msgs[0].get("role") != "system":
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}] + msgs
    for m in msgs:
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message role {role!r}: use system, user or assistant")
        train = role == "assistant"
        text(f"<|im_start|>{role}\n", False)
        pieces = _content_text(m.get("content", "")).split(IMAGE_TAG)
        for k, piece in enumerate(pieces):
            text(piece, train)
            if k == len(pieces) - 1:
                break
            if role == "assistant":
                ids.extend([vs] + [pad] * image_tokens + [ve])
                labels.extend([vs] + [IGNORE] * image_tokens + [ve])
                out_mask.extend([False] + [True] * image_tokens + [False])
                grids.append(tuple(int(x) for x in output_grid))
                roles.append("output")
                if stop_at_output:
                    return EncodedConversation(ids, labels, out_mask, grids, roles)
            else:
                if not inputs:
                    raise ValueError("the conversation has more input <image> tags than input images")
                g = tuple(int(x) for x in inputs.pop(0))
                n = g[0] * g[1] * g[2] // (merge * merge)
                ids.extend([vs] + [pad] * n + [ve])
                labels.extend([IGNORE] * (n + 2))
                out_mask.extend([False] * (n + 2))
                grids.append(g)
                roles.append("input")
        text("<|im_end|>", train)
        text("\n", False)
    if inputs:
        raise ValueError(f"{len(inputs)} input image(s) have no <image> tag in a user turn")
    if add_generation_prompt:
        text("<|im_start|>assistant\n", False)
    return EncodedConversation(ids, labels, out_mask, grids, roles)


def pad_conversations(encoded: Sequence[EncodedConversation], pad_id: int) -> dict[str, Any]:
    """Right-padded batch tensors: input_ids, attention_mask, labels, output_image_mask and
    rope_grid_thw (every image's grid in batch-row then sequence order)."""
    L = max(len(e.input_ids) for e in encoded)
    B = len(encoded)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    out_mask = torch.zeros((B, L), dtype=torch.bool)
    grids: list[tuple[int, int, int]] = []
    for b, e in enumerate(encoded):
        n = len(e.input_ids)
        input_ids[b, :n] = torch.tensor(e.input_ids)
        labels[b, :n] = torch.tensor(e.labels)
        attn[b, :n] = 1
        out_mask[b, :n] = torch.tensor(e.output_mask)
        grids.extend(e.grids)
    return {"input_ids": input_ids, "attention_mask": attn, "labels": labels,
            "output_image_mask": out_mask,
            "rope_grid_thw": torch.tensor(grids, dtype=torch.long) if grids else None}


@dataclass
class NexusGenAROutput(ModelOutput):
    """The AR forward of the Nexus path: loss and its parts, the predicted output-image
    embeddings (rows in sequence order, N per output image) and their targets."""
    loss: Optional[torch.Tensor] = None
    ce: Optional[torch.Tensor] = None
    mse: Optional[torch.Tensor] = None
    cos: Optional[torch.Tensor] = None
    image_embeds: Optional[torch.Tensor] = None
    target_embeds: Optional[torch.Tensor] = None


class NexusGenAR(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL with a `vision_head` (Linear D->D, no bias) and `image_prefill_embeds`
    (Embedding N x D) that predicts output images as N ViT + merger embeddings by prefilled
    autoregression. `processor` (attached by `from_pretrained` when the folder has one) turns
    messages and images into tensors."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        geo = nexus_geometry(config)
        d = config.text_config.hidden_size
        self.vision_head = nn.Linear(d, d, bias=False)
        self.image_prefill_embeds = nn.Embedding(geo["image_tokens"], d)
        self.init_nexus_heads(HEAD_SEED)
        self.processor: Any = None

    # ----- geometry and initialisation
    @property
    def geometry(self) -> dict[str, int]:
        """{image_tokens N, image_size S, source_image_size S2, source_tokens M}."""
        return nexus_geometry(self.config)

    @property
    def image_tokens(self) -> int:
        """N, the number of embeddings of one output image."""
        return self.image_prefill_embeds.num_embeddings

    def init_nexus_heads(self, seed: int = HEAD_SEED) -> None:
        """Draw `vision_head` and `image_prefill_embeds` from N(0, initializer_range) with a fixed
        seed (independent of the global RNG)."""
        std = getattr(self.config.text_config, "initializer_range", 0.02) or 0.02
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in (self.vision_head.weight, self.image_prefill_embeds.weight):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std).to(p))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, Path], *args: Any,
                        **kwargs: Any) -> "NexusGenAR":
        """Load a NexusGenAR folder (or a stock Qwen2.5-VL one: the two heads then start from
        `HEAD_SEED`, logged) and attach its processor when the folder has one."""
        want_info = kwargs.pop("output_loading_info", False)
        strict = not kwargs.pop("ignore_mismatched_sizes", False)
        # Transformers renames the 4.49 layout for its stock class only; a subclass asks for it.
        kwargs.setdefault("key_mapping", AR_KEY_MAPPING)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                               ignore_mismatched_sizes=True, **kwargs)
        mismatched = [k[0] if isinstance(k, tuple) else k for k in (info.get("mismatched_keys") or [])]
        if mismatched and strict:
            raise ValueError(f"{pretrained_model_name_or_path}: a checkpoint from another config: "
                             f"{sorted(mismatched)[:3]} do not have the shapes its config.json (or the "
                             "given config) implies")
        missing = set(info.get("missing_keys") or [])
        tied = {"lm_head.weight"} if model.lm_head.weight is model.get_input_embeddings().weight else set()
        absent = sorted(missing - set(HEAD_KEYS) - tied)
        if absent:
            raise ValueError(f"{pretrained_model_name_or_path}: {len(absent)} weights of the model are not in the "
                             f"checkpoint (e.g. {absent[:3]}): not a Qwen2.5-VL / NexusGenAR folder, or a key "
                             "layout this loader does not know")
        heads = [k for k in HEAD_KEYS if k in missing]
        if heads:
            model.init_nexus_heads(HEAD_SEED)
            log.info("%s has no %s: initialised vision_head and image_prefill_embeds with seed %d",
                     pretrained_model_name_or_path, " / ".join(heads), HEAD_SEED)
        try:
            from transformers import AutoProcessor

            model.processor = AutoProcessor.from_pretrained(str(pretrained_model_name_or_path))
        except (OSError, ValueError, KeyError, TypeError):
            model.processor = None
        return (model, info) if want_info else model

    def _need_processor(self) -> Any:
        if self.processor is None:
            raise ValueError("this NexusGenAR has no processor: set `model.processor` "
                             "(AutoProcessor.from_pretrained of its folder)")
        return self.processor

    def token_ids(self) -> dict[str, int]:
        """The special token ids the model uses."""
        c = self.config
        return {"vision_start": c.vision_start_token_id, "vision_end": c.vision_end_token_id,
                "image_pad": c.image_token_id}

    # ----- embeddings
    def _vit(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        pixel_values = pixel_values.to(visual.device, visual.dtype)
        return visual(pixel_values, grid_thw=grid_thw.to(visual.device)).pooler_output

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Any], size: int, fit: str = "crop") -> torch.Tensor:
        """Frozen ViT + merger embeddings [B, (size/28)^2, D] of images made `size` x `size`
        (`square_image`), detached: the targets (size S) and source embeddings (size S2)."""
        proc = self._need_processor()
        pv, grid = square_pixels(proc.image_processor, images, size, fit)
        return self._vit(pv, grid).detach().reshape(len(images), -1, self.config.text_config.hidden_size)

    def _inputs_embeds(self, input_ids: torch.Tensor, output_mask: torch.Tensor,
                       pixel_values: Optional[torch.Tensor], image_grid_thw: Optional[torch.Tensor],
                       output_inputs: Optional[torch.Tensor]) -> torch.Tensor:
        emb = self.get_input_embeddings()(input_ids)
        input_pads = (input_ids == self.config.image_token_id) & ~output_mask
        n_in = int(input_pads.sum())
        if n_in:
            if pixel_values is None:
                raise ValueError(f"{n_in} input image tokens but no pixel_values")
            feats = self._vit(pixel_values, image_grid_thw)
            if feats.shape[0] != n_in:
                raise ValueError(f"input image tokens ({n_in}) and ViT features ({feats.shape[0]}) differ")
            emb = emb.masked_scatter(input_pads.unsqueeze(-1), feats.to(emb.dtype))
        n_out = int(output_mask.sum())
        if n_out:
            if output_inputs is None:  # prefilled: the learned embeddings 0..N-1 for every span
                n = self.image_tokens
                if n_out % n:
                    raise ValueError(f"{n_out} output image tokens is not a multiple of N = {n}")
                src = self.image_prefill_embeds.weight.repeat(n_out // n, 1)
            else:
                src = output_inputs.reshape(-1, emb.shape[-1])
            emb = emb.masked_scatter(output_mask.unsqueeze(-1), src.to(emb.dtype))
        return emb

    def rope_positions(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                       rope_grid_thw: Optional[torch.Tensor]) -> torch.Tensor:
        """mRoPE position ids [3, B, L]: every image span (input or output) gets the 3D positions
        of its grid, text continues from the largest position + 1 (stock `get_rope_index`)."""
        mm = (input_ids == self.config.image_token_id).int()
        pos, _ = self.model.get_rope_index(input_ids, mm, image_grid_thw=rope_grid_thw,
                                           attention_mask=attention_mask)
        return pos

    def output_grid(self) -> tuple[int, int, int]:
        """The (t, h, w) patch grid of an output image (S/14 x S/14)."""
        s = self.geometry["image_size"] // self.config.vision_config.patch_size
        return (1, s, s)

    # ----- the Nexus forward (training loss and prefilled prediction)
    def forward(self, *args: Any, output_image_mask: Optional[torch.Tensor] = None,
                rope_grid_thw: Optional[torch.Tensor] = None,
                target_pixel_values: Optional[torch.Tensor] = None,
                target_grid_thw: Optional[torch.Tensor] = None,
                target_image_embeds: Optional[torch.Tensor] = None, prefill: bool = True,
                loss_weights: Optional[Sequence[float]] = None, **kwargs: Any) -> Any:
        """Stock Qwen2.5-VL forward, unless `output_image_mask` is given: then the Nexus path
        (`nexus_forward`)."""
        if output_image_mask is None:
            return super().forward(*args, **kwargs)
        return self.nexus_forward(output_image_mask=output_image_mask, rope_grid_thw=rope_grid_thw,
                                  target_pixel_values=target_pixel_values,
                                  target_grid_thw=target_grid_thw,
                                  target_image_embeds=target_image_embeds, prefill=prefill,
                                  loss_weights=loss_weights, **kwargs)

    def nexus_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      output_image_mask: torch.Tensor, rope_grid_thw: Optional[torch.Tensor] = None,
                      pixel_values: Optional[torch.Tensor] = None,
                      image_grid_thw: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                      target_pixel_values: Optional[torch.Tensor] = None,
                      target_grid_thw: Optional[torch.Tensor] = None,
                      target_image_embeds: Optional[torch.Tensor] = None, prefill: bool = True,
                      loss_weights: Optional[Sequence[float]] = None,
                      logits_at_labels_only: bool = True, **_: Any) -> NexusGenAROutput:
        """One forward over padded conversations. Output-image inputs are the prefill embeddings
        (`prefill=True`) or the targets (teacher forcing, the baseline). Predictions: the shifted
        `vision_head` outputs at the output pads. With `labels`, the loss `w_tok*CE + w_img*(0.5*MSE
        + 0.5*(1-cos))` against the targets (given, or the detached ViT embeddings of
        `target_pixel_values`). `logits_at_labels_only` computes `lm_head` only where a label
        is (the same CE, much less work with Qwen's 151k vocabulary)."""
        device = self.get_input_embeddings().weight.device
        input_ids = input_ids.to(device)
        attention_mask = attention_mask.to(device)
        output_mask = output_image_mask.to(device).bool()
        d = self.config.text_config.hidden_size
        targets = target_image_embeds
        if targets is None and target_pixel_values is not None:
            with torch.no_grad():
                targets = self._vit(target_pixel_values, target_grid_thw)
        if targets is not None:
            targets = targets.detach().reshape(-1, d).to(device)
        if not prefill and int(output_mask.sum()) and targets is None:
            raise ValueError("prefill=False trains by teacher forcing: it needs the target embeddings")
        emb = self._inputs_embeds(input_ids, output_mask, pixel_values, image_grid_thw,
                                  None if prefill else targets)
        pos = self.rope_positions(input_ids, attention_mask, rope_grid_thw)
        hidden = self.model(inputs_embeds=emb, position_ids=pos, attention_mask=attention_mask,
                            use_cache=False).last_hidden_state
        # embedding i of an image is read at the position before its pad i
        shift_out = output_mask[:, 1:]
        pred = self.vision_head(hidden[:, :-1][shift_out])
        out = NexusGenAROutput(image_embeds=pred, target_embeds=targets)
        if labels is None:
            return out
        w_tok, w_img = loss_weights if loss_weights is not None else DEFAULT_LOSS_WEIGHTS
        labels = labels.to(device).masked_fill(output_mask, IGNORE)
        labels = labels.masked_fill(labels == self.config.image_token_id, IGNORE)
        shift_labels = labels[:, 1:]
        h = hidden[:, :-1]
        if logits_at_labels_only:
            keep = shift_labels != IGNORE
            logits = self.lm_head(h[keep]).float()
            ce = nn.functional.cross_entropy(logits, shift_labels[keep]) if keep.any() \
                else logits.sum() * 0.0
        else:
            logits = self.lm_head(h).float()
            ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             shift_labels.reshape(-1), ignore_index=IGNORE)
            if not bool((shift_labels != IGNORE).any()):
                ce = logits.sum() * 0.0
        if pred.shape[0]:
            if targets is None or targets.shape != pred.shape:
                raise ValueError(f"{pred.shape[0]} output image tokens but targets "
                                 f"{None if targets is None else tuple(targets.shape)}")
            mse = nn.functional.mse_loss(pred.float(), targets.float())
            cos = nn.functional.cosine_similarity(pred.float(), targets.float(), dim=-1).mean()
        else:  # no output image: keep the heads in the graph with zero gradient (DDP)
            zero = (self.vision_head.weight.sum() + self.image_prefill_embeds.weight.sum()) * 0.0
            mse, cos = zero, zero + 1.0
        loss = w_tok * ce + w_img * (0.5 * mse + 0.5 * (1.0 - cos))
        out.loss, out.ce, out.mse, out.cos = loss, ce.detach(), mse.detach(), cos.detach()
        return out

    # ----- prediction
    def _encode_for_prediction(self, messages: Sequence[dict[str, Any]], images: Sequence[Any]
                               ) -> tuple[EncodedConversation, Optional[torch.Tensor], Optional[torch.Tensor]]:
        proc = self._need_processor()
        n_in = sum(_content_text(m.get("content", "")).count(IMAGE_TAG)
                   for m in messages if m.get("role") != "assistant")
        n_all = sum(_content_text(m.get("content", "")).count(IMAGE_TAG) for m in messages)
        images = list(images or [])
        if len(images) not in (n_in, n_all):
            raise ValueError(f"the conversation has {n_in} input and {n_all - n_in} output <image> "
                             f"tags but {len(images)} images were given")
        ordered_inputs = _input_images(messages, images, n_in == n_all or len(images) == n_in)
        pv = grid = None
        grids: list[list[int]] = []
        if ordered_inputs:
            pv, grid = input_pixels(proc.image_processor, ordered_inputs)
            grids = grid.tolist()
        enc = encode_conversation(proc.tokenizer, messages, grids, self.image_tokens, self.output_grid(),
                                  self.config.vision_config.spatial_merge_size, self.token_ids(),
                                  stop_at_output=True)
        if "output" not in enc.roles:
            raise ValueError("the conversation has no <image> in an assistant turn to predict")
        return enc, pv, grid

    @torch.no_grad()
    def predict_image_embeds(self, messages: Sequence[Any], images: Optional[Sequence[Any]] = None,
                             prefill: bool = True) -> torch.Tensor:
        """Embeddings [B, N, D] of the first output image of each conversation (messages with an
        `<image>` in an assistant turn; `images` its images in tag order, the output ones optional
        and never used). `prefill=True`: one forward with the prefill embeddings as inputs (the
        teacher-forced prediction of the pre-compute); `prefill=False`: the baseline, N forwards
        each feeding the previous prediction back."""
        batch = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        imgs = [images or []] if messages and isinstance(messages[0], dict) else \
            list(images or [[] for _ in batch])
        outs = []
        if prefill:
            enc_all, pvs, grids = [], [], []
            for msgs, ims in zip(batch, imgs):
                enc, pv, grid = self._encode_for_prediction(msgs, ims)
                enc_all.append(enc)
                if pv is not None:
                    pvs.append(pv)
                    grids.append(grid)
            t = pad_conversations(enc_all, self.config.text_config.pad_token_id or 0)
            res = self.nexus_forward(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                                     output_image_mask=t["output_image_mask"],
                                     rope_grid_thw=t["rope_grid_thw"],
                                     pixel_values=torch.cat(pvs) if pvs else None,
                                     image_grid_thw=torch.cat(grids) if grids else None, prefill=True)
            return res.image_embeds.reshape(len(batch), self.image_tokens, -1)
        for msgs, ims in zip(batch, imgs):
            enc, pv, grid = self._encode_for_prediction(msgs, ims)
            outs.append(self._one_by_one(enc, pv, grid))
        return torch.stack(outs)

    def _one_by_one(self, enc: EncodedConversation, pv: Optional[torch.Tensor],
                    grid: Optional[torch.Tensor]) -> torch.Tensor:
        """The plain AR baseline on one conversation ending with an output span: a cached forward
        up to `<|vision_start|>`, then one forward per pad whose input is the previous prediction."""
        from transformers import DynamicCache

        device = self.get_input_embeddings().weight.device
        n = self.image_tokens
        ids = torch.tensor([enc.input_ids], device=device)
        out_mask = torch.tensor([enc.output_mask], device=device)
        pos = self.rope_positions(ids, None, torch.tensor(enc.grids, device=device))
        start = int(out_mask[0].nonzero()[0])  # first pad; the prompt ends at <|vision_start|>
        emb = self._inputs_embeds(ids[:, :start], out_mask[:, :start], pv, grid, None)
        cache = DynamicCache(config=self.config.text_config)
        h = self.model(inputs_embeds=emb, position_ids=pos[:, :, :start], cache=cache,
                       use_cache=True).last_hidden_state
        preds = [self.vision_head(h[:, -1])]
        for i in range(1, n):
            h = self.model(inputs_embeds=preds[-1].unsqueeze(1).to(emb.dtype),
                           position_ids=pos[:, :, start + i - 1:start + i], cache=cache,
                           use_cache=True).last_hidden_state
            preds.append(self.vision_head(h[:, -1]))
        return torch.cat(preds, dim=0)

    @torch.no_grad()
    def generate_image(self, messages: Sequence[dict[str, Any]], images: Optional[Sequence[Any]] = None,
                       assistant_prefix: str = "", max_new_tokens: int = 64, prefill: bool = True
                       ) -> tuple[list[int], torch.Tensor]:
        """Greedy generation of the assistant turn of one conversation (ending with a user turn),
        starting with `assistant_prefix` (e.g. the template's 'Here is an image based on the
        description: <image>'). Every `<|vision_start|>` is followed by the forced N pads and
        `<|vision_end|>`; the N embeddings come from one forward (prefill) or N (baseline).
        Returns (new token ids incl. the prefix, embeddings [images, N, D])."""
        from transformers import DynamicCache

        proc = self._need_processor()
        device = self.get_input_embeddings().weight.device
        vs, ve, pad = self.config.vision_start_token_id, self.config.vision_end_token_id, \
            self.config.image_token_id
        eos = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
        ins = list(images or [])
        pv = grid = None
        grids: list[list[int]] = []
        if ins:
            pv, grid = input_pixels(proc.image_processor, ins)
            grids = grid.tolist()
        enc = encode_conversation(proc.tokenizer, messages, grids, self.image_tokens, self.output_grid(),
                                  self.config.vision_config.spatial_merge_size, self.token_ids(),
                                  add_generation_prompt=True)
        prefix_ids: list[int] = []
        pieces = assistant_prefix.split(IMAGE_TAG)
        prefix_ids = proc.tokenizer.encode(pieces[0], add_special_tokens=False) if pieces[0] else []
        force_image = len(pieces) > 1
        ids = torch.tensor([enc.input_ids + prefix_ids], device=device)
        out_mask = torch.zeros_like(ids, dtype=torch.bool)
        pos = self.rope_positions(ids, None, torch.tensor(enc.grids, device=device) if enc.grids else None)
        emb = self._inputs_embeds(ids, out_mask, pv, grid, None)
        cache = DynamicCache(config=self.config.text_config)
        h = self.model(inputs_embeds=emb, position_ids=pos, cache=cache, use_cache=True).last_hidden_state
        next_pos = int(pos.max()) + 1
        new: list[int] = list(prefix_ids)
        embeds: list[torch.Tensor] = []
        s = self.output_grid()[1] // self.config.vision_config.spatial_merge_size
        embed_tokens = self.get_input_embeddings()

        def step(inputs: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            return self.model(inputs_embeds=inputs, position_ids=p, cache=cache,
                              use_cache=True).last_hidden_state

        def text_pos(p: int, k: int = 1) -> torch.Tensor:
            return torch.arange(p, p + k, device=device).view(1, 1, -1).expand(3, 1, -1)

        while len(new) < max_new_tokens:
            if force_image:
                tok, force_image = vs, False
            else:
                logits = self.lm_head(h[:, -1]).float()
                logits[:, [ve, pad]] = -float("inf")  # never sampled freely (the reference's rule)
                tok = int(logits.argmax(-1))
            if tok != vs:
                new.append(tok)
                if tok == eos:
                    break
                h = step(embed_tokens(torch.tensor([[tok]], device=device)), text_pos(next_pos))
                next_pos += 1
                continue
            # the forced span: <|vision_start|> + N pads (3D positions of the output grid) + <|vision_end|>
            img_pos = self.model.get_vision_position_ids(next_pos + 1, torch.tensor(self.output_grid()), 1,
                                                         self.config.vision_config.spatial_merge_size,
                                                         1, device=device).unsqueeze(1)
            vs_emb = embed_tokens(torch.tensor([[vs]], device=device))
            if prefill:
                prefill_in = self.image_prefill_embeds.weight.unsqueeze(0).to(vs_emb.dtype)
                hs = step(torch.cat([vs_emb, prefill_in], 1),
                          torch.cat([text_pos(next_pos), img_pos], 2))
                embeds.append(self.vision_head(hs[0, :-1]))
                last_in = None
            else:
                hs = step(vs_emb, text_pos(next_pos))
                preds = [self.vision_head(hs[0, -1])]
                for i in range(1, self.image_tokens):
                    hs = step(preds[-1].view(1, 1, -1).to(vs_emb.dtype), img_pos[:, :, i - 1:i])
                    preds.append(self.vision_head(hs[0, -1]))
                embeds.append(torch.stack(preds))
                last_in = (preds[-1].view(1, 1, -1).to(vs_emb.dtype), img_pos[:, :, -1:])
            next_pos = next_pos + 1 + s
            new.extend([vs] + [pad] * self.image_tokens + [ve])
            ve_emb = embed_tokens(torch.tensor([[ve]], device=device))
            if last_in is None:
                h = step(ve_emb, text_pos(next_pos))
            else:  # the last pad (its input the last prediction) and <|vision_end|> together
                h = step(torch.cat([last_in[0], ve_emb], 1), torch.cat([last_in[1], text_pos(next_pos)], 2))
            next_pos += 1
        return new, (torch.stack(embeds) if embeds else
                     torch.zeros(0, self.image_tokens, self.config.text_config.hidden_size))

    @torch.no_grad()
    def answer(self, image: Any, question: str, max_new_tokens: int = 32) -> str:
        """Understanding: greedy answer of one image + question (stock `generate`)."""
        proc = self._need_processor()
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": question}]
        text = proc.apply_chat_template([{"role": "user", "content": content}],
                                        add_generation_prompt=True, tokenize=False)
        inputs = proc(text=[text], images=[image.convert("RGB")] if image is not None else None,
                      return_tensors="pt").to(self.get_input_embeddings().weight.device)
        out = self.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()


def _merged_signature() -> inspect.Signature:
    """The stock forward's signature plus the Nexus keywords (`generate` validates its kwargs
    against it)."""
    stock = inspect.signature(Qwen2_5_VLForConditionalGeneration.forward)
    ours = inspect.signature(NexusGenAR.forward)
    params = [p for p in stock.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [p for p in ours.parameters.values() if p.kind is p.KEYWORD_ONLY]
    params += [p for p in stock.parameters.values() if p.kind is p.VAR_KEYWORD]
    params = [p.replace(kind=p.KEYWORD_ONLY) if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"
              and any(q.kind is q.KEYWORD_ONLY for q in params[:i]) else p for i, p in enumerate(params)]
    return stock.replace(parameters=params)


NexusGenAR.forward.__signature__ = _merged_signature()


def _input_images(messages: Sequence[dict[str, Any]], images: Sequence[Any], inputs_only: bool) -> list[Any]:
    """The input images (user-turn tags) of a conversation, from `images` given either for the
    input tags only or for every tag in order (the output ones are dropped, never used)."""
    if inputs_only:
        return list(images)
    out, k = [], 0
    for m in messages:
        n = _content_text(m.get("content", "")).count(IMAGE_TAG)
        if m.get("role") != "assistant":
            out.extend(images[k:k + n])
        k += n
    return out
