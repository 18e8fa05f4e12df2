"""The recipe as a list of steps: YAML and flags, checks with one-line errors, the registry (a toy filter added
here runs through the curate stage), and docs/curate.md listing every step and parameter with its default."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from curate_helpers import english_text

from groundup import cli
from groundup import config as configlib
from groundup.curate import run as curate
from groundup.curate.extract import Extractor
from groundup.curate.filters.c4 import C4QualityFilter
from groundup.curate.filters.fineweb import FineWebQualityFilter
from groundup.curate.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from groundup.curate.filters.language import LanguageFilter
from groundup.curate.filters.length import LengthFilter
from groundup.curate.filters.url import URLFilter
from groundup.curate.pii import PIIRedactor
from groundup.curate.recipe import STEPS, RecipeConfig, build_steps, register_step, resolve_parameters
from groundup.curate.steps import KEEP, Filter
from groundup.curate.text import Document
from groundup.curate.unicode import UnicodeFixer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "curate.md"


def test_default_recipe_is_fineweb():
    steps = build_steps(RecipeConfig())
    assert [type(s) for s in steps] == [URLFilter, Extractor, UnicodeFixer, LanguageFilter, GopherRepetitionFilter,
                                        GopherQualityFilter, C4QualityFilter, FineWebQualityFilter, PIIRedactor]
    by_name = {s.name: s for s in steps}
    assert by_name["c4_quality"].filter_no_terminal_punct is False  # FineWeb's setting, unlike C4's own default
    assert C4QualityFilter().filter_no_terminal_punct is True
    assert by_name["language"].languages == ["en"] and by_name["language"].threshold == 0.65
    assert by_name["fineweb_quality"].char_duplicates_ratio == 0.1
    assert by_name["gopher_quality"].min_doc_words == 50


def test_yaml_adds_removes_reorders_and_sets_every_threshold(tmp_path):
    recipe = tmp_path / "curate.yaml"
    recipe.write_text("""
recipe:
  steps:
    - length: {min_chars: 100}
    - url_filter
    - gopher_quality: {min_doc_words: 10, max_avg_word_length: 12, stop_words: [a, an]}
    - gopher_repetition:
        dup_line_frac: null
        top_n_grams: [[3, 0.5], [2, 0.4]]
    - language:
