"""Understanding runs end to end: the tiny VLM on the scenes QA (library and command line),
resuming without recomputing, re-scoring saved predictions with each parser without a model,
and bad prediction files that must be counted, never silently drop items."""
from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from eval.understanding.understanding_run import (PRED_FILE, UnderstandingConfig, check, predict_step,
                                                  prepare, rescore, score_step)
from flows.cli import app


class EchoModel:
    """A stand-in model (named as such): answers each question with a fixed map by prompt."""

    name = "echo"

    def __init__(self, answers: dict[str, object]):
        self.answers, self.calls = answers, []

    def answer(self, batch):
        self.calls += [q.id for q in batch]
        return [self.answers.get(q.id, "yes") for q in batch]


def _echo_dir(tmp_path: Path) -> str:
    """A local folder standing for the stand-in model (a model id must exist before any work)."""
    (tmp_path / "echo-model").mkdir(exist_ok=True)
    return str(tmp_path / "echo-model")


def _pope_tsv(path: Path) -> Path:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    rows = [[0, b64, "Is there a dog? Please answer yes or no.", "Yes", "random"],
            [1, "0", "Is there a cat? Please answer yes or no.", "No", "random"],
            [2, "0", "Is there a car? Please answer yes or no.", "Yes", "adversarial"],
            [3, "0", "Is there a bus? Please answer yes or no.", "No", "adversarial"]]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "image", "question", "answer", "category"])
        w.writerows(rows)
    return path


def test_resume_does_not_recompute_finished_items(tmp_path):
    data = _pope_tsv(tmp_path / "POPE.tsv")
    plan = prepare(check(UnderstandingConfig("pope", str(data), _echo_dir(tmp_path), tmp_path / "run", batch_size=3)))
    first = EchoModel({"0": "yes"})
    predict_step(plan, first, progress=False)
    assert sorted(first.calls) == ["0", "1", "2", "3"]
    lines = (tmp_path / "run" / PRED_FILE).read_text().splitlines()
    # an interrupted run: two finished lines and half of a third
    (tmp_path / "run" / PRED_FILE).write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    plan = check(plan.config)  # resuming: the unfinished line is no error
    second = EchoModel({})
    counts = predict_step(plan, second, progress=False)
    assert sorted(second.calls) == sorted(json.loads(x)["id"] for x in lines[2:])
    assert counts == {"kept": 2, "predicted": 2, "failed": 0, "not_run": 0}
    third = EchoModel({})
    predict_step(plan, third, progress=False)
    assert third.calls == []


def test_rescore_with_each_parser_needs_no_model(tmp_path):
    """Predictions 'Yes.' (gt yes), 'no' (gt no), 'Yes' (gt yes), 'No, there is not' (gt no).
    lmms-eval POPE (exact match): right 'no' and 'Yes' -> accuracy 2/4; VLMEvalKit YOrN: all
    four right; per split random: lmms-eval 1/2, vlmevalkit 2/2."""
    data = _pope_tsv(tmp_path / "POPE.tsv")
    run = tmp_path / "run"
    plan = prepare(check(UnderstandingConfig("pope", str(data), _echo_dir(tmp_path), run)))
    predict_step(plan, EchoModel({"0": "Yes.", "1": "no", "2": "Yes", "3": "No, there is not"}), progress=False)
    score_step(plan)
    runner = CliRunner()
    out = {}
    for parser in ("lmms-eval", "vlmevalkit", "robust"):
        res = runner.invoke(app, ["eval", "rescore-understanding", str(run / PRED_FILE), "--parser",
                                  parser, "--out", str(tmp_path / parser)])
        assert res.exit_code == 0, res.output
        out[parser] = json.loads(res.output.strip().splitlines()[-1])
    assert out["lmms-eval"]["parser"]["name"] == "lmms-eval"
    assert out["lmms-eval"]["headline"]["pope_accuracy"] == pytest.approx(50.0)
    assert out["vlmevalkit"]["headline"]["pope_accuracy"] == pytest.approx(100.0)
    scores = json.loads((tmp_path / "lmms-eval" / "scores.json").read_text())["scores"]
    assert scores["splits"]["random"]["accuracy"] == 0.5 and scores["yes_ratio_definition"] == "share of ground-truth yes"
    report = (tmp_path / "vlmevalkit" / "report.md").read_text()
    assert "**vlmevalkit** (version 1)" in report and "Denominator: 4 items" in report


