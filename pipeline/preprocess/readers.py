"""Readers: plan work units over a source's files and yield its documents.

Work is split by file AND inside files, so one big file still keeps every worker busy: uncompressed
jsonl by byte range (a line belongs to the range in which it starts), parquet by row group (each read
once), a dataset saved with `save_to_disk` by row range. A hub dataset (an id, or a local folder laid out
like one) whose files are parquet, as the datasets library resolves its subset and split, is planned as
parquet (its files through fsspec, `hf://`), so each row is read once whatever the number of workers; one
whose files are not parquet is streamed, split per worker. Compressed jsonl cannot be split and is one unit
per file. The plan does not depend on the number of workers (except for a streamed hub dataset): about
`UNITS_PER_SOURCE` units per source, within [MIN_CHUNK, MAX_CHUNK] bytes for jsonl. Units are numbered in
a fixed order; worker `rank` takes units `rank, rank + world, ...`.

Bad records (malformed JSON, bytes that are not UTF-8, a missing or empty text field, a corrupt file) are
counted and reported with file and line, and reading goes on. A transport error (a dropped connection,
a timeout, a 5xx from the object store: an OSError that is not a decoding error) is different: the file
is fine and the read is retried, resuming at the line where it stopped (after the retries fsspec and
botocore already make), `READ_RETRIES` times with backoff; then the stage fails with the file named,
rather than silently dropping the rest of the file. A missing or forbidden file fails the stage at once.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import fsspec

from cpt.api.data import Source
from cpt_pipeline.preprocess.stats import Stats
from cpt_pipeline.storage import storage_options

log = logging.getLogger(__name__)
MIN_CHUNK = 1 << 20
MAX_CHUNK = 64 << 20
UNITS_PER_SOURCE = 256  # enough for 64 workers x 4 units, whatever the number of workers
COMPRESSED = (".gz", ".zst", ".zstd")
READ_RETRIES = 5
RETRY_DELAY_SECONDS = 1.0  # doubled after each failed attempt

try:  # orjson is 3-5x faster than json for this loop
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a worker dependency
    _loads = json.loads


@dataclass(frozen=True)
class Document:
    """One document and where it came from (for error reports and deterministic order)."""

    text: str
    unit: int
    position: int
    location: str


@dataclass(frozen=True)
class WorkUnit:
    """A piece of one source: bytes [start, end) of a jsonl file, rows [start, end) otherwise. `size` (bytes
    or rows) is its share of the source: the unit reads at most that share of the source's token budget."""

    index: int
    source: str
    path: str
    format: str
    start: int
    end: int
    row_group: int = -1
    size: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SourceError(ValueError):
    """A source that cannot be used at all (no files, unknown format)."""


class SourceReadError(RuntimeError):
    """A file that could not be read to its end (after retries): the stage fails, naming it."""


def _is_corrupt(error: BaseException) -> bool:
    """Decoding errors: the bytes arrived but are not a valid file (retrying cannot help)."""
    return isinstance(error, gzip.BadGzipFile | EOFError | ValueError) or type(error).__name__ == "ZstdError"


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def list_files(source: Source) -> tuple[fsspec.AbstractFileSystem, list[tuple[str, int]]]:
    """(filesystem, [(url, size)]) of a file source, sorted; a directory means every file inside it."""
    fs, _, paths = fsspec.get_fs_token_paths(source.uri, storage_options=storage_options(source.uri))
    files: list[str] = []
    for path in paths:
        if fs.isdir(path):
            files.extend(p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith((".", "_")))
        elif fs.exists(path):
            files.append(path)
    if not files:
        raise SourceError(f"source {source.name!r}: no files match {source.uri!r}")
    return fs, [(_url(fs, p), int(fs.size(p) or 0)) for p in sorted(set(files))]


def plan_units(sources: list[Source], world_size: int) -> list[WorkUnit]:
    """Every work unit of the sources, numbered in a fixed order (the same for any world size, except for a
    streamed hub dataset: one unit per worker)."""
    units: list[WorkUnit] = []
    for source in sources:
        if source.format == "jsonl":
            units += _plan_jsonl(source, len(units))
        elif source.format == "parquet":
            units += _plan_parquet(source, len(units))
        else:
            units += _plan_hf(source, world_size, len(units))
    return units


def _plan_jsonl(source: Source, first: int) -> list[WorkUnit]:
    _, files = list_files(source)
    total = sum(size for _, size in files)
    chunk = min(MAX_CHUNK, max(MIN_CHUNK, math.ceil(total / UNITS_PER_SOURCE)))
    units = []
    for url, size in files:
        if url.endswith(COMPRESSED) or size <= chunk:
            ranges = [(0, -1, size)]
        else:
            ranges = [(start, min(start + chunk, size), min(chunk, size - start)) for start in range(0, size, chunk)]
        for start, end, length in ranges:
            units.append(WorkUnit(first + len(units), source.name, url, "jsonl", start, end, size=max(1, length)))
    return units


