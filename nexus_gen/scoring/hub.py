"""Loading hub weights without a minute of network retries: before a scorer model is loaded, its
files are looked up in the local Hugging Face cache; when they are not there and the hub cannot be
used (offline mode: `HF_HUB_OFFLINE=1`, or the hub's host does not answer a short TCP probe),
loading fails at once with one line saying what to do. When they are cached and the hub cannot be
reached, the load runs in huggingface_hub's offline mode, so it reads the cache without retrying.

A proxy (`HTTPS_PROXY`, ...) disables the probe: the download is then left to try."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from typing import Iterator, Optional, Sequence
from urllib.parse import urlparse

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0  # seconds to open a TCP connection to the hub before calling it unreachable
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class ModelUnavailableError(RuntimeError):
    """The named model's weights cannot be found or loaded here (e.g. offline, not cached)."""


def offline_mode() -> bool:
    """huggingface_hub's offline switch (`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`), as it reads it."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _endpoint() -> tuple[str, int]:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)


@functools.lru_cache(maxsize=None)
def _probe(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError as exc:
        log.info("hub %s:%d unreachable (%s)", host, port, exc)
        return False


def hub_reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to the hub endpoint opens within `timeout` (once per process;
    assumed True behind a proxy, which the probe cannot see through)."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    return _probe(*_endpoint(), timeout)


def cached_file(repo_id: str, filename: str) -> str | None:
    """The local path of `repo_id/filename` in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename)
    return path if isinstance(path, str) else None


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub's offline mode for the duration (it reads the switch at each request)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def unavailable_reason(repo_id: str, candidates: Sequence[str]) -> Optional[str]:
    """Why none of `candidates` of `repo_id` can be had now without network retries: not in the
    local cache and the hub offline or unreachable (None: cached, or the hub can be asked)."""
    if any(cached_file(repo_id, f) for f in candidates):
        return None
    if offline_mode():
        return f"{repo_id} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1)"
    if not hub_reachable():
        host, port = _endpoint()
        return f"{repo_id} is not in the local Hugging Face cache and {host}:{port} cannot be reached"
    return None


@contextlib.contextmanager
def hub_files(what: str, repo_id: str, candidates: Sequence[str], fix: str) -> Iterator[None]:
    """Guard the load of `repo_id` (which reads one of `candidates`): fail fast with
    `ModelUnavailableError` ("<what>: <repo> is not in the local cache and <why>; <fix>") when it
    is not cached and the hub cannot be used; read the cache offline when it is cached but the
    hub is unreachable; else load normally (downloading if needed)."""
    why = unavailable_reason(repo_id, candidates)
    if why:
        raise ModelUnavailableError(f"{what}: {why}; {fix}")
    if offline_mode() or hub_reachable():
        yield
        return
    with _hub_offline():
        yield


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """transformers' per-load "Loading weights" progress bar off for the duration (a scorer
    loads small known models; the bar is noise on the terminal and in logs)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
