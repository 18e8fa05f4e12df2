"""Deduplication: exact (normalized-text hash) and near-duplicate (MinHash LSH), out of core.

:func:`deduplicate` takes Parquet shards with a ``text`` column and returns, per shard, the rows to
drop. It works in three phases, so memory stays bounded by a chunk of documents and a bucket of
hashes, not by the corpus:

1. **Signatures**, per shard (shards in parallel processes), ``batch_docs`` rows at a time. Each
   document's words (lower case, ASCII punctuation as spaces) are hashed with xxh3, combined into
   word ``ngram`` shingles with numpy, and rensa computes ``bands × rows`` MinHash values per
   document in Rust from the flat shingle buffer. Each band of ``rows`` values is hashed to one
   64-bit key (:func:`band_hashes`); the exact key is a hash of the normalized text
   (:func:`normalize_text`). A chunk is written to ``work_dir`` as one *run*: for every band, the
   keys sorted, with the row each came from.
2. **Merge**, band by band: the 64-bit key space of a band is cut into as many buckets as needed to
   stay within ``merge_memory_mb``; each bucket's slices are read from every run (memory-mapped,
   located by binary search), sorted, and documents with equal keys are linked to the first of them.
3. **Clustering**: the links are folded into connected components after every band
   (:func:`connected_components`); in each cluster the first document in (shard, row) order survives
   and every other one is dropped. Memory here grows with the number of duplicates, not documents.

Everything is keyed by (shard index, row), so the clusters are the same whatever the number of
worker processes. With the default 14 bands of 8 rows (FineWeb's setting), two documents whose
shingle sets have Jaccard similarity s share a band with probability 1 - (1 - s^8)^14: 56% at 0.7,
92% at 0.8, 98.8% at 0.85.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from groundup.curate.hashing import GOLDEN, MASK64, fmix64, shingles_from_words
from groundup.processes import pool_context

log = logging.getLogger(__name__)

SIGNATURE_DTYPE = np.uint32
"""rensa's MinHash values are 32-bit."""
EMPTY_SIGNATURE = np.iinfo(SIGNATURE_DTYPE).max
"""The signature value of a document with no words (every hash is this); such documents take no part
in near-duplicate detection (exact deduplication still groups them)."""

# ASCII punctuation and control characters become spaces before words are split; bytes >= 0x80
# (UTF-8 of non-ASCII letters) are kept, so any script splits on its spaces.
_PUNCTUATION = b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
_WORD_TABLE = bytes(32 if (i < 32 or i == 127 or bytes([i]) in _PUNCTUATION) else i for i in range(256))

# Documents hashed at once inside a batch (bounds the Python objects of the hot loop).
_SIGNATURE_CHUNK = 256
# Bytes of merge working memory per key: key, document id, sort order, sorted copies, masks.
_MERGE_BYTES_PER_KEY = 64


