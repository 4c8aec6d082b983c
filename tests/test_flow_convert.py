"""The convert flow through Prefect's real engine (one ephemeral server for the session)."""
from __future__ import annotations

from nexus_gen.data.shards import iter_samples


def test_convert_flow_runs_in_prefect(prefect_harness, example_dir, tmp_path):
    from flows.convert import convert_flow

    out = tmp_path / "shards"
    summary = convert_flow("nexus-gen-jsonl", str(example_dir / "llm_dataset.jsonl"), str(out),
                           images_root=str(example_dir))
    assert summary["input"] == summary["accepted"] + summary["rejected"] == 5
    assert summary["by_task"] == {"understanding": 1, "generation": 2, "editing": 2}
    assert sorted(s["id"] for s in iter_samples(out))[0] == "184854"


def test_embedded_examples_are_the_reference_fixture_unchanged(example_dir):
    """The demo's embedded copy must stay byte-identical to the shared reference examples."""
    from flows.demo import EXAMPLES

    for name in ("llm_dataset.jsonl", "LICENSE", "SOURCE_COMMIT"):
        assert (EXAMPLES / name).read_bytes() == (example_dir / name).read_bytes()
    for img in (example_dir / "assets").rglob("*.*g"):
        assert (EXAMPLES / img.relative_to(example_dir)).read_bytes() == img.read_bytes()
