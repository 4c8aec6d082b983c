"""Answer parsers: turn a model's free-text answer into 'yes' / 'no' or an option letter.

Scores drift between frameworks because each parses answers its own way, so the parser is named,
selectable and recorded (name + version) with every result:

- `lmms-eval`: lmms-eval's task rules. MME: lowercase, strip, drop every '.', take 'yes' / 'no'
  as-is, a one-character answer 'y' / 'n' maps to yes / no (any other single character is
  'other'), else 'yes' then 'no' searched in the first 4 characters. POPE: exact match after
  lowercase + strip ('Yes.' is wrong, not 'yes'). Multiple choice: the MMMU rule
  (`parse_mmmu_multi_choice_response`): strip , . ! ? ; : ' from both ends, pad with spaces,
  look for '(X)', then 'X ', then 'X.', then (only for answers of more than 5 words) an option's
  text; several candidates: the last one in the text; none: a random option (seeded here by the
  item id, so re-scoring gives the same bytes).
- `lmms-eval-seed`: lmms-eval's SEED-Bench rule for multiple choice (the first character of the
  stripped answer, compared case-insensitively); yes / no as `lmms-eval`.
- `vlmevalkit`: VLMEvalKit's exact-matching rules (no LLM judge). Yes / no: `YOrN_Extraction`
  (lowercase, its `process_punctuation`, split into words: 'yes' without 'no' -> yes, 'no'
  without 'yes' -> no, else Unknown). Multiple choice: `can_infer` = `can_infer_option` (replace
  each of . ( ) [ ] , : ; ! * # { } by a space, split; exactly one option letter among the words,
  standing within the last 4 words -> that letter; a refusal phrase or a lone 'Z' -> 'Z'; else
  the 'answer is X' pattern) then `can_infer_text` (exactly one option text contained in the
  lowercased answer, unless the answer is longer than twice all option texts together).
- `robust` (our default): tolerant of chatty answers ("The answer is (B).", "B.", "b) cat",
  "I think it's C", "**B**", the option's text alone) and explicit about what it cannot read.

`Parsed.value` is None when nothing usable was found; `reason` then says why (counted in reports,
never silently scored)."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Optional

import xxhash


@dataclass(frozen=True)
class Parsed:
    """A parsed answer: 'yes' / 'no' / an option letter, or None with the reason."""

    value: Optional[str]
    reason: str = ""


class AnswerParser:
    """Base of the named parsers. `yesno_style` is 'mme' (general yes / no) or 'pope'
    (lmms-eval's exact-match POPE rule); `key` identifies the item (seeds any random fallback).

    POPE conventions differ too: `pope_unknown_is_no` says whether an unparsed answer counts as
    a predicted 'no' (VLMEvalKit: y_pred = extracted == 'Yes') or is left out of the false
    negatives (lmms-eval counts a false negative only for an exact 'no'); `pope_yes_ratio` is
    'ground-truth' (lmms-eval reports the share of ground-truth yes) or 'predicted' (the POPE
    paper: the share of answers that are yes)."""

    name = ""
    version = ""
    pope_unknown_is_no = True
    pope_yes_ratio = "predicted"
    pope_split_on_comma = False

    def yesno(self, text: str, style: str = "mme") -> Parsed:
        raise NotImplementedError

    def choice(self, text: str, choices: dict[str, str], key: str = "") -> Parsed:
        raise NotImplementedError

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


# -- lmms-eval
def lmms_eval_mme_label(text: str) -> str:
    """lmms-eval's MME rule (`parse_pred_ans`): 'yes', 'no' or 'other'."""
    s = text.lower().strip().replace(".", "")
    if s in ("yes", "no"):
        return s
    if len(s) == 1:
        return {"y": "yes", "n": "no"}.get(s, "other")
    head = s[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _mmmu_strip(text: str) -> str:
    for ch in (",", ".", "!", "?", ";", ":", "'"):
        text = text.strip(ch)
    return " " + text + " "


def lmms_eval_mmmu_choice(text: str, choices: dict[str, str], key: str) -> Parsed:
    """The MMMU rule lmms-eval uses for multiple choice (see the module docstring)."""
    letters = list(choices)
    resp = _mmmu_strip(text)
    by_text = False
    bracketed = False
    cands = [c for c in letters if f"({c})" in resp]
    if cands:
        bracketed = True
    if not cands:
        cands = [c for c in letters if f"{c} " in resp]
    if not cands:
        cands = [c for c in letters if f"{c}." in resp]
    if not cands and len(resp.split()) > 5:
        cands = [c for c in letters if str(choices[c]).lower() in resp.lower()]
        by_text = bool(cands)
    if not cands:
        rng = random.Random(xxhash.xxh3_64_intdigest(f"lmms-eval-mmmu:{key}".encode()))
        return Parsed(rng.choice(letters), "no option found: random option (lmms-eval MMMU rule)")
    if len(cands) == 1:
        return Parsed(cands[0])
    if by_text:
        pos = [resp.lower().rfind(str(choices[c]).lower()) for c in cands]
    elif bracketed:
        pos = [resp.rfind(f"({c})") for c in cands]
    else:
        pos = [resp.rfind(f" {c} ") for c in cands]
    return Parsed(cands[pos.index(max(pos))])  # argmax: the first of equal maxima


class LmmsEvalParser(AnswerParser):
    name = "lmms-eval"
    version = "1"  # rules as in lmms-eval's mme / pope / mmmu task utils (2026-08)
    pope_unknown_is_no = False
    pope_yes_ratio = "ground-truth"

    def yesno(self, text: str, style: str = "mme") -> Parsed:
        if style == "pope":
            s = text.lower().strip()
            if s in ("yes", "no"):
                return Parsed(s)
            return Parsed(None, "not exactly 'yes' or 'no' (lmms-eval POPE exact match)")
        label = lmms_eval_mme_label(text)
        if label == "other":
            return Parsed(None, "no yes / no in the first 4 characters (lmms-eval MME rule)")
        return Parsed(label)

    def choice(self, text: str, choices: dict[str, str], key: str = "") -> Parsed:
        return lmms_eval_mmmu_choice(text, choices, key)


class LmmsEvalSeedParser(LmmsEvalParser):
    name = "lmms-eval-seed"
    version = "1"

    def choice(self, text: str, choices: dict[str, str], key: str = "") -> Parsed:
        s = text.strip()
        if not s:
            return Parsed(None, "empty answer")
        first = s[0].upper()
        if first in choices:
            return Parsed(first)
        return Parsed(None, f"first character {s[0]!r} is not an option (lmms-eval SEED rule)")


# -- VLMEvalKit
_VLMEVAL_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">",
                  "<", "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_LONE_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")


def vlmevalkit_punctuation(text: str) -> str:
    """VLMEvalKit's `process_punctuation`: each listed mark is deleted when it stands next to a
    space in the *original* text (or the text has a comma inside a number), else replaced by a
    space; then periods not between digits are deleted (its `re.sub` passes `re.UNICODE` as the
    count argument, so at most 32 of them)."""
    out = text
    comma_num = _COMMA_IN_NUMBER.search(text) is not None
    for p in _VLMEVAL_PUNCT:
        if (p + " " in text or " " + p in text) or comma_num:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _LONE_PERIOD.sub("", out, count=int(re.UNICODE))


_VLMEVAL_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                     "I'm sorry, but without the image provided", "Cannot determine the answer")
_VLMEVAL_VERBOSE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def vlmevalkit_option(text: str, choices: dict[str, str]) -> Optional[str]:
    """VLMEvalKit's `can_infer_option` (VERBOSE off): a letter, 'Z' or None."""
    if "Failed to obtain answer via API" in text:
        return None
    if any(r in text for r in _VLMEVAL_REFUSALS):
        return "Z"
    mod = text
    for ch in ".()[],:;!*#{}":
        mod = mod.replace(ch, " ")
    words = [w.strip() for w in mod.split()]
    count = sum(1 for c in choices if c in words)
    if count == 1:
        for c in choices:
            if c in words and words.index(c) > len(words) - 5:
                return c
    elif count == 0 and "Z" in words:
        return "Z"
    m = _VLMEVAL_VERBOSE.search(text or "")
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    return None


