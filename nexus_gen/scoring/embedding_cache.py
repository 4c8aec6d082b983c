"""An in-memory embedding cache keyed by (model id, content key), shared by all encoders.

Scoring the same image (or text) twice with the same model costs one forward pass. Bounded
LRU; thread-safe; hit and miss counts are kept for checks and logs."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

import torch


class EmbeddingCache:
    """LRU map (model_key, content key) -> 1-D float32 cpu tensor."""

    def __init__(self, max_items: int = 200_000) -> None:
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        self.max_items = max_items
        self._data: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, model_key: str, key: str) -> Optional[torch.Tensor]:
        """The cached vector, or None (counted as a miss)."""
        with self._lock:
            vec = self._data.get((model_key, key))
            if vec is None:
                self.misses += 1
                return None
            self._data.move_to_end((model_key, key))
            self.hits += 1
            return vec

    def put(self, model_key: str, key: str, vec: torch.Tensor) -> None:
        """Store one vector (evicting the least recently used beyond `max_items`)."""
        if self.max_items == 0:
            return
        with self._lock:
            self._data[(model_key, key)] = vec
            self._data.move_to_end((model_key, key))
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        """Drop all entries and reset the counters."""
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0


_DEFAULT = EmbeddingCache()


def default_cache() -> EmbeddingCache:
    """The process-wide cache encoders use unless given their own."""
    return _DEFAULT
