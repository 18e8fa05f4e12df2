"""Optional extras: the table matches pyproject.toml, and a missing package names the extra to install."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from groundup import cli
from groundup.extras import EXTRAS, NEEDED, MissingExtraError, import_extra, require_extra


def test_the_table_is_pyprojects_extras():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    declared = project["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        names = {re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower() for spec in declared[extra]}
        assert set(packages.values()) == names, extra
        assert set(NEEDED[extra]) <= set(packages), extra
    assert set(EXTRAS) == set(declared) - {"all", "dev", "bench", "docs"}


def test_a_missing_package_names_its_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"groundup serve needs uvicorn, from groundup's 'serve' extra: "
                                                r"pip install 'groundup\[serve\]'"):
        require_extra("serve", purpose="groundup serve")
    require_extra("serve", "fastapi")  # the packages named, not the extra's defaults
    with pytest.raises(ValueError, match="not packages of the 'serve' extra"):
        require_extra("serve", "torch")
    with pytest.raises(ValueError, match="unknown extra"):
        require_extra("gpu")


def test_import_extra_names_the_extra_and_keeps_other_errors(monkeypatch):
    for name in ("rouge_score", "rouge_score.rouge_scorer"):  # what an environment without the package looks like
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match=r"ROUGE needs rouge_score.*groundup\[eval\]"):
        import_extra("rouge_score.rouge_scorer", "eval", purpose="ROUGE")
    with pytest.raises(ValueError, match="not a package of the 'eval' extra"):
        import_extra("numpy", "eval")


def test_the_command_says_it_in_one_line(monkeypatch, capsys):
    from groundup.plan import run as plan_stage

    def needs_serve(cfg):
        raise MissingExtraError("groundup serve needs fastapi, from groundup's 'serve' extra: "
                                "pip install 'groundup[serve]'")

    monkeypatch.setattr(plan_stage, "run", needs_serve)
    assert cli.console(["plan"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "pip install 'groundup[serve]'" in err[0] and "MissingExtraError" not in err[0]
