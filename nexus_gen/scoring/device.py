"""The device a scorer runs on, checked before any model is loaded: a misspelt device or a CUDA
device on a machine without one is an option error (one line saying what to use), not a
traceback from deep inside torch."""
from __future__ import annotations

import torch


def check_device(spec: str) -> torch.device:
    """`spec` as a `torch.device` this machine has (cpu, cuda, cuda:N, mps); `ValueError` naming
    the problem and what to pass instead otherwise."""
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {spec!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r}: this machine has no usable CUDA GPU (torch "
                             f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                             "use cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {spec!r}: only {n} CUDA device(s) here (cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {spec!r}: MPS is not available on this machine; use cpu")
    elif dev.type != "cpu":
        raise ValueError(f"device {spec!r} is not supported for scoring: use cpu, cuda or cuda:N")
    return dev
