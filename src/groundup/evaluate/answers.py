"""Final answers of math problems: GSM8K's ``#### answer`` layout, ``\\boxed{}`` answers, and numeric comparison.

Three readers of a model's text, from strict to lenient:

- :func:`strict_answer` is lm-evaluation-harness's gsm8k ``strict-match`` filter: the number after
  ``#### `` (regex ``#### (\\-?[0-9\\.\\,]+)``, the first match);
- :func:`flexible_answer` is its ``flexible-extract`` filter: the last number-like run in the text
  (regex ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, the last match);
- :func:`final_answer` is what groundup scores with: a ``#### `` answer if there is one, else the last
  ``\\boxed{...}`` (braces nested), else the last number; then :func:`normalize_number` (commas,
  currency signs, units and trailing periods dropped: ``$1,234.50 dollars.`` is ``1234.5``).

:func:`lm_eval_exact_match` is lm-eval's gsm8k ``exact_match`` (case ignored; ``,``, ``$``, everything up to
``#### `` and a final ``.`` removed from both sides), so a figure can be compared with its tables.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

FALLBACK = "[invalid]"
"""What the lm-eval filters return when nothing matches."""

_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = [re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$")]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _regex_filter(pattern: re.Pattern, text: str, group_select: int) -> str:
    # lm_eval.filters.extraction.RegexFilter.apply, for one response
    matches = pattern.findall(text)
    if not matches:
        return FALLBACK
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), FALLBACK)
    return match.strip()


def strict_answer(text: str) -> str:
    """lm-eval gsm8k's ``strict-match``: the number after ``#### `` (or ``[invalid]``)."""
    return _regex_filter(_STRICT, text, 0)


def flexible_answer(text: str) -> str:
    """lm-eval gsm8k's ``flexible-extract``: the last number-like run (or ``[invalid]``)."""
    return _regex_filter(_FLEXIBLE, text, -1)


def lm_eval_exact_match(prediction: str, reference: str) -> float:
    """lm-eval gsm8k's ``exact_match`` of one filtered prediction against the reference answer."""
    def clean(s: str) -> str:
        for pattern in _IGNORE:
            s = pattern.sub("", s)
        return s.lower()

    return float(clean(prediction) == clean(reference))


def boxed_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces kept; None without one."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i].strip()
        i += 1
    return None  # an unclosed box is no answer


def normalize_number(text: str) -> str | None:
    """A number's canonical text (``-1234.5``), found in ``text`` after units, currency signs, commas and a trailing
    period are dropped; None when there is no number. Integers print without a decimal point."""
    text = text.replace("\\!", "").replace("\\,", "").replace("{,}", ",")
    found = _NUMBER.findall(text)
    if not found:
        return None
    raw = found[-1].replace(",", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def final_answer(text: str) -> str | None:
    """The final answer's number: after ``#### ``, else in the last ``\\boxed{}``, else the last number in the text."""
    hashes = text.rfind("####")
    if hashes >= 0:
        found = normalize_number(text[hashes + 4:].split("\n", 1)[0])
        if found is not None:
            return found
    boxed = boxed_answer(text)
    if boxed is not None:
        return normalize_number(boxed)
    return normalize_number(text)


def reference_answer(reference: str) -> str | None:
    """A GSM8K reference (the worked solution ending ``#### 42``, or the bare answer) as a normalised number."""
    return final_answer(reference)


def answers_match(prediction: str, reference: str) -> bool:
    """True when the final numbers of the prediction and of the reference are equal."""
    want = reference_answer(reference)
    return want is not None and final_answer(prediction) == want
