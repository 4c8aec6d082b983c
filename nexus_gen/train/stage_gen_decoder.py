"""The generation-decoder training stage: generation samples (their output image) + the
ground-truth target embeddings pre-computed into an embedding store -> flow-matching loss of
`NexusGenGenerationDecoder`; DiT + adapter trained, VAE and CLIP frozen (as the reference).

Config (`model:` / `data:` of a train config):

    model: {profile: tiny|paper, base: FLUX folder or id, init: a saved decoder folder,
            embed_dim: D, image_size: px, joint_dim: J (checked against the DiT)}
    data:  {embeddings: the embedding store folder}"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch

from nexus_gen.train.embedding_store import SEP, EmbeddingStore
from nexus_gen.train.stage_api import Batch, Example, TrainStage

log = logging.getLogger(__name__)

# LoRA on the DiT: its attention projections (image and text streams, single blocks) and MLPs.
# These are last-name components, as the training loop checks them (module names ending in one);
# `attn.to_out.0` and `ff.net.2` (diffusers' FLUX LoRA list) would need dotted names. They match
# only DiT modules: the VAE is not a submodule and the adapter/merger use other names.
FLUX_LORA_TARGETS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj",
                     "to_add_out", "proj", "proj_mlp", "proj_out")


def store_kinds(folder: Union[str, Path]) -> set[str]:
    """The embedding kinds present in a store (read from the shard headers only)."""
    from safetensors import safe_open

    kinds: set[str] = set()
    for shard in sorted(Path(folder).glob("emb-*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            kinds.update(k.rsplit(SEP, 1)[-1] for k in f.keys())
    return kinds


class DecoderStageBase(TrainStage):
    """What both decoder stages share: key checks, the embedding store, target images, batches."""

    model_keys: ClassVar[tuple[str, ...]] = ()
    kinds: ClassVar[tuple[str, ...]] = ()
    lora_targets = FLUX_LORA_TARGETS
    shard_units: ClassVar[tuple[str, ...]] = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    decoder_kind: ClassVar[str] = ""

    def __init__(self, model_cfg: dict[str, Any], data_cfg: dict[str, Any]) -> None:
        super().__init__(model_cfg, data_cfg)
        for section, cfg, allowed in (("model", self.model_cfg, self.model_keys),
                                      ("data", self.data_cfg, ("embeddings",))):
            for key in cfg:
                if key not in allowed:
                    raise ValueError(f"{section}.{key}: unknown key for stage {self.name}; allowed: "
                                     f"{', '.join(allowed)}")
        emb = self.data_cfg.get("embeddings")
        if not isinstance(emb, (str, Path)) or not str(emb):
            raise ValueError(f"data.embeddings: stage {self.name} needs the embedding store folder "
                             "(written by the embedding pre-compute)")
        profile = self.model_cfg.get("profile", "tiny")
        if profile not in self.profiles:
            raise ValueError(f"model.profile: {profile!r} is not one of {', '.join(self.profiles)}")
        for key in ("embed_dim", "image_size", "joint_dim", "image_tokens", "source_tokens",
                    "projector_hidden"):
            v = self.model_cfg.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"model.{key}: must be a positive integer, got {v!r}")
        self.profile = profile
        self._store: Optional[EmbeddingStore] = None
        self._init_cfg: Optional[dict[str, Any]] = None

    # settings
    def setting(self, key: str) -> Any:
        """A model setting: the config's, else the `init` decoder's, else the profile's."""
        if self.model_cfg.get(key) is not None:
            return self.model_cfg[key]
        init = self.model_cfg.get("init")
        if init:
            if self._init_cfg is None:
                from nexus_gen.models.flow_matching import read_decoder_config

                self._init_cfg = read_decoder_config(init, self.decoder_kind)
            if key in self._init_cfg:
                return self._init_cfg[key]
        return self.profiles[self.profile].get(key)

    # the store
    @property
    def store(self) -> EmbeddingStore:
        """The embedding store named by `data.embeddings` (opened once)."""
        if self._store is None:
            try:
                self._store = EmbeddingStore(self.data_cfg["embeddings"])
            except FileNotFoundError as e:
                raise ValueError(f"data.embeddings: {e}") from None
        return self._store

    def _check_store(self) -> None:
        folder = self.data_cfg["embeddings"]
        if len(self.store) == 0:
            raise ValueError(f"data.embeddings: the store {folder} holds no embeddings")
        missing = set(self.kinds) - store_kinds(folder)
        if missing:
            raise ValueError(f"data.embeddings: the store {folder} has no {sorted(missing)} embeddings; "
                             f"stage {self.name} needs {list(self.kinds)} (was the pre-compute run "
                             "for another stage?)")

    def check_data(self, sample: dict[str, Any]) -> None:
        """The store must exist and hold the kinds this stage needs."""
        self._check_store()

    def _first_embeddings(self) -> dict[str, torch.Tensor]:
        for sid in self.store.ids():
            got = self.store.get(sid)
            if set(self.kinds) <= set(got):
                return got
        raise ValueError(f"data.embeddings: no sample in {self.data_cfg['embeddings']} has all of "
                         f"{list(self.kinds)}")

    # samples
    def _embeddings(self, sample: dict[str, Any]) -> Union[dict[str, torch.Tensor], str]:
        sid = sample.get("id")
        if sid not in self.store:
            return f"sample {sid!r} has no embeddings in {self.data_cfg['embeddings']}"
        got = self.store.get(sid)
        lacking = [k for k in self.kinds if k not in got]
        if lacking:
            return f"sample {sid!r} has no {lacking} embeddings"
        return {k: got[k].float() for k in self.kinds}

    def _image(self, sample: dict[str, Any], index: int) -> Union[torch.Tensor, str]:
        from nexus_gen.data.images import decode_image
        from nexus_gen.models.flow_matching import images_to_tensor

        images = sample.get("images") or []
        try:
            ref = images[index]
        except IndexError:
            return f"sample {sample.get('id')!r} has {len(images)} image(s)"
        data = ref.get("bytes") if isinstance(ref, dict) else None
        if not data:
            return f"sample {sample.get('id')!r}: image {index} has no bytes"
        size = int(self.setting("image_size"))
        img = decode_image(data, name=str(ref.get("path") or f"{sample.get('id')}[{index}]"))
        return images_to_tensor([img], size, size)[0]

    def _sample_parts(self, sample: dict[str, Any], task: str
                      ) -> Union[tuple[dict[str, torch.Tensor], torch.Tensor], str]:
        """(this stage's embeddings, the sample's last image as a tensor), or the reason why not."""
        if sample.get("task") != task:
            return f"task {sample.get('task')!r} is not {task}"
        emb = self._embeddings(sample)
        if isinstance(emb, str):
            return emb
        image = self._image(sample, -1)
        return image if isinstance(image, str) else (emb, image)

    def _trainable(self, model: torch.nn.Module, trained: str, device: torch.device) -> torch.nn.Module:
        """Everything frozen but the DiT and the module named `trained`; float32 on `device`."""
        model.requires_grad_(False)
        model.dit.requires_grad_(True)
        getattr(model, trained).requires_grad_(True)
        return model.to(device=device, dtype=torch.float32)

    def collate(self, examples: list[Example]) -> Batch:
        """Stack each tensor field; `ids` lists the sample ids."""
        out: Batch = {"ids": [e["id"] for e in examples]}
        for key in examples[0]:
            if key != "id":
                out[key] = torch.stack([e[key] for e in examples])
        return out

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        """The decoder folder (`save_pretrained`) of the (possibly DDP-wrapped) model."""
        getattr(model, "module", model).save_pretrained(out_dir)

    @staticmethod
    def _device(model: torch.nn.Module) -> torch.device:
        return next(model.parameters()).device