@dataclass(kw_only=True)
class DedupConfig:
    """Exact and near-duplicate (MinHash LSH) deduplication."""

    exact: bool = True
    """Drop documents whose normalized text (lower case, whitespace runs as one space) equals an earlier one's."""
    near: bool = True
    """Drop near duplicates found by MinHash LSH over word n-grams."""
    ngram: int = 5
    """Words per shingle (documents with fewer words are one shingle)."""
    bands: int = 14
    """LSH bands: two documents are candidates when all the hashes of one band agree."""
    rows: int = 8
    """MinHash values per band (bands × rows permutations in all; 14 × 8 = 112 is FineWeb's setting)."""
    seed: int = 1
    """Seed of the MinHash permutations; signatures are comparable only under the same seed."""
    batch_docs: int = 10_000
    """Documents read and hashed at a time; each batch is written to disk as one sorted run."""
    merge_memory_mb: int = 256
    """Memory budget of one merge step: each band's key space is split into as many buckets as needed."""
    keep_work_files: bool = False
    """Keep the runs in work_dir after a successful merge (a re-run then skips the signature phase)."""

    def __post_init__(self) -> None:
        for name in ("exact", "near", "keep_work_files"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DedupConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name, low, high in (("ngram", 1, 64), ("bands", 1, 1024), ("rows", 1, 64),
                                ("batch_docs", 1, 1 << 30), ("merge_memory_mb", 1, 1 << 30)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"DedupConfig.{name} must be an integer in [{low}, {high}], got {value!r}")
        if self.bands * self.rows > 4096:
            raise ValueError(f"DedupConfig.bands × rows must be at most 4096 permutations, "
                             f"got {self.bands} × {self.rows} = {self.bands * self.rows}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MASK64:
            raise ValueError(f"DedupConfig.seed must be an integer in [0, 2**64), got {self.seed!r}")

    @property
    def permutations(self) -> int:
        return self.bands * self.rows

    def signature_settings(self) -> dict:
        """The settings that decide a run's content (a run written under others is recomputed)."""
        return {"exact": self.exact, "near": self.near, "ngram": self.ngram, "bands": self.bands,
                "rows": self.rows, "seed": self.seed, "batch_docs": self.batch_docs,
                "rensa": _rensa_version()}


@dataclass
class DedupResult:
    drop: dict[str, set[int]]
    """Shard file name (``Path.name``) → row indices to remove; every shard has an entry."""
    stats: dict = field(default_factory=dict)
    """documents, exact_duplicates, near_duplicates (removed), clusters, largest_cluster, seconds, and more."""


# ---------------------------------------------------------------------------------------------------
# Pure functions: normalization, hashing, signatures, clustering.


def normalize_text(text: str) -> str:
    """The text the exact hash sees: lower case, whitespace runs as one space, no leading or trailing space."""
    return " ".join(text.lower().split())


def exact_hashes(texts: list[str]) -> np.ndarray:
    """64-bit xxh3 of each normalized text, shape (n,) uint64.

    64 bits: among 100 million distinct documents the chance of any false match is about 3e-4.
    """
    import xxhash

    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(normalize_text(t).encode("utf-8", "surrogatepass")) for t in texts),
                       dtype=np.uint64, count=len(texts))


def words_of(text: str) -> list[bytes]:
    """The words shingles are made of: lower case, ASCII punctuation and control characters as spaces."""
    return text.lower().encode("utf-8", "surrogatepass").translate(_WORD_TABLE).split()


