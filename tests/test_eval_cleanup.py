"""The GenEval clean-up's promises: one jsonl reader whose errors name `path:line`, each input of a
run read once, the config checked once (and a bad one failing before any work), model names
resolved in one place, and the two benchmarks sharing one parameter list."""
from __future__ import annotations

import builtins
import hashlib
import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.geneval import run as geneval_run
from eval.geneval.detections_file import read_records
from eval.geneval.run import GenEvalConfig, read_prompts, run_geneval
from eval.report_geneval import _comparable, read_results

PROMPT = {"tag": "single_object", "include": [{"class": "cow", "count": 1}], "prompt": "a cow"}
DETECTION = {"filename": "r/00000/samples/0000.png", "metadata": PROMPT,
             "detections": {"cow": [{"box": [0, 0, 10, 10], "score": 0.9}]}}
BAD_LINES = [
    (b"{not json", "bad JSON"),
    (b'{"prompt": "caf\xe9"}', "not valid UTF-8"),
    (b"[1, 2]", "expected a JSON object, got list"),
]


def _write(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("bad, why", BAD_LINES)
def test_prompt_reader_names_path_and_physical_line(tmp_path, bad, why):
    # The blank line counts: the bad line is line 3 of the file, whatever its suffix.
    p = _write(tmp_path / "prompts.txt", json.dumps(PROMPT).encode(), b"", bad)
    with pytest.raises(ValueError, match=re.escape(f"{p}:3: ") + ".*" + re.escape(why)):
        read_prompts(p)


def test_prompt_reader_keeps_its_checks(tmp_path):
    p = _write(tmp_path / "p.jsonl", b"\xef\xbb\xbf" + json.dumps(PROMPT).encode(), b"  ")
    assert read_prompts(p) == [PROMPT]  # a BOM may open the file; blank lines are skipped
    bad = _write(tmp_path / "q.jsonl", json.dumps({**PROMPT, "tag": 3}).encode())
    with pytest.raises(ValueError, match=re.escape(f"{bad}:1: not a GenEval prompt record")):
        read_prompts(bad)
    with pytest.raises(ValueError, match="has no prompts"):
        read_prompts(_write(tmp_path / "empty.jsonl", b""))
    with pytest.raises(FileNotFoundError, match="prompt file .* does not exist"):
        read_prompts(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("bad, why", BAD_LINES)
def test_detections_reader_names_path_and_line(tmp_path, bad, why):
    d = _write(tmp_path / "dets.txt", json.dumps(DETECTION).encode(), bad)
    records = read_records(d)
    assert next(records).filename == DETECTION["filename"]  # lazy: good lines come first
    with pytest.raises(ValueError, match=re.escape(f"{d}:2: ") + ".*" + re.escape(why)):
        next(records)
    with pytest.raises(FileNotFoundError, match="detections file .* does not exist"):
        list(read_records(tmp_path / "missing.jsonl"))


def test_results_reader(tmp_path):
    assert read_results(tmp_path / "results.jsonl") == []  # not scored yet
    rows = [{"tag": "colors", "correct": True}, {"tag": "counting", "correct": False}]
    r = _write(tmp_path / "results.jsonl", *(json.dumps(x).encode() for x in rows))
    assert read_results(r) == rows
    _write(r, json.dumps(rows[0]).encode(), b"{truncated")
    with pytest.raises(ValueError, match=re.escape(f"{r}:2: ")):
        read_results(r)


@pytest.fixture
def opened(monkeypatch) -> Counter:
    """Counts the files opened for reading (by resolved path) through open() / Path.open()."""
    counts: Counter = Counter()
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        mode = args[0] if args else kwargs.get("mode", "r")
        if isinstance(file, (str, Path)) and not set(mode) & set("wax+"):
            counts[Path(file).resolve()] += 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)  # what pathlib calls
    return counts


def test_a_run_reads_the_prompt_file_and_generation_record_once(tmp_path, opened):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(geneval_run.PROMPT_SETS["scenes"].read_bytes())
    out = tmp_path / "run"
    run_geneval(GenEvalConfig(generator="noise", out=out, benchmark="geneval-scenes", limit=6,
                              n_images=1, size=136, prompts=prompts))
    assert opened[prompts.resolve()] == 2  # parsed once and hashed once, both in `check`
    assert opened[(out / "generation.json").resolve()] == 0  # written, never read back
    assert json.loads((out / "config.json").read_text())["prompt_set"]["sha256"] == \
        hashlib.sha256(prompts.read_bytes()).hexdigest()
    assert json.loads((out / "config.json").read_text())["generation"] == \
        json.loads((out / "generation.json").read_text())
    opened.clear()  # a resumed run reads the earlier record once (checked, seeds kept)
    run_geneval(GenEvalConfig(generator="noise", out=out, benchmark="geneval-scenes", limit=6,
                              n_images=1, size=136, prompts=prompts))
    assert opened[(out / "generation.json").resolve()] == 1


def _count_checks(monkeypatch) -> list:
    calls: list = []
    real_check = geneval_run.check

    def counting_check(config):
        calls.append(config)
        return real_check(config)

    monkeypatch.setattr(geneval_run, "check", counting_check)
    import flows.evaluate

    monkeypatch.setattr(flows.evaluate, "check", counting_check)
    return calls


def test_command_line_checks_the_config_once(prefect_harness, tmp_path, monkeypatch):
    from flows.cli import app

    calls = _count_checks(monkeypatch)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["eval", "geneval-scenes", "--generator", "noise", "--out", str(out),
                                   "--limit", "2", "--n-images", "1", "--size", "136",
                                   "--threshold", "0.5"])
    assert res.exit_code == 0, res.output
    assert len(calls) == 1
    assert json.loads(res.stdout.strip().splitlines()[-1]) == json.loads((out / "summary.json").read_text())
    assert json.loads((out / "config.json").read_text())["options"]["threshold"] == 0.5


