"""The cached text-embedding loop shared by the CLIP and Chinese-CLIP encoders.

Texts are keyed like images, by xxh3-128 of their bytes (with a `text:` prefix, so a text never
meets an image's key), looked up in the encoder's embedding cache, and only the distinct misses
go through the model, in batches the encoder forms (`_text_features`)."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
import xxhash

from nexus_gen.scoring.embedding_cache import EmbeddingCache


def text_key(text: str) -> str:
    """A text's cache key: `text:` + the xxh3-128 hex digest of its UTF-8 bytes."""
    return "text:" + xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


def check_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list, refusing one bare string and any item that is not a string."""
    if isinstance(texts, str):
        raise TypeError("encode_texts takes a list of strings, got one string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, not str: {t!r}")
    return texts


class TextEncoderBase:
    """`encode_texts` over a cache; subclasses set `cache`, `cache_key`, `device`, `embed_dim`
    and implement `_text_features`."""

    cache: EmbeddingCache
    cache_key: str
    embed_dim: int
    texts_forwarded: int = 0  # number of texts that went through the model

    def _text_features(self, texts: list[str], batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Raw features of `texts` in batches of at most `batch_size`: per batch, the indices
        into `texts` it holds and their features [B, D] (any order the model prefers)."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """[N, D] L2-normalised float32 cpu text embeddings; distinct texts are encoded once and
        cached by (model id, `text_key`)."""
        texts = check_texts(texts)
        keys = [text_key(t) for t in texts]
        found: dict[str, torch.Tensor] = {}
        todo: dict[str, str] = {}
        for t, k in zip(texts, keys):
            if k in found or k in todo:
                continue
            vec = self.cache.get(self.cache_key, k)
            if vec is None:
                todo[k] = t
            else:
                found[k] = vec
        if todo:
            misses = list(todo)
            for sel, feats in self._text_features(list(todo.values()), batch_size):
                feats = F.normalize(feats.float(), dim=-1).cpu()
                self.texts_forwarded += len(sel)
                for j, vec in zip(sel, feats):
                    found[misses[j]] = vec
                    self.cache.put(self.cache_key, misses[j], vec)
        if not texts:
            return torch.empty(0, self.embed_dim)
        return torch.stack([found[k] for k in keys])
