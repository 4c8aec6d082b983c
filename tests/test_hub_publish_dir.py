"""Publishing the demo build to a folder (`--hub dir:PATH`), for real: the folder loads per config
with `datasets`, images decode to PIL, counts are the run's, a second publish changes nothing,
and the card says what the run holds."""
from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from hub_fixtures import demo_run, files_under, run_copy  # noqa: F401 (fixtures)
from nexus_gen.hub.hub_publish import PublishOptions, publish_run

REPO_ID = "nexus-test/demo-data"


def _run_rows(run: Path) -> dict[str, dict[str, list[str]]]:
    """config -> split -> ids, read straight from the run's shards (the reference)."""
    out: dict[str, dict[str, list[str]]] = {}
    for sub, by_task in (("data", True), ("triplets", False)):
        for f in sorted((run / sub).glob("*.parquet")):
            split = f.name.split("-")[0]
            t = pq.read_table(f, columns=["id", "task"] if by_task else ["id"]).to_pylist()
            for r in t:
                config = r["task"] if by_task else "triplets"
                out.setdefault(config, {}).setdefault(split, []).append(r["id"])
    return out


def _digests(root: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in files_under(root)}


@pytest.fixture
def published(run_copy: Path, tmp_path: Path):  # noqa: F811
    hub = tmp_path / "hub"
    rec = publish_run(run_copy, PublishOptions(repo_id=REPO_ID, hub=f"dir:{hub}"))
    return run_copy, hub / REPO_ID, rec


def test_dir_publish_loads_every_config_with_images(published, tmp_path):
    import datasets
    from PIL import Image

    run, repo, rec = published
    assert rec["status"] == "complete"
    ref = _run_rows(run)
    assert set(ref) == {"understanding", "generation", "editing", "triplets"}
    for config, splits in ref.items():
        ds = datasets.load_dataset(str(repo), config, cache_dir=str(tmp_path / "cache"))
        assert set(ds) == set(splits), config
        for split, ids in splits.items():
            assert ds[split]["id"] == ids, (config, split)  # same rows, same order
            row = ds[split][0]
            images = row["images"] if config != "triplets" else [row["source_image"], row["target_image"], row["mask"]]
            assert images and all(isinstance(im, Image.Image) for im in images), (config, split)
    # the push_to_hub file names, under one folder per config
    for p in files_under(repo):
        rel = p.relative_to(repo).as_posix()
        assert rel in ("README.md", "assets/score_distributions.png", "assets/sample_triplets.png") or \
            re.fullmatch(r"(understanding|generation|editing|triplets)/(train|test)-\d{5}-of-\d{5}\.parquet", rel), rel
    run_json = json.loads((run / "run.json").read_text())
    assert {k: sum(len(v) for v in ref[k].values()) for k in run_json["by_task"]} == run_json["by_task"]


def test_second_publish_uploads_nothing_and_stages_the_same_bytes(published):
    run, repo, first = published
    before = _digests(repo)
    staged = Path(first["staged"])
    staged_before = {k: v[0] for k, v in _digests(staged).items()}
    again = publish_run(run, PublishOptions(repo_id=REPO_ID, hub=f"dir:{repo.parents[1]}"))
    assert again["status"] == "complete"
    assert again["uploaded"] == [] and again["commits"] == [] and again["deleted"] == []
    assert sorted(again["unchanged"]) == sorted(before)
    assert _digests(repo) == before  # not one file rewritten (content and mtime)
    assert {k: v[0] for k, v in _digests(staged).items()} == staged_before  # staging is byte-identical


def test_a_new_layout_replaces_the_old_files(published, tmp_path):
    import datasets

    run, repo, first = published
    rec = publish_run(run, PublishOptions(repo_id=REPO_ID, hub=f"dir:{repo.parents[1]}", max_shard_bytes=150_000))
    assert rec["deleted"], "the one-file splits of the first layout are gone"
    names = {p.relative_to(repo).as_posix() for p in files_under(repo)}
    assert not any(d in names for d in rec["deleted"])
    assert any(n.endswith("-of-00002.parquet") or n.endswith("-of-00003.parquet") for n in names)
    ds = datasets.load_dataset(str(repo), "editing", cache_dir=str(tmp_path / "cache2"))
    ref = _run_rows(run)["editing"]
    assert {s: len(ds[s]) for s in ds} == {s: len(v) for s, v in ref.items()}


def test_dry_run_uploads_nothing(run_copy, tmp_path):  # noqa: F811
    hub = tmp_path / "hub"
    rec = publish_run(run_copy, PublishOptions(repo_id=REPO_ID, hub=f"dir:{hub}", dry_run=True))
    assert rec["status"] == "dry-run"
    assert not hub.exists()
    assert "README.md" in rec["to_upload"] and len(rec["to_upload"]) == len(rec["files"])


