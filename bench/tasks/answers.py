"""Answers of the reasoning tasks: parsing numbers and options, and the extraction rules written in Python.

The tasks themselves read outputs through the filters their YAML declares (bench/tasks/filters.py) and build
prompts through jinja2 templates (bench/tasks/templates.py) that use the helpers here: ``parse_number``,
``gsm8k_gold``, ``strip_calculator_annotations``, ``aqua_options``, ``labels_from_instruction``.

``check`` and the ``extract_*`` functions are the built-in tasks' rules written out in Python, the reference
the YAML filters are tested against (tests/test_reasoning.py: both give the same prediction on every example):

- ``number``: GSM8K, GSM-symbolic and the LLM-Adapters math sets. Gold: the number after '####'
  (GSM8K) or the dataset's answer field. Prediction: the number after the model's own '####' or
  'the answer is' marker when it wrote one, else the last number in the output. Numbers are
  compared with a tolerance (LLM-Adapters: |pred - gold| <= 0.001). Strict: only a number after '####'.
- ``letter``: AQuA (options A-E). Prediction: the letter after 'answer is' / '####', else the last
  '(X)', else a bare letter ending the output; when the model wrote a number instead, the option whose value equals
  it (the GSM8K-trained model answers with numbers).
- ``label``: the LLM-Adapters commonsense sets (true/false, answer1..5, solution1/2, option1/2,
  ending1..4). Prediction: the first allowed label in the output, as LLM-Adapters' evaluation does.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Sequence

NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(NUMBER)
_MARKER_RE = re.compile(r"(?:####|answer is|answer:)\s*\$?\s*\(?\s*(" + NUMBER + ")", re.IGNORECASE)
_ANNOTATION_RE = re.compile(r"<<[^<>]*>>")


def parse_number(text: str) -> Optional[float]:
    """'1,234' -> 1234.0; '-3.5' -> -3.5; '3/4' -> 0.75; anything else -> None."""
    s = str(text).strip().replace(",", "").replace("$", "").rstrip(".")
    if not s:
        return None
    try:
        value = float(s)
    except ValueError:
        m = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", s)
        if not m or float(m.group(2)) == 0:
            return None
        value = float(m.group(1)) / float(m.group(2))
    return value if math.isfinite(value) else None


def gsm8k_gold(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after '####', commas removed ('#### 1,000' -> '1000')."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '####' marker: {answer[-80:]!r}")
    return answer.split("####")[-1].strip().replace(",", "")


def strip_calculator_annotations(solution: str) -> str:
    """GSM8K writes calculator calls inline ('48/2 = <<48/2=24>>24'); the SFT target drops them."""
    return _ANNOTATION_RE.sub("", solution)


def extract_number(output: str) -> Optional[float]:
    """The model's final number: after its first '####' / 'the answer is' marker, else the last number."""
    m = _MARKER_RE.search(output)
    if m:
        value = parse_number(m.group(1))
        if value is not None:
            return value
    numbers = _NUMBER_RE.findall(output)
    for candidate in reversed(numbers):
        value = parse_number(candidate)
        if value is not None:
            return value
    return None


def extract_number_strict(output: str) -> Optional[float]:
    """Only a number written after '####' counts (the GSM8K answer format the model was trained to use)."""
    m = re.search(r"####\s*\$?\s*(" + NUMBER + ")", output)
    return parse_number(m.group(1)) if m else None


def numbers_match(pred: Optional[float], gold: Optional[float], abs_tol: float = 1e-3, rel_tol: float = 1e-6) -> bool:
    if pred is None or gold is None:
        return False
    return math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=abs_tol)


# ------------------------------------------------------------------------------------------------
# multiple choice: AQuA letters
# ------------------------------------------------------------------------------------------------
_OPTION_RE = re.compile(r"\(([A-E])\)\s*([^()]*?)(?=\s*\([A-E]\)|$)", re.DOTALL)


