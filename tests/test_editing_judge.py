"""The judges against a local stand-in for an OpenAI-compatible endpoint (127.0.0.1, a free port,
started and stopped here) that answers well, malformed, refuses and fails: every answer that is
not usable is counted by reason and never scored, transient failures are retried, answers are
cached, and the key from the environment reaches the Authorization header and nothing else."""
from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from eval.editing.edit_items import EditItem, Loaded
from eval.editing.edit_judge import parse_gedit_scores, Unparsable
from eval.editing.edit_run import EditingConfig, Plan, edit_step, judge_step, prepare, summarize

SECRET = "sk-stand-in-SECRET-4242"
GOOD_PQ = 'Sure. {\n"score" : [7, 9],\n"reasoning" : "natural"\n}'
# instruction -> what the stand-in answers to its SC (GEdit) or only (ImgEdit) question
SC_ANSWERS = {
    "good one": '{"score": [8, 6], "reasoning": "ok"}',
    "bare list": "[5, 10]",
    "malformed": "The edit looks great to me!",
    "too few": '{"score": [5], "reasoning": "x"}',
    "out of range": '{"score": [12, 3], "reasoning": "x"}',
    "refuse in words": "I'm sorry, I can't help with that.",
}
IMGEDIT_ANSWERS = {
    "good one": "Brief reasoning: fine.\nPrompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Coherence: 3",
    "malformed": "Prompt Compliance: four\nVisual Naturalness: 3\nPhysical & Detail Coherence: 3",
}


class StandIn(BaseHTTPRequestHandler):
    """A stand-in judge endpoint: behaviour chosen by the instruction in the prompt."""

    seen: list = []
    flaky_left = {"n": 1}

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code: int, body: dict | None = None) -> None:
        data = json.dumps(body or {"error": "x"}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"][0]["text"]
        StandIn.seen.append({"auth": self.headers.get("Authorization"), "prompt": prompt,
                             "path": self.path, "model": body["model"],
                             "images": len(body["messages"][0]["content"]) - 1})
        m = re.search(r"(?:Editing instruction|editing instruction is) ?: (.*?)\.?\n", prompt + "\n")
        instruction = m.group(1).strip() if m else None
        if instruction is None:  # GEdit's PQ question carries no instruction
            return self._reply(200, {"choices": [{"message": {"content": GOOD_PQ}}]})
        if instruction == "server error":
            return self._reply(500)
        if instruction == "flaky" and StandIn.flaky_left["n"] > 0:
            StandIn.flaky_left["n"] -= 1
            return self._reply(503)
        if instruction == "refuse":
            return self._reply(200, {"choices": [{"message": {"content": None, "refusal": "no"}}]})
        if instruction == "broken body":
            return self._reply(200, {"nothing": []})
        table = IMGEDIT_ANSWERS if "editing instruction is" in prompt else SC_ANSWERS
        answer = table.get(instruction, SC_ANSWERS["good one"] if table is SC_ANSWERS else IMGEDIT_ANSWERS["good one"])
        return self._reply(200, {"choices": [{"message": {"content": answer}}]})


@pytest.fixture()
def stand_in():
    StandIn.seen = []
    StandIn.flaky_left = {"n": 1}
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)  # port 0: a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join()


INSTRUCTIONS = ["good one", "bare list", "malformed", "too few", "out of range", "refuse in words",
                "refuse", "server error", "flaky", "broken body"]


def _plan(tmp_path: Path, url: str, protocol: str) -> Plan:
    items = [EditItem(id=f"e{k}", instruction=text, source=Image.new("RGB", (16, 12), (10 * k, 50, 90)),
                      edit_type="add" if k % 2 else "style", edited_path=f"edited/e{k}.png")
             for k, text in enumerate(INSTRUCTIONS)]
    config = EditingConfig(data="synthetic", editor="identity", out=tmp_path / "run", judge=url,
                           judge_protocol=protocol, retries=2, concurrency=3, clip="tiny", dino="tiny")
    plan = Plan(config, tmp_path / "run", Loaded("shards", items), (protocol,))
    plan.extra["judge_backoff"] = 0.001
    prepare(plan)
    edit_step(plan)
    return plan


