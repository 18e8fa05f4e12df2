"""The report in a real browser: headless Chromium (Debian's package) through playwright.

The page must load from disk with no console error and no page error, and every figure must be
present, decoded and non-empty. A full-page screenshot is kept under ``test-artifacts/`` so a person
(or CI's artifact upload) can look at what the page looks like.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from browser import ARTIFACTS, CHROMIUM_ARGS, chromium_or_skip
from groundup.report import run as report_stage


def render_in_chromium(html: Path, screenshot: Path) -> dict:
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_or_skip(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.resolve().as_uri(), wait_until="load")
            images = page.evaluate("""() => Array.from(document.images).map(img => ({
                alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
                shown: img.getBoundingClientRect().width}))""")
            sections = page.evaluate("""() => Array.from(document.querySelectorAll('section')).map(s => ({
                id: s.id, notRun: s.classList.contains('notrun'), text: s.innerText.slice(0, 200)}))""")
            title = page.title()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"problems": problems, "images": images, "sections": sections, "title": title, "requests": requests}


def test_report_renders_in_chromium(full_run, tmp_path):
    chromium_or_skip()
    out = report_stage.run(report_stage.Config(runs=[full_run], out=tmp_path / "report.html"))
    shot = ARTIFACTS / "report.png"
    result = render_in_chromium(out, shot)
    assert result["problems"] == []
    # nothing fetched but the page itself (the figures are data: URIs)
    assert [u for u in result["requests"] if not u.startswith("data:")] == [out.resolve().as_uri()]
    images = result["images"]
    expected = {"curation funnel", "documents dropped by reason", "tokenizer statistics", "loss curves",
                "held-out bits per byte", "optimization curves", "dpo curves", "evaluation scores", "stage timings"}
    assert expected <= {img["alt"] for img in images}
    for img in images:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0 and img["shown"] > 0, img
    assert not [s["id"] for s in result["sections"] if s["notRun"]]
    assert result["title"].startswith("groundup run")
    assert shot.stat().st_size > 50_000  # a full page, not a blank one


def test_missing_stages_render_in_chromium(tiny_run, tmp_path):
    chromium_or_skip()
    run = tmp_path / "partial"
    (run / "model").mkdir(parents=True)
    shutil.copy(tiny_run / "model" / "metrics.jsonl", run / "model" / "metrics.jsonl")
    result = render_in_chromium(report_stage.run(report_stage.Config(runs=[run])), ARTIFACTS / "report-partial.png")
    assert result["problems"] == []
    not_run = {s["id"] for s in result["sections"] if s["notRun"]}
    assert {"data", "tokenizer", "finetune", "evaluation", "samples"} <= not_run
    assert all("not run" in s["text"].lower() for s in result["sections"] if s["notRun"])
    assert all(img["width"] > 0 for img in result["images"]) and result["images"]
