"""The embedding pre-compute as a Prefect flow: one task per unit (input shard x chunk), on
threads, resumable (finished units are skipped). Thin: every step is a library call of
`nexus_gen.train.precompute`, which a plain loop (`precompute`) runs the same way."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows.build import _retry_transient
from flows.runtime import wait_units
from nexus_gen.train.precompute import (DEFAULT_CHUNK, Unit, check_existing, compute_unit, finish_precompute,
                                        load_ar_model, model_fingerprint, plan_precompute)

log = logging.getLogger(__name__)


@task(name="precompute-unit", retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_transient,
      cache_policy=NO_CACHE)
def precompute_unit(unit: Unit, model: Any, mode: str, out: str, fingerprint: str,
                    batch_size: int) -> dict[str, Any]:
    """One unit: embed its samples and write its file."""
    return compute_unit(unit, model, mode, out, fingerprint, batch_size)


@flow(name="precompute", log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=1))
def precompute_flow(mode: str, data: list[str], ar: str, out: str, chunk_size: int = DEFAULT_CHUNK,
                    batch_size: int = 8, limit: Optional[int] = None, device: str = "cpu",
                    dtype: str = "float32", progress: bool = False) -> dict[str, Any]:
    """Pre-compute `mode` embeddings of `data` with AR model `ar` into `out`; returns the manifest
    (plus `computed`: units computed by this run)."""
    plan = plan_precompute(mode, data, out, chunk_size, limit)  # bad inputs fail before the model loads
    model = load_ar_model(ar, device, dtype)
    fp = model_fingerprint(model)
    check_existing(plan, fp)
    Path(out).mkdir(parents=True, exist_ok=True)
    futures = [precompute_unit.submit(quote(u), quote(model), mode, out, fp, batch_size) for u in plan.todo]
    error = wait_units(futures, len(plan.units), "unit", f"precompute {mode}", progress, log)
    if error is not None:
        raise error
    manifest = finish_precompute(plan)
    manifest["computed"] = len(plan.todo)
    return manifest