def test_gedit_judge_counts_every_unusable_answer_by_reason(tmp_path, stand_in, monkeypatch, caplog, capsys):
    monkeypatch.setenv("NEXUS_GEN_JUDGE_KEY", SECRET)
    plan = _plan(tmp_path, stand_in, "gedit")
    rows = {r["id"]: r for r in judge_step(plan)}
    status = {INSTRUCTIONS[int(i[1:])]: (r["status"], r["reason"]) for i, r in rows.items()}
    assert status == {
        "good one": ("ok", None), "bare list": ("ok", None), "flaky": ("ok", None),
        "malformed": ("unparsable", "no score list"),
        "too few": ("unparsable", "expected 2 scores, got 1"),
        "out of range": ("unparsable", "score out of range 0-10"),
        "refuse in words": ("refused", "refused"), "refuse": ("refused", "refused"),
        "server error": ("failed", "http 500"), "broken body": ("failed", "malformed response body"),
    }
    good = rows["e0"]
    assert (good["SC"], good["PQ"], good["O"]) == (6.0, 7.0, math.sqrt(42))  # min [8,6], min [7,9]
    assert (rows["e1"]["SC"], rows["e1"]["PQ"]) == (5.0, 7.0)
    # the 500 was asked 1 + 2 retries times, the flaky one twice; the key went only into the header
    sc_calls = [s for s in StandIn.seen if "Editing instruction: server error" in s["prompt"]]
    assert len(sc_calls) == 3
    assert len([s for s in StandIn.seen if "Editing instruction: flaky" in s["prompt"]]) == 2
    assert {s["auth"] for s in StandIn.seen} == {f"Bearer {SECRET}"}
    assert {s["path"] for s in StandIn.seen} == {"/v1/chat/completions"}
    assert {s["model"] for s in StandIn.seen} == {"gpt-4.1"}
    sc_images = {s["images"] for s in StandIn.seen if "Editing instruction:" in s["prompt"]}
    assert sc_images == {2}  # SC sees source and edit; PQ the edit alone
    summary = summarize(plan, {"edited": 10}, [], list(rows.values()))
    g = summary["judges"]["gedit"]
    assert (g["judged"], g["scored"]) == (10, 3)
    assert g["not_scored"] == {"failed: http 500": 1, "failed: malformed response body": 1,
                               "refused: refused": 2, "unparsable: expected 2 scores, got 1": 1,
                               "unparsable: no score list": 1, "unparsable: score out of range 0-10": 1}
    # the means are over the 3 scored items only: per edit type, then over types
    en = g["languages"]["en"]
    o = {t: v["O"] for t, v in en["tasks"].items()}
    assert o == pytest.approx({"style": math.sqrt(42), "add": math.sqrt(35)})  # e0 + e8 style, e1 add
    assert en["average"]["O"] == pytest.approx((math.sqrt(42) + math.sqrt(35)) / 2)
    assert en["average"]["SC"] == pytest.approx((6 + 5) / 2)
    # the key is nowhere in what the run wrote or logged
    files = [p for p in plan.out.rglob("*") if p.is_file()]
    assert files and not any(SECRET.encode() in p.read_bytes() for p in files)
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err + caplog.text

    # a rerun asks only what got no answer (failed calls, API refusals), nothing answered again
    before = len(StandIn.seen)
    again = {r["id"]: r for r in judge_step(plan)}
    new = StandIn.seen[before:]
    assert {s["prompt"].rsplit("Editing instruction: ", 1)[-1].strip() for s in new} == {"server error", "broken body", "refuse"}
    assert {k: (r["status"], r.get("O")) for k, r in again.items()} == \
        {k: (r["status"], r.get("O")) for k, r in rows.items()}


def test_imgedit_judge_through_the_stand_in(tmp_path, stand_in, monkeypatch):
    monkeypatch.delenv("NEXUS_GEN_JUDGE_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    plan = _plan(tmp_path, stand_in, "imgedit")
    rows = {INSTRUCTIONS[int(r["id"][1:])]: r for r in judge_step(plan)}
    assert rows["good one"]["scores"] == [4, 3, 3] and rows["good one"]["score"] == 3.33
    assert (rows["malformed"]["status"], rows["malformed"]["reason"]) == ("unparsable", "expected 3 criterion scores, got 2")
    assert rows["server error"]["reason"] == "http 500"
    assert {s["auth"] for s in StandIn.seen} == {None}  # no key set: no Authorization header
    # the edit type picks the prompt: `add` items got the addition rubric
    assert any("grading object addition edits" in s["prompt"] for s in StandIn.seen)


@pytest.mark.parametrize("answer, expect", [
    ('{"score" : [3, 4], "reasoning" : "x"}', [3.0, 4.0]),
    ('Here: {\n"score": [10, 0],\n"reasoning": "multi\nline"\n}', [10.0, 0.0]),
    ("[6, 2]", [6.0, 2.0]),
])
def test_gedit_answers_that_parse(answer, expect):
    assert parse_gedit_scores(answer) == expect


@pytest.mark.parametrize("answer, reason", [
    ("", "empty answer"), ("no numbers here", "no score list"),
    ('{"score": ["high", "low"]}', "non-numeric score"), ('{"score": [1, 2, 3]}', "expected 2 scores, got 3"),
    ("I am unable to evaluate these images.", "refused"),
])
def test_gedit_answers_that_do_not(answer, reason):
    with pytest.raises(Unparsable) as e:
        parse_gedit_scores(answer)
    assert e.value.reason == reason


def test_judge_through_the_command_line_keeps_the_key_out(prefect_harness, tmp_path, stand_in, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("NEXUS_GEN_JUDGE_KEY", SECRET)
    monkeypatch.setenv("NEXUS_GEN_JUDGE_URL", stand_in)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["eval", "editing", "--data", "scenes", "--editor", "identity",
                                   "--out", str(out), "--limit", "2", "--size", "32", "--clip", "tiny",
                                   "--dino", "tiny", "--judge", "env"])
    assert res.exit_code == 0, res.output
    head = json.loads(res.stdout.strip().splitlines()[-1])
    # scenes instructions get the stand-in's good answers: SC 6, PQ 7 for every item
    assert (head["gedit_en_SC"], head["gedit_en_PQ"]) == (6.0, 7.0)
    assert head["gedit_en_O"] == round(math.sqrt(42), 4) and head["gedit_not_scored"] == 0
    assert SECRET not in res.output
    assert not any(SECRET.encode() in p.read_bytes() for p in out.rglob("*") if p.is_file())
    report = (out / "report.md").read_text()
    assert "GEdit judge: 2 of 2 judgments scored" in report and "GEdit-Bench (en)" in report