class GenDecoderStage(DecoderStageBase):
    """Generation decoder: DiT + adapter trained on (target image, target embeddings)."""

    name = "gen-decoder"
    tasks = ("generation",)
    model_keys = ("profile", "base", "init", "embed_dim", "image_size", "joint_dim")
    kinds = ("target",)
    decoder_kind = "generation"
    lora_full_modules = ("adapter",)

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:  # type: ignore[override]
        from nexus_gen.models.gen_decoder import GEN_PROFILES

        return GEN_PROFILES

    def build_model(self, device: torch.device) -> torch.nn.Module:
        """The decoder (from `init`, else from the FLUX base), shape-checked against the store,
        DiT + adapter trainable."""
        from nexus_gen.models.gen_decoder import NexusGenGenerationDecoder

        self._check_store()
        c = self.model_cfg
        if c.get("init"):
            model = NexusGenGenerationDecoder.from_pretrained(c["init"], base=c.get("base"))
        else:
            model = NexusGenGenerationDecoder.from_base(self.profile, base=c.get("base"),
                                                        embed_dim=c.get("embed_dim"),
                                                        image_size=c.get("image_size"))
        if c.get("embed_dim") is not None and c["embed_dim"] != model.embed_dim:
            raise ValueError(f"model.embed_dim {c['embed_dim']} != the init decoder's {model.embed_dim}")
        if c.get("joint_dim") is not None and c["joint_dim"] != model.joint_dim:
            raise ValueError(f"model.joint_dim {c['joint_dim']} does not match the DiT's "
                             f"joint_attention_dim {model.joint_dim}")
        target = self._first_embeddings()["target"]
        if target.ndim != 2 or target.shape[-1] != model.embed_dim:
            raise ValueError(f"data.embeddings: target embeddings are {list(target.shape)} but the "
                             f"adapter takes D = model.embed_dim = {model.embed_dim}")
        return self._trainable(model, "adapter", device)

    def example(self, sample: dict[str, Any]) -> Union[Example, str]:
        """(target embeddings [N, D], the output image [3, S, S]) of a generation sample."""
        parts = self._sample_parts(sample, "generation")
        if isinstance(parts, str):
            return parts
        return {"id": sample["id"], "embeds": parts[0]["target"], "image": parts[1]}

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The flow-matching loss (through `model(...)`, so DDP and peft wrappers work)."""
        dev = self._device(model)
        return model(embeds=batch["embeds"].to(dev), images=batch["image"].to(dev))
