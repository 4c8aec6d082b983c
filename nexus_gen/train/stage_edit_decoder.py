"""The editing-decoder training stage: editing samples (source image first, edited image last) +
the AR model's teacher-forced `predicted` target embeddings and the `source` image embeddings from
an embedding store -> flow-matching loss of `NexusGenEditingDecoder`; DiT + embedding merger
(decoder layer + projector) trained, VAE and CLIP frozen (as the reference).

Config (`model:` / `data:` of a train config):

    model: {profile: tiny|paper, base: FLUX folder or id, init: a saved decoder folder,
            ar: an AR model folder (merger layer initialised from its text layer 0; D, N, M from
            its config), embed_dim: D, image_tokens: N, source_tokens: M, image_size: px,
            projector_hidden: H, joint_dim: J (checked against the DiT)}
    data:  {embeddings: the embedding store folder}"""
from __future__ import annotations

from typing import Any, Union

import torch

from nexus_gen.train.stage_api import Batch, Example
from nexus_gen.train.stage_gen_decoder import DecoderStageBase


class EditDecoderStage(DecoderStageBase):
    """Editing decoder: DiT + merger trained on (edited image, predicted + source embeddings)."""

    name = "edit-decoder"
    tasks = ("editing",)
    model_keys = ("profile", "base", "init", "ar", "embed_dim", "image_tokens", "source_tokens",
                  "image_size", "projector_hidden", "joint_dim")
    kinds = ("predicted", "source")
    decoder_kind = "editing"
    lora_full_modules = ("embedding_merger",)
    shard_units = ("FluxTransformerBlock", "FluxSingleTransformerBlock", "Qwen2_5_VLDecoderLayer")  # + merger layer

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:  # type: ignore[override]
        from nexus_gen.models.edit_decoder import EDIT_PROFILES

        return EDIT_PROFILES

    def build_model(self, device: torch.device) -> torch.nn.Module:
        """The decoder (from `init`, else from the FLUX base and the AR folder), shape-checked
        against the store, DiT + merger trainable."""
        from nexus_gen.models.edit_decoder import NexusGenEditingDecoder

        self._check_store()
        c = self.model_cfg
        if c.get("init"):
            model = NexusGenEditingDecoder.from_pretrained(c["init"], base=c.get("base"))
        else:
            model = NexusGenEditingDecoder.from_base(
                self.profile, base=c.get("base"), ar=c.get("ar"), embed_dim=c.get("embed_dim"),
                image_tokens=c.get("image_tokens"), source_tokens=c.get("source_tokens"),
                image_size=c.get("image_size"), projector_hidden=c.get("projector_hidden"))
        for key, have in (("embed_dim", model.embed_dim), ("image_tokens", model.image_tokens),
                          ("source_tokens", model.source_tokens), ("joint_dim", model.joint_dim)):
            if c.get(key) is not None and c[key] != have:
                what = "the DiT's joint_attention_dim" if key == "joint_dim" else "the decoder's"
                raise ValueError(f"model.{key} {c[key]} does not match {what} {have}")
        emb = self._first_embeddings()
        for kind, tokens in (("predicted", model.image_tokens), ("source", model.source_tokens)):
            t = emb[kind]
            if t.ndim != 2 or list(t.shape) != [tokens, model.embed_dim]:
                key = "image_tokens" if kind == "predicted" else "source_tokens"
                raise ValueError(f"data.embeddings: {kind} embeddings are {list(t.shape)} but the "
                                 f"decoder takes [{tokens}, {model.embed_dim}] (model.{key}, "
                                 "model.embed_dim)")
        return self._trainable(model, "embedding_merger", device)

    def example(self, sample: dict[str, Any]) -> Union[Example, str]:
        """(predicted [N, D], source [M, D], the edited image [3, S, S]) of an editing sample."""
        if sample.get("task") == "editing" and len(sample.get("images") or []) < 2:
            return f"editing sample {sample.get('id')!r} has fewer than 2 images"
        parts = self._sample_parts(sample, "editing")
        if isinstance(parts, str):
            return parts
        emb, image = parts
        return {"id": sample["id"], "predicted": emb["predicted"], "source": emb["source"],
                "image": image}

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The flow-matching loss (through `model(...)`, so DDP and peft wrappers work)."""
        dev = self._device(model)
        return model(predicted=batch["predicted"].to(dev), source=batch["source"].to(dev),
                     target_images=batch["image"].to(dev))
