"""Training data: unified shards streamed in a seeded order, filtered to a stage's tasks, split
across DDP ranks, resumable at an exact position.

Order: each epoch permutes the row groups holding the stage's tasks (seed, epoch), reads them
`window` at a time (memory: a window of row groups, never the dataset) and permutes the rows of a
window (seed, epoch, window). This defines one global sequence per epoch; rank r of w takes its
elements r, r + w, r + 2w, ... (disjoint slices; a global batch of batch x world x accum is the
same set of samples whatever the world size, as long as the stage skips none: a rank that skips a
sample takes the next of its own slice). A rank's position is (epoch, samples consumed); the
task column scanned before training gives each row group's count, so a resume reads only the
window holding the next sample, never the data before it."""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nexus_gen.data.shards import row_to_sample, shard_files

log = logging.getLogger(__name__)


def resolve_shards(entries: Iterable[Union[str, Path]], split: Optional[str] = "train") -> list[Path]:
    """Shard files named by folders, files or globs. In a folder only `<split>-*.parquet` files
    count (a build folder also holds `test-*` shards) unless `split` is None. Raises
    FileNotFoundError naming the entry that gives no file."""
    out: list[Path] = []
    for entry in entries:
        p = Path(entry)
        files = shard_files(p)  # FileNotFoundError for a path or glob that matches nothing
        if p.is_dir() and split is not None:
            kept = [f for f in files if f.name.startswith(f"{split}-")]
            if files and not kept:
                raise FileNotFoundError(f"{p} has no `{split}-*.parquet` shards (it holds "
                                        f"{', '.join(f.name for f in files[:5])}); set data.split "
                                        f"to another split, or null for every file")
            files = kept
        if not files:
            raise FileNotFoundError(f"{p} holds no parquet shards")
        out += files
    if not out:
        raise FileNotFoundError("no shard files given")
    return out


@dataclass
class ShardIndex:
    """The row groups of the shards and how many rows of the stage's tasks each holds."""
    files: list[Path]
    tasks: tuple[str, ...]
    units: list[tuple[int, int, int]]  # (file index, row group, rows of the stage's tasks) with rows > 0
    task_counts: dict[str, int] = field(default_factory=dict)  # every task seen, all files

    @property
    def total(self) -> int:
        """Rows of the stage's tasks in one epoch."""
        return sum(u[2] for u in self.units)


class NoStageSamples(ValueError):
    """The shards hold no sample of the tasks a stage learns from."""


