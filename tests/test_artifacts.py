"""The directory contracts' helpers: the one JSONL reader, atomic writes."""

from __future__ import annotations

import pytest

from groundup.artifacts import JsonlStats, read_jsonl


def test_read_jsonl_skips_and_counts_bad_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\n[1]\n{"b": "\xff"}\n{"c": 3}\n{"d":')
    stats = JsonlStats()
    assert list(read_jsonl(path, stats=stats)) == [(1, {"a": 1}), (5, {"c": 3})]
    assert (stats.lines, stats.records, stats.skipped, stats.torn_tail) == (5, 2, 3, True)
    assert stats.examples[0] == f"{path}:3: a JSON list, not an object"
    assert "invalid UTF-8" in stats.examples[1] and "unfinished last line" in stats.examples[2]


def test_read_jsonl_strict_names_the_line_but_survives_a_torn_tail(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.jsonl:2: not JSON"):
        list(read_jsonl(path, strict=True))
    path.write_text('{"a": 1}\n{"b": 2', encoding="utf-8")  # a writer killed mid-line
    stats = JsonlStats()
    assert list(read_jsonl(path, strict=True, stats=stats)) == [(1, {"a": 1})]
    assert stats.torn_tail and stats.skipped == 1
