"""Shards: target size honoured, manifest matches the files, temporary names then rename, a lazy
reader, the JSON Schema and the parquet schema in agreement."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_fixtures import PHOTOS, cli, convert, und_row, write_jsonl, write_photo

from nexus_gen.data import shards as shards_mod
from nexus_gen.data.schema import FIELDS, TASKS, arrow_schema, hf_features, json_schema
from nexus_gen.data.shards import ShardWriter, count_rows, iter_samples, read_manifest, shard_files


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """An input of 24 understanding samples over the four photos (a few kB each)."""
    d = tmp_path_factory.mktemp("many")
    for i, name in enumerate(PHOTOS):
        write_photo(d / "imgs" / f"{name}.png", name, size=40 + i)
    rows = [und_row(f"s{i:03d}", f"{PHOTOS[i % 4]}.png", answer=f"answer {i}") for i in range(24)]
    return write_jsonl(d / "many.jsonl", rows)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_tiny_shard_size_gives_several_shards_and_manifest_matches(many, tmp_path):
    out = tmp_path / "o"
    assert convert("nexus-gen-jsonl", many, out, "--images-root", many.parent / "imgs",
                   "--shard-size", "8KiB")["accepted"] == 24
    man = read_manifest(out)
    files = sorted(out.glob("train-*.parquet"))
    assert len(files) >= 3
    assert [s["file"] for s in man["shards"]] == [f.name for f in files]
    for s, f in zip(man["shards"], files):
        assert s["rows"] == pq.ParquetFile(f).metadata.num_rows > 0
        assert s["bytes"] == f.stat().st_size
        assert s["sha256"] == _sha(f)
        # the target is honoured: a shard closes at the first row group past the target
        last_group = pq.ParquetFile(f).metadata.row_group(pq.ParquetFile(f).metadata.num_row_groups - 1)
        assert s["bytes"] - last_group.total_byte_size <= 8 * 1024 + 4096
    assert man["total_rows"] == sum(s["rows"] for s in man["shards"]) == 24
    assert man["total_bytes"] == sum(f.stat().st_size for f in files)
    assert man["features"] == hf_features()
    assert man["converted_from"] == {"format": "nexus-gen-jsonl", "input": "many.jsonl",
                                  "inputs": ["many.jsonl"]}
    assert [s["id"] for s in iter_samples(out)] == [f"s{i:03d}" for i in range(24)]
    assert count_rows(out) == 24
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_default_size_gives_one_shard(many, tmp_path):
    out = tmp_path / "o"
    convert("nexus-gen-jsonl", many, out, "--images-root", many.parent / "imgs")
    assert [s["rows"] for s in read_manifest(out)["shards"]] == [24]


def test_determinism_across_several_shards_and_worker_counts(many, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    convert("nexus-gen-jsonl", many, a, "--images-root", many.parent / "imgs", "--shard-size", "8k")
    res = cli("convert", "nexus-gen-jsonl", many, "--images-root", many.parent / "imgs", "--shard-size", "8k",
              "--out", b, "--workers", 5)
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_image_fingerprints_in_meta_are_of_the_stored_bytes(many, tmp_path):
    import xxhash

    out = tmp_path / "o"
    convert("nexus-gen-jsonl", many, out, "--images-root", many.parent / "imgs")
    n = 0
    for s in iter_samples(out):
        stored = [im["bytes"] for im in s["images"]]
        assert s["meta"]["image_xxh3_128"] == [xxhash.xxh3_128_hexdigest(b) for b in stored]
        assert len(set(s["meta"]["image_xxh3_128"][0])) > 1  # a real digest, not a constant
        n += 1
    assert n == 24


def test_reused_row_group_memory_never_leaks_into_written_groups(tmp_path):
    """Row groups are packed into two reused arenas: many groups of growing then shrinking sizes
    (arena regrowth and reuse) must read back exactly as written."""
    import random

    rng = random.Random(3)
    sizes = [rng.randint(1, 4000) * (1 + (i // 10) % 3) for i in range(120)]
    payloads = [rng.randbytes(n) for n in sizes]
    out = tmp_path / "o"
    with ShardWriter(out, shard_bytes=60_000, row_group_bytes=9_000) as w:
        for i, p in enumerate(payloads):
            w.write(_sample(i, p))
    groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in shard_files(out))
    assert groups >= 20
    back = [s["images"][0]["bytes"] for s in iter_samples(out)]
    assert back == payloads


def _sample(i: int, payload: bytes) -> dict:
    return {"id": f"x{i}", "source": "t", "task": "understanding", "language": "en",
            "messages": [{"role": "user", "content": "<image>\nq"}, {"role": "assistant", "content": "a"}],
            "images": [{"bytes": payload, "path": None}], "meta": {"i": i}}


def test_shards_are_written_under_a_temporary_name_then_renamed(tmp_path, monkeypatch):
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst, *a, **kw):
        renames.append((Path(src).name, Path(dst).name))
        assert Path(src).exists() and not Path(dst).exists() or Path(dst).name == "manifest.json"
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(shards_mod.os, "replace", spy)
    out = tmp_path / "o"
    with ShardWriter(out, shard_bytes=3000, row_group_bytes=1000) as w:
        for i in range(6):
            w.write(_sample(i, os.urandom(1500)))
            # nothing under a final shard name is ever half written
            for f in out.glob("train-*.parquet"):
                assert pq.ParquetFile(f).metadata.num_rows > 0
    shard_renames = [r for r in renames if r[1].startswith("train-")]
    assert len(shard_renames) >= 2
    for src, dst in shard_renames:
        assert src == f".{dst}.tmp"
    assert renames[-1] == (".manifest.json.tmp", "manifest.json")  # the manifest comes last
    assert not list(out.glob(".*"))


def test_a_failed_build_leaves_no_half_shard(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(out, shard_bytes=10 ** 9, row_group_bytes=1000) as w:
            for i in range(3):
                w.write(_sample(i, os.urandom(1500)))
            raise RuntimeError("boom")
    assert list(out.glob("train-*.parquet")) == []
    assert list(out.glob(".train-*")) == []
    assert not (out / "manifest.json").exists()


def test_a_rebuild_replaces_previous_shards(tmp_path):
    out = tmp_path / "o"
    with ShardWriter(out, shard_bytes=2000, row_group_bytes=500) as w:
        for i in range(5):
            w.write(_sample(i, os.urandom(1000)))
    assert len(list(out.glob("train-*.parquet"))) >= 2
    with ShardWriter(out) as w:
        w.write(_sample(9, b"x"))
    assert [s["id"] for s in iter_samples(out)] == ["x9"]
    assert len(list(out.glob("train-*.parquet"))) == 1


def test_writer_rejects_bad_sizes(tmp_path):
    for kw in ({"shard_bytes": 0}, {"shard_bytes": -1}, {"row_group_bytes": 0}):
        with pytest.raises(ValueError, match="positive"):
            ShardWriter(tmp_path / "o", **kw)


def test_reader_is_lazy(tmp_path, monkeypatch):
    out = tmp_path / "o"
    with ShardWriter(out, shard_bytes=1500, row_group_bytes=1500) as w:
        for i in range(12):
            w.write(_sample(i, os.urandom(2000)))
    assert len(read_manifest(out)["shards"]) == 12
    opened: list[str] = []
    real = pq.ParquetFile

    class Spy(real):  # type: ignore[misc,valid-type]
        def __init__(self, source, *a, **kw):
            opened.append(Path(source).name)
            super().__init__(source, *a, **kw)

    monkeypatch.setattr(shards_mod.pq, "ParquetFile", Spy)
    it = iter_samples(out)
    assert opened == []  # a generator: nothing read before the first next()
    first = next(it)
    assert first["id"] == "x0" and first["meta"] == {"i": 0}
    assert opened == ["train-00000.parquet"]
    # one shard per step: the later shards are opened only when reached
    for f in sorted(out.glob("train-*.parquet"))[2:]:
        f.write_bytes(b"garbage, never read")
    assert next(it)["id"] == "x1"
    assert opened == ["train-00000.parquet", "train-00001.parquet"]
    it.close()


def test_shard_files_accepts_folder_file_glob_and_list(tmp_path):
    out = tmp_path / "o"
    with ShardWriter(out, shard_bytes=1500, row_group_bytes=1500) as w:
        for i in range(3):
            w.write(_sample(i, os.urandom(2000)))
    files = sorted(out.glob("train-*.parquet"))
    assert shard_files(out) == files
    assert shard_files(files[1]) == [files[1]]
    assert shard_files(str(out / "train-*.parquet")) == files
    assert shard_files([files[2], out]) == [files[2]] + files
    with pytest.raises(FileNotFoundError):
        shard_files(tmp_path / "nothing-*.parquet")


# --- the two schemas agree ------------------------------------------------------------------

def _json_kind(prop: dict) -> str:
    if "enum" in prop:
        assert all(isinstance(v, str) for v in prop["enum"])
        return "string"
    t = prop.get("type")
    return t if isinstance(t, str) else "/".join(sorted(t)) if t else "any"


def test_json_schema_and_parquet_schema_agree():
    js = json_schema()
    pa_schema = arrow_schema()
    assert list(js["properties"]) == list(FIELDS) == pa_schema.names
    assert sorted(js["required"]) == sorted(FIELDS)
    assert js["additionalProperties"] is False
    assert set(js["properties"]["task"]["enum"]) == set(TASKS)
    for name in ("id", "source", "task", "language"):
        assert _json_kind(js["properties"][name]) == "string"
        assert pa_schema.field(name).type == pa.string()
    # messages: array of {role, content} strings <-> list<struct<role: string, content: string>>
    msgs = js["properties"]["messages"]
    assert msgs["type"] == "array"
    item = msgs["items"]
    assert sorted(item["required"]) == ["content", "role"] and item["additionalProperties"] is False
    mt = pa_schema.field("messages").type
    assert pa.types.is_list(mt)
    assert [f.name for f in mt.value_type] == list(item["properties"]) == ["role", "content"]
    assert all(f.type == pa.string() for f in mt.value_type)
    assert set(item["properties"]["role"]["enum"]) == {"system", "user", "assistant"}
    # images: array of {bytes, path} <-> list<struct<bytes: binary, path: string>> (the HF Image struct)
    imgs = js["properties"]["images"]
    assert imgs["type"] == "array"
    it = imgs["items"]
    assert sorted(it["required"]) == ["bytes", "path"] and it["additionalProperties"] is False
    itype = pa_schema.field("images").type
    assert [f.name for f in itype.value_type] == list(it["properties"]) == ["bytes", "path"]
    assert itype.value_type.field("bytes").type == pa.binary()
    assert itype.value_type.field("path").type == pa.string()
    assert _json_kind(it["properties"]["path"]) == "null/string"
    # meta: a JSON object, stored as its JSON text
    assert js["properties"]["meta"]["type"] == "object"
    assert pa_schema.field("meta").type == pa.string()


def test_hf_features_in_the_parquet_metadata_match_the_arrow_schema():
    import datasets

    meta = json.loads(arrow_schema().metadata[b"huggingface"])
    feats = datasets.Features.from_dict(meta["info"]["features"])
    assert feats.arrow_schema.remove_metadata().equals(arrow_schema().remove_metadata())
    assert isinstance(feats["images"].feature, datasets.Image)


def test_written_shards_carry_the_schema(tmp_path):
    out = tmp_path / "o"
    with ShardWriter(out) as w:
        w.write(_sample(0, b"abc"))
    s = pq.read_schema(next(out.glob("train-*.parquet")))
    assert s.remove_metadata().equals(arrow_schema().remove_metadata())
    assert s.metadata[b"huggingface"] == arrow_schema().metadata[b"huggingface"]


def test_datasets_loads_a_build_folder_by_data_dir_and_by_path(many, tmp_path):
    """Split-named shards: `datasets` picks them and leaves manifest.json and rejects.jsonl alone."""
    import datasets

    out = tmp_path / "o"
    convert("nexus-gen-jsonl", many, out, "--images-root", many.parent / "imgs", "--shard-size", "8k")
    assert len(list(out.glob("train-*.parquet"))) >= 3
    cache = tmp_path / "hf"
    for ds in (datasets.load_dataset("parquet", data_dir=str(out), split="train", cache_dir=str(cache)),
               datasets.load_dataset(str(out), split="train", cache_dir=str(cache))):
        assert ds.num_rows == 24
        assert sorted(ds["id"]) == [f"s{i:03d}" for i in range(24)]


def test_a_rebuild_replaces_shards_of_the_earlier_naming(many, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "shard-00000.parquet").write_bytes(b"old build")
    (out / ".shard-00001.parquet.tmp").write_bytes(b"old half")
    convert("nexus-gen-jsonl", many, out, "--images-root", many.parent / "imgs")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "rejects.jsonl", "train-00000.parquet"]


def test_a_build_touches_only_its_own_shard_names(many, tmp_path):
    """A downloaded `train-00000-of-00001.parquet` beside a build is neither deleted by it nor
    taken by `validate` for a shard of an unfinished build."""
    from nexus_gen.data.check import validate_shards

    out = tmp_path / "o"
    out.mkdir()
    hf = out / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), hf)
    before = hf.read_bytes()
    convert("nexus-gen-jsonl", many, out, "--images-root", many.parent / "imgs")
    assert hf.read_bytes() == before
    alone = tmp_path / "hf"
    alone.mkdir()
    pq.write_table(pa.table({"x": [1]}), alone / "train-00000-of-00001.parquet")
    assert not any("unfinished build" in p for p in validate_shards(alone).problems)


@pytest.mark.parametrize("name", ["shard-00000.parquet", "train-00003.parquet"])
def test_an_input_named_like_a_shard_of_the_output_is_refused_and_kept(many, tmp_path, name):
    from nexus_gen.data.convert import convert_file

    out = tmp_path / "o"
    out.mkdir()
    src = out / name
    pq.write_table(pa.table({"id": ["a"]}), src)
    before = src.read_bytes()
    with pytest.raises(ValueError, match="one of the files a build into"):
        convert_file("llava", src, out)
    assert src.read_bytes() == before


def test_rejects_file_is_in_place_before_the_manifest(many, tmp_path, monkeypatch):
    order: list[str] = []
    real_replace = os.replace

    def spy(src, dst, *a, **kw):
        order.append(Path(dst).name)
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", spy)
    convert("nexus-gen-jsonl", many, tmp_path / "o", "--images-root", many.parent / "imgs")
    assert order.index("rejects.jsonl") < order.index("manifest.json") == len(order) - 1


def test_a_writer_names_its_shards_by_split_and_builds_own_every_split_name(many, tmp_path):
    """`prefix` names the shards by split (`test-NNNNN.parquet`, as `datasets` reads splits from
    file names); every split name counts as a build shard (a rewrite replaces them), a downloaded
    `test-00000-of-00001.parquet` or an unknown split does not."""
    from nexus_gen.data.shards import is_build_shard

    for name in ("train-00000.parquet", "validation-00012.parquet", "test-00003.parquet",
                 "shard-00000.parquet"):
        assert is_build_shard(name), name
    assert is_build_shard(".test-00001.parquet.tmp", temporary=True)
    for name in ("test-00000-of-00001.parquet", "dev-00000.parquet", "testing-00000.parquet",
                 "test-0000.parquet", ".test-00001.parquet.tmp"):
        assert not is_build_shard(name), name
    out = tmp_path / "o"
    out.mkdir()
    (out / "test-00007.parquet").write_bytes(b"an earlier build")
    convert("nexus-gen-jsonl", many, tmp_path / "c", "--images-root", many.parent / "imgs")
    rows = list(iter_samples(tmp_path / "c"))
    with ShardWriter(out, prefix="test") as w:
        for r in rows:
            w.write(r)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test-00000.parquet"]
    assert read_manifest(out)["shards"][0]["file"] == "test-00000.parquet"
    assert [r["id"] for r in iter_samples(out)] == [r["id"] for r in rows]
    with pytest.raises(ValueError, match="prefix"):
        ShardWriter(tmp_path / "x", prefix="dev")


def test_read_rows_reads_only_the_row_groups_that_hold_them(tmp_path, monkeypatch):
    """`read_rows` gives the samples at the given positions, in the order given, across row
    groups, and reads no other row group (checked against pyarrow's own full read)."""
    import pyarrow.parquet as pq

    from nexus_gen.data.shards import read_rows

    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"id": [f"s{i}" for i in range(10)], "meta": ["{}"] * 10}), path, row_group_size=3)
    full = pq.read_table(path).to_pylist()
    asked = [7, 0, 8, 2]
    read_groups = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, *a, **k: read_groups.append(list(groups)) or real(self, groups, *a, **k))
    got = read_rows(path, asked)
    assert [g["id"] for g in got] == [full[r]["id"] for r in asked]
    assert read_groups == [[0, 2]]  # rows 0-2 and 6-8; not 3-5 nor 9
    with pytest.raises(IndexError, match="out of range"):
        read_rows(path, [10])
