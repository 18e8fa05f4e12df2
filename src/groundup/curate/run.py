"""The curate stage: WARC/WET, JSONL, Parquet or text in; clean, deduplicated, redacted Parquet shards out.

Three phases, each resumable:

1. **Filter** (per shard task, in parallel): read -> URL blocklist -> extract main text ->
   Unicode fix -> language -> Gopher repetition and quality -> C4 -> FineWeb -> PII redaction,
   into ``work/filtered/``. A finished task leaves a done-marker; a re-run skips it.
2. **Deduplicate** (global): exact and MinHash near duplicates across every filtered shard
   (:mod:`groundup.curate.dedup`); the rows to drop are saved in ``work/dedup.json``.
3. **Write**: ``shards/NNNNN.parquet`` without the duplicates (optionally ``jsonl/`` too).

``out`` then holds ``shards/``, ``stats.json`` (the funnel: documents, bytes and estimated
tokens after every step, drops by reason, PII counts, read errors with file and offset),
``config.yaml``, ``manifest.json``, and ``dropped/`` when asked. A killed run started again
with the same settings picks up where it stopped and writes the same shards.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from groundup import config as configlib
from groundup.artifacts import prepare_out, read_json, write_json, write_manifest
from groundup.curate import shards as shardlib
from groundup.curate.dedup import DedupConfig, deduplicate
from groundup.curate.executors import EXECUTORS, make_executor
from groundup.curate.readers import FORMATS, list_inputs
from groundup.curate.recipe import RecipeConfig, build_steps
from groundup.curate.steps import BYTES_PER_TOKEN, PipelineStats
from groundup.curate.writers import DROPPED_COLUMNS, ParquetShardWriter, write_jsonl

log = logging.getLogger(__name__)

CURATE_FILES = {"stats.json", "config.yaml", "manifest.json"}
"""Files of a curate output directory, beside the ``shards/`` folder."""


@dataclass(kw_only=True)
class Config:
    """Curate web text: filter, redact and deduplicate WARC/WET, JSONL, Parquet or text into Parquet shards."""

    input: list[str] | str = field(default_factory=list)
    """Input files, folders (searched recursively) or glob patterns: .warc[.gz], .wet[.gz], .jsonl[.gz|.zst], .parquet, .txt
    (one, or a list: `--input '[a.warc.gz, b/]'`)."""
    out: Path = Path("runs/data")
    """Output directory (shards/, stats.json, config.yaml, manifest.json; dropped/ and jsonl/ when asked)."""
    format: str | None = None
    """Input format for every file: warc, wet, jsonl, parquet or text (None: from each file's name)."""
    text_field: str = "text"
    """Field (JSONL) or column (Parquet) holding the text."""
    url_field: str = "url"
    """Field or column holding the URL (used by the URL blocklist when present)."""
    warc_backend: str = "fastwarc"
    """WARC parser: 'fastwarc' (fast) or 'warcio'."""
    verify_digests: bool = True
    """Check WARC block digests, so a record with a wrong length is dropped instead of read as garbage."""
    max_document_bytes: int = 5_000_000
    """Records larger than this are skipped and counted (a 50 MB line is not a web page)."""
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    """The filtering and redaction steps and their thresholds (defaults: FineWeb's)."""
    decontaminate: list[str] | str = field(default_factory=list)
    """Evaluation files (JSONL, Parquet or text): drop every document that shares a word 13-gram with one of their
    items (adds the `decontaminate` step at the end of the recipe; stats.json counts the drops per file)."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Global deduplication after filtering; set exact and near to false to skip it."""
    executor: str = "local"
    """'local' (processes on this machine) or 'ray' (a Ray cluster; pip install 'groundup[ray]')."""
    workers: int | None = None
    """Processes (local) or CPUs (Ray) to use (None: every core, or the whole Ray cluster)."""
    ray_address: str | None = None
    """Address of a running Ray cluster (None: start a local one)."""
    task_bytes: int = 256 << 20
    """Input files are grouped into shard tasks of about this many bytes (a larger file is one task)."""
    jsonl: bool = False
    """Also write each shard as jsonl/NNNNN.jsonl.gz."""
    write_dropped: bool = False
    """Write dropped documents with the step and reason that dropped them to dropped/."""
    keep_work: bool = False
    """Keep work/ (filtered shards, done-markers, duplicate lists) after a successful run."""
    overwrite: bool = False
    """Write into a non-empty `out` that is not an earlier curate output (entries with this stage's names are
    replaced, nothing else is removed; `out` may never hold or lie inside an input)."""


def _check(cfg: Config) -> None:
    if not cfg.input:
        raise ValueError("no input given: pass --input with WARC/WET, JSONL, Parquet or text files or folders")
    if cfg.format is not None and cfg.format not in FORMATS:
        raise ValueError(f"unknown format {cfg.format!r} (choose from {', '.join(FORMATS)})")
    if cfg.executor not in EXECUTORS:
        raise ValueError(f"unknown executor {cfg.executor!r} (choose from {', '.join(EXECUTORS)})")
    if cfg.warc_backend not in ("fastwarc", "warcio"):
        raise ValueError(f"unknown warc_backend {cfg.warc_backend!r} (fastwarc or warcio)")
    if cfg.max_document_bytes <= 0 or cfg.task_bytes <= 0:
        raise ValueError("max_document_bytes and task_bytes must be positive")
    if isinstance(cfg.decontaminate, str):
        cfg.decontaminate = [cfg.decontaminate]
    if cfg.decontaminate and not any("decontaminate" in step for step in cfg.recipe.steps):
        from groundup.curate.recipe import resolve_steps

        cfg.recipe.steps = resolve_steps([*cfg.recipe.steps, {"decontaminate": {"files": list(cfg.decontaminate)}}])
    build_steps(cfg.recipe)  # a step's own checks (an unknown extractor or PII kind) fail before any work starts


def merge_read_stats(results: list[dict]) -> dict:
    merged = {"documents": 0, "bytes": 0, "skipped": {}, "replaced_bytes": {}, "skip_examples": []}
    for r in results:
        read = r["read"]
        merged["documents"] += read["documents"]
        merged["bytes"] += read["bytes"]
        for key in ("skipped", "replaced_bytes"):
            for reason, n in read.get(key, {}).items():  # a marker from before replaced_bytes has none
                merged[key][reason] = merged[key].get(reason, 0) + n
        merged["skip_examples"].extend(read["skip_examples"])
    merged["skipped"] = dict(sorted(merged["skipped"].items()))
    merged["replaced_bytes"] = dict(sorted(merged["replaced_bytes"].items()))
    merged["skip_examples"] = merged["skip_examples"][:50]
    return merged


def funnel(read: dict, steps: PipelineStats, dedup: dict | None, output: dict) -> list[dict]:
    """Documents, bytes and estimated tokens left after each step, from reading to the written shards."""
    rows = [{"step": "read", "documents": read["documents"], "bytes": read["bytes"]}]
    for name, s in steps.steps.items():
        rows.append({"step": name, "documents": s.documents_out, "bytes": s.bytes_out})
    if dedup is not None:
        rows.append({"step": "dedup", "documents": output["documents"], "bytes": output["bytes"]})
    for row in rows:
        row["tokens_estimate"] = row["bytes"] // BYTES_PER_TOKEN
    return rows


def _filter_phase(cfg: Config, work: Path, files: list[Path]) -> list[dict]:
    reader = shardlib.ReaderSettings(fmt=cfg.format, text_field=cfg.text_field, url_field=cfg.url_field,
                                     warc_backend=cfg.warc_backend, verify_digests=cfg.verify_digests,
                                     max_document_bytes=cfg.max_document_bytes)
    dropped_dir = str(Path(cfg.out) / "dropped") if cfg.write_dropped else None
    steps = tuple(build_steps(cfg.recipe))
    tasks, results = [], []
    for index, group in enumerate(shardlib.plan_tasks(files, cfg.task_bytes)):
        fp = shardlib.fingerprint(group, reader, cfg.recipe)
        done = shardlib.read_marker(work, index, fp)
        if done is not None and (dropped_dir is None or (Path(dropped_dir) / f"{index:05d}.parquet").is_file()):
            results.append(done)
            continue
        tasks.append(shardlib.ShardTask(index, tuple(str(p) for p in group), str(work), dropped_dir, reader,
                                        steps, fp))
    if results:
        log.info("curate: %d of %d shard tasks already done, skipped", len(results), len(results) + len(tasks))
    if tasks:
        from tqdm.auto import tqdm

        executor = make_executor(cfg.executor, cfg.workers, cfg.ray_address)
        try:
            with tqdm(total=len(tasks), desc="curate", unit="shard", disable=None) as bar:
                # looked up at call time, so the task function can be wrapped (tests inject failures this way)
                for result in executor.map_unordered(shardlib.process_shard, tasks):
                    results.append(result)
                    bar.update(1)
        finally:
            if hasattr(executor, "shutdown"):
                executor.shutdown()
    return sorted(results, key=lambda r: r["index"])


def _dedup_phase(cfg: Config, work: Path, shard_files: list[Path], workers: int) -> dict | None:
    if not (cfg.dedup.exact or cfg.dedup.near):
        return None
    saved = work / "dedup.json"
    key = {"config": configlib.to_dict(cfg.dedup),
           "shards": [read_json(shardlib.marker_path(work, int(p.stem)))["fingerprint"] for p in shard_files]}
    if saved.is_file():
        data = read_json(saved)
        if data.get("key") == key:
            return data
    result = deduplicate(shard_files, work / "dedup", cfg.dedup, workers=workers)
    data = {"key": key, "stats": result.stats, "drop": {name: sorted(rows) for name, rows in result.drop.items()}}
    write_json(saved, data)
    return data


def _write_phase(cfg: Config, shard_files: list[Path], drops: dict[str, list[int]]) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = Path(cfg.out)
    shards_dir = out / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    documents = nbytes = 0
    for path in shard_files:
        table = pq.read_table(path)
        drop = sorted(drops.get(path.name, ()))
        if drop:
            keep = np.ones(table.num_rows, dtype=bool)
            keep[drop] = False
            if cfg.write_dropped:
                removed = table.take(pa.array(drop, type=pa.int64()))
                removed = removed.append_column("step", pa.array(["dedup"] * len(drop), pa.string()))
                removed = removed.append_column("reason", pa.array(["duplicate"] * len(drop), pa.string()))
                with ParquetShardWriter(out / "dropped" / f"{path.stem}.dedup.parquet", DROPPED_COLUMNS) as w:
                    w.write_table(removed)
            table = table.filter(pa.array(keep))
        documents += table.num_rows
        nbytes += int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)
        if table.num_rows == 0:
            continue
        with ParquetShardWriter(shards_dir / path.name) as w:
            w.write_table(table)
        if cfg.jsonl:
            write_jsonl(table.to_pylist(), out / "jsonl" / f"{path.stem}.jsonl.gz")
        written.append(path.name)
    for stale in shards_dir.glob("*.parquet"):  # from an earlier run over other inputs
        if stale.name not in written:
            stale.unlink()
    return {"documents": documents, "bytes": nbytes, "tokens_estimate": nbytes // BYTES_PER_TOKEN,
            "shards": len(written)}