def vlmevalkit_text(text: str, choices: dict[str, str]) -> Optional[str]:
    """VLMEvalKit's `can_infer_text`: the one option whose text the answer contains."""
    low = text.lower()
    if len(low) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    cands = [k for k, v in choices.items() if str(v).lower() in low]
    return cands[0] if len(cands) == 1 else None


class VLMEvalKitParser(AnswerParser):
    name = "vlmevalkit"
    version = "1"  # exact matching rules as in VLMEvalKit's matching_util / yorn (2026-08)
    pope_unknown_is_no = True
    pope_yes_ratio = "predicted"
    pope_split_on_comma = True  # POPE_rating splits `category` on ',' and counts a row in each

    def yesno(self, text: str, style: str = "mme") -> Parsed:
        words = vlmevalkit_punctuation(text.lower()).split()
        yes, no = "yes" in words, "no" in words
        if yes and not no:
            return Parsed("yes")
        if no and not yes:
            return Parsed("no")
        return Parsed(None, "Unknown: " + ("both yes and no" if yes else "neither yes nor no")
                      + " among the words (VLMEvalKit YOrN_Extraction)")

    def choice(self, text: str, choices: dict[str, str], key: str = "") -> Parsed:
        opt = vlmevalkit_option(text, choices)
        if opt == "Z":
            return Parsed(None, "'Z': refusal or no option (VLMEvalKit can_infer_option)")
        if opt:
            return Parsed(opt)
        opt = vlmevalkit_text(text, choices)
        if opt:
            return Parsed(opt)
        return Parsed(None, "no single option letter or text (VLMEvalKit can_infer, exact matching)")


# -- robust (ours)
_MD = re.compile(r"[*_`#>]+")
_EXPLICIT = re.compile(
    r"(?:answer|option|choice)\s*(?:is|would be|should be|:|=)?\s*(?:option\s*)?"
    r"[\(\[]?\s*([A-Za-z])\s*[\)\]]?(?=[\s.,:;!)\]]|$)", re.I)
