"""The showcase as a Prefect flow (thin): `eval.showcase.showcase_run.run_showcase` does the work."""
from __future__ import annotations

from typing import Any, Optional

from prefect import flow


@flow(name="showcase", log_prints=False)
def showcase_flow(out: str, minutes: float = 60.0, device: str = "cpu", stop_after: Optional[str] = None,
                  threads: int = 2, ablation: bool = False) -> dict[str, Any]:
    """Build scenes data, train the tiny Nexus-Gen stages, evaluate along the way, write the report."""
    from eval.showcase.showcase_run import run_showcase

    return run_showcase(out, minutes=minutes, device=device, ablation=ablation, stop_after=stop_after,
                        threads=threads)
