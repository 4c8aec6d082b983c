"""Shard-writing throughput and memory, measured side by side in one run (not a test).

N samples, each with two distinct real 512-px JPEGs read from files, written three ways:
  ours      nexus-gen's converter + shard writer with its default validation (header and end-marker
            check of every image, a content hash of every image (xxh3-128), ids, rules, the
            sha256 of every shard in the manifest);
  datasets  `datasets.Dataset.from_generator(...).to_parquet(...)` with the same features;
  raw       a plain `pyarrow.parquet` write of the same bytes, no checks (the limit).
Last line: JSON with throughputs (samples/s), "vs_datasets" and "vs_raw" (ours / theirs), the
`--verify full` throughput and its CPU use, and peak RSS of ours at N=1000 vs N=10000 (subprocesses)."""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from memory import peak_kb, reset_peak  # noqa: E402  (bench/, the script's own folder)


def source_photos() -> list[np.ndarray]:
    """Real photos: skimage.data's colour images and the shared fixtures."""
    import skimage.data as sd

    photos = [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket(), sd.immunohistochemistry()]
    fx = REPO.parent / "shared" / "fixtures" / "nexus_gen_example"
    for p in sorted(fx.rglob("*.png")) + sorted(fx.rglob("*.jpg")):
        photos.append(np.asarray(Image.open(p).convert("RGB")))
    return photos


