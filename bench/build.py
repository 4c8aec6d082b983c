"""Build-flow overhead and memory, measured side by side in one run (not a test).

N scene triplets (a generated recipe: N/5 procedural scenes at 64 px, 2N/5 add, 2N/5 remove,
N/5 style; tiny random-init CLIP and DINO, offline; every metric; EN and ZH; splits 0.8/0.2;
outputs: editing samples and the triplet table only, no generation/understanding samples;
`--shard-size` scenes per shard, 11 by default: 38 shards of ~53 triplets at N=2000) built two ways:
  flow  `flows.build.build_flow` on the threads task runner (1 worker), against a Prefect server
        that is already up (`prefect_test_harness`: a real server subprocess, temp database);
  loop  `nexus_gen.edit.build.build`: the same library calls, one shard after another.
Each run builds into its own fresh folder; the order alternates and the best of `--repeat` runs
counts (this machine is shared). Model loading is excluded from both alike: before timing, one
small build through the loop and one through the flow (which also warms the server and its
client) load the models into this process's model cache (`nexus_gen.models.loaded`), which both
timed paths then reuse. The flow's and the loop's `data/`, `triplets/` and `rejects.jsonl` are
compared byte for byte.
Peak memory: a fresh subprocess per (N, path) warms up the same way, resets the RSS high-water
mark, builds, and reports its peak RSS (N=500 vs 2000; `--quick`: 50 vs 200).
Also printed: each path's time outside `run_shard` (orchestration, merge, grid, artifacts) and
the flow's extra time per shard.
Last line: JSON {"overhead": flow/loop, "flow_s", "loop_s", "triplets", "identical",
"mem_ratio_2000_vs_500" (loop; the flow's as "flow_mem_ratio_..."), ...}; goals: overhead <= 1.2,
memory ratio <= 1.2."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from memory import peak_kb, reset_peak  # noqa: E402  (bench/, the script's own folder)
GOAL_OVERHEAD = GOAL_MEMORY = 1.2


def bench_recipe(n: int, shard_size: int) -> dict:
    """`n` triplets on n/5 scenes (each scene: about 2 adds, 2 removes and 1 restyle)."""
    add = remove = 2 * n // 5
    return {
        "name": f"bench-build-{n}", "seed": 0,
        "sources": [{"kind": "scenes", "name": "scenes", "count": max(1, n // 5), "size": 64,
                     "max_objects": 4}],
        "edits": {"add": add, "remove": remove, "style": n - add - remove},
        "models": {"editor": "scenes", "detector": "scenes-pixel", "clip": "tiny", "dino": "tiny"},
        "scoring": {"metrics": ["clip_t", "clip_i", "clip_dir", "dino", "l1", "l1_masked"]},
        "shard_size": shard_size,
        "outputs": {"generation": False, "understanding": False, "triplets": True},
        "languages": ["en", "zh"],
        "splits": {"train": 0.8, "test": 0.2},
    }


def write_recipe(folder: Path, n: int, shard_size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench_{n}.yaml"
    path.write_text(yaml.safe_dump(bench_recipe(n, shard_size), sort_keys=False), encoding="utf-8")
    return path


def isolate_prefect(home: Path) -> None:
    """A throwaway Prefect home, no analytics, offline hubs (before prefect is imported)."""
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextmanager
def prefect_server() -> Iterator[str]:
    """A Prefect server up before any timing (a subprocess with a temp database); yields its
    API URL, which subprocesses join through PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def run_loop(recipe: Path, out: Path) -> dict:
    from nexus_gen.edit.build import build

    return build(recipe, out)


def run_flow(recipe: Path, out: Path) -> dict:
    from flows.build import build_flow, task_runner

    flow = build_flow.with_options(task_runner=task_runner("threads", 1, None))
    return flow(recipe=str(recipe), out=str(out))


RUNS = {"loop": run_loop, "flow": run_flow}


def warm_up(work: Path, shard_size: int) -> None:
    """Load the models (process cache) and warm the server and its client: one small build
    through each path, untimed."""
    recipe = write_recipe(work / "warm", 10, shard_size)
    for name, fn in RUNS.items():
        fn(recipe, Path(tempfile.mkdtemp(dir=work, prefix=f"warm-{name}-")))


def output_files(run: Path) -> dict[str, bytes]:
    """What must be the same bytes however the run was orchestrated (run.json holds timings)."""
    files = {f"{sub}/{p.name}": p.read_bytes() for sub in ("data", "triplets")
             for p in sorted((run / sub).iterdir())}
    return files | {"rejects.jsonl": (run / "rejects.jsonl").read_bytes()}


def memory_child(n: int, path: str, work: Path, shard_size: int) -> None:
    """Child process: warm up (imports, models, server client), reset the RSS high-water mark,
    build N triplets through `path`, print the peak RSS (KiB) and its growth over the start."""
    warm_up(work, shard_size)
    recipe = write_recipe(work, n, shard_size)
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"mem-{path}-{n}-"))
    base = reset_peak()  # so the peak is the build's own
    record = RUNS[path](recipe, out)
    peak = peak_kb()
    assert record["counts"]["triplets"] == n, record["counts"]
    print(json.dumps({"n": n, "path": path, "peak_rss_kb": peak, "growth_kb": peak - base if base else None}))