def test_bad_predictions_are_counted_and_keep_the_denominator(tmp_path):
    """A missing id, a non-string and an empty answer: each scored wrong with its reason; the
    denominator stays 4."""
    data = _pope_tsv(tmp_path / "POPE.tsv")
    run = tmp_path / "run"
    prepare(check(UnderstandingConfig("pope", str(data), _echo_dir(tmp_path), run)))
    (run / PRED_FILE).write_text("".join(json.dumps(d) + "\n" for d in [
        {"id": "0", "prediction": "yes", "model": "m", "prompt": ""},
        {"id": "1", "prediction": 0, "model": "m", "prompt": ""},
        {"id": "2", "prediction": "  ", "model": "m", "prompt": ""}]))
    s = rescore(run / PRED_FILE, "robust", tmp_path / "r")
    assert s["denominator"] == {"items": 4, "items_in_data": 4, "not_run": 0, "missing_predictions": 1,
                                "unparsed": 3}
    assert s["unparsed_reasons"] == {"empty prediction": 1, "missing prediction": 1,
                                     "prediction is not a string (int)": 1}
    assert s["headline"]["pope_accuracy"] == pytest.approx(25.0)  # 1 right of 4 (random 1/2, adversarial 0/2)


def test_cli_bad_table_fails_before_work(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\timage\tquestion\n0\tx\tQ\n")
    res = CliRunner().invoke(app, ["eval", "understanding", "--benchmark", "mme", "--data", str(bad),
                                   "--model", "tiny", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "missing column(s) 'answer', 'category'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()
    res = CliRunner().invoke(app, ["eval", "understanding", "--benchmark", "mme", "--data", str(bad),
                                   "--model", "no-such/model", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--model 'no-such/model' is not in the local Hugging Face cache" in res.output
    res = CliRunner().invoke(app, ["eval", "understanding", "--benchmark", "mme", "--data", str(bad),
                                   "--model", "tiny", "--parser", "gpt", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown parser 'gpt'" in res.output


def test_tiny_vlm_end_to_end_on_scenes_qa(tmp_path, prefect_harness):
    """The tiny random-init Qwen2.5-VL through the command line (Prefect flow): predictions,
    scores, report with the parser, the denominator and the 'not comparable' warning."""
    out = tmp_path / "run"
    args = ["eval", "understanding", "--benchmark", "scenes", "--data", "scenes:1:4", "--model", "tiny",
            "--out", str(out), "--batch-size", "8", "--max-new-tokens", "4"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    preds = [json.loads(x) for x in (out / PRED_FILE).read_text().splitlines()]
    items = (out / "items.jsonl").read_text().splitlines()
    assert len(preds) == len(items) == summary["denominator"]["items"] > 0
    assert all(isinstance(p["prediction"], str) and p["model"] == "tiny" for p in preds)
    assert summary["parser"] == {"name": "robust", "version": "1"}
    assert any("tiny model" in w for w in summary["not_comparable"])
    parsed = [json.loads(x) for x in (out / "parsed.jsonl").read_text().splitlines()]
    assert summary["headline"]["accuracy"] == pytest.approx(100 * sum(p["correct"] for p in parsed) / len(parsed))
    report = (out / "report.md").read_text()
    assert "Not comparable" in report and "Denominator" in report
    # resumed with the same options: nothing is recomputed, the summary is the same
    plan = check(UnderstandingConfig("scenes", "scenes:1:4", "tiny", out, max_new_tokens=4))
    assert predict_step(plan, EchoModel({}), progress=False)["predicted"] == 0
    assert score_step(plan) == summary


def test_tiny_vlm_keeps_qwen2_5_vl_special_token_ids():
    """NEXUS_GEN.md: <|vision_start|> 151652, <|vision_end|> 151653, <|image_pad|> 151655; the
    special tokens span 151643 to 151656. The tiny model's config points at the same ids."""
    from transformers import AutoConfig, AutoTokenizer

    from nexus_gen.models.tiny import tiny_vlm_dir

    d = tiny_vlm_dir()
    tok = AutoTokenizer.from_pretrained(d)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|vision_start|>",
                                                     "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")}
    assert ids == {"<|endoftext|>": 151643, "<|vision_start|>": 151652, "<|vision_end|>": 151653,
                   "<|image_pad|>": 151655, "<|video_pad|>": 151656}
    assert tok("a<|image_pad|>b")["input_ids"].count(151655) == 1
    cfg = AutoConfig.from_pretrained(d)
    assert (cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) == (151655, 151652, 151653)
