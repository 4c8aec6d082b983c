"""Shared set-up of the publish tests: the demo recipe built once per test session (the real
demo build, tiny models, offline), and helpers to search written bytes."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A finished build of datasets_spec/recipes/demo.yaml (read only: copy it to publish)."""
    from nexus_gen.edit.build import build

    out = tmp_path_factory.mktemp("hub-demo") / "build"
    record = build(REPO / "datasets_spec" / "recipes" / "demo.yaml", out)
    assert record["status"] == "complete"
    return out


@pytest.fixture
def run_copy(demo_run: Path, tmp_path: Path) -> Path:
    """A private copy of the demo run (a publish writes RUN/publish/)."""
    dst = tmp_path / "run"
    shutil.copytree(demo_run, dst)
    return dst


def files_under(*roots: Path) -> list[Path]:
    """Every regular file under the roots (recursively)."""
    return sorted(p for r in roots if r.exists() for p in r.rglob("*") if p.is_file())