def peak_rss(n: int, path: str, work: Path, shard_size: int, api_url: str) -> dict:
    env = dict(os.environ, PREFECT_API_URL=api_url)
    cmd = [sys.executable, __file__, "--memory-child", str(n), "--path", path, "--work", str(work),
           "--shard-size", str(shard_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="triplets (default 2000)")
    ap.add_argument("--quick", action="store_true", help="200 triplets, memory at 50 vs 200")
    ap.add_argument("--shard-size", type=int, default=11, help="scenes per shard (~5 triplets each)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each path (best counts)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--path", choices=sorted(RUNS), default="loop", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        isolate_prefect(args.work / "prefect-child")
        memory_child(args.memory_child, args.path, args.work, args.shard_size)
        return
    n = 200 if args.quick else args.n
    if n < 5 or args.shard_size < 1 or args.repeat < 1:
        ap.error("--n must be >= 5, --shard-size and --repeat >= 1")
    work = Path(tempfile.mkdtemp(prefix="nexus-gen-bench-build-", dir=args.work))
    isolate_prefect(work / "prefect")
    results: dict = {}
    try:
        with prefect_server() as api_url:
            warm_up(work, args.shard_size)
            recipe = write_recipe(work, n, args.shard_size)
            times: dict[str, list[float]] = {"loop": [], "flow": []}
            outside: dict[str, list[float]] = {"loop": [], "flow": []}  # time not in run_shard
            first: dict[str, Path] = {}
            records: dict[str, dict] = {}
            for rep in range(args.repeat):  # alternate the order: loop first, then flow first
                for name in (("loop", "flow") if rep % 2 == 0 else ("flow", "loop")):
                    out = Path(tempfile.mkdtemp(dir=work, prefix=f"{name}-{rep}-"))
                    t = time.perf_counter()
                    records[name] = RUNS[name](recipe, out)
                    times[name].append(time.perf_counter() - t)
                    in_shards = sum(s.get("total", 0) for s in records[name]["seconds"]["shards"].values())
                    outside[name].append(times[name][-1] - in_shards)
                    if name in first:
                        shutil.rmtree(out)
                    else:
                        first[name] = out
            identical = output_files(first["flow"]) == output_files(first["loop"])
            rec = records["loop"]
            results["overhead"] = round(min(times["flow"]) / min(times["loop"]), 3)
            results["flow_s"] = round(min(times["flow"]), 2)
            results["loop_s"] = round(min(times["loop"]), 2)
            results["triplets"] = rec["counts"]["triplets"]
            results["shards"] = rec["shards"]["done"]
            results["identical"] = identical
            results["flow_runs_s"] = [round(t, 2) for t in times["flow"]]
            results["loop_runs_s"] = [round(t, 2) for t in times["loop"]]
            for name in ("flow", "loop"):  # of the best run: orchestration, merge, grid, artifacts
                best = times[name].index(min(times[name]))
                results[f"{name}_outside_shards_s"] = round(outside[name][best], 2)
            results["per_shard_overhead_ms"] = round(
                1000 * (min(times["flow"]) - min(times["loop"])) / rec["shards"]["done"], 1)
            if not args.no_memory:
                small, big = (50, 200) if args.quick else (500, 2000)
                for path in ("loop", "flow"):
                    m_small = peak_rss(small, path, work, args.shard_size, api_url)
                    m_big = peak_rss(big, path, work, args.shard_size, api_url)
                    pre = "" if path == "loop" else "flow_"
                    results[f"{pre}mem_ratio_{big}_vs_{small}"] = round(
                        m_big["peak_rss_kb"] / m_small["peak_rss_kb"], 3)
                    results[f"{pre}peak_rss_mb_n{small}"] = round(m_small["peak_rss_kb"] / 1024, 1)
                    results[f"{pre}peak_rss_mb_n{big}"] = round(m_big["peak_rss_kb"] / 1024, 1)
                    if m_small["growth_kb"] is not None:  # what the build itself added
                        results[f"{pre}growth_mb_n{small}"] = round(m_small["growth_kb"] / 1024, 1)
                        results[f"{pre}growth_mb_n{big}"] = round(m_big["growth_kb"] / 1024, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["overhead_goal_met"] = results["overhead"] <= GOAL_OVERHEAD
    ratio = next((v for k, v in results.items() if k.startswith("mem_ratio")), None)
    if ratio is not None:
        results["memory_goal_met"] = ratio <= GOAL_MEMORY
    results["cores"] = os.cpu_count()
    for k, v in results.items():
        print(f"{k:>28}: {v}")
    print("flow and loop outputs (data/, triplets/, rejects.jsonl) are "
          + ("byte-identical" if results["identical"] else "DIFFERENT"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
