"""Validation rules of a unified sample: known task, roles in order, `<image>` count, where each
task's images stand, valid UTF-8, the JSON Schema's field rules."""
from __future__ import annotations

import copy

import pytest

from data_fixtures import encode, photo

from nexus_gen.data.templates import SYSTEM_PROMPT, editing_messages, generation_messages
from nexus_gen.data.validate import sample_problems, schema_problems, semantic_problems

IMG = {"bytes": encode(photo("astronaut", 8)), "path": "a.png"}


def und() -> dict:
    return {"id": "u1", "source": "s", "task": "understanding", "language": "en",
            "messages": [{"role": "user", "content": "<image>\nWhat is this?"},
                         {"role": "assistant", "content": "An astronaut."}],
            "images": [dict(IMG)], "meta": {}}


def gen() -> dict:
    return {**und(), "id": "g1", "task": "generation", "messages": generation_messages("an astronaut")}


def edit() -> dict:
    return {**und(), "id": "e1", "task": "editing", "messages": editing_messages("make it red"),
            "images": [dict(IMG), dict(IMG)]}


@pytest.mark.parametrize("make", [und, gen, edit])
def test_good_samples_have_no_problems(make):
    assert sample_problems(make()) == []


def test_system_prompt_first_is_fine_and_multi_turn_is_fine():
    s = und()
    s["messages"] = [{"role": "system", "content": SYSTEM_PROMPT}] + s["messages"] + [
        {"role": "user", "content": "And the background?"}, {"role": "assistant", "content": "Space."}]
    assert sample_problems(s) == []
    t = und()  # text-only understanding: no tag, no image
    t["messages"][0]["content"] = "Hello?"
    t["images"] = []
    assert sample_problems(t) == []


def _with(base, **changes) -> dict:
    s = copy.deepcopy(base)
    s.update(changes)
    return s


def _msgs(*pairs) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


CASES = [
    ("unknown task", _with(und(), task="captioning"), r"task"),
    ("no task", _with(und(), task=None), r"task"),
    ("unknown role", _with(und(), messages=_msgs(("user", "<image>\nq"), ("bot", "a"))), r"role"),
    ("assistant first", _with(und(), messages=_msgs(("assistant", "hi"), ("user", "<image>\nq"))), r"expected"),
    ("two users in a row", _with(und(), messages=_msgs(("user", "<image>\nq"), ("user", "more"), ("assistant", "a"))),
     r"alternate"),
    ("system not first", _with(und(), messages=_msgs(("user", "<image>\nq"), ("system", SYSTEM_PROMPT),
                                                     ("assistant", "a"))), r"system message may only stand first"),
    ("only system", _with(und(), messages=_msgs(("system", SYSTEM_PROMPT)), images=[]), r"no user/assistant turns"),
    ("ends on user", _with(und(), messages=_msgs(("user", "<image>\nq"))), r"last turn must be the assistant"),
    ("empty messages", _with(und(), messages=[]), r"messages"),
    ("empty user turn", _with(und(), messages=_msgs(("user", "  "), ("assistant", "a")), images=[]), r"empty user turn"),
    ("more tags than images", _with(und(), messages=_msgs(("user", "<image><image>\nq"), ("assistant", "a"))),
     r"2 <image> tag\(s\) in messages but 1 image"),
    ("more images than tags", _with(und(), images=[dict(IMG), dict(IMG)]), r"1 <image> tag\(s\) in messages but 2"),
    ("image tag in system", _with(und(), messages=_msgs(("system", "<image>"), ("user", "q"), ("assistant", "a"))),
     r"system prompt must not hold"),
    ("generation image in user turn", _with(gen(), messages=_msgs(("user", "<image> draw this"), ("assistant", "ok"))),
     r"generation sample must carry its image"),
    ("generation without image", _with(gen(), messages=_msgs(("user", "draw a cat"), ("assistant", "no")), images=[]),
     r"generation sample must carry its image"),
    ("editing without source", _with(edit(), messages=_msgs(("user", "make it red"), ("assistant", "<image><image>"))),
     r"editing sample needs"),
    ("editing two sources", _with(edit(), messages=_msgs(("user", "<image> <image> merge"), ("assistant", "<image>")),
                                  images=[dict(IMG)] * 3), r"editing sample needs"),
    ("editing two results", _with(edit(), messages=_msgs(("user", "<image> x"), ("assistant", "<image> <image>")),
                                  images=[dict(IMG)] * 3), r"editing sample needs"),
    ("editing no result", _with(edit(), messages=_msgs(("user", "<image> x"), ("assistant", "done")),
                                images=[dict(IMG)]), r"editing sample needs"),
    ("understanding image answered", _with(und(), messages=_msgs(("user", "<image> q"), ("assistant", "<image>")),
                                           images=[dict(IMG)] * 2), r"understanding sample has 1 image"),
    ("lone surrogate in content", _with(und(), messages=_msgs(("user", "<image>\nq\ud800"), ("assistant", "a"))),
     r"messages/0/content: text is not valid UTF-8"),
    ("lone surrogate in answer", _with(und(), messages=_msgs(("user", "<image>\nq"), ("assistant", "\udcff"))),
     r"messages/1/content: text is not valid UTF-8"),
    ("lone surrogate in id", _with(und(), id="a\ud800"), r"id: text is not valid UTF-8"),
    ("lone surrogate in source", _with(und(), source="s\udc80"), r"source: text is not valid UTF-8"),
    ("lone surrogate in meta", _with(und(), meta={"captions": ["ok", "bad\ud800"]}), r"meta/captions/1"),
    ("lone surrogate in path", _with(und(), images=[{"bytes": IMG["bytes"], "path": "a\ud800.png"}]), r"images/path"),
    ("content not a string", _with(und(), messages=[{"role": "user", "content": None},
                                                    {"role": "assistant", "content": "a"}]), r"content"),
]