def _plan_parquet(source: Source, first: int, urls: list[str] | None = None) -> list[WorkUnit]:
    """One unit per row group of the source's parquet files (or of `urls`, a hub dataset's): a row group is
    what a reader fetches and decodes, so splitting one would read it again for every piece."""
    import pyarrow.parquet as pq

    groups: list[tuple[str, int, int]] = []
    for url in urls if urls is not None else [url for url, _ in list_files(source)[1]]:
        with fsspec.open(url, "rb", **storage_options(url)) as handle:
            meta = pq.ParquetFile(handle).metadata
            groups += [(url, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    return [
        WorkUnit(first + i, source.name, url, "parquet", 0, rows, row_group=group, size=max(1, rows))
        for i, (url, group, rows) in enumerate(groups)
    ]


def _plan_hf(source: Source, world_size: int, first: int) -> list[WorkUnit]:
    dataset = _load_hf(source, streaming=None)
    if dataset is None and (files := hub_parquet_files(source.uri, source.subset, source.split)):
        return _plan_parquet(source, first, list(files))
    if dataset is None:  # a hub dataset not in parquet: streamed, one unit per worker (split_dataset_by_node)
        return [WorkUnit(first + r, source.name, source.uri, "hf-stream", r, world_size) for r in range(world_size)]
    rows = len(dataset)
    per_unit = max(1, math.ceil(rows / UNITS_PER_SOURCE))
    return [
        WorkUnit(
            first + i,
            source.name,
            source.uri,
            "hf",
            start,
            min(start + per_unit, rows),
            size=min(per_unit, rows - start),
        )
        for i, start in enumerate(range(0, rows, per_unit))
    ]


def _saved_to_disk(uri: str) -> bool:
    return os.path.isfile(os.path.join(uri, "dataset_dict.json")) or os.path.isfile(os.path.join(uri, "state.json"))


@functools.lru_cache(maxsize=32)
def hub_parquet_files(uri: str, subset: str | None, split: str) -> tuple[str, ...]:
    """The parquet files of a hub dataset's split (an id, or a local folder laid out like one), as the
    datasets library resolves them (README configs, data/train-00000-of-00003.parquet, ...); empty when its
    files are not parquet. A dataset saved with save_to_disk has none."""
    if os.path.isdir(uri) and _saved_to_disk(uri):
        return ()
    from datasets import load_dataset_builder

    config = load_dataset_builder(uri, subset).config
    files = (config.data_files or {}).get(split)
    if files is None:
        raise SourceError(f"dataset {uri!r}: split {split!r} not in {list(config.data_files or {})}")
    return tuple(str(f) for f in files) if all(str(f).endswith(".parquet") for f in files) else ()


def streamed(source: Source) -> bool:
    """Whether a source is a hub stream split per worker (the worker count then decides what is read)."""
    if source.format != "hf" or (os.path.isdir(source.uri) and _saved_to_disk(source.uri)):
        return False
    return not hub_parquet_files(source.uri, source.subset, source.split)


def _load_hf(source: Source, streaming: bool | None) -> Any:
    """A local dataset (save_to_disk directory) or, when streaming=True, a hub dataset stream."""
    if os.path.isdir(source.uri) and _saved_to_disk(source.uri):
        from datasets import load_from_disk

        dataset = load_from_disk(source.uri)
        if hasattr(dataset, "keys"):  # a DatasetDict
            if source.split not in dataset:
                raise SourceError(f"source {source.name!r}: split {source.split!r} not in {list(dataset)}")
            dataset = dataset[source.split]
        return dataset
    if streaming is None:
        return None
    from datasets import load_dataset

    return load_dataset(source.uri, source.subset, split=source.split, streaming=True)


def read_unit(unit: WorkUnit, source: Source, stats: Stats) -> Iterator[Document]:
    """The documents of one unit; bad records are counted in stats and skipped."""
    try:
        if unit.format == "jsonl":
            yield from _read_jsonl(unit, source, stats)
        elif unit.format == "parquet":
            yield from _read_parquet(unit, source, stats)
        else:
            yield from _read_hf(unit, source, stats)
    except SourceReadError:
        raise
    except (FileNotFoundError, PermissionError) as error:
        raise SourceReadError(f"source {source.name!r}: cannot read {unit.path}: {error}") from error
    except Exception as error:
        if not _is_corrupt(error):
            raise
        stats.bad_record("unreadable_file", f"{unit.path}: {type(error).__name__}: {error}")


def _open_jsonl(unit: WorkUnit) -> io.BufferedIOBase:
    handle = fsspec.open(unit.path, "rb", **storage_options(unit.path)).open()
    if unit.path.endswith(".gz"):
        return gzip.GzipFile(fileobj=handle)
    if unit.path.endswith((".zst", ".zstd")):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(handle))
    return handle


def _transient(error: BaseException) -> bool:
    """A transport error: the file is fine, another read may succeed."""
    return (
        isinstance(error, OSError)
        and not isinstance(error, FileNotFoundError | PermissionError)
        and not _is_corrupt(error)
    )


def _retry_or_raise(error: Exception, attempt: int, unit: WorkUnit, where: str) -> None:
    """Wait before the next attempt after a transport error; re-raise any other error, and raise
    SourceReadError once the retries are spent."""
    if not _transient(error):
        raise error
    if attempt >= READ_RETRIES:
        raise SourceReadError(
            f"{unit.path}: read failed {attempt + 1} times ({where}), last error {type(error).__name__}: {error}; "
            "the stage stops rather than drop the rest of the file: check the object store and rerun"
        ) from error
    delay = RETRY_DELAY_SECONDS * 2**attempt
    log.warning("%s: %s: %s (%s); retrying in %.1fs", unit.path, type(error).__name__, error, where, delay)
    time.sleep(delay)


def _read_jsonl(unit: WorkUnit, source: Source, stats: Stats) -> Iterator[Document]:
    field = source.text_field
    position, index, attempt = -1, 0, 0  # position -1: not positioned yet
    end = unit.end if unit.end >= 0 else math.inf
    while True:
        try:
            with _open_jsonl(unit) as handle:
                if position < 0:
                    position = unit.start
                    if unit.start > 0:  # the line that straddles start belongs to the previous unit
                        handle.seek(unit.start - 1)
                        position = unit.start - 1 + len(handle.readline())
                elif position > 0:
                    handle.seek(position)  # resume after the last complete line (compressed: decompress to it)
                while position < end:
                    line = handle.readline()
                    if not line:
                        return
                    offset = position
                    position += len(line)
                    attempt = 0  # progress: a later error gets the full retries again
                    if not line.strip():
                        continue
                    text = _text_of_line(line, field, stats, unit, offset)
                    if text is not None:
                        yield Document(text, unit.index, index, f"{unit.path}@{offset}")
                    index += 1
                return
        except Exception as error:
            _retry_or_raise(error, attempt, unit, f"at byte {max(position, 0)}")
            attempt += 1


def _line_number(unit: WorkUnit, offset: int) -> int:
    """1-based line number of the line at byte offset (error path only: counts newlines before it)."""
    if unit.start < 0 or unit.path.endswith(COMPRESSED):
        return -1
    with fsspec.open(unit.path, "rb", **storage_options(unit.path)) as handle:
        return handle.read(offset).count(b"\n") + 1


def _text_of_line(line: bytes, field: str, stats: Stats, unit: WorkUnit, offset: int) -> str | None:
    try:
        record = _loads(line)
    except ValueError as error:
        try:
            line.decode("utf-8")
            kind = "malformed_json"
        except UnicodeDecodeError:
            kind = "invalid_utf8"
        stats.bad_record(kind, f"{unit.path}:{_line_number(unit, offset)}: {str(error)[:120]}")
        return None
    return _text_of_record(record, field, stats, lambda: f"{unit.path}:{_line_number(unit, offset)}")


def _text_of_record(record: Any, field: str, stats: Stats, where: Any) -> str | None:
    if not isinstance(record, dict) or field not in record or record[field] is None:
        stats.bad_record("missing_text", f"{where()}: no {field!r} field")
        return None
    text = record[field]
    if not isinstance(text, str):
        stats.bad_record("missing_text", f"{where()}: {field!r} is {type(text).__name__}, not text")
        return None
    if not text.strip():
        stats.bad_record("empty_text", f"{where()}: empty {field!r}")
        return None
    return text


def _read_parquet(unit: WorkUnit, source: Source, stats: Stats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    attempt = 0
    while True:  # the row group is read whole before any row is used: a retry starts over
        try:
            with fsspec.open(unit.path, "rb", **storage_options(unit.path)) as handle:
                parquet = pq.ParquetFile(handle)
                if source.text_field not in parquet.schema_arrow.names:
                    raise ValueError(f"no column {source.text_field!r} (columns: {parquet.schema_arrow.names})")
                table = parquet.read_row_group(unit.row_group, columns=[source.text_field])
            break
        except Exception as error:
            _retry_or_raise(error, attempt, unit, f"row group {unit.row_group}")
            attempt += 1
    texts = table.column(0).slice(unit.start, unit.end - unit.start).to_pylist()
    for i, text in enumerate(texts):
        row = unit.start + i
        value = _text_of_record(
            {source.text_field: text},
            source.text_field,
            stats,
            lambda row=row: f"{unit.path}:row-group {unit.row_group} row {row}",
        )
        if value is not None:
            yield Document(value, unit.index, i, f"{unit.path}#{unit.row_group}:{row}")


def _read_hf(unit: WorkUnit, source: Source, stats: Stats) -> Iterator[Document]:
    if unit.format == "hf-stream":
        from datasets.distributed import split_dataset_by_node

        rows: Any = split_dataset_by_node(_load_hf(source, streaming=True), rank=unit.start, world_size=unit.end)
        first = 0
    else:
        rows = _load_hf(source, streaming=False).select(range(unit.start, unit.end))
        first = unit.start
    for i, record in enumerate(rows):
        text = _text_of_record(record, source.text_field, stats, lambda i=i: f"{source.uri}:row {first + i}")
        if text is not None:
            yield Document(text, unit.index, i, f"{source.uri}:{first + i}")