_ITS = re.compile(r"\b(?:it's|it is|its|i choose|i pick|i'd say|i would say|go with|pick)\s+"
                  r"(?:option\s+)?[\(\[]?([A-Z])[\)\]]?(?=[\s.,:;!]|$)")
_LEAD = re.compile(r"^\s*[\(\[]?\s*([A-Za-z])\s*(?:([\)\]\.:,])|(?=\s)|$)")
_BRACKETED = re.compile(r"[\(\[]([A-Z])[\)\]]")
_WORD_LETTER = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")
_YESNO_LEAD = re.compile(r"^\W*(yes|no|y|n|true|false)\b")
_YESNO_EXPLICIT = re.compile(r"answer\s*(?:is|:)?\s*\W*(yes|no)\b")
_WORDS = re.compile(r"[a-z']+")


def _marked(s: str, m: re.Match) -> bool:
    """A lowercase letter after 'answer is' is an option only when marked as one: '(b)', 'b.',
    'b)' or the end of the text ('the answer is a cat' names no option 'a')."""
    return "(" in m.group(0) or "[" in m.group(0) or s[m.end():m.end() + 1] in ("", ".", ")", "]", ":", ",")


def _norm(text: str) -> str:
    return _MD.sub("", text).strip().strip("\"'").strip()


class RobustParser(AnswerParser):
    """Ours: explicit statements first, then a leading letter, then a single standalone letter,
    then a single option text; anything ambiguous is reported, not guessed."""

    name = "robust"
    version = "1"
    pope_unknown_is_no = True
    pope_yes_ratio = "predicted"

    def yesno(self, text: str, style: str = "mme") -> Parsed:
        s = _norm(text).lower()
        if not s:
            return Parsed(None, "empty answer")
        m = _YESNO_LEAD.match(s)
        if m:
            return Parsed({"y": "yes", "true": "yes", "n": "no", "false": "no"}.get(m.group(1), m.group(1)))
        m = _YESNO_EXPLICIT.search(s)
        if m:
            return Parsed(m.group(1))
        words = set(_WORDS.findall(s))
        yes, no = "yes" in words, "no" in words
        if yes != no:
            return Parsed("yes" if yes else "no")
        return Parsed(None, "both yes and no" if yes else "no yes / no found")

    def choice(self, text: str, choices: dict[str, str], key: str = "") -> Parsed:
        s = _norm(text)
        if not s:
            return Parsed(None, "empty answer")
        letters = set(choices)
        for pat in (_EXPLICIT, _ITS):
            hits = [m.group(1).upper() for m in pat.finditer(s)
                    if m.group(1).upper() in letters and (m.group(1).isupper() or _marked(s, m))]
            if hits:
                return Parsed(hits[-1])  # "not A, the answer is B": the last statement
        m = _LEAD.match(s)
        if m:
            letter, mark = m.group(1), m.group(2)
            rest = s[m.end():].strip().lower().rstrip(".")
            up = letter.upper()
            if up in letters:
                text_ok = not rest or str(choices[up]).lower().startswith(rest) or \
                    rest.startswith(str(choices[up]).lower())
                # 'b) cat', 'B.', 'B', 'B cat' are answers; 'A cat ...' / 'a dog' are articles
                if mark or (letter.isupper() and (not rest or text_ok)) or (not rest and len(s) <= 3):
                    return Parsed(up)
        bracketed = {x for x in _BRACKETED.findall(s) if x in letters}
        if len(bracketed) == 1:
            return Parsed(bracketed.pop())
        standalone = {x for x in _WORD_LETTER.findall(s) if x in letters and x not in ("A", "I")}
        if "A" in letters and re.search(r"(?<![A-Za-z'])A(?=[\s]*[.)\]:,]|$)", s):
            standalone.add("A")
        if len(standalone) == 1:
            return Parsed(standalone.pop())
        low = s.lower()
        by_text = [k for k, v in choices.items()
                   if re.search(r"(?<!\w)" + re.escape(str(v).lower()) + r"(?!\w)", low)]
        if len(by_text) > 1:  # 'red' inside 'dark red': keep options not contained in another hit
            by_text = [k for k in by_text if not any(
                k != o and str(choices[k]).lower() in str(choices[o]).lower() for o in by_text)]
        if len(by_text) == 1:
            return Parsed(by_text[0])
        if len(standalone) > 1 or len(by_text) > 1:
            amb = sorted(standalone) if len(standalone) > 1 else sorted(by_text)
            return Parsed(None, "ambiguous: " + ", ".join(amb))
        return Parsed(None, "no option letter or option text found")


PARSERS: dict[str, type[AnswerParser]] = {
    "robust": RobustParser,
    "lmms-eval": LmmsEvalParser,
    "lmms-eval-seed": LmmsEvalSeedParser,
    "vlmevalkit": VLMEvalKitParser,
}
DEFAULT_PARSER = "robust"


def get_parser(name: str) -> AnswerParser:
    """The parser called `name`; a clear error listing the known names otherwise."""
    if name not in PARSERS:
        raise ValueError(f"unknown parser {name!r}: expected one of {', '.join(PARSERS)}")
    return PARSERS[name]()
