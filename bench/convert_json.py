"""Peak memory of `convert` on a large JSON array (LLaVA-Instruct style), measured side by side
in one run (not a test).

Two LLaVA json lists of about SMALL and BIG MB (records of ~1.6 kB, the LLaVA-Instruct-665k
average, each with a tiny image) are converted end to end (`convert_files("llava", ...)`: read,
check, write shards), each in a fresh subprocess; a third subprocess only `json.load`s the big
list, for reference (what reading the array whole costs). Last line: JSON with each peak RSS
and "memory_ratio" = peak(BIG) / peak(SMALL) (goal <= 1.2)."""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ANSWER = ("The image shows a small square of colour. " * 30).strip()


def write_images(folder: Path, count: int = 8) -> list[str]:
    """`count` distinct 8x8 PNGs (tiny: the bench is about the json, not the images)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"img_{i}.png"
        Image.new("RGB", (8, 8), (30 * i % 256, 90, 255 - 20 * i)).save(folder / name)
        names.append(name)
    return names


def write_llava_json(path: Path, megabytes: float, images: list[str]) -> int:
    """A json array of LLaVA records adding up to about `megabytes`; returns the record count."""
    target = int(megabytes * 1e6)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n")
        size = 2
        while size < target:
            rec = {"id": f"{n:09d}", "image": images[n % len(images)],
                   "conversations": [{"from": "human", "value": f"<image>\nWhat is in picture {n}?"},
                                     {"from": "gpt", "value": ANSWER},
                                     {"from": "human", "value": "And its colour?"},
                                     {"from": "gpt", "value": ANSWER[:400]}]}
            text = ("" if n == 0 else ",\n") + json.dumps(rec)
            f.write(text)
            size += len(text)
            n += 1
        f.write("\n]\n")
    return n


def child(mode: str, path: Path, work: Path) -> None:
    """Run one measurement in this (fresh) process; print its peak RSS."""
    t = time.perf_counter()
    if mode == "convert":
        from nexus_gen.data.convert import convert_files

        s = convert_files("llava", [path], work / f"out-{path.stem}", images_root=work / "imgs")
        result = {"accepted": s.accepted, "rejected": s.rejected}
    else:
        with open(path, encoding="utf-8") as f:
            result = {"items": len(json.load(f))}
    result["seconds"] = round(time.perf_counter() - t, 1)
    result["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result))


def measure(mode: str, path: Path, work: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path), "--work", str(work)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=float, default=20.0, help="MB of the small json list")
    ap.add_argument("--big", type=float, default=200.0, help="MB of the big json list")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.work)
        return
    with tempfile.TemporaryDirectory(prefix="bench-convert-json-") as tmp:
        work = args.work or Path(tmp)
        images = write_images(work / "imgs")
        results = {}
        for label, mb in (("small", args.small), ("big", args.big)):
            path = work / f"{label}.json"
            n = write_llava_json(path, mb, images)
            m = measure("convert", path, work)
            assert m["accepted"] == n and m["rejected"] == 0, m
            results[label] = {"mb": round(path.stat().st_size / 1e6, 1), "records": n, "seconds": m["seconds"],
                              "peak_rss_mb": round(m["peak_rss_kb"] / 1024, 1)}
            print(f"convert {label}: {results[label]}", flush=True)
        whole = measure("load", work / "big.json", work)
        results["json_load_big_peak_rss_mb"] = round(whole["peak_rss_kb"] / 1024, 1)
        results["memory_ratio"] = round(results["big"]["peak_rss_mb"] / results["small"]["peak_rss_mb"], 3)
        print(json.dumps(results))


if __name__ == "__main__":
    main()
