"""Worker threads for the scorer's decoding and preprocessing, run at lowered priority so they
overlap the model's forward pass on the caller thread without stalling it (the ordered, bounded
map over them is `nexus_gen.parallel.ordered_map`).

PIL decoding/resizing and xxhash release the GIL, so threads give real parallelism here."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional


WORKER_NICE = 0  # >0 lowers decode threads (Linux: nice is per thread) so they only use idle CPU


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value (Linux), so it runs on CPU the forward pass leaves
    idle instead of preempting its torch threads (which then stall each other at barriers)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        cur = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, max(cur, nice)))
    except OSError:  # not permitted or not supported: run at normal priority
        pass


def worker_pool(workers: Optional[int] = None, nice: Optional[int] = None) -> ThreadPoolExecutor:
    """A thread pool whose threads run at lowered priority (see `lower_thread_priority`;
    `nice` defaults to `WORKER_NICE`)."""
    nice = WORKER_NICE if nice is None else nice
    return ThreadPoolExecutor(max_workers=workers or default_workers(),
                              thread_name_prefix="nexus-prefetch",
                              initializer=lower_thread_priority, initargs=(nice,))


def default_workers() -> int:
    """Decode workers: the core count, at least 1 and at most 8."""
    return max(1, min(8, os.cpu_count() or 1))
