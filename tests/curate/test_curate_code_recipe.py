"""The code-and-docs recipe: <pre> blocks byte for byte through extraction and through the whole recipe, a
technical page kept by it and dropped by FineWeb's, junk dropped by both, recipes named in place of steps."""

from __future__ import annotations

import html

import pytest
from curate_helpers import english_text

from groundup import config as configlib
from groundup.curate import run as curate
from groundup.curate.extract import Extractor, extract_text
from groundup.curate.filters.c4 import C4QualityFilter
from groundup.curate.recipe import CODE_STEPS, FINEWEB_STEPS, RecipeConfig, build_steps
from groundup.curate.steps import Chain
from groundup.curate.text import Document

CODE = """    # the first line is indented, and so is this listing
def merge(left: dict, right: dict) -> dict:
\t\"\"\"A tab-indented docstring.\"\"\"
    out = {**left}


    for key, value in right.items():<3 spaces>
        if key in out and out[key] < value:
            out[key] = value  # two blank lines above, three spaces of trailing white space on the for line
        elif key not in out:
            out[key] = value
    return out



class Table:
    rows: list[dict] = []
    def add(self, row): self.rows.append(row)
}""".replace("<3 spaces>", "   ")


def page(code: str = CODE, *, gutter: bool = False, prose_seed: int = 3) -> str:
    pre = f"<pre><code class='language-python'>{html.escape(code)}</code></pre>"
    if gutter:
        numbers = "\n".join(str(i + 1) for i in range(code.count("\n") + 1))
        pre = f"<table><tr><td class='linenos'><pre>{numbers}</pre></td><td class='code'>{pre}</td></tr></table>"
    prose = "".join(f"<p>{p}</p>" for p in english_text(prose_seed, 10).split("\n"))
    return (f"<html><head><title>merge</title></head><body><nav><a href='/'>Home</a> | <a href='/api'>API</a></nav>"
            f"<main><article><h1>Merging tables of counts</h1>{prose}{pre}"
            f"<p>The function returns a new mapping and leaves both arguments alone, which is what you want.</p>"
            f"</article></main><footer>Copyright 2024. Privacy policy.</footer></body></html>")


def test_pre_blocks_survive_extraction_byte_for_byte():
    text = extract_text(page(), keep_code=True)
    assert CODE in text  # indentation of the first line, tabs, blank-line runs and trailing spaces
    assert "Merging tables of counts" in text and "Home | API" not in text  # still the main content only
    # without keep_code the blank-line runs inside the block are collapsed like the prose's
    assert CODE not in extract_text(page())
    # a line-number gutter is skipped: the numbers do not come before the code
    gutter = extract_text(page(gutter=True), keep_code=True)
    assert CODE in gutter and "\n1\n2\n3\n" not in gutter
    assert "\n1\n2\n3\n" in extract_text(page(gutter=True))
    with pytest.raises(ValueError, match="keep_code needs the resiliparse extractor, not 'trafilatura'"):
        Extractor(extractor="trafilatura", keep_code=True)


def _run(recipe: str, text: str, is_html: bool = True) -> tuple[bool, str, str]:
    steps = build_steps(RecipeConfig(steps=recipe))
    doc = Document(text, "https://docs.example.org/merge", 0)
    doc.html = is_html
    reasons = []
    kept = Chain(steps).process(doc, on_drop=lambda d, step, reason: reasons.append(f"{step}:{reason}"))
    return kept, doc.text, (reasons or [""])[0]


def test_a_technical_page_passes_the_code_recipe_verbatim_and_fails_fineweb():
    kept, text, _ = _run("code", page(gutter=True))
    assert kept and CODE in text  # through every step of the recipe, byte for byte
    kept, _, reason = _run("fineweb", page(gutter=True))
    assert not kept and reason, reason
    # English prose passes both; junk passes neither
    prose = "<html><body><article>" + "".join(f"<p>{p}</p>" for p in english_text(7, 24).split("\n")) + \
        "</article></body></html>"
    assert _run("code", prose)[0] and _run("fineweb", prose)[0]
    spam = "<html><body><p>" + "<br>".join(["Buy cheap watches online now best price!"] * 40) + "</p></body></html>"
    lorem = "<html><body><p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 30 + "</p></body></html>"
    for junk in (spam, lorem):
        assert not _run("code", junk)[0] and not _run("fineweb", junk)[0]


def test_c4_line_rules_keep_the_layout_when_asked():
    text = "A line of prose that ends here.\n\n    indented = 1\n}\n\tx[1] = {2}\n" * 3
    layout = C4QualityFilter(filter_no_terminal_punct=False, strip_lines=False, min_words_per_line=0,
                             filter_curly_bracket=False, remove_citations=False)
    d = Document(text)
    assert layout.filter(d) == (True, "") and d.text == text.rstrip()
    d = Document(text)
    assert C4QualityFilter(filter_no_terminal_punct=False, filter_curly_bracket=False).filter(d)[0]
    assert "    indented" not in d.text and "\n\n" not in d.text and "}" not in d.text.split("\n")


def test_recipes_are_named_in_place_of_their_steps(tmp_path):
    assert [next(iter(s)) for s in RecipeConfig(steps="code").steps] == [name for name, _ in CODE_STEPS]
    cfg = configlib.parse(curate.Config, ["--recipe.steps", "[code, {length: {min_chars: 10}}]"])
    names = [next(iter(s)) for s in cfg.recipe.steps]
    assert names == [name for name, _ in CODE_STEPS] + ["length"]
    assert cfg.recipe.steps[1]["extract"]["keep_code"] is True
    assert RecipeConfig().steps == RecipeConfig(steps="fineweb").steps
    assert [next(iter(s)) for s in RecipeConfig().steps] == [name for name, _ in FINEWEB_STEPS]
    configlib.save(cfg, tmp_path / "config.yaml")  # saved expanded: every step and parameter of what ran
    assert configlib.load(curate.Config, tmp_path / "config.yaml").recipe == cfg.recipe
    with pytest.raises(ValueError, match="recipe step 'codes' is unknown"):
        RecipeConfig(steps=["codes"])
    with pytest.raises(ValueError, match=r"recipe steps must be a list or a built-in recipe's name \(fineweb, code\)"):
        RecipeConfig(steps="codes")
