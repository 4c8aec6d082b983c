"""Run a function over items in worker threads, yielding results in input order with a bounded
look-ahead, so decoding and preprocessing overlap the model's forward pass on the caller thread.

PIL decoding/resizing and hashlib release the GIL, so threads give real parallelism here."""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
R = TypeVar("R")


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


class OrderedPrefetcher(Iterator[R]):
    """Iterator over `fn(item)` for each item, computed ahead by `workers` threads.

    At most `lookahead` results are pending or buffered at a time (memory stays bounded).
    Exceptions raised by `fn` are re-raised when their item is reached: callers that want
    per-item errors make `fn` return them instead."""

    def __init__(self, fn: Callable[[T], R], items: Iterable[T], *, workers: Optional[int] = None,
                 lookahead: int = 64, nice: Optional[int] = None) -> None:
        self._fn = fn
        self._items = iter(items)
        self._pool = worker_pool(workers, nice)
        self._pending: deque[Future] = deque()
        self._lookahead = max(1, lookahead)
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._lookahead:
            try:
                item = next(self._items)
            except StopIteration:
                return
            self._pending.append(self._pool.submit(self._fn, item))

    def __next__(self) -> R:
        if not self._pending:
            self.close()
            raise StopIteration
        fut = self._pending.popleft()
        self._fill()
        return fut.result()

    def close(self) -> None:
        """Cancel what has not started and release the threads."""
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self._pool.shutdown(wait=False, cancel_futures=True)
        except Exception:
            pass
