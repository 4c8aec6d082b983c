"""Answer parsers: our robust default on messy outputs, and each named framework parser against
that framework's own rules (cited per test: lmms-eval `tasks/mme/utils.py::parse_pred_ans`,
`tasks/pope/utils.py`, `tasks/_task_utils/mmmu_mcq_utils.py`, `tasks/seedbench/utils.py`;
VLMEvalKit `dataset/utils/yorn.py::YOrN_Extraction`, `smp/misc.py::process_punctuation`,
`utils/matching_util.py::can_infer_option / can_infer_text`)."""
from __future__ import annotations

import pytest

from eval.understanding.answer_parsers import get_parser, vlmevalkit_punctuation

CH = {"A": "dog", "B": "cat", "C": "bird", "D": "fish"}


@pytest.mark.parametrize("text,want", [
    ("The answer is (B).", "B"), ("B.", "B"), ("b) cat", "B"), ("I think it's C", "C"),
    ("**D**", "D"), ("Answer: d", "D"), ("(A) dog", "A"), ("A", "A"), ("cat", "B"),
    ("The correct option is C.", "C"), ("It is not A, the answer is B.", "B"),
    ("A cat sits on the mat.", "B"),  # 'A' is an article here; the option text decides
    ("The answer is a cat.", "B"), ("the answer is (a)", "A"), ("answer: c.", "C"),
])
def test_robust_reads_messy_choice_answers(text, want):
    assert get_parser("robust").choice(text, CH, "k").value == want


@pytest.mark.parametrize("text,reason", [
    ("", "empty answer"), ("B or C", "ambiguous: B, C"),
    ("I cannot tell from this picture", "no option letter or option text found"),
])
def test_robust_reports_why_it_cannot_choose(text, reason):
    p = get_parser("robust").choice(text, CH, "k")
    assert p.value is None and p.reason == reason


@pytest.mark.parametrize("text,want", [
    ("Yes.", "yes"), ("no, it is not", "no"), ("The answer is no.", "no"), ("**Yes**", "yes"),
    ("There is no dog.", "no"), ("N", "no"), ("maybe", None), ("", None),
])
def test_robust_yes_no(text, want):
    assert get_parser("robust").yesno(text).value == want


@pytest.mark.parametrize("text,want", [
    ("Yes", "yes"), ("no.", "no"), ("Y", "yes"), ("n", "no"), ("x", None),
    ("Yes, there is", "yes"), ("No, there is not", "no"),
    ("There is no dog", None),  # 'yes' / 'no' only looked for in the first 4 characters
    ("I see yes", None), ("nope", "no"), (" Y. ", "yes"),
])
def test_lmms_eval_mme_rule(text, want):
    """lmms-eval parse_pred_ans: lower, strip, drop '.'; 'yes'/'no' as-is; a single character
    'y'/'n' maps, any other single character is 'other'; else 'yes' then 'no' in the first 4
    characters ('nope' starts with 'no')."""
    assert get_parser("lmms-eval").yesno(text, "mme").value == want


@pytest.mark.parametrize("text,want", [("yes", "yes"), (" No ", "no"), ("Yes.", None),
                                       ("yes, there is", None), ("y", None)])
def test_lmms_eval_pope_exact_match(text, want):
    """lmms-eval pope_process_results: pred.lower().strip() == gt, so 'Yes.' is not 'yes'."""
    assert get_parser("lmms-eval").yesno(text, "pope").value == want


@pytest.mark.parametrize("text,want", [
    ("(B)", "B"), ("B", "B"), ("The answer is C.", "C"),  # trailing '.' stripped, then 'C '
    ("A and then (D)", "D"),  # '(X)' has priority over 'X '
    ("Between A and C I pick C ", "C"),  # several 'X ' candidates: the last by rfind(' X ')
    ("the small grey bird is on the tree here", "C"),  # > 5 words: option text
])
def test_lmms_eval_mmmu_rule(text, want):
    """lmms-eval / MMMU parse_multi_choice_response: strip , . ! ? ; : ' at both ends, pad with
    spaces, candidates '(X)' else 'X ' else 'X.' else (more than 5 words) option text; several:
    the one found last."""
    assert get_parser("lmms-eval").choice(text, CH, "k").value == want


def test_lmms_eval_mmmu_random_fallback_is_seeded_and_flagged():
    """MMMU rule: no candidate -> random.choice(all_choices); ours seeds it by item id."""
    p = get_parser("lmms-eval")
    a, b = p.choice("hmm", CH, "item-1"), p.choice("hmm", CH, "item-1")
    assert a == b and a.value in CH and "random" in a.reason


@pytest.mark.parametrize("text,want", [("B", "B"), ("b) cat", "B"), (" C. bird", "C"),
                                       ("The answer is A", None)])
def test_lmms_eval_seed_first_character(text, want):
    """lmms-eval seed_process_result: pred.strip(), keep its first character, compare lowercased."""
    assert get_parser("lmms-eval-seed").choice(text, CH, "k").value == want


@pytest.mark.parametrize("text,want", [
    ("Yes.", "yes"), ("No!", "no"), ("yes, and no", None), ("The answer: YES", "yes"),
    ("I don't know", None), ("no-entry sign? yes", None), ("(yes)", "yes"),
])
def test_vlmevalkit_yorn(text, want):
    """VLMEvalKit YOrN_Extraction: lower, process_punctuation, split; 'yes' in words and 'no'
    not -> Yes; the reverse -> No; else Unknown ('-' touching no space becomes a space, so
    'no-entry' holds the word 'no')."""
    assert get_parser("vlmevalkit").yesno(text).value == want


def test_vlmevalkit_process_punctuation():
    """process_punctuation: a mark next to a space in the input is deleted, else replaced by a
    space; a comma inside a number deletes every mark; periods not between digits are removed."""
    assert vlmevalkit_punctuation("yes, it is") == "yes it is"
    assert vlmevalkit_punctuation("a,b") == "a b"
    assert vlmevalkit_punctuation("1,000 and a,b") == "1000 and ab"
    assert vlmevalkit_punctuation("3.5 end.") == "3.5 end"


@pytest.mark.parametrize("text,want", [
    ("B", "B"), ("(C)", "C"), ("B. cat", "B"),
    ("Option B is a cat and it is right here", None),  # 'B' is not within the last 4 words...
    ("The answer is B because it is the cat shown", "B"),  # ...but the 'answer is X' pattern is
    ("A or B", None),  # two letters: no option; texts not contained -> nothing
    ("cat", "B"),  # can_infer_text: the one option text in the answer
    ("Cannot determine the answer", None),  # refusal -> 'Z', never right
    ("b) cat", "B"),  # lowercase 'b' is no option letter; the text 'cat' is
])
def test_vlmevalkit_can_infer(text, want):
    """can_infer_option: replace . ( ) [ ] , : ; ! * # { } by spaces, split; exactly one option
    letter, standing within the last 4 words, wins; a refusal phrase -> 'Z'; else the
    '(correct) answer is X' pattern. Then can_infer_text: exactly one option text contained."""
    assert get_parser("vlmevalkit").choice(text, CH, "k").value == want


def test_vlmevalkit_text_match_refuses_long_answers():
    """can_infer_text returns False when the answer is longer than twice all option texts."""
    long = "well " * 10 + "cat"
    assert get_parser("vlmevalkit").choice(long, CH, "k").value is None
    assert get_parser("robust").choice(long, CH, "k").value == "B"


def test_unknown_parser_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown parser 'gpt'.*robust, lmms-eval"):
        get_parser("gpt")
