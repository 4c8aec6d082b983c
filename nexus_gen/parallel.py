"""Ordered, bounded parallel map over an executor: the one helper the converter (image checks)
and the scorer (image decode/preprocess) both stream their work through.

Results come back in input order while at most `ahead` tasks are submitted and not yet consumed,
so memory stays bounded however long the input is."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Executor
from typing import Any, Callable, Iterable, Iterator


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], pool: Executor, ahead: int,
                chunk: int = 1) -> Iterator[Any]:
    """`pool.map` that keeps at most `ahead` chunks of `chunk` items in flight (bounded memory),
    results in input order. Chunks cut the per-task hand-off cost for small items.

    An exception raised by `fn` is re-raised when its item is reached (callers that want
    per-item errors make `fn` return them). Closing the generator early (break, an error
    downstream) cancels the tasks that have not started."""
    if ahead < 1 or chunk < 1:
        raise ValueError(f"ahead and chunk must be >= 1, got {ahead} and {chunk}")

    def run(batch: list[Any]) -> list[Any]:
        return [fn(it) for it in batch]

    window: deque = deque()
    try:
        batch: list[Any] = []
        for it in items:
            batch.append(it)
            if len(batch) < chunk:
                continue
            window.append(pool.submit(run, batch))
            batch = []
            if len(window) >= ahead:
                yield from window.popleft().result()
        if batch:
            window.append(pool.submit(run, batch))
        while window:
            yield from window.popleft().result()
    finally:
        for fut in window:
            fut.cancel()
