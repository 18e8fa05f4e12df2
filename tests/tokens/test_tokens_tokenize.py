"""The tokenize stage: its file set, meta.json, EOS layout, dtype choice, determinism and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from groundup.artifacts import TOKENS_FILES, read_manifest
from groundup.corpus import Document, split_documents
from groundup.tokenizer import Tokenizer
from groundup.tokens import tokenize as tokenize_stage
from groundup.tokens.datasets import load_tokens

VAL_FRACTION = 0.2


def documents_by_split(corpus_file) -> dict[str, list[str]]:
    train, val = split_documents(str(corpus_file), val_fraction=VAL_FRACTION)
    return {"train": [d.text for d in train if d.text], "val": [d.text for d in val if d.text]}


def test_output_dir_holds_exactly_the_contract_files(tokens_dir):
    assert {p.name for p in tokens_dir.iterdir()} == TOKENS_FILES
    assert read_manifest(tokens_dir)["stage"] == "tokenize"


def test_meta_counts_match_files_and_text(tokens_dir, tokenizer_dir, corpus_file):
    meta = json.loads((tokens_dir / "meta.json").read_text())
    tokenizer = Tokenizer.from_file(tokenizer_dir)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 300 and meta["eos_id"] == tokenizer.eos_id == 0
    docs = documents_by_split(corpus_file)
    for split in ("train", "val"):
        assert (tokens_dir / f"{split}.bin").stat().st_size == 2 * meta["tokens"][split]
        assert meta["documents"][split] == len(docs[split]) > 0
        assert meta["bytes"][split] == sum(len(t.encode("utf-8")) for t in docs[split])
    assert meta["encoder"] == "tiktoken" and len(meta["tokenizer_sha256"]) == 64
    assert meta["tokenizer"].endswith("tokenizer.json")


def test_documents_are_separated_by_eos_in_order(tokens_dir, tokenizer_dir, corpus_file):
    tokenizer = Tokenizer.from_file(tokenizer_dir)
    docs = documents_by_split(corpus_file)
    for split in ("train", "val"):
        tokens = np.asarray(load_tokens(tokens_dir, split))
        assert tokens[-1] == tokenizer.eos_id
        ends = np.flatnonzero(tokens == tokenizer.eos_id)
        assert len(ends) == len(docs[split])  # no EOS inside a document, even where its text says <|endoftext|>
        pieces = np.split(tokens, ends + 1)[:-1]
        assert [tokenizer.decode(p[:-1].tolist()) for p in pieces] == docs[split]
        assert [p[:-1].tolist() for p in pieces] == tokenizer.encode_batch(docs[split])


def test_output_is_the_same_for_any_number_of_workers(tokens_dir, tokenize_config, tmp_path):
    out = tokenize_stage.run(tokenize_config(tmp_path / "two", workers=2, chunk_bytes=3000))
    for split in ("train.bin", "val.bin"):
        assert (out / split).read_bytes() == (tokens_dir / split).read_bytes()
    one, two = (json.loads((d / "meta.json").read_text()) for d in (tokens_dir, out))
    assert (one["tokens"], one["bytes"], one["documents"]) == (two["tokens"], two["bytes"], two["documents"])


def test_workers_start_from_a_fork_server_while_other_threads_run(tokens_dir, tokenize_config, tmp_path):
    """A process running other threads (a server, an engine, a notebook's) does not fork its workers: a child
    forked while a thread holds a lock can wait on it forever. The fork server's workers give the same bytes."""
    import threading

    from groundup.processes import pool_context

    assert pool_context().get_start_method() == ("fork" if threading.active_count() == 1 else "forkserver")
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)
    busy.start()
    try:
        assert pool_context().get_start_method() == "forkserver"
        assert pool_context(fork=False).get_start_method() == "forkserver"
        out = tokenize_stage.run(tokenize_config(tmp_path / "two", workers=2, chunk_bytes=3000))
    finally:
        stop.set()
        busy.join()
    for split in ("train.bin", "val.bin"):
        assert (out / split).read_bytes() == (tokens_dir / split).read_bytes()


def test_token_dtype_choice():
    assert tokenize_stage.token_dtype(300) == np.uint16
    assert tokenize_stage.token_dtype(65536) == np.uint16  # ids 0..65535 fit
    assert tokenize_stage.token_dtype(65537) == np.uint32
    assert tokenize_stage.token_dtype(200_000) == np.uint32
    with pytest.raises(ValueError):
        tokenize_stage.token_dtype(0)


def test_uint32_files_read_back_with_the_same_ids(tokens_dir, tokenize_config, tmp_path, monkeypatch):
    monkeypatch.setattr(tokenize_stage, "token_dtype", lambda vocab_size: np.dtype(np.uint32))
    out = tokenize_stage.run(tokenize_config(tmp_path / "wide"))
    assert json.loads((out / "meta.json").read_text())["dtype"] == "uint32"
    wide, narrow = load_tokens(out, "train"), load_tokens(tokens_dir, "train")
    assert wide.dtype == np.uint32 and (out / "train.bin").stat().st_size == 4 * len(wide)
    assert np.array_equal(wide, narrow)


def test_chunks_keep_order_and_split_and_drop_empty_texts():
    docs = [Document(f"doc{i}", "x" * (i % 3)) for i in range(30)]
    chunks = list(tokenize_stage.chunk_documents(docs, val_fraction=0.3, chunk_bytes=5))
    flat = [text for chunk in chunks for _, text in chunk]
    assert flat == [d.text for d in docs if d.text]
    assert all(sum(len(t) for _, t in chunk) >= 5 for chunk in chunks[:-1])
    assert {split for chunk in chunks for split, _ in chunk} == {"train", "val"}


def test_missing_tokenizer_is_a_clear_error(corpus_file, tmp_path):
    cfg = tokenize_stage.Config(data=str(corpus_file), tokenizer=tmp_path / "no-tokenizer", out=tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="groundup tokenizer"):
        tokenize_stage.run(cfg)


def test_empty_data_is_a_clear_error(tokenizer_dir, tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    (data / "shard.jsonl").write_text("\n")
    cfg = tokenize_stage.Config(data=str(data), tokenizer=tokenizer_dir, out=tmp_path / "t", workers=1)
    with pytest.raises(ValueError, match="no text to tokenize") as info:
        tokenize_stage.run(cfg)
    assert str(data) in str(info.value)
    assert not (tmp_path / "t").exists()
