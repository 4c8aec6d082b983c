"""The training data stream: the stage's tasks only, a seeded order that changes per epoch,
disjoint rank slices that together are the whole epoch, exact resume from a position reading only
the window it falls in, skip reasons counted."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from train_fixtures import write_toy_shards

from nexus_gen.train import train_data
from nexus_gen.train.train_data import (ExampleStream, NoStageSamples, SampleStream, resolve_shards,
                                        scan_tasks)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    folder = write_toy_shards(tmp_path_factory.mktemp("data") / "data", editing=30, other=6)
    return scan_tasks(resolve_shards([folder]), ("editing",), "toy")


def _ids(stream: SampleStream, n: int) -> list[str]:
    it = iter(stream)
    return [next(it)["id"] for _ in range(n)]


def test_scan_counts_tasks_from_the_task_column(index):
    direct = Counter(t for f in index.files for t in pq.read_table(f, columns=["task"]).column("task").to_pylist())
    assert index.task_counts == dict(direct) == {"editing": 30, "generation": 6, "understanding": 6}
    assert index.total == 30 and len(index.units) > 3  # several row groups: the order has units to shuffle


def test_no_sample_of_the_stages_tasks(tmp_path):
    folder = write_toy_shards(tmp_path / "d", editing=0, other=4, tasks=("generation", "understanding"))
    with pytest.raises(NoStageSamples, match=r"hold no sample of the tasks stage 'toy' learns from \(editing\); "
                       r"their tasks: \{'generation': 4, 'understanding': 4\}"):
        scan_tasks(resolve_shards([folder]), ("editing",), "toy")


def test_an_epoch_is_a_seeded_permutation_of_the_stages_samples(index):
    ids = _ids(SampleStream(index, seed=0, window=2), 60)
    first, second = ids[:30], ids[30:]
    expected = sorted(f"editing-{i:04d}" for i in range(30))
    assert sorted(first) == expected and sorted(second) == expected
    assert first != second  # a new order each epoch
    assert _ids(SampleStream(index, seed=0, window=2), 60) == ids  # the same seed, the same order
    assert _ids(SampleStream(index, seed=1, window=2), 30) != first


def test_ranks_take_disjoint_interleaved_slices_of_one_global_order(index):
    whole = _ids(SampleStream(index, seed=3, window=2), 30)
    r0 = _ids(SampleStream(index, seed=3, rank=0, world=2, window=2), 15)
    r1 = _ids(SampleStream(index, seed=3, rank=1, world=2, window=2), 15)
    assert r0 == whole[0::2] and r1 == whole[1::2]
    three = [_ids(SampleStream(index, seed=3, rank=r, world=3, window=2), 10) for r in range(3)]
    assert sorted(sum(three, [])) == sorted(whole)


@pytest.mark.parametrize("world, rank, k", [(1, 0, 7), (1, 0, 29), (2, 1, 9), (1, 0, 41)])
def test_resume_from_a_position_continues_the_same_sequence(index, world, rank, k, monkeypatch):
    full = SampleStream(index, seed=5, rank=rank, world=world, window=2)
    it = iter(full)
    head = [next(it)["id"] for _ in range(k)]
    pos = full.position
    tail = [next(it)["id"] for _ in range(20)]
    reads = []
    real = train_data._read_unit
    monkeypatch.setattr(train_data, "_read_unit", lambda ix, u: reads.append(u) or real(ix, u))
    resumed = SampleStream(index, seed=5, rank=rank, world=world, window=2, position=pos)
    rit = iter(resumed)
    assert next(rit)["id"] == tail[0]
    assert len(reads) <= 2  # one window of 2 row groups, not the data before the position
    assert [tail[0]] + [next(rit)["id"] for _ in range(19)] == tail
    assert head  # (the head was read by the first stream only)


class _Stage:
    name = "fake"

    def example(self, sample):
        if sample["id"].endswith("3"):
            return f"sample {sample['id']!r} has no embedding"
        return "odd id" if int(sample["id"][-1]) % 2 else {"id": sample["id"]}


def test_skip_reasons_are_counted_and_state_resumes(index):
    ex = ExampleStream(SampleStream(index, seed=0, window=2), _Stage())
    got = ex.take(10)
    assert all(int(i[-1]) % 2 == 0 for i, _ in got)
    c = ex.counts
    assert c["samples"] == 10 and c["skipped"] == ex.samples.consumed - 10
    assert set(c["skipped_by_reason"]) == {"odd id", "sample '<id>' has no embedding"}  # ids folded into one reason
    state = ex.state()
    more = [i for i, _ in ex.take(5)]
    again = ExampleStream(SampleStream(index, seed=0, window=2, position=state), _Stage(), state)
    assert [i for i, _ in again.take(5)] == more and again.counts == ex.counts


def test_a_whole_epoch_without_a_usable_example_fails(index):
    class Never:
        name = "never"

        def example(self, sample):
            return "never usable"

    with pytest.raises(ValueError, match=r"a whole epoch's worth of this rank's samples \(30\) gave no usable "
                                         r"example; reasons: \{'never usable': 30\}"):
        ExampleStream(SampleStream(index, seed=0), Never()).take(1)


def test_split_selects_a_build_folders_shards(tmp_path):
    folder = write_toy_shards(tmp_path / "d", editing=4, other=0, tasks=("editing",))
    (folder / "test-00000.parquet").write_bytes((folder / "train-00000.parquet").read_bytes())
    (folder / "manifest.json").unlink()  # no manifest: every parquet of the folder, then by split
    assert all(p.name.startswith("train-") for p in resolve_shards([folder]))
    assert [p.name for p in resolve_shards([folder], split="test")] == ["test-00000.parquet"]
    assert len(resolve_shards([folder], split=None)) == len(list(folder.glob("*.parquet")))
    assert resolve_shards([str(folder / "test-*.parquet")]) == [folder / "test-00000.parquet"]