@pytest.mark.parametrize("name,sample,pattern", CASES, ids=[c[0] for c in CASES])
def test_rule_violations_are_found_and_named(name, sample, pattern):
    import re

    problems = sample_problems(sample)
    assert problems, name
    assert any(re.search(pattern, p) for p in problems), problems


SCHEMA_CASES = [
    ("missing id", lambda s: s.pop("id"), "'id' is a required property"),
    ("missing meta", lambda s: s.pop("meta"), "'meta' is a required property"),
    ("extra field", lambda s: s.update(extra=1), "Additional properties"),
    ("empty id", lambda s: s.update(id=""), "id:"),
    ("int id", lambda s: s.update(id=5), "id: 5 is not of type 'string'"),
    ("bool id", lambda s: s.update(id=True), "id: True is not of type 'string'"),
    ("language upper", lambda s: s.update(language="EN"), "language:"),
    ("language long", lambda s: s.update(language="english"), "language:"),
    ("meta not object", lambda s: s.update(meta=[1]), "meta:"),
    ("images not list", lambda s: s.update(images={"bytes": b"", "path": None}), "images:"),
    ("image extra key", lambda s: s["images"][0].update(url="http://x"), "images/0:"),
    ("image not struct", lambda s: s.update(images=["a.png"]), "images/0:"),
    ("message extra key", lambda s: s["messages"][0].update(name="bob"), "messages/0:"),
    ("message role bad", lambda s: s["messages"][0].update(role="human"), "messages/0/role:"),
    ("task bad", lambda s: s.update(task="generate"), "task:"),
]


@pytest.mark.parametrize("name,mutate,needle", SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_schema_violations_name_the_field(name, mutate, needle):
    s = und()
    mutate(s)
    problems = schema_problems(s)
    assert any(needle in p for p in problems), problems


def test_semantic_check_never_raises_on_garbage():
    for junk in ({}, {"messages": "x"}, {"messages": [1, 2]}, {"messages": [{"role": "user"}]},
                 {"messages": [{"role": 3, "content": "x"}], "images": "no"}, {"messages": None}):
        assert semantic_problems(junk)
        assert sample_problems(junk)