def run(cfg: Config) -> Path:
    _check(cfg)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    specs = [cfg.input] if isinstance(cfg.input, str) else list(cfg.input)
    files = list_inputs(specs, cfg.format)
    if not files:
        raise FileNotFoundError(f"no input files found in {cfg.input}")
    prepare_out(out, stage="curate", inputs=[*specs, *files], overwrite=cfg.overwrite,
                unfinished=("work", "shards", "dropped", "jsonl", "stats.json", "config.yaml", ".*.tmp"))
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)

    results = _filter_phase(cfg, work, files)
    read = merge_read_stats(results)
    if read["documents"] == 0:
        examples = "; ".join(read["skip_examples"][:5]) or "no readable records"
        raise ValueError(f"no document could be read from {len(files)} input file(s) ({examples})")
    steps = PipelineStats()
    for r in results:
        steps.merge(PipelineStats.from_dict(r["steps"]))
    t_filtered = time.perf_counter()

    shard_files = [shardlib.filtered_path(work, r["index"]) for r in results]
    dedup = _dedup_phase(cfg, work, shard_files, cfg.workers or os.cpu_count() or 1)
    t_dedup = time.perf_counter()
    output = _write_phase(cfg, shard_files, dedup["drop"] if dedup else {})
    seconds = time.perf_counter() - t0

    pii = dict(steps.steps["pii"].changed) if "pii" in steps.steps else {}
    stats = {
        "read": read,
        "steps": steps.as_dict(),
        "dedup": dedup["stats"] if dedup else None,
        "pii": pii,
        "output": output,
        "funnel": funnel(read, steps, dedup["stats"] if dedup else None, output),
        "input_files": len(files),
        "shard_tasks": len(results),
        "seconds": {"filter": round(t_filtered - t0, 3), "dedup": round(t_dedup - t_filtered, 3),
                    "total": round(seconds, 3)},
    }
    write_json(out / "stats.json", stats)
    configlib.save(cfg, out / "config.yaml")
    inputs = {f"input{i}": p for i, p in enumerate(files)} if len(files) <= 64 else {}
    write_manifest(out, stage="curate", config=configlib.to_dict(cfg), inputs=inputs,
                   extra={"input_files": len(files), "documents": output["documents"]})
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info("curate: %d of %d documents kept (%s estimated tokens) in %d shards, %.1f s", output["documents"],
             read["documents"], f"{output['tokens_estimate']:,}", output["shards"], seconds)
    return out
