"""Deduplication: exact and MinHash LSH near duplicates, clustering, out-of-core merge, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("rensa")
pytest.importorskip("xxhash")

from groundup.curate import dedup  # noqa: E402
from groundup.curate.dedup import (  # noqa: E402
    DedupConfig,
    band_hashes,
    connected_components,
    deduplicate,
    exact_hashes,
    minhash_signatures,
    normalize_text,
    shingle_hashes,
    words_of,
)

VOCABULARY = [f"w{i:04d}" for i in range(3000)]


def random_doc(rng: np.random.Generator, words: int = 200) -> str:
    return " ".join(rng.choice(VOCABULARY, size=words))


def edit(rng: np.random.Generator, text: str, fraction: float) -> str:
    """Replace ``fraction`` of the words by words outside the vocabulary."""
    words = text.split()
    for i in rng.choice(len(words), size=int(round(fraction * len(words))), replace=False):
        words[i] = f"edit{rng.integers(1 << 30)}"
    return " ".join(words)


def shingle_set(text: str, n: int = 5) -> set:
    words = words_of(text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y)


def write_shard(path: Path, texts: list[str | None], **columns) -> Path:
    pq.write_table(pa.table({"text": pa.array(texts, pa.string()), **columns}), path)
    return path


def comparable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if "seconds" not in k and k not in ("documents_per_second", "workers")}


@pytest.fixture
def planted(tmp_path: Path) -> tuple[list[Path], dict[str, set[int]]]:
    """Three shards: unrelated documents, near copies (1% of words edited, Jaccard ≈ 0.9) across and within shards."""
    rng = np.random.default_rng(7)
    originals = [random_doc(rng) for _ in range(40)]
    shard_texts: list[list[str]] = [originals[:20], originals[20:], []]
    expected: dict[str, set[int]] = {"a.parquet": set(), "b.parquet": set(), "c.parquet": set()}
    names = list(expected)
    for k in range(0, 40, 4):  # a copy of every 4th original, in a later shard or later in the same one
        target = 2 if k % 8 == 0 else k // 20
        shard_texts[target].append(edit(rng, originals[k], 0.01))
        expected[names[target]].add(len(shard_texts[target]) - 1)
    shard_texts[2] += [random_doc(rng) for _ in range(10)]
    shards = [write_shard(tmp_path / name, texts) for name, texts in zip(names, shard_texts, strict=True)]
    return shards, expected


# --- pure functions ---------------------------------------------------------------------------


def test_normalize_text_ignores_case_and_whitespace():
    assert normalize_text("  Hello,\n\tWORLD  again ") == "hello, world again"
    a, b, c = exact_hashes(["Hello  World\n", "hello world", "hello, world"])
    assert a == b != c


def test_exact_hash_is_the_same_on_the_signature_path():
    texts = ["Hello  World\n", "ÉCOLE  été", "", "one two three four five six"]
    _, _, exact = dedup._hash_words(texts, exact=True)
    assert np.array_equal(exact, exact_hashes(texts))


def test_shingles_of_short_and_empty_documents():
    hashes, offsets = shingle_hashes(["a b c d e f g", "", "a b", "A, b!", "a b c d e f g"], 5)
    counts = np.diff(offsets)
    assert counts.tolist() == [3, 0, 1, 1, 3]  # 7 words → 3 five-grams; short → one shingle; empty → none
    assert hashes[3] == hashes[4]  # punctuation and case do not count
    assert np.array_equal(hashes[0:3], hashes[5:8])
    assert len(set(hashes[0:3].tolist())) == 3
    assert words_of("Don't STOP—now") == [b"don", b"t", b"stop\xe2\x80\x94now"]


def test_signature_estimates_jaccard():
    cfg = DedupConfig()
    rng = np.random.default_rng(0)
    errors = []
    for fraction in (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4):
        for _ in range(4):
            a = random_doc(rng, 300)
            b = edit(rng, a, fraction)
            signatures = minhash_signatures([a, b], cfg)
            assert signatures.shape == (2, 112) and signatures.dtype == np.uint32
            estimate = float((signatures[0] == signatures[1]).mean())
            errors.append(abs(estimate - jaccard(a, b)))
    # 112 permutations: the standard error is at most 0.047.
    assert np.mean(errors) < 0.04 and max(errors) < 0.16, errors


def test_signatures_depend_on_seed_and_not_on_batch():
    rng = np.random.default_rng(1)
    texts = [random_doc(rng, 50) for _ in range(6)] + [""]
    together = minhash_signatures(texts, DedupConfig())
    alone = np.vstack([minhash_signatures([t], DedupConfig()) for t in texts])
    assert np.array_equal(together, alone)
    assert (together[-1] == dedup.EMPTY_SIGNATURE).all()
    assert not np.array_equal(together[:1], minhash_signatures(texts[:1], DedupConfig(seed=2)))


def test_band_hashes_change_only_with_their_band():
    cfg = DedupConfig(bands=4, rows=3)
    signatures = np.random.default_rng(0).integers(0, 1 << 32, size=(2, 12), dtype=np.uint64).astype(np.uint32)
    signatures[1] = signatures[0]
    signatures[1, 4] += 1  # band 1
    keys = band_hashes(signatures, cfg)
    assert keys.shape == (2, 4) and keys.dtype == np.uint64
    assert (keys[0] == keys[1]).tolist() == [True, False, True, True]
    with pytest.raises(ValueError, match="shape"):
        band_hashes(signatures[:, :10], cfg)


def python_union_find(edges: list[tuple[int, int]]) -> dict[int, int]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def test_connected_components_match_union_find():
    rng = np.random.default_rng(3)
    left = rng.integers(0, 400, size=300)
    right = rng.integers(0, 400, size=300)
    chain = np.arange(1000, 3000)  # a long path, the slow case for label propagation
    left = np.concatenate([left, chain[1:][::-1]])
    right = np.concatenate([right, chain[:-1][::-1]])
    nodes, roots = connected_components(left, right)
    expected = python_union_find(list(zip(left.tolist(), right.tolist(), strict=True)))
    assert dict(zip(nodes.tolist(), roots.tolist(), strict=True)) == expected
    empty_nodes, empty_roots = connected_components(np.array([], np.uint64), np.array([], np.uint64))
    assert len(empty_nodes) == len(empty_roots) == 0


# --- deduplicate ------------------------------------------------------------------------------


def test_exact_duplicates_keep_the_first(tmp_path: Path):
    a = write_shard(tmp_path / "a.parquet", ["Hello  World", "something else entirely", "HELLO world\n"])
    b = write_shard(tmp_path / "b.parquet", [" hello\tworld ", "Something else, entirely!", None, ""])
    result = deduplicate([a, b], tmp_path / "work", DedupConfig(near=False))
    # Punctuation counts for exact duplicates; the null text is read as empty and equals "".
    assert result.drop == {"a.parquet": {2}, "b.parquet": {0, 3}}
    assert result.stats["documents"] == 7
    assert result.stats["exact_duplicates"] == 3 and result.stats["near_duplicates"] == 0
    assert result.stats["clusters"] == 2 and result.stats["largest_cluster"] == 3
    # Near deduplication also removes the copy that differs in punctuation only, counted as near.
    both = deduplicate([a, b], tmp_path / "work", DedupConfig())
    assert both.drop == {"a.parquet": {2}, "b.parquet": {0, 1, 3}}
    assert both.stats["exact_duplicates"] == 3 and both.stats["near_duplicates"] == 1
    assert not (tmp_path / "work" / "dedup-runs").exists()


def test_planted_near_duplicates_are_clustered(planted, tmp_path: Path):
    shards, expected = planted
    result = deduplicate(shards, tmp_path / "work", DedupConfig(exact=False))
    assert result.drop == expected
    assert result.stats["near_duplicates"] == 10 and result.stats["clusters"] == 10
    assert result.stats["largest_cluster"] == 2
    nothing = deduplicate(shards, tmp_path / "work", DedupConfig(exact=False, near=False))
    assert nothing.drop == {name: set() for name in expected}


def test_same_result_for_any_number_of_workers_and_batch_size(planted, tmp_path: Path):
    shards, expected = planted
    one = deduplicate(shards, tmp_path / "w1", DedupConfig(), workers=1)
    two = deduplicate(shards, tmp_path / "w2", DedupConfig(), workers=2)
    small = deduplicate(shards, tmp_path / "w3", DedupConfig(batch_docs=7), workers=2)
    assert one.drop == two.drop == small.drop == expected
    assert comparable(one.stats) == comparable(two.stats)


def test_merge_in_many_buckets_gives_the_same_result(planted, tmp_path: Path, monkeypatch):
    shards, expected = planted
    monkeypatch.setattr(dedup, "_MERGE_BYTES_PER_KEY", 1 << 17)  # 8 keys per megabyte: many buckets
    result = deduplicate(shards, tmp_path / "work", DedupConfig(merge_memory_mb=1))
    assert result.stats["merge_buckets"] > 15 * 5
    assert result.drop == expected


def test_survivor_is_first_in_shard_order(tmp_path: Path):
    rng = np.random.default_rng(11)
    text = random_doc(rng)
    copies = [edit(rng, text, 0.01) for _ in range(3)]
    a = write_shard(tmp_path / "a.parquet", [random_doc(rng), copies[0], copies[1]])
    b = write_shard(tmp_path / "b.parquet", [text, copies[2]])
    forward = deduplicate([a, b], tmp_path / "work", DedupConfig())
    assert forward.drop == {"a.parquet": {2}, "b.parquet": {0, 1}}
    assert forward.stats["largest_cluster"] == 4
    backward = deduplicate([b, a], tmp_path / "work", DedupConfig())
    assert backward.drop == {"b.parquet": {1}, "a.parquet": {1, 2}}


def test_runs_are_reused_on_a_rerun(planted, tmp_path: Path):
    shards, expected = planted
    cfg = DedupConfig(keep_work_files=True)
    first = deduplicate(shards, tmp_path / "work", cfg)
    again = deduplicate(shards, tmp_path / "work", cfg)
    assert first.stats["shards_reused"] == 0 and again.stats["shards_reused"] == 3
    assert again.drop == first.drop == expected
    changed = deduplicate(shards, tmp_path / "work", DedupConfig(keep_work_files=True, seed=5))
    assert changed.stats["shards_reused"] == 0 and changed.drop == expected


@pytest.mark.parametrize(("field", "value"), [
    ("ngram", 0), ("bands", 0), ("rows", -1), ("rows", 2.5), ("seed", -1), ("batch_docs", 0),
    ("merge_memory_mb", 0), ("exact", "yes"), ("near", 1), ("bands", True),
])
def test_bad_config_names_the_field(field: str, value):
    with pytest.raises(ValueError, match=f"DedupConfig.{field}"):
        DedupConfig(**{field: value})
    with pytest.raises(ValueError, match="4096"):
        DedupConfig(bands=100, rows=64)


def test_bad_shards_name_the_file(tmp_path: Path):
    good = write_shard(tmp_path / "good.parquet", ["some text here"])
    empty_file = tmp_path / "empty.parquet"
    empty_file.write_bytes(b"")
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"content": ["a"]}), no_text)
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    for bad, message in ((empty_file, "not a readable Parquet"), (no_text, "no 'text' column"),
                         (numbers, "not strings"), (tmp_path / "missing.parquet", "not found")):
        with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
            deduplicate([good, bad], tmp_path / "work", DedupConfig())
        assert str(bad) in str(error.value)
    with pytest.raises(ValueError, match="share the file name"):
        deduplicate([good, good], tmp_path / "work", DedupConfig())
    with pytest.raises(ValueError, match="workers"):
        deduplicate([good], tmp_path / "work", DedupConfig(), workers=0)


def test_shard_with_no_rows_is_fine(tmp_path: Path):
    empty = write_shard(tmp_path / "empty.parquet", [])
    one = write_shard(tmp_path / "one.parquet", ["a b c", "a b c"])
    result = deduplicate([empty, one], tmp_path / "work", DedupConfig(), workers=2)
    assert result.drop == {"empty.parquet": set(), "one.parquet": {1}}
    assert deduplicate([], tmp_path / "work", DedupConfig()).stats["documents"] == 0
