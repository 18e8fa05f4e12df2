"""The directory contracts' helpers: the one JSONL reader, atomic writes."""

from __future__ import annotations

import json

import pytest

from groundup.artifacts import JsonlStats, read_jsonl, read_jsonl_batches


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


def _torn(path, records, tail='{"text": "half'):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")
    return path


def test_read_jsonl_batches_follows_read_jsonls_rules(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n[2]\n{"b": "\xff"}\n\n' + b'{"c": 3}\n' * 5 + b'{"d":')
    stats = JsonlStats()
    batches = list(read_jsonl_batches(path, stats=stats, batch_bytes=20))
    assert [v for batch in batches for v in batch] == [{"a": 1}] + [{"c": 3}] * 5
    assert len(batches) > 2 and (stats.lines, stats.records, stats.skipped, stats.torn_tail) == (9, 6, 3, True)
    assert stats.examples == [f"{path}:2: a JSON list, not an object", f"{path}:3: invalid UTF-8",
                              f"{path}:10: not JSON (Expecting value) (an unfinished last line)"]


def _finetune(path):
    from groundup.finetune.data import DataStats
    from groundup.finetune.data import read_jsonl as read_data

    stats = DataStats()
    records = read_data(path, lambda obj: obj["text"], stats)  # strict: no skip_bad_lines
    return records, (stats.lines, stats.skipped, stats.errors[0].endswith("(an unfinished last line)"))


def _documents(path):
    from groundup.evaluate.lm import read_documents

    return read_documents(path), None


def _task(path):
    from groundup.evaluate.tasks import load_task

    return [item.query for item in load_task(path).items], None


def _corpus(path):
    from groundup.corpus import ReadStats, load_documents

    stats = ReadStats()
    return [d.text for d in load_documents(str(path), stats=stats)], sum(stats.skipped.values())


def _pipeline(path):
    from groundup.run import read_metrics

    return [r["text"] for r in read_metrics(path)], None


def _report_samples(path):
    from groundup.report.collect import _samples

    problems = []
    return [r["completion"] for r in _samples(path, problems)], len(problems)


def _report_metrics(path):
    from groundup.report.metrics import load_metrics

    m = load_metrics(path)
    return m.lines, (m.bad_lines, m.bad_examples[0].split(": ", 1)[1])


@pytest.mark.parametrize("reader, expected", [
    (_finetune, (["a", "b"], (3, 1, True))),
    (_documents, (["a", "b"], None)),
    (_task, (["a", "b"], None)),
    (_corpus, (["a", "b"], 1)),
    (_pipeline, (["a", "b"], None)),
    (_report_samples, (["a", "b"], 1)),
    (_report_metrics, (2, (1, "not JSON (Unterminated string starting at) (an unfinished last line)"))),
])
def test_every_jsonl_reader_survives_an_unfinished_last_line(tmp_path, reader, expected):
    records = [{"text": t} if reader is _task else {"text": t, "prompt": "p", "completion": t, "step": i, "loss": 1.0}
               for i, t in enumerate("ab")]
    assert reader(_torn(tmp_path / "x.jsonl", records)) == expected