def scan_tasks(files: list[Path], tasks: Iterable[str], stage: str = "") -> ShardIndex:
    """Read only the `task` column of every row group (cheap) -> a `ShardIndex`; raises
    `NoStageSamples` when no row has one of `tasks`."""
    tasks = tuple(tasks)
    units: list[tuple[int, int, int]] = []
    counts: dict[str, int] = {}
    for fi, f in enumerate(files):
        pf = pq.ParquetFile(f)
        if "task" not in pf.schema_arrow.names:
            raise NoStageSamples(f"{f} is not a unified shard (no `task` column)")
        for rg in range(pf.num_row_groups):
            col = pf.read_row_group(rg, columns=["task"]).column("task")
            vc = pc.value_counts(col).to_pylist()
            n = 0
            for item in vc:
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
                n += item["counts"] if item["values"] in tasks else 0
            if n:
                units.append((fi, rg, n))
    index = ShardIndex(files, tasks, units, dict(sorted(counts.items())))
    if not units:
        names = ", ".join(str(f) for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        raise NoStageSamples(f"the shards ({names}) hold no sample of the tasks stage {stage!r} learns from "
                             f"({', '.join(tasks)}); their tasks: {index.task_counts or 'none (empty)'}")
    return index


def _read_unit(index: ShardIndex, unit: tuple[int, int, int]) -> pa.Table:
    fi, rg, _ = unit
    table = pq.ParquetFile(index.files[fi]).read_row_group(rg)
    return table.filter(pc.is_in(table.column("task"), value_set=pa.array(list(index.tasks))))


def first_sample(index: ShardIndex) -> dict[str, Any]:
    """The first sample of the stage's tasks in file order (for `TrainStage.check_data`)."""
    return row_to_sample(_read_unit(index, index.units[0]).slice(0, 1).to_pylist()[0])


class SampleStream:
    """This rank's samples, epoch after epoch, in the seeded order; `position` is exact after
    every sample taken ({"epoch": e, "consumed": k})."""

    def __init__(self, index: ShardIndex, seed: int, rank: int = 0, world: int = 1, window: int = 8,
                 position: Optional[dict[str, int]] = None) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        if index.total < world:
            raise ValueError(f"{index.total} samples of the stage's tasks cannot be split across {world} "
                             f"processes (each needs at least one)")
        self.index, self.seed, self.rank, self.world, self.window = index, seed, rank, world, window
        pos = position or {}
        self.epoch = int(pos.get("epoch", 0))
        self.consumed = int(pos.get("consumed", 0))

    @property
    def position(self) -> dict[str, int]:
        """Where the next sample comes from."""
        return {"epoch": self.epoch, "consumed": self.consumed}

    def per_epoch(self) -> int:
        """Samples this rank takes in one epoch."""
        total = self.index.total
        return max(0, (total - self.rank + self.world - 1) // self.world)

    def _windows(self, epoch: int) -> tuple[list[list[tuple[int, int, int]]], list[int]]:
        units = self.index.units
        order = np.random.default_rng([self.seed, epoch]).permutation(len(units))
        windows = [[units[i] for i in order[s:s + self.window]] for s in range(0, len(order), self.window)]
        starts = [0]
        for w in windows:
            starts.append(starts[-1] + sum(u[2] for u in w))
        return windows, starts

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            windows, starts = self._windows(self.epoch)
            g = self.consumed * self.world + self.rank  # global index of the next sample
            wi = bisect.bisect_right(starts, g) - 1
            while g < starts[-1]:
                table = pa.concat_tables([_read_unit(self.index, u) for u in windows[wi]])
                perm = np.random.default_rng([self.seed, self.epoch, wi]).permutation(table.num_rows)
                local = perm[g - starts[wi]::self.world]
                rows = table.take(pa.array(local, pa.int64())).to_pylist()
                del table
                for row in rows:
                    self.consumed += 1
                    yield row_to_sample(row)
                g = self.consumed * self.world + self.rank
                wi += 1
            self.epoch += 1
            self.consumed = 0


class ExampleStream:
    """A stage's examples from a `SampleStream`: `example()` reasons are counted per reason
    (and logged the first time each is seen), never dropped silently. A reason that names the
    sample's id is counted with the id replaced by `<id>`."""

    def __init__(self, samples: SampleStream, stage: Any, counts: Optional[dict[str, Any]] = None) -> None:
        self.samples, self.stage = samples, stage
        c = counts or {}
        self.used = int(c.get("samples", 0))
        self.skipped_by_reason: dict[str, int] = dict(c.get("skipped_by_reason", {}))
        self._it = iter(samples)
        self._misses = 0  # samples in a row that gave no example

    @property
    def counts(self) -> dict[str, Any]:
        """{"samples": used, "skipped": n, "skipped_by_reason": {...}} of this rank so far."""
        return {"samples": self.used, "skipped": sum(self.skipped_by_reason.values()),
                "skipped_by_reason": dict(sorted(self.skipped_by_reason.items()))}

    def state(self) -> dict[str, Any]:
        """Position and counts, for a checkpoint."""
        return {**self.samples.position, **self.counts}

    def take(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        """The next `n` usable examples as (sample id, example)."""
        out = []
        while len(out) < n:
            if self._misses >= max(1, self.samples.per_epoch()):
                raise ValueError(f"a whole epoch's worth of this rank's samples ({self._misses}) gave no "
                                 f"usable example; reasons: {self.counts['skipped_by_reason']}")
            sample = next(self._it)
            ex = self.stage.example(sample)
            if isinstance(ex, str):
                if sample.get("id"):  # one count per kind of reason, not per sample
                    ex = ex.replace(str(sample["id"]), "<id>")
                if ex not in self.skipped_by_reason:
                    log.warning("stage %s skips sample %s: %s (counted per reason)",
                                getattr(self.stage, "name", "?"), sample.get("id"), ex)
                self.skipped_by_reason[ex] = self.skipped_by_reason.get(ex, 0) + 1
                self._misses += 1
                continue
            self.used += 1
            self._misses = 0
            out.append((sample["id"], ex))
        return out
