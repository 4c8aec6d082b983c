"""A per-process cache of loaded models keyed by (role, id, device, dtype): a thread, a Dask or a
Ray worker loads each model once and reuses it for every shard it runs."""
from __future__ import annotations

import threading
from typing import Any, Callable

_MODELS: dict[tuple[str, str, str, str], Any] = {}
_LOCK = threading.Lock()


def cached_model(role: str, spec: str, device: str, dtype: str, load: Callable[[], Any]) -> Any:
    """The model for this key, loaded by `load()` the first time in this process."""
    key = (role, spec, device, dtype)
    with _LOCK:  # one loader at a time: two threads never load the same model twice
        if key not in _MODELS:
            _MODELS[key] = load()
        return _MODELS[key]


def loaded_keys() -> list[tuple[str, str, str, str]]:
    """What this process has loaded (for checks and logs)."""
    with _LOCK:
        return list(_MODELS)