def shingle_hashes(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word n-gram of every text, flat, and row offsets into them.

    Returns ``(hashes, offsets)``: uint64 arrays, document i's shingles are
    ``hashes[offsets[i]:offsets[i + 1]]`` (in text order, repeats kept: MinHash takes minima, so a
    repeated shingle counts once). A document with 1 to ngram - 1 words is one shingle; one with no
    words has none. Words (:func:`words_of`) are hashed one by one with xxh3 (a C call each), and the
    n-gram hashes are combined from word hashes with numpy: ``fmix64(sum_j word[i + j] * odd_j)``.
    """
    word_hash, counts, _ = _hash_words(texts, exact=False)
    return shingles_from_words(word_hash, counts, ngram)


def _hash_words(texts: list[str], *, exact: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Word hashes (flat), words per document and, with ``exact``, the exact hashes, in one pass.

    One loop lower-cases each text once for both keys; it is the hot loop of deduplication.
    """
    import xxhash

    digest = xxhash.xxh3_64_intdigest
    table = _WORD_TABLE
    words: list[bytes] = []
    counts: list[int] = []
    extend, count = words.extend, counts.append
    exact_keys: list[int] = []
    add_exact = exact_keys.append
    for text in texts:
        lower = text.lower()
        if exact:  # = normalize_text(text), sharing the lower-casing
            add_exact(digest(" ".join(lower.split()).encode("utf-8", "surrogatepass")))
        doc_words = lower.encode("utf-8", "surrogatepass").translate(table).split()
        extend(doc_words)
        count(len(doc_words))
    word_hash = np.fromiter(map(digest, words), dtype=np.uint64, count=len(words))
    exact_hash = np.array(exact_keys, dtype=np.uint64) if exact else None
    return word_hash, np.array(counts, dtype=np.int64), exact_hash


def _rensa_version() -> int:
    import rensa

    return int(rensa.RMinHash.ALGORITHM_VERSION)


def _signatures(texts: list[str], cfg: DedupConfig, *, exact: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Signatures (n, bands*rows) uint32, whether each document has words (n,) bool, exact hashes or None."""
    import rensa

    signatures = np.empty((len(texts), cfg.permutations), dtype=SIGNATURE_DTYPE)
    has_words = np.empty(len(texts), dtype=bool)
    exact_hash = np.empty(len(texts), dtype=np.uint64) if exact else None
    # A few hundred documents at a time: the word list (a bytes object per word) and rensa's rows (a
    # Python int per value) would otherwise take ~200 MB for 10,000 documents of 3.5 KB.
    for lo in range(0, len(texts), _SIGNATURE_CHUNK):
        hi = min(lo + _SIGNATURE_CHUNK, len(texts))
        word_hash, counts, chunk_exact = _hash_words(texts[lo:hi], exact=exact)
        hashes, offsets = shingles_from_words(word_hash, counts, cfg.ngram)
        # rensa computes all permutations of every row in Rust from one flat buffer: no Python per document.
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, cfg.permutations, cfg.seed)
        signatures[lo:hi] = np.array(matrix.to_rows(), dtype=SIGNATURE_DTYPE).reshape(hi - lo, cfg.permutations)
        has_words[lo:hi] = counts > 0
        if exact_hash is not None:
            exact_hash[lo:hi] = chunk_exact
    signatures[~has_words] = EMPTY_SIGNATURE
    return signatures, has_words, exact_hash


def minhash_signatures(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    """MinHash signatures of the word ``cfg.ngram`` shingles, shape (n, bands*rows) uint32.

    The share of equal columns between two rows estimates the Jaccard similarity of the two shingle
    sets. A document with no words gets :data:`EMPTY_SIGNATURE` everywhere.
    """
    return _signatures(texts, cfg)[0]


def band_hashes(signatures: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """One 64-bit key per band of ``cfg.rows`` MinHash values, shape (n, bands) uint64.

    Equal bands give equal keys; different bands collide with probability about 2**-64.
    """
    n = signatures.shape[0]
    if signatures.shape != (n, cfg.permutations):
        raise ValueError(f"signatures have shape {signatures.shape}, expected (n, {cfg.permutations}) "
                         f"for {cfg.bands} bands × {cfg.rows} rows")
    values = signatures.reshape(n, cfg.bands, cfg.rows).astype(np.uint64)
    key = np.full((n, cfg.bands), np.uint64(cfg.rows), dtype=np.uint64)
    for r in range(cfg.rows):
        key ^= values[:, :, r] + np.uint64(((r + 1) * int(GOLDEN)) & MASK64)
        fmix64(key)
    return key


def connected_components(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of the graph with edges ``left[i] — right[i]`` (union-find, vectorized).

    Returns ``(nodes, roots)``: every id that appears in an edge, sorted, and the smallest id of its
    cluster. Label propagation with pointer jumping in numpy, so millions of edges take seconds
    rather than a Python loop per edge: each round gives both ends of every edge the smaller of their
    labels, then replaces every label by its label's label until nothing changes. Labels only ever
    point to a smaller id in the same cluster, so at the fixed point each cluster is labelled by its
    smallest id.
    """
    left = np.asarray(left, dtype=np.uint64).ravel()
    right = np.asarray(right, dtype=np.uint64).ravel()
    if left.shape != right.shape:
        raise ValueError(f"edge ends differ in length: {left.shape} and {right.shape}")
    nodes = np.unique(np.concatenate([left, right]))
    a = np.searchsorted(nodes, left)
    b = np.searchsorted(nodes, right)
    label = np.arange(len(nodes), dtype=np.int64)
    while True:
        lower = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, lower)
        np.minimum.at(new, b, lower)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return nodes, nodes[label]
        label = new


# ---------------------------------------------------------------------------------------------------
# Phase 1: signatures per shard, written as sorted runs.


@dataclass(frozen=True)
class _Shard:
    index: int
    path: Path
    rows: int


def _check_shard(index: int, path: Path) -> _Shard:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard not found")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise ValueError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    schema = parquet.schema_arrow
    if "text" not in schema.names:
        raise ValueError(f"{path}: no 'text' column (columns: {', '.join(schema.names) or 'none'})")
    kind = schema.field("text").type
    is_string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_string_view(kind)):
        raise ValueError(f"{path}: the 'text' column holds {kind}, not strings")
    rows = parquet.metadata.num_rows
    if rows >= 1 << 32:
        raise ValueError(f"{path}: {rows} rows; a shard may hold at most 2**32 - 1 documents")
    return _Shard(index=index, path=path, rows=rows)