def aqua_options(question: str) -> dict[str, str]:
    """'Answer Choices: (A) 23.65 (B) 1000 ...' -> {'A': '23.65', 'B': '1000', ...}."""
    part = question.split("Answer Choices:", 1)[-1]
    return {m.group(1): m.group(2).strip() for m in _OPTION_RE.finditer(part)}


def extract_letter(output: str, options: Optional[dict[str, str]] = None, letters: str = "ABCDE") -> Optional[str]:
    """The option letter the model chose (see the module docstring for the order of the rules)."""
    cls = f"[{letters}]"
    m = re.search(rf"(?:(?i:answer is|answer:)|####)\s*\(?({cls})\)?(?![A-Za-z])", output)
    if m:
        return m.group(1)
    parenthesized = re.findall(rf"\(({cls})\)", output)
    if parenthesized:
        return parenthesized[-1]
    m = re.search(rf"(?<![A-Za-z])({cls})[\s.)]*$", output.strip())  # a bare letter at the very end ('... so D.')
    if m:
        return m.group(1)
    if options:
        value = extract_number(output)
        if value is not None:
            for letter, text in options.items():
                option_value = parse_number(text.split()[0]) if text.split() else None
                if numbers_match(value, option_value):
                    return letter
    return None


# ------------------------------------------------------------------------------------------------
# commonsense labels
# ------------------------------------------------------------------------------------------------
def labels_from_instruction(instruction: str) -> Optional[list[str]]:
    """'... Answer format: answer1/answer2/answer3' -> ['answer1', 'answer2', 'answer3'] (LLM-Adapters prompts)."""
    m = re.search(r"Answer format:\s*([A-Za-z0-9_/ ]+?)\s*$", instruction.strip())
    if not m:
        return None
    labels = [x.strip() for x in m.group(1).split("/") if x.strip()]
    return labels or None


def extract_label(output: str, labels: Sequence[str]) -> Optional[str]:
    """The first allowed label in the output (case-insensitive, whole word): 'the correct answer is answer3' -> 'answer3'."""
    if not labels:
        return None
    # longer labels first so that 'answer10' is never read as 'answer1'
    alternatives = "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))
    m = re.search(rf"(?<![A-Za-z0-9])({alternatives})(?![A-Za-z0-9])", output, re.IGNORECASE)
    if not m:
        return None
    hit = m.group(1).lower()
    return next(x for x in labels if x.lower() == hit)


# ------------------------------------------------------------------------------------------------
# one entry point
# ------------------------------------------------------------------------------------------------
def check(kind: str, output: str, gold: str, *, labels: Optional[Sequence[str]] = None,
          options: Optional[dict[str, str]] = None, abs_tol: float = 1e-3) -> dict:
    """Extract the prediction of one output and compare it with the gold answer.

    Returns {'pred': str | None, 'correct': bool} and, for numbers, 'correct_strict' ('####' only).
    """
    if kind == "number":
        gold_value = parse_number(gold)
        pred = extract_number(output)
        strict = extract_number_strict(output)
        return {
            "pred": None if pred is None else format_number(pred),
            "correct": numbers_match(pred, gold_value, abs_tol=abs_tol),
            "correct_strict": numbers_match(strict, gold_value, abs_tol=abs_tol),
        }
    if kind == "letter":
        pred = extract_letter(output, options)
        return {"pred": pred, "correct": pred is not None and pred == str(gold).strip().upper()}
    if kind == "label":
        pred = extract_label(output, labels or [])
        return {"pred": pred, "correct": pred is not None and pred.lower() == str(gold).strip().lower()}
    raise ValueError(f"unknown answer kind {kind!r} (number | letter | label)")


