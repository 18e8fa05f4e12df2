"""The tokenizer stage: its directory, stats.json, config handling and errors; the metrics functions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from groundup import config as configlib
from groundup.artifacts import TOKENIZER_FILES, read_manifest
from groundup.corpus import Document
from groundup.tokenizer import GPT4_PATTERN
from groundup.tokenizer import run as tokenizer_stage
from groundup.tokenizer.metrics import compression, digit_check, round_trips, script_check, whitespace_cases


def test_output_dir_holds_exactly_the_contract_files(tokenizer_dir):
    assert {p.name for p in tokenizer_dir.iterdir()} == TOKENIZER_FILES
    manifest = read_manifest(tokenizer_dir)
    assert manifest["stage"] == "tokenizer"
    saved = yaml.safe_load((tokenizer_dir / "config.yaml").read_text())
    assert saved["vocab_size"] == 512 and manifest["config"] == saved
    # No stray temporary dirs beside it.
    assert [p.name for p in tokenizer_dir.parent.iterdir() if p.name.startswith(".")] == []


def test_stats_are_complete_and_sane(tokenizer_dir, held_out_texts):
    stats = json.loads((tokenizer_dir / "stats.json").read_text())
    assert stats["vocab_size"] == 512
    held = stats["held_out"]
    assert held["documents"] == len(held_out_texts)
    assert held["bytes"] == sum(len(t.encode("utf-8")) for t in held_out_texts)
    assert 1.5 < held["bytes_per_token"] < 8  # a 512-token BPE compresses code, but not beyond reason
    assert 0.5 < held["tokens_per_word"] < 20
    assert 0 < held["continued_words"]["continued_share"] <= 1
    assert held["round_trip_exact"] and held["round_trip_documents"] == len(held_out_texts)
    assert stats["whitespace"]["exact"] and stats["whitespace"]["cases"] == len(whitespace_cases())
    assert stats["digits"]["exact"] and stats["digits"]["max_digits_per_token"] <= 3
    assert stats["digits"]["split"] in ("individual", "grouped<=3")
    assert all(len(run) <= 3 for run in stats["digits"]["example"]["1234567890"])
    assert stats["cjk"]["characters"] == 0x9FFF - 0x4E00 + 1 and stats["cjk"]["round_trip_share"] == 1.0
    assert stats["thai"]["characters"] == 87 and stats["thai"]["round_trip_share"] == 1.0
    assert stats["encoder"] == {"backend": "tiktoken", "identical_to_tokenizers": True}
    assert stats["train"]["documents"] > 0 and stats["train"]["bytes"] > 100_000


def train_in_a_fresh_process(data, out, settings: dict, hash_seed: str) -> bytes:
    """``groundup tokenizer`` as its own process, with its own string hashing; the tokenizer.json bytes."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run([sys.executable, "-m", "groundup.cli", "tokenizer", "--data", str(data), "--out", str(out),
                           "--vocab-size", str(settings["vocab_size"]), "--val-fraction", str(settings["val_fraction"])],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    return (out / "tokenizer.json").read_bytes()


def test_two_processes_write_the_same_tokenizer_json(corpus_file, tokenizer_dir, tmp_path):
    """The same data and settings give byte-identical files: in two processes with different hash seeds, with
    the data in another folder (the held-out split must not depend on where the data lies), and in this one."""
    settings = yaml.safe_load((tokenizer_dir / "config.yaml").read_text())  # the fixture's
    copy = tmp_path / "elsewhere" / "deeper" / corpus_file.name
    copy.parent.mkdir(parents=True)
    shutil.copy(corpus_file, copy)
    first = train_in_a_fresh_process(corpus_file, tmp_path / "a", settings, hash_seed="1")
    second = train_in_a_fresh_process(copy, tmp_path / "b", settings, hash_seed="2")
    assert first == second
    assert first == (tokenizer_dir / "tokenizer.json").read_bytes()  # the fixture's, trained in this process
    assert json.loads(first)["model"]["vocab"].get("<|endoftext|>") == 0


def test_held_out_documents_are_not_trained_on_and_max_bytes_caps():
    docs = [Document(f"d{i}", "é" * 10) for i in range(200)]  # 20 bytes each, 2-byte characters
    held_out: list[str] = []
    counts = {"documents": 0, "bytes": 0}
    texts = list(tokenizer_stage.training_texts(iter(docs), val_fraction=0.3, max_bytes=105, held_out=held_out,
                                                counts=counts))
    assert 30 < len(held_out) < 90  # about 30% of 200, every one of them read despite the cap
    assert counts["bytes"] == 104 and "".join(texts) == "é" * 52  # the cut does not split a character
    assert len(texts) + len(held_out) < 200


def test_empty_corpus_is_a_clear_error(tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    (data / "shard.jsonl").write_text("")
    cfg = tokenizer_stage.Config(data=str(data), out=tmp_path / "tok", vocab_size=300)
    with pytest.raises(ValueError, match="no text to train") as info:
        tokenizer_stage.run(cfg)
    assert str(data) in str(info.value)
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize(("changes", "message"), [
    ({"vocab_size": 200}, "vocab_size must exceed"),
    ({"pattern": "(unclosed"}, "pattern"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"max_bytes": 0}, "max_bytes"),
])
def test_bad_settings_are_refused_before_reading(tmp_path, changes, message):
    cfg = tokenizer_stage.Config(data=str(tmp_path / "does-not-exist"), out=tmp_path / "tok", **changes)
    with pytest.raises(ValueError, match=message):
        tokenizer_stage.run(cfg)


def test_named_and_custom_patterns():
    assert tokenizer_stage.check_config(tokenizer_stage.Config()) == GPT4_PATTERN
    custom = r"\p{L}+|\p{N}|\s+|[^\s\p{L}\p{N}]+"
    assert tokenizer_stage.check_config(tokenizer_stage.Config(pattern=custom)) == custom


def test_command_line_flags_parse_into_the_config():
    parser = configlib.build_parser(tokenizer_stage.Config)
    flags = configlib.normalize_flags(["--vocab-size", "1024", "--max_bytes", "1000", "--data", "x/"])
    cfg = parser.parse_args(flags)
    assert (cfg.vocab_size, cfg.max_bytes, cfg.data, cfg.pattern) == (1024, 1000, "x/", "gpt4")
    assert "Vocabulary size" in parser.format_help()  # attribute docstrings become --help


def test_metrics_functions_on_the_shared_tokenizer(tokenizer):
    numbers = compression(tokenizer, ["hello world", "a b c"])
    assert numbers["words"] == 5 and numbers["bytes"] == 16
    assert numbers["bytes_per_token"] == pytest.approx(16 / numbers["tokens"])
    assert round_trips(tokenizer, ["x", "y\n", "中"]) == 3
    digits = digit_check(tokenizer)
    assert digits["round_trip"] == digits["cases"]
    thai = script_check(tokenizer, 0x0E00, 0x0E7F)
    assert thai["tokens_per_character"] >= 1 and 0 <= thai["single_token_share"] <= 1


def test_held_out_text_kept_for_stats_is_bounded():
    docs = [Document(f"d{i}", "x" * 100) for i in range(400)]
    held_out: list[str] = []
    counts = {"documents": 0, "bytes": 0}
    list(tokenizer_stage.training_texts(iter(docs), val_fraction=0.5, max_bytes=None, held_out=held_out,
                                        counts=counts, held_out_limit=1000))
    assert len(held_out) == 10 and counts["documents"] > 100
