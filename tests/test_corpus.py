"""The embedded corpus and the shard readers."""

from __future__ import annotations

import gzip
import itertools
import json

import pytest

from groundup.corpus import ReadStats, load_documents, split_documents, split_of, stdlib_documents


def test_stdlib_corpus_is_deterministic_and_whole():
    first = [(d.id, len(d.text)) for d in itertools.islice(stdlib_documents(), 50)]
    again = [(d.id, len(d.text)) for d in itertools.islice(stdlib_documents(), 50)]
    assert first == again
    ids = [d.id for d in stdlib_documents()]
    assert len(ids) == len(set(ids)) > 300
    assert any(i.startswith("stdlib:pydoc_data/topics/") for i in ids)
    assert not any("/test/" in i or "/tests/" in i or i.startswith("stdlib:test/") for i in ids)
    assert any(i == "stdlib:json/decoder.py" for i in ids)


def test_held_out_split_is_by_file_and_stable():
    train, val = split_documents(val_fraction=0.05)
    train_ids, val_ids = {d.id for d in train}, {d.id for d in val}
    assert not train_ids & val_ids
    share = len(val) / (len(train) + len(val))
    assert 0.02 < share < 0.09
    assert all(split_of(i, 0.05) == "val" for i in val_ids)
    with pytest.raises(ValueError, match="val_fraction"):
        split_of("x", 1.0)


def test_bad_records_are_skipped_and_counted(tmp_path):
    path = tmp_path / "shard.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(json.dumps({"text": "good one"}).encode() + b"\n")
        f.write(b"{not json\n")
        f.write(b'{"text": "bad \xff utf-8"}\n')
        f.write(json.dumps({"body": "no text field"}).encode() + b"\n")
        f.write(json.dumps({"text": "good two"}).encode() + b"\n")
    stats = ReadStats()
    docs = list(load_documents(path, stats=stats))
    assert [d.text for d in docs] == ["good one", "good two"]
    assert sum(stats.skipped.values()) == 3
    assert all(str(path) in e for e in stats.examples)


def test_folders_of_text_and_missing_paths(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.md").write_text("beta")
    assert sorted(d.text for d in load_documents(tmp_path)) == ["alpha", "beta"]
    with pytest.raises(FileNotFoundError, match="data not found"):
        list(load_documents(tmp_path / "missing"))


def test_the_held_out_split_does_not_depend_on_where_the_data_lies(tmp_path):
    """Ids name a shard relative to the path given: the same folder elsewhere, or its file given alone, splits
    the same way (pytest's temporary folders change every session; the split must not)."""
    for place in ("a", "b/c"):
        (tmp_path / place / "sub").mkdir(parents=True)
        (tmp_path / place / "sub" / "shard.jsonl").write_text("".join(f'{{"text": "doc {i}"}}\n' for i in range(50)))
        (tmp_path / place / "notes.txt").write_text("a text file")
    ids = [[d.id for d in load_documents(tmp_path / place)] for place in ("a", "b/c")]
    assert ids[0] == ids[1] and ids[0][:2] == ["notes.txt", "sub/shard.jsonl:1"]
    alone = [d.id for d in load_documents(tmp_path / "b/c/sub/shard.jsonl")]
    assert alone == [f"shard.jsonl:{i}" for i in range(1, 51)]
    assert split_documents(tmp_path / "a", val_fraction=0.3) == split_documents(tmp_path / "b/c", val_fraction=0.3)