def _shard_stem(shard: _Shard) -> str:
    return f"shard-{shard.index:06d}"


def _marker(run_dir: Path, shard: _Shard) -> Path:
    return run_dir / f"{_shard_stem(shard)}.done.json"


def _marker_content(shard: _Shard, cfg: DedupConfig) -> dict:
    stat = shard.path.stat()
    return {"shard": str(shard.path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "rows": shard.rows, "settings": cfg.signature_settings()}


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _write_run(stem: Path, slots: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """One run: for each slot (band), keys sorted ascending and the row each came from."""
    keys, rows, offsets = [], [], [0]
    for slot_keys, slot_rows in slots:
        order = np.argsort(slot_keys, kind="stable")
        keys.append(slot_keys[order])
        rows.append(slot_rows[order])
        offsets.append(offsets[-1] + len(order))
    _save_npy(stem.with_name(stem.name + ".keys.npy"), np.concatenate([np.empty(0, np.uint64), *keys]))
    _save_npy(stem.with_name(stem.name + ".rows.npy"), np.concatenate([np.empty(0, np.uint32), *rows]))
    _save_npy(stem.with_name(stem.name + ".offsets.npy"), np.asarray(offsets, dtype=np.int64))


def _sign_shard(task: tuple[_Shard, Path, DedupConfig]) -> dict:
    """Phase 1 for one shard: read ``batch_docs`` rows at a time, write one run per batch."""
    import pyarrow.parquet as pq

    shard, run_dir, cfg = task
    marker = _marker(run_dir, shard)
    expected = _marker_content(shard, cfg)
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except (OSError, ValueError):
            done = None
        if done and {k: done.get(k) for k in expected} == expected and all(
                run_dir.joinpath(f"{stem}.{part}.npy").is_file()
                for stem in done["runs"] for part in ("keys", "rows", "offsets")):
            return {**done, "skipped": True}
    t0 = time.perf_counter()
    runs: list[str] = []
    row = 0
    empty = 0
    text_bytes = 0
    parquet = pq.ParquetFile(shard.path)
    for batch in parquet.iter_batches(batch_size=cfg.batch_docs, columns=["text"], use_threads=False):
        texts = [t if t is not None else "" for t in batch.column(0).to_pylist()]
        text_bytes += batch.column(0).nbytes
        local_rows = np.arange(row, row + len(texts), dtype=np.uint32)
        slots: list[tuple[np.ndarray, np.ndarray]] = []
        if cfg.near:
            signatures, has_words, exact_hash = _signatures(texts, cfg, exact=cfg.exact)
            keys = band_hashes(signatures, cfg)
            empty += int((~has_words).sum())
            slots += [(keys[has_words, b], local_rows[has_words]) for b in range(cfg.bands)]
        else:
            exact_hash = exact_hashes(texts) if cfg.exact else None
        if exact_hash is not None:
            slots.insert(0, (exact_hash, local_rows))
        stem = f"{_shard_stem(shard)}-{len(runs):05d}"
        _write_run(run_dir / stem, slots)
        runs.append(stem)
        row += len(texts)
    if row != shard.rows:
        raise ValueError(f"{shard.path}: read {row} rows, the file's metadata says {shard.rows}")
    done = {**expected, "runs": runs, "documents": row, "without_words": empty, "text_bytes": text_bytes,
            "seconds": time.perf_counter() - t0}
    tmp = marker.with_name(f".{marker.name}.tmp")
    tmp.write_text(json.dumps(done, indent=1))
    os.replace(tmp, marker)
    return {**done, "skipped": False}


def _sign_all(shards: list[_Shard], run_dir: Path, cfg: DedupConfig, workers: int) -> list[dict]:
    from tqdm.auto import tqdm

    tasks = [(shard, run_dir, cfg) for shard in shards]
    # Biggest shards first, so no worker is left with a long one at the end.
    tasks.sort(key=lambda task: -task[0].rows)
    results: dict[int, dict] = {}
    progress = tqdm(total=sum(s.rows for s in shards), unit="doc", desc="dedup signatures", disable=None)
    with progress:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                results[task[0].index] = _sign_shard(task)
                progress.update(task[0].rows)
        else:
            # Not fork: the parent has usually started pyarrow's threads by now (native threads, not counted
            # by pool_context), and a child forked while one of them holds a lock waits on it forever (seen here).
            with pool_context(fork=False, preload=[__name__]).Pool(min(workers, len(tasks))) as pool:
                for task, result in zip(tasks, pool.imap(_sign_shard, tasks), strict=True):
                    results[task[0].index] = result
                    progress.update(task[0].rows)
    return [results[shard.index] for shard in shards]


# ---------------------------------------------------------------------------------------------------
# Phase 2: merge runs band by band, bucket by bucket, into links between equal keys.


class _RunColumn:
    """One array of a run on disk, read by explicit slices.

    Not a memory map: pages of a map that have been read count in the process's resident memory
    until it is closed, which would make the merge's memory grow with the corpus.
    """

    def __init__(self, path: Path):
        mapped = np.load(path, mmap_mode="r")
        self.path, self.dtype, self.start = path, mapped.dtype, mapped.offset
        del mapped

    def read(self, lo: int, hi: int) -> np.ndarray:
        return np.fromfile(self.path, dtype=self.dtype, count=hi - lo, offset=self.start + lo * self.dtype.itemsize)

    def searchsorted(self, lo: int, hi: int, values: np.ndarray) -> np.ndarray:
        # A binary search touches a few pages; the map is closed right after.
        mapped = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.start + lo * self.dtype.itemsize,
                           shape=(hi - lo,))
        found = np.searchsorted(mapped, values)
        del mapped
        return found


@dataclass
class _Run:
    keys: _RunColumn  # uint64, sorted within each slot
    rows: _RunColumn  # uint32
    offsets: np.ndarray  # (slots + 1,) int64
    first_id: int  # global id of the shard's row 0


def _open_runs(run_dir: Path, shards: list[_Shard], signed: list[dict], first_ids: np.ndarray) -> list[_Run]:
    runs = []
    for shard, result in zip(shards, signed, strict=True):
        for stem in result["runs"]:
            offsets = np.load(run_dir / f"{stem}.offsets.npy")
            if offsets[-1] == 0:
                continue  # nothing to merge (and an empty array cannot be memory-mapped)
            runs.append(_Run(keys=_RunColumn(run_dir / f"{stem}.keys.npy"),
                             rows=_RunColumn(run_dir / f"{stem}.rows.npy"),
                             offsets=offsets, first_id=int(first_ids[shard.index])))
    return runs


def _bucket_bounds(buckets: int) -> list[int]:
    return [(k << 64) // buckets for k in range(buckets)] + [1 << 64]


def _links_of_slot(runs: list[_Run], slot: int, budget_bytes: int) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """Links (document → first document with the same key) of one band, read bucket by bucket."""
    entries = sum(int(r.offsets[slot + 1] - r.offsets[slot]) for r in runs)
    buckets = max(1, math.ceil(entries * _MERGE_BYTES_PER_KEY / budget_bytes))
    bounds = _bucket_bounds(buckets)
    # Where each bucket starts in each run's sorted slice.
    inner_bounds = np.array(bounds[1:-1], dtype=np.uint64)
    cuts = []
    for r in runs:
        lo, hi = int(r.offsets[slot]), int(r.offsets[slot + 1])
        inner = r.keys.searchsorted(lo, hi, inner_bounds) if buckets > 1 and hi > lo else [0] * (buckets - 1)
        cuts.append([lo, *(lo + int(c) for c in inner), hi])
    sources, targets = [], []
    for k in range(buckets):
        parts = [(r, cut[k], cut[k + 1]) for r, cut in zip(runs, cuts, strict=True) if cut[k + 1] > cut[k]]
        if not parts:
            continue
        keys = np.concatenate([r.keys.read(a, b) for r, a, b in parts])
        ids = np.concatenate([r.rows.read(a, b).astype(np.uint64) + np.uint64(r.first_id) for r, a, b in parts])
        order = np.argsort(keys, kind="stable")
        keys, ids = keys[order], ids[order]
        del order
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        sizes = np.diff(np.append(starts, len(keys)))
        first = np.repeat(np.minimum.reduceat(ids, starts), sizes)
        linked = ids != first
        sources.append(ids[linked])
        targets.append(first[linked])
    if not sources:
        return (np.empty(0, np.uint64), np.empty(0, np.uint64)), buckets
    return (np.concatenate(sources), np.concatenate(targets)), buckets


# ---------------------------------------------------------------------------------------------------
# The entry point.


def _check_inputs(shards: list[Path], cfg: DedupConfig, workers: int) -> list[_Shard]:
    """Every shard checked (a clear error naming a bad one), in order."""
    if not isinstance(cfg, DedupConfig):
        raise TypeError(f"cfg must be a DedupConfig, got {type(cfg).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    names: dict[str, Path] = {}
    for path in shards:
        if path.name in names:
            raise ValueError(f"two shards share the file name {path.name!r}: {names[path.name]} and {path}")
        names[path.name] = path
    return [_check_shard(i, path) for i, path in enumerate(shards)]


@dataclass
class _Clusters:
    nodes: np.ndarray  # every document linked to another, sorted (global ids)
    roots: np.ndarray  # the first document of its cluster
    exact_linked: np.ndarray  # documents linked by the exact key
    buckets: int  # merge buckets read, over every slot

    @property
    def dropped(self) -> np.ndarray:
        return self.nodes[self.nodes != self.roots]


def _cluster(runs: list[_Run], slots: int, cfg: DedupConfig) -> _Clusters:
    """Phase 2 and 3: each slot's links (slot 0 is the exact key when asked), folded into clusters."""
    budget = cfg.merge_memory_mb << 20
    clusters = _Clusters(np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, np.uint64), 0)
    for slot in range(slots):
        (sources, targets), slot_buckets = _links_of_slot(runs, slot, budget)
        clusters.buckets += slot_buckets
        if cfg.exact and slot == 0:
            clusters.exact_linked = np.unique(sources)
        if len(sources):
            # Fold this band's links into the clusters so far: memory stays one link per duplicate.
            clusters.nodes, clusters.roots = connected_components(np.concatenate([clusters.nodes, sources]),
                                                                  np.concatenate([clusters.roots, targets]))
    return clusters


def _drops_by_shard(shards: list[Path], dropped: np.ndarray, first_ids: np.ndarray) -> dict[str, set[int]]:
    drop: dict[str, set[int]] = {path.name: set() for path in shards}
    shard_of = np.searchsorted(first_ids, dropped.astype(np.int64), side="right") - 1
    drop_rows = dropped.astype(np.int64) - first_ids[shard_of]
    for index in np.unique(shard_of):
        drop[shards[index].name] = set(drop_rows[shard_of == index].tolist())
    return drop


def _remove_runs(run_dir: Path, checked: list[_Shard], signed: list[dict]) -> None:
    for result in signed:
        for stem in result["runs"]:
            for part in ("keys", "rows", "offsets"):
                run_dir.joinpath(f"{stem}.{part}.npy").unlink(missing_ok=True)
    for shard in checked:
        _marker(run_dir, shard).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: other files the caller keeps there
        run_dir.rmdir()


def _stats(documents: int, clusters: _Clusters, signed: list[dict], cfg: DedupConfig, workers: int,
           times: tuple[float, float, float]) -> dict:
    """The result's statistics; ``times`` are the clock at the start, after signing and at the end."""
    t0, t_signed, t_end = times
    dropped = clusters.dropped
    exact = int(np.isin(dropped, clusters.exact_linked, assume_unique=True).sum()) if len(clusters.exact_linked) \
        else 0
    sizes = np.unique(clusters.roots, return_counts=True)[1] if len(clusters.roots) else np.empty(0, np.int64)
    seconds = t_end - t0
    return {
        "documents": documents,
        "exact_duplicates": exact,
        "near_duplicates": int(len(dropped)) - exact,
        "removed": int(len(dropped)),
        "kept": documents - int(len(dropped)),
        "clusters": int(len(sizes)),
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "without_words": sum(r["without_words"] for r in signed),
        "shards": len(signed),
        "shards_reused": sum(bool(r["skipped"]) for r in signed),
        "merge_buckets": clusters.buckets,
        "signature_seconds": t_signed - t0,
        "merge_seconds": t_end - t_signed,
        "seconds": seconds,
        "documents_per_second": documents / seconds if seconds > 0 else 0.0,
        "workers": workers,
        "config": asdict(cfg),
    }


def deduplicate(shards: list[Path], work_dir: Path, cfg: DedupConfig, workers: int = 1) -> DedupResult:
    """Find exact and near duplicates across ``shards`` (Parquet files with a ``text`` column).

    Row order is document order; the first document of each cluster in (shard order, row) order
    survives. ``work_dir`` holds the sorted runs (removed at the end unless ``cfg.keep_work_files``;
    runs of shards already done under the same settings are reused). ``workers`` processes compute
    signatures, one shard at a time each; the result does not depend on their number.

    A shard that is missing, not Parquet, or has no string ``text`` column raises an error naming
    the file; a valid shard with no rows simply contributes no documents.
    """
    t0 = time.perf_counter()
    shards = [Path(s) for s in shards]
    checked = _check_inputs(shards, cfg, workers)
    first_ids = np.zeros(len(checked) + 1, dtype=np.int64)
    np.cumsum([s.rows for s in checked], out=first_ids[1:])

    run_dir = Path(work_dir) / "dedup-runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    slots = int(cfg.exact) + (cfg.bands if cfg.near else 0)
    if slots:
        signed = _sign_all(checked, run_dir, cfg, workers)
    else:  # nothing asked for: the shards were checked, nothing is dropped
        signed = [{"runs": [], "without_words": 0, "skipped": False} for _ in checked]
    t_signed = time.perf_counter()

    clusters = _cluster(_open_runs(run_dir, checked, signed, first_ids), slots, cfg)
    drop = _drops_by_shard(shards, clusters.dropped, first_ids)
    if not cfg.keep_work_files:
        _remove_runs(run_dir, checked, signed)
    stats = _stats(int(first_ids[-1]), clusters, signed, cfg, workers, (t0, t_signed, time.perf_counter()))
    log.info("dedup: %d documents, %d exact and %d near duplicates removed in %d clusters (%.1f s)",
             stats["documents"], stats["exact_duplicates"], stats["near_duplicates"], stats["clusters"],
             stats["seconds"])
    return DedupResult(drop=drop, stats=stats)