def make_images(folder: Path, count: int) -> list[Path]:
    """`count` distinct 512x512 JPEGs: crops of real photos at varied offsets and scales (cached)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i:06d}.jpg" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    photos = source_photos()
    rng = np.random.default_rng(0)
    for i, p in enumerate(paths):
        if p.exists():
            continue
        ph = photos[i % len(photos)]
        h, w = ph.shape[:2]
        s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        im = Image.fromarray(ph[y:y + s, x:x + s]).resize((512, 512), Image.BICUBIC)
        if i % 2:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im.save(p, "JPEG", quality=90)
    return paths


def write_input(folder: Path, images: list[Path], n: int) -> Path:
    """A reference-format jsonl of n editing samples, two images each (cycled when n*2 > images)."""
    path = folder / f"input_{n}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            a, b = images[(2 * i) % len(images)], images[(2 * i + 1) % len(images)]
            f.write(json.dumps({
                "id": f"bench_{i:07d}", "source": "bench",
                "images": [a.name, b.name],
                "messages": [{"role": "user", "content": f"<image> Make edit number {i}."},
                             {"role": "assistant", "content": "Here is the image: <image>"}],
            }) + "\n")
    return path


def rows(input_path: Path, images_dir: Path):
    """What the two baselines write: the same samples with the raw image bytes."""
    with open(input_path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            yield {
                "id": r["id"], "source": r["source"], "task": "editing", "language": "en",
                "messages": r["messages"],
                "images": [{"bytes": (images_dir / p).read_bytes(), "path": p} for p in r["images"]],
                "meta": "{}",
            }


def run_ours(input_path: Path, images_dir: Path, out: Path, verify: str = "header") -> float:
    from nexus_gen.data.convert import convert_file

    t = time.perf_counter()
    s = convert_file("nexus-gen-jsonl", input_path, out, images_root=images_dir, verify=verify)
    dt = time.perf_counter() - t
    assert s.accepted == s.input, f"bench input had rejects: {s}"
    return dt


def run_datasets(input_path: Path, images_dir: Path, out: Path) -> float:
    import datasets

    from nexus_gen.data.schema import hf_features

    feats = datasets.Features.from_dict(hf_features())
    cache = out / "hf_cache"
    t = time.perf_counter()
    ds = datasets.Dataset.from_generator(rows, gen_kwargs={"input_path": input_path, "images_dir": images_dir},
                                         features=feats, cache_dir=str(cache))
    ds.to_parquet(str(out / "data.parquet"))
    dt = time.perf_counter() - t
    return dt


def run_raw(input_path: Path, images_dir: Path, out: Path, batch: int = 256) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nexus_gen.data.schema import FIELDS, arrow_schema
    from nexus_gen.data.shards import COLUMN_COMPRESSION

    schema = arrow_schema()
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    # the limit: the same column settings as ours (image bytes stored, not re-compressed; no
    # dictionary attempts on them), so the ratio measures the checks, not a codec choice
    with pq.ParquetWriter(out / "data.parquet", schema, compression=COLUMN_COMPRESSION,
                          use_dictionary=["id", "source", "task", "language"]) as w:
        buf = {k: [] for k in FIELDS}
        for r in rows(input_path, images_dir):
            for k in FIELDS:
                buf[k].append(r[k])
            if len(buf["id"]) >= batch:
                w.write_table(pa.Table.from_pydict(buf, schema=schema))
                buf = {k: [] for k in FIELDS}
        if buf["id"]:
            w.write_table(pa.Table.from_pydict(buf, schema=schema))
    return time.perf_counter() - t


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def memory_child(n: int, work: Path) -> None:
    """Child process: write N samples with ours, print peak RSS (KiB) and how far the conversion
    grew it beyond the RSS it started from (imports done, input written)."""
    images = make_images(work / "images", 512)
    inp = write_input(work, images, n)
    import nexus_gen.data.convert  # noqa: F401  (imports are not the writer's memory)

    out = Path(tempfile.mkdtemp(dir=work))
    base = reset_peak()  # so the peak is the conversion's own
    run_ours(inp, work / "images", out)
    peak = peak_kb()
    print(json.dumps({"n": n, "peak_rss_kb": peak, "growth_kb": peak - base if base else None}))
    shutil.rmtree(out)


def peak_rss(n: int, work: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--work", str(work)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="samples (default 2000)")
    ap.add_argument("--quick", action="store_true", help="small N (200), memory check at 200 vs 2000")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nexus-gen-bench-shards")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.work)
        return
    n = 200 if args.quick else args.n
    if n < 1:
        ap.error("--n must be >= 1")
    work = args.work
    images = make_images(work / "images", 2 * n)
    inp = write_input(work, images, n)
    for p in images[: 2 * n]:  # warm the page cache so every method reads from memory alike
        p.read_bytes()
    results = {}
    timings = {"ours": [], "datasets": [], "raw": []}
    for rep in range(3):  # alternate order, keep the best of three (this machine is noisy)
        for name, fn in (("raw", run_raw), ("datasets", run_datasets), ("ours", run_ours)):
            out = Path(tempfile.mkdtemp(dir=work))
            timings[name].append(fn(inp, work / "images", out))
            shutil.rmtree(out)
    for k, v in timings.items():
        results[f"{k}_samples_per_s"] = round(n / min(v), 1)
    out = Path(tempfile.mkdtemp(dir=work))
    c0, t0 = cpu_seconds(), time.perf_counter()
    dt_full = run_ours(inp, work / "images", out, verify="full")
    cpu_full = (cpu_seconds() - c0) / (time.perf_counter() - t0)
    shutil.rmtree(out)
    results["ours_verify_full_samples_per_s"] = round(n / dt_full, 1)
    results["verify_full_cores_used"] = round(cpu_full, 2)
    results["cores"] = os.cpu_count()
    results["vs_datasets"] = round(min(timings["datasets"]) / min(timings["ours"]), 3)
    results["vs_raw"] = round(min(timings["raw"]) / min(timings["ours"]), 3)
    if not args.no_memory:
        small, big = (200, 2000) if args.quick else (1000, 10000)
        m_small, m_big = peak_rss(small, work), peak_rss(big, work)
        results[f"peak_rss_mb_n{small}"] = round(m_small["peak_rss_kb"] / 1024, 1)
        results[f"peak_rss_mb_n{big}"] = round(m_big["peak_rss_kb"] / 1024, 1)
        if m_small["growth_kb"] is not None:  # what the conversion itself added
            results[f"growth_mb_n{small}"] = round(m_small["growth_kb"] / 1024, 1)
            results[f"growth_mb_n{big}"] = round(m_big["growth_kb"] / 1024, 1)
        results["memory_ratio"] = round(m_big["peak_rss_kb"] / m_small["peak_rss_kb"], 3)
    results["n"] = n
    for k, v in results.items():
        print(f"{k:>32}: {v}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