def format_number(x: float) -> str:
    """15.0 -> '15'; 1.5 -> '1.5' (how a numeric prediction is written in the predictions file)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def json_options(text: Optional[str]) -> dict[str, str]:
    """The options column of a normalised row (JSON of {letter: option text}, or empty) as a dict."""
    import json

    return json.loads(text) if text else {}


# ------------------------------------------------------------------------------------------------
# multiple choice read back out of the LLM-Adapters prompts (log-likelihood scoring, bench/tasks/loglikelihood.py)
# ------------------------------------------------------------------------------------------------
_QUESTION_LEAD_RE = re.compile(r"^Please [^:\n]*?(?:question|sentence)\s*:\s*", re.IGNORECASE)
_MC_OPTION_RE = re.compile(
    r"(?<![A-Za-z0-9])(Answer|Solution|Option|Ending)(\d+):\s*(.*?)(?=\s*(?:(?:Answer|Solution|Option|Ending)\d+:|"
    r"Answer format:)|\s*$)", re.DOTALL)


def mc_question(instruction: str) -> str:
    """The question of an LLM-Adapters commonsense prompt: its first paragraph without the 'Please choose ...:' lead.

    'Please choose the correct answer to the question: Which ...?\\n\\nAnswer1: ...' -> 'Which ...?'
    """
    head = str(instruction).strip().split("\n\n", 1)[0]
    return _QUESTION_LEAD_RE.sub("", head, count=1).strip()


def mc_options(instruction: str) -> dict[str, str]:
    """'... \\n\\nAnswer1: gray Answer2: warm\\n\\nAnswer format: ...' -> {'answer1': 'gray', 'answer2': 'warm'}.

    Read after the first paragraph (the question), keyed by the label the instruction's answer format names.
    """
    parts = str(instruction).strip().split("\n\n", 1)
    body = parts[1] if len(parts) > 1 else ""
    return {f"{m.group(1).lower()}{m.group(2)}": m.group(3).strip() for m in _MC_OPTION_RE.finditer(body)}


def pick(keys, mapping: dict, prefix: str = "") -> list[str]:
    """[prefix + mapping[key] for each key]; a key the mapping lacks fails with a message naming it."""
    lowered = {str(k).lower(): v for k, v in dict(mapping or {}).items()}
    out = []
    for key in list(keys or []):
        if str(key).lower() not in lowered:
            raise ValueError(f"no text for choice {key!r} (known: {sorted(lowered)})")
        out.append(f"{prefix}{lowered[str(key).lower()]}")
    return out


def llm_adapters_answers(choices) -> list[str]:
    """Each choice as the sentence LLM-Adapters trains a model to write ("the correct answer is <label>"): the
    continuations that score a chat-format model on the very answer its training targets hold."""
    return [f"the correct answer is {c}" for c in list(choices or [])]


def blank_contexts(sentence: str, fillers) -> list[str]:
    """WinoGrande's partial scoring: the sentence up to its '_' blank, completed by each filler in turn."""
    if "_" not in sentence:
        raise ValueError(f"no '_' blank in the sentence {sentence[:80]!r}")
    head = sentence[: sentence.index("_")]
    return [head + str(f) for f in fillers]


def after_blank(sentence: str) -> str:
    """The rest of a WinoGrande sentence after its '_' blank, with one leading space: what every filler continues to."""
    if "_" not in sentence:
        raise ValueError(f"no '_' blank in the sentence {sentence[:80]!r}")
    return " " + sentence[sentence.index("_") + 1 :].strip()


def lettered_options(question: str, letters: str = "ABCDE") -> dict[str, str]:
    """'Answer Choices: (A) D/ (M-3) (B) MD/3 ...' -> {'A': 'D/ (M-3)', 'B': 'MD/3', ...}: cut at each next marker
    in letter order, so an option may hold parentheses (aqua_options stops at them: ten AQuA test rows)."""
    part = str(question).split("Answer Choices:", 1)[-1]
    found, pos = [], 0
    for letter in letters:
        at = part.find(f"({letter})", pos)
        if at < 0:
            break
        found.append((letter, at))
        pos = at + 3
    return {letter: " ".join(part[at + 3 : (found[k + 1][1] if k + 1 < len(found) else len(part))].split())
            for k, (letter, at) in enumerate(found)}
