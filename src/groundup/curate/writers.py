"""Parquet shards (and optional JSONL) of curated documents, written to a temporary name and renamed."""

from __future__ import annotations

import gzip
import io
import json
import os
import uuid
from pathlib import Path

from groundup.curate.text import Document

COLUMNS = ("text", "source", "offset", "url", "date", "language", "language_score", "score")
DROPPED_COLUMNS = (*COLUMNS, "step", "reason")


def _schema(columns: tuple[str, ...]):
    import pyarrow as pa

    types = {"offset": pa.int64(), "language_score": pa.float64(), "score": pa.float64()}
    return pa.schema([(name, types.get(name, pa.string())) for name in columns])


def document_row(doc: Document) -> dict:
    return {"text": doc.text, "source": doc.source, "offset": doc.offset, "url": doc.url,
            "date": doc.meta.get("date"), "language": doc.meta.get("language"),
            "language_score": doc.meta.get("language_score"), "score": doc.meta.get("score")}


class ParquetShardWriter:
    """Rows in row groups of ``rows_per_group``; the file appears under its name only when closed."""

    def __init__(self, path: Path, columns: tuple[str, ...] = COLUMNS, rows_per_group: int = 2048):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError("writing shards needs pyarrow: pip install 'groundup[data]'") from e
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.schema = _schema(columns)
        self.columns = columns
        self.rows_per_group = rows_per_group
        self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self._buffer: list[dict] = []
        self.rows = 0

    def write(self, row: dict) -> None:
        self._buffer.append(row)
        self.rows += 1
        if len(self._buffer) >= self.rows_per_group:
            self._flush()

    def write_table(self, table) -> None:
        """Append an Arrow table with these columns (in row groups of ``rows_per_group``)."""
        self._flush()
        table = table.select(list(self.columns)).cast(self.schema)
        self._writer.write_table(table, row_group_size=self.rows_per_group)
        self.rows += table.num_rows

    def _flush(self) -> None:
        import pyarrow as pa

        if self._buffer:
            table = pa.Table.from_pylist(self._buffer, schema=self.schema)
            self._writer.write_table(table)
            self._buffer = []

    def close(self) -> Path:
        self._flush()
        self._writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ParquetShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_jsonl(rows, path: Path) -> Path:
    """Rows as gzip-compressed JSON lines, written to a temporary name and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    # mtime=0 and no file name in the gzip header: the same rows give the same bytes
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed, \
            io.TextIOWrapper(packed, encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
