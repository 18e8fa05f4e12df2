"""`groundup report`: what the page holds for a whole run, a run with stages missing, and runs overlaid."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser

import pytest

from groundup import cli
from groundup.report import run as report_stage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The sections (id -> not run?) and images of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, bool] = {}
        self.images: list[dict] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections[a["id"]] = "notrun" in (a.get("class") or "")
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href"):
            value = a.get(key)
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)


def parse(path) -> tuple[Page, str]:
    text = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return page, text


def test_groundup_run_writes_a_self_contained_report(tiny_run):
    page, text = parse(tiny_run / "report.html")
    assert page.external == []  # no network, no neighbouring files: it opens from disk anywhere
    for img in page.images:
        data = base64.b64decode(img["src"].removeprefix("data:image/png;base64,"))
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, img["alt"]
    alts = {img["alt"] for img in page.images}
    assert {"loss curves", "held-out bits per byte", "optimization curves", "tokenizer statistics",
            "stage timings"} <= alts
    for present in ("overview", "recipe", "tokenizer", "pretrain", "samples", "checkpoints", "timings"):
        assert page.sections[present] is False, present
    for absent in ("data", "finetune", "evaluation"):
        assert page.sections[absent] is True, absent
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert f"{summary['held_out_bits_per_byte']:.3f}" in text and f"{summary['gzip_bits_per_byte']:.3f}" in text
    assert "hardware" in summary and summary["hardware"]["cpu_cores"] >= 1
    assert "checkpoints/step-000030" in text and "model/model.safetensors" in text


def test_every_section_when_every_stage_ran(full_run, tmp_path):
    out = report_stage.run(report_stage.Config(runs=[full_run], out=tmp_path / "r.html"))
    page, text = parse(out)
    assert not any(page.sections.values()), page.sections  # nothing "not run"
    alts = [img["alt"] for img in page.images]
    for alt in ("curation funnel", "documents dropped by reason", "dpo curves", "evaluation scores"):
        assert alt in alts
    assert "gopher_repetition: top_2_gram" in text and "dedup: exact duplicates" in text
    assert "0.262 ± 0.0044 (n=10,042)" in text  # value ± stderr (n) from results.json
    assert "acc_norm" in text and "bits_per_byte" in text


def test_missing_stages_are_marked_not_run(tiny_run, tmp_path):
    # a bare model dir whose training is still going: metrics only, no manifest, no summary
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    shutil.copy(tiny_run / "model" / "metrics.jsonl", model / "metrics.jsonl")
    with open(model / "metrics.jsonl", "a") as f:
        f.write('{"step": 31, "tok')  # killed mid-write
    assert cli.main(["report", str(tmp_path / "run")]) == 0
    page, text = parse(tmp_path / "run" / "report.html")
    for absent in ("data", "tokenizer", "finetune", "evaluation", "samples"):
        assert page.sections[absent] is True, absent
    assert page.sections["pretrain"] is False and "in progress" in text
    assert re.search(r"not run", text) and "loss curves" in {i["alt"] for i in page.images}
    assert "metrics.jsonl:" in text and "not JSON" in text  # the skipped line is reported, not fatal

    empty = tmp_path / "empty"
    empty.mkdir()
    page, _ = parse(report_stage.run(report_stage.Config(runs=[empty])))
    assert page.sections["pretrain"] and page.sections["tokenizer"] and page.images == []


def test_several_runs_are_overlaid(tiny_run, full_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    recipe = (other / "recipe.yaml").read_text().replace("batch_size: 4", "batch_size: 8")
    (other / "recipe.yaml").write_text(recipe)
    out = tmp_path / "compare.html"
    assert cli.main(["report", str(full_run), str(other), "--out", str(out), "--title", "A vs B"]) == 0
    page, text = parse(out)
    assert "<title>A vs B</title>" in text
    assert "Settings that differ" in text and "pretrain.batch_size" in text
    assert "Not run in: other" in text  # the curate, DPO and eval sections exist for one run only
    assert "full" in text and "other" in text


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no run dir"):
        report_stage.run(report_stage.Config(runs=[]))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        report_stage.run(report_stage.Config(runs=[tmp_path / "absent"]))
