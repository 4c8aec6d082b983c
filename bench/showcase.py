"""The CPU showcase as a benchmark (issue 17): run (or continue) `run_showcase` in OUT and print,
last, the JSON line {"trained": {...}, "untrained": {...}, "ci95": {...}, "minutes", "size", ...}.

    python bench/showcase.py --out runs/showcase --minutes 60 [--device cuda] [--threads 2] [--ablation]

A finished OUT is read back, not retrained (the showcase is resumable: phases record completion)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    """Parse arguments, run the showcase, print the points table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/showcase"))
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ablation", action="store_true", help="also the AR baseline (prefill false); adds \"ablation\"")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("eval.showcase").setLevel(logging.INFO)
    from eval.showcase.showcase_report import point_table
    from eval.showcase.showcase_run import STATE, run_showcase

    summary = run_showcase(str(args.out), minutes=args.minutes, device=args.device, threads=args.threads,
                           ablation=args.ablation)
    state = json.loads((args.out / STATE).read_text())
    print(f"{'point':<22} {'metric':<15} {'value':>6}  95% CI           units  minute")
    for r in point_table(state):
        print(f"{r['label']:<22} {r['metric']:<15} {r['mean']:6.3f}  [{r['lo']:.3f}, {r['hi']:.3f}]  "
              f"{r['units']:5d}  {r['minutes']:6.1f}")
    for name, seg in state.get("segments", {}).items():
        print(f"train {name}: {seg['step']} steps in {seg['seconds']:.0f} s ({seg['seconds'] / max(seg['step'], 1):.2f} s/step)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
