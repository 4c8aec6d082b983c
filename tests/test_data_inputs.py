"""`convert` inputs: several files, globs, folders and `datasets` folders; json arrays streamed;
sizes with decimal and binary units; a run that accepts nothing is an error with a hint."""
from __future__ import annotations

import pytest

from data_fixtures import cli, gen_row, write_jsonl, write_photo

from nexus_gen.data.shards import parse_byte_size


def test_shard_size_units_follow_pydantic_bytesize(tmp_path, monkeypatch):
    """MB is 10^6 bytes and MiB 2^20 (as `pydantic.ByteSize` reads them), on the CLI too."""
    assert parse_byte_size("500MB") == 500 * 10**6
    assert parse_byte_size("512MiB") == 512 * 2**20
    assert parse_byte_size("1GB") == 10**9 and parse_byte_size("1GiB") == 2**30
    assert parse_byte_size("2kb") == 2000 and parse_byte_size("2KiB") == 2048
    assert parse_byte_size("1048576") == 1048576
    for bad in ("lots", "-5MB", "0", "infMB"):
        with pytest.raises(ValueError):
            parse_byte_size(bad)

    import nexus_gen.data.convert as conv

    seen = []
    real = conv.run_conversion

    def spy(*args, **kwargs):
        seen.append(kwargs["shard_bytes"])
        return real(*args, **kwargs)

    monkeypatch.setattr(conv, "run_conversion", spy)
    write_photo(tmp_path / "a.png", "rocket", size=16)
    src = write_jsonl(tmp_path / "in.jsonl", [gen_row("g", "a.png")])
    for size in ("3MB", "3MiB"):
        res = cli("convert", "nexus-gen-jsonl", src, "--out", tmp_path / size, "--shard-size", size)
        assert res.exit_code == 0, res.output
    assert seen == [3_000_000, 3 * 1024 * 1024]