""")
    cfg = configlib.parse(curate.Config, ["--config", str(recipe), "--input", "x"])
    steps = build_steps(cfg.recipe)
    assert [s.name for s in steps] == ["length", "url_filter", "gopher_quality", "gopher_repetition", "language"]
    length, _, quality, repetition, language = steps
    assert length.min_chars == 100 and length.max_chars is None
    assert quality.min_doc_words == 10 and quality.max_avg_word_length == 12 and quality.max_doc_words == 100_000
    short = " ".join(["an apple and a river by the road"] * 2)  # 16 words, stop words "a" and "an"
    assert quality.filter(Document(short)) == KEEP and GopherQualityFilter().filter(Document(short))[0] is False
    assert repetition.dup_line_frac is None and repetition.top_n_grams == ((2, 0.4), (3, 0.5))
    assert repetition.dup_n_grams == GopherRepetitionFilter().dup_n_grams
    assert language.threshold == 0.65
    # the saved config holds every parameter and reads back to the same recipe
    configlib.save(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())["recipe"]["steps"]
    assert saved[2]["gopher_quality"]["max_bullet_lines_ratio"] == 0.9
    assert configlib.load(curate.Config, tmp_path / "config.yaml").recipe == cfg.recipe


def test_flags_replace_or_append_steps(tmp_path):
    cfg = configlib.parse(curate.Config, ["--recipe.steps", "[url_filter, {pii: {kinds: [email]}}]"])
    assert [type(s) for s in build_steps(cfg.recipe)] == [URLFilter, PIIRedactor]
    cfg = configlib.parse(curate.Config, ["--recipe.steps+", "{length: {max_chars: 9}}"])
    steps = build_steps(cfg.recipe)
    assert len(steps) == len(build_steps(RecipeConfig())) + 1 and steps[-1] == LengthFilter(max_chars=9)
    (tmp_path / "steps.yaml").write_text("steps: [extract, {fineweb_quality: {line_punct_thr: 0.2}}]\n")
    cfg = configlib.parse(curate.Config, ["--recipe", str(tmp_path / "steps.yaml")])
    assert build_steps(cfg.recipe) == [Extractor(), FineWebQualityFilter(line_punct_thr=0.2)]


@pytest.mark.parametrize(("steps", "message"), [
    (["gopher_qualty"], r"^recipe step 'gopher_qualty' is unknown \(known steps: url_filter, .*gopher_quality"),
    ([{"gopher_quality": {"min_words": 3}}], r"^recipe step 'gopher_quality': unknown parameter 'min_words' "
                                             r"\(its parameters: min_doc_words, "),
    ([{"language": {"threshold": "high"}}], r"^recipe step 'language': threshold='high' is not a valid float$"),
    ([{"gopher_repetition": {"top_n_grams": [[2]]}}], r"^recipe step 'gopher_repetition': top_n_grams=\[\[2\]\] "),
    (["language", {"language": {"threshold": 0.5}}], r"^recipe step 'language' appears twice"),
    ([{"language": 0.5}], r"^recipe step 'language': parameters must be a mapping"),
    ([{"language": {}, "pii": {}}], r"^recipe step 1: write a step as `name` or `name: \{parameter: value\}`"),
])
def test_bad_steps_are_one_line_errors_naming_the_step(steps, message):
    with pytest.raises(ValueError, match=message) as error:
        RecipeConfig(steps=steps)
    assert "\n" not in str(error.value)


def test_bad_step_in_a_yaml_file_stops_the_parse(tmp_path):
    recipe = tmp_path / "curate.yaml"
    recipe.write_text("recipe:\n  steps:\n    - url_filter\n    - gopher_quality: {min_words: 3}\n")
    with pytest.raises(ValueError, match=r"recipe step 'gopher_quality': unknown parameter 'min_words'"):
        configlib.parse(curate.Config, ["--config", str(recipe)])


def test_a_step_constructor_error_names_the_step():
    with pytest.raises(ValueError, match=r"^recipe step 'extract': unknown extractor 'lynx'"):
        build_steps(RecipeConfig(steps=[{"extract": {"extractor": "lynx"}}]))
    with pytest.raises(ValueError, match=r"^recipe step 'pii': unknown PII kinds \['name'\]"):
        build_steps(RecipeConfig(steps=[{"pii": {"kinds": ["name"]}}]))
    with pytest.raises(FileNotFoundError, match=r"^recipe step 'url_filter': blocklist nowhere.txt not found$"):
        build_steps(RecipeConfig(steps=[{"url_filter": {"files": ["shipped", "nowhere.txt"]}}]))


def test_register_step_refuses_what_a_recipe_could_not_use():
    class NotADataclass(Filter):
        name = "not_a_dataclass"

    @dataclass
    class Unnamed(Filter):
        threshold: float = 0.5

    @dataclass
    class NoDefault(Filter):
        name = "no_default"
        threshold: float

    @dataclass
    class Taken(Filter):
        name = "language"

    with pytest.raises(TypeError, match="must be a dataclass subclass of Filter or Formatter"):
        register_step(NotADataclass)
    with pytest.raises(ValueError, match="set the class attribute `name`"):
        register_step(Unnamed)
    with pytest.raises(ValueError, match="parameter 'threshold' needs a default"):
        register_step(NoDefault)
    with pytest.raises(ValueError, match="recipe step 'language' is already registered"):
        register_step(Taken)
    assert register_step(LanguageFilter) is LanguageFilter and STEPS["language"] is LanguageFilter


# ---------------------------------------------------------------------------- a filter added from outside


@dataclass
class ShoutingFilter(Filter):
    """Drop pages written mostly in capitals."""

    name = "shouting"

    max_upper_ratio: float = 0.5
    """Maximum fraction of letters in upper case."""

    def filter(self, doc: Document) -> tuple[bool, str]:
        letters = [c for c in doc.text if c.isalpha()]
        if letters and sum(c.isupper() for c in letters) / len(letters) > self.max_upper_ratio:
            return False, "too_many_capitals"
        return KEEP


register_step(ShoutingFilter)


def test_a_registered_filter_runs_in_the_curate_stage(tmp_path):
    """A toy filter defined and registered here runs from a YAML recipe through `groundup curate`, in two worker
    processes: its parameter is applied, its statistics, funnel row and dropped rows appear."""
    texts = [english_text(seed) for seed in range(4)]
    texts[1] = texts[1].upper()  # all capitals
    texts[2] = texts[2][:300].upper() + texts[2][300:]  # some capitals: under 0.5, over 0.05
    (tmp_path / "in").mkdir()
    for part in range(2):
        with open(tmp_path / "in" / f"part{part}.jsonl", "w", encoding="utf-8") as f:
            for i in range(part, len(texts), 2):
                f.write(json.dumps({"text": texts[i], "url": f"https://example.org/{i}"}) + "\n")
    recipe = tmp_path / "curate.yaml"
    recipe.write_text("recipe:\n  steps:\n    - url_filter\n    - shouting: {max_upper_ratio: 0.05}\n"
                      "    - gopher_quality\n")
    out = tmp_path / "out"
    assert cli.main(["curate", "--config", str(recipe), "--input", str(tmp_path / "in"), "--out", str(out),
                     "--workers", "2", "--task_bytes", "1", "--write_dropped", "true"]) == 0

    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["steps"]) == ["url_filter", "shouting", "gopher_quality"]
    assert stats["steps"]["shouting"]["documents_in"] == 4
    assert stats["steps"]["shouting"]["dropped"] == {"too_many_capitals": 2}
    assert [(row["step"], row["documents"]) for row in stats["funnel"]] == [
        ("read", 4), ("url_filter", 4), ("shouting", 2), ("gopher_quality", 2), ("dedup", 2)]
    kept = sorted(r["url"] for p in (out / "shards").glob("*.parquet") for r in pq.read_table(p).to_pylist())
    assert kept == ["https://example.org/0", "https://example.org/3"]
    dropped = sorted((r["url"], r["step"], r["reason"]) for p in (out / "dropped").glob("*.parquet")
                     for r in pq.read_table(p).to_pylist())
    assert dropped == [("https://example.org/1", "shouting", "too_many_capitals"),
                       ("https://example.org/2", "shouting", "too_many_capitals")]
    saved = yaml.safe_load((out / "config.yaml").read_text())["recipe"]["steps"]
    assert saved[1] == {"shouting": {"max_upper_ratio": 0.05}}


# ---------------------------------------------------------------------------- the docs


def documented_steps() -> dict[str, dict[str, str]]:
    """docs/curate.md's "The steps": step -> {parameter: default as written}."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## The steps", 1)[1].split("\n## ", 1)[0]
    steps = {}
    for block in section.split("\n### ")[1:]:
        name = re.match(r"`(\w+)`", block).group(1)
        steps[name] = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", block, re.M))
    return steps


def test_docs_list_every_step_and_parameter_with_its_default():
    documented = documented_steps()
    builtin = {name: cls for name, cls in STEPS.items() if cls.__module__.startswith("groundup.")}
    assert set(documented) == set(builtin)
    for name, cls in builtin.items():
        parameters = [f.name for f in dataclasses.fields(cls) if f.init]
        assert list(documented[name]) == parameters, name
        defaults = configlib.to_dict(resolve_parameters(name, {}))
        for parameter, written in documented[name].items():
            assert yaml.safe_load(written) == defaults[parameter], (name, parameter)


def test_docs_name_the_files_a_new_filter_touches():
    section = DOCS.read_text(encoding="utf-8").split("## Adding a filter", 1)[1]
    root = DOCS.parents[1]
    files = re.findall(r"^\d\. `([^`]+)`", section, re.M)
    assert files[0] == "src/groundup/curate/filters/<family>.py"
    for path in files[1:]:
        assert (root / path).is_file(), path
    assert "register_step" in section and "FINEWEB_STEPS" in section