def test_a_publish_reads_each_shard_once_and_still_sees_a_changed_one(run_copy, tmp_path, monkeypatch):  # noqa: F811
    """The manifest check and the staging fingerprint share one sha256 per shard (counted at the
    hashing function); a shard rewritten afterwards (its mtime set back) is read again and refused."""
    import os

    from nexus_gen import hashing
    from nexus_gen.hub.hub_layout import LayoutError
    from nexus_gen.hub.hub_targets import PublishError

    reads: dict[str, int] = {}
    real = hashing.file_sha256

    def counting(path):
        reads[str(Path(path).resolve())] = reads.get(str(Path(path).resolve()), 0) + 1
        return real(path)

    monkeypatch.setattr(hashing, "file_sha256", counting)
    hashing._SEEN.clear()
    publish_run(run_copy, PublishOptions(repo_id=REPO_ID, hub=f"dir:{tmp_path / 'hub'}", dry_run=True))
    shards = sorted((run_copy / "data").glob("*.parquet")) + sorted((run_copy / "triplets").glob("*.parquet"))
    assert shards and all(reads.get(str(p.resolve())) == 1 for p in shards), reads
    victim = shards[0]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed, mtime restored
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises((PublishError, LayoutError), match="differs from its manifest entry"):
        publish_run(run_copy, PublishOptions(repo_id=REPO_ID, hub=f"dir:{tmp_path / 'hub'}", dry_run=True))
    assert reads[str(victim.resolve())] == 2


def test_card_header_and_prose(published):
    from PIL import Image

    run, repo, rec = published
    text = (repo / "README.md").read_text(encoding="utf-8")
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert m, "the card starts with a YAML header"
    head = yaml.safe_load(m[1])
    # licence: the demo's photos and converted examples are Apache-2.0 (their LICENSE file); the
    # scenes are procedural
    lic = (REPO_ROOT / "datasets_spec/examples/nexus_gen_example/LICENSE").read_text()
    assert "Apache License" in lic and "Version 2.0" in lic
    assert head["license"] == "apache-2.0"
    assert {"image-to-image", "text-to-image"} <= set(head["task_categories"])
    assert set(head["language"]) == {"en", "zh"}
    files = [p.relative_to(repo).as_posix() for p in files_under(repo)]
    configs = {c["config_name"]: c for c in head["configs"]}
    assert set(configs) == {"understanding", "generation", "editing", "triplets"}
    for name, c in configs.items():
        for df in c["data_files"]:
            matched = sorted(f for f in files if fnmatch.fnmatch(f, df["path"]))
            assert matched and matched == sorted(
                f for f in files if f.startswith(f"{name}/{df['split']}-") and f.endswith(".parquet")), (name, df)
    infos = {i["config_name"]: i for i in head["dataset_info"]}
    for name in configs:
        first = next(f for f in files if f.startswith(f"{name}/"))
        assert [f["name"] for f in infos[name]["features"]] == pq.read_schema(repo / first).names
        rows = {s["name"]: s["num_examples"] for s in infos[name]["splits"]}
        assert rows == {s: len(v) for s, v in _run_rows(run)[name].items()}
    # prose: recipe, model ids from the triplets' lineage, the run's counts
    record = json.loads((run / "run.json").read_text())
    assert f"`{record['recipe']}`" in text and record["recipe_hash"] in text
    ids = set()
    for f in (run / "triplets").glob("*.parquet"):
        for lin in pq.read_table(f, columns=["lineage"]).column("lineage").to_pylist():
            ids |= set(json.loads(lin)["models"].values())
    assert ids and all(f"`{i}`" in text for i in ids)
    c = record["counts"]
    assert f"{c['planned']} planned triplets = {c['triplets']} built + {c['rejected']} rejected" in text
    assert f"{c['samples']} unified samples" in text
    assert "**this publication is unfiltered**" in text and "nexus-gen publish RUN --policy NAME" in text
    for section in ("## Filter policy", "## Score distributions", "## Sample triplets", "## Licences and attribution"):
        assert section in text
    for png in ("assets/score_distributions.png", "assets/sample_triplets.png"):
        assert f"]({png})" in text
        assert Image.open(io.BytesIO((repo / png).read_bytes())).format == "PNG"
    assert "fb49ff56dbec43036c928526b7b0708e15f45a90" in text  # the example data's source commit


REPO_ROOT = Path(__file__).resolve().parents[1]
