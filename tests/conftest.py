"""Shared test set-up: an isolated Prefect home and model cache, offline hubs, shared fixtures."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="nexus-gen-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_TMP / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models are built once per machine and reused (the cache is keyed by name, content is seeded).
os.environ.setdefault("NEXUS_GEN_CACHE", str(Path.home() / ".cache" / "nexus-gen-test"))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
EXAMPLE = FIXTURES / "nexus_gen_example"


@pytest.fixture(scope="session")
def example_dir() -> Path:
    """The reference system's real example data (images root of its jsonl files)."""
    assert EXAMPLE.is_dir(), f"missing shared fixtures at {EXAMPLE}"
    return EXAMPLE


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect ephemeral server for the whole session (5-10 s to start): request it only
    in tests that run a flow through Prefect's engine."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):  # 30 s is too short on a busy machine
        yield