@pytest.mark.parametrize("args, message", [
    (["--limit", "0"], "--limit must be >= 1"),
    (["--threshold", "2"], "threshold=2.0"),
    (["--prompts", "BAD"], ":2: not a GenEval prompt record"),
])
def test_bad_command_line_config_fails_before_prefect_and_any_work(tmp_path, monkeypatch, args, message):
    import eval.geneval.generate
    import flows.evaluate
    from flows.cli import app

    def must_not_run(*a, **k):
        raise AssertionError("work started on a bad config")

    monkeypatch.setattr(flows.evaluate, "run_checked", must_not_run)
    monkeypatch.setattr(eval.geneval.generate, "generate_images", must_not_run)
    bad = _write(tmp_path / "bad.jsonl", json.dumps(PROMPT).encode(),
                 json.dumps({**PROMPT, "include": [{"class": "cow", "count": 0}]}).encode())
    args = [str(bad) if a == "BAD" else a for a in args]
    out = tmp_path / "never"
    res = CliRunner().invoke(app, ["eval", "geneval-scenes", "--generator", "noise", "--out", str(out),
                                   *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "AssertionError" not in res.output
    assert not out.exists()


def test_flow_checks_a_bad_config_before_any_work(prefect_harness, tmp_path, monkeypatch):
    from flows.evaluate import geneval_scenes_flow

    calls = _count_checks(monkeypatch)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--n-images must be >= 1"):
        geneval_scenes_flow(generator="noise", out=str(out), n_images=0)
    assert len(calls) == 1 and not out.exists()


def test_check_resolves_the_detector_by_the_resolver_without_building(tmp_path, monkeypatch):
    from eval.geneval import mask2former

    monkeypatch.setenv("NEXUS_GEN_CACHE", str(tmp_path / "cache"))
    assert mask2former.resolve_detector("tiny", build=False) is None
    assert mask2former.resolve_detector("default", build=False) == mask2former.PAPER_DETECTOR
    # `tiny` is built on first use, never by a check
    plan = geneval_run.check(GenEvalConfig(generator="noise", out=tmp_path / "x", limit=1,
                                           detector="tiny", clip="tiny"))
    assert plan.detector == "tiny" and not (tmp_path / "cache").exists()
    # every other name is checked as the source the resolver gives
    monkeypatch.setattr(mask2former, "resolve_detector", lambda name, build=True: "nobody/not-cached")
    with pytest.raises(ValueError, match="detector 'nobody/not-cached' is not in the local"):
        geneval_run.check(GenEvalConfig(generator="noise", out=tmp_path / "x", limit=1,
                                        detector="paper", clip="tiny"))


def test_report_compares_only_the_paper_detector_names():
    base = {"benchmark": "geneval", "prompt_set": {"name": "geneval", "n_used": 553, "n_total": 553}}
    for name in ("paper", "default", None):
        assert _comparable({**base, "detector": {"name": name}}) == []
    for name in ("tiny", "facebook/mask2former-swin-small-coco-instance"):  # not the official scale
        assert "not the official Mask2Former" in _comparable({**base, "detector": {"name": name}})[0]


def test_both_benchmarks_share_one_parameter_list():
    import typer.main

    from flows.cli_eval import app
    from flows.evaluate import geneval_flow, geneval_scenes_flow

    def options(name):
        cmd = typer.main.get_command(app).commands[name]
        return {p.name: (p.default, p.help) for p in cmd.params if p.name != "prompts"}

    gen, scenes = options("geneval"), options("geneval-scenes")
    assert set(gen) - set(scenes) == {"detector", "clip", "precision"} and set(scenes) <= set(gen)
    assert all(gen[k] == scenes[k] for k in scenes)
    assert gen["n_images"][0] == 4 and gen["threshold"][0] == 0.3 and gen["detector"][0] == "paper"
    flow_params = [f.parameters.properties for f in (geneval_flow, geneval_scenes_flow)]
    assert list(flow_params[0]) == list(flow_params[1])
    assert flow_params[0]["detector"]["default"] == "paper"
    assert flow_params[1]["detector"]["default"] == "scenes-pixel"


def test_report_compares_only_the_official_colour_classifier():
    base = {"benchmark": "geneval", "prompt_set": {"name": "geneval", "n_used": 553, "n_total": 553},
            "detector": {"name": "paper"}}
    official = {"precision": "amp", "device": "cuda"}
    for clip in ("paper", "ViT-L-14:openai", "ViT-L-14-quickgelu:openai"):
        assert _comparable({**base, "classifier": {"name": clip, **official}}) == [], clip
    for clip in ("tiny", "small", "ViT-B-32:openai", "ViT-L-14:laion2b_s32b_b82k", "ViT-L-14:random"):
        why = _comparable({**base, "classifier": {"name": clip, **official}})
        assert len(why) == 1 and "colour classifier" in why[0], clip
    # scenes runs classify colours with the detector: no CLIP to compare
    assert all("colour" not in w for w in _comparable({**base, "benchmark": "geneval-scenes",
                                                        "classifier": {"name": "tiny"}}))


def test_report_compares_only_colours_classified_with_amp_on_cuda():
    base = {"benchmark": "geneval", "prompt_set": {"name": "geneval", "n_used": 553, "n_total": 553},
            "detector": {"name": "paper"}}
    assert _comparable({**base, "classifier": {"name": "paper", "precision": "amp",
                                               "device": "cuda:1"}}) == []
    for clf, said in ((dict(precision="fp32", device="cuda"), "fp32 on cuda"),
                      (dict(precision="fp32", device="cpu"), "fp32 on cpu"),
                      (dict(precision="amp", device="cpu"), "amp on cpu"),
                      ({}, "fp32 on cpu")):  # recorded before the precision was: fp32
        why = _comparable({**base, "classifier": {"name": "paper", **clf}})
        assert len(why) == 1 and said in why[0] and "fp16 autocast (amp) on CUDA" in why[0], clf
    # scenes runs take colours from the detector: no precision to compare
    assert _comparable({**base, "benchmark": "geneval-scenes", "prompt_set": {"name": "scenes"},
                        "classifier": {"name": "detector colours (scenes palette)"}}) == \
        ["prompt set `scenes` is not the official GenEval prompt set"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\udcff"])
def test_a_damaged_generation_record_stops_resume_with_its_path(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "generation.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    cfg = GenEvalConfig(generator="noise", out=out, benchmark="geneval-scenes", limit=2, n_images=1, size=136)
    with pytest.raises(ValueError, match=re.escape(str(out / "generation.json"))):
        run_geneval(cfg)
    assert not any(out.rglob("*.png"))  # nothing generated next to a record it cannot trust
