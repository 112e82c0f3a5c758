"""The results store: one JSON file per record, written atomically, never edited in place.

A sweep writes each record (one (size, seed, training precision, inference precision)
point) to ``DIR/records/<point_id>.json`` through a temporary file in the same directory,
``fsync`` and ``os.replace``.  A ``kill -9`` at any moment leaves either the whole record or
none of it (a stray ``.tmp`` file is ignored), and two processes never write the same file
(workers take disjoint points), so the store is safe on a shared filesystem too.  Redoing a
point (``--force``) replaces its file: there is never more than one record per point.

Every column is defined in ``jscale.schema`` (name, unit, type, meaning); ``load_results``
checks a table against it.  This module imports nothing of the model or training code:
``load_results`` works on any machine that has the directory.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from jscale import schema

RECORDS = "records"
CURVES = "curves"
DOCUMENT_LOSSES = "document_losses"
LADDER = "ladder"  # the latency ladder's records (jscale.ladder), one per (size, precision)


class ResultsError(ValueError):
    """A results directory or table that is missing, empty, unreadable, or (when checked)
    does not match ``jscale.schema``."""


def record_path(out_dir: str | os.PathLike, point_id: str, kind: str = RECORDS) -> Path:
    """Where the record ``point_id`` lives: ``OUT/records/`` (``kind=RECORDS``) or
    ``OUT/ladder/`` (``kind=LADDER``)."""
    return Path(out_dir) / kind / f"{point_id}.json"


def _clean(v):
    """JSON-safe: numpy scalars to Python; NaN/Inf to None (JSON has no NaN)."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_record(
    out_dir: str | os.PathLike, point_id: str, record: dict, kind: str = RECORDS
) -> Path:
    """Write ``record`` (a flat dict) as the point's file (``record_path``), atomically;
    returns its path."""
    path = record_path(out_dir, point_id, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = json.dumps(
        {"point_id": point_id, **{k: _clean(v) for k, v in record.items()}},
        sort_keys=True,
        indent=1,
    )
    with open(tmp, "w") as f:
        f.write(body + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def write_curve(out_dir: str | os.PathLike, train_key: str, rows: list[dict]) -> Path:
    """Write one run's loss curve (rows of ``jscale.schema.CURVE_COLUMNS``) as
    ``DIR/curves/<train_key>.csv``, atomically; returns its path."""
    path = Path(out_dir) / CURVES / f"{train_key}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pd.DataFrame(rows, columns=list(schema.CURVE_COLUMNS)).to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def write_document_losses(out_dir: str | os.PathLike, point_id: str, table: pd.DataFrame) -> Path:
    """Write one record's held-out loss per document (``evaluate.document_sums``: document,
    windows, loss_sum_nats) as ``DIR/document_losses/<point_id>.csv``, atomically."""
    path = Path(out_dir) / DOCUMENT_LOSSES / f"{point_id}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table[["document", "windows", "loss_sum_nats"]].to_csv(tmp, index=False, float_format="%.17g")
    os.replace(tmp, path)
    return path


def load_document_losses(out_dir: str | os.PathLike) -> pd.DataFrame | None:
    """Every record's held-out loss per document under ``out_dir`` (``document_losses/``) or in
    an exported ``document_losses.csv``: columns point_id, document, windows, loss_sum_nats;
    None when there are none (a sweep from before they were kept)."""
    p = Path(out_dir)
    if p.suffix == ".csv":
        return pd.read_csv(p) if p.is_file() else None
    d = p / DOCUMENT_LOSSES
    files = sorted(d.glob("*.csv")) if d.is_dir() else []
    if not files:
        return None
    return pd.concat([pd.read_csv(f).assign(point_id=f.stem) for f in files], ignore_index=True)[
        ["point_id", "document", "windows", "loss_sum_nats"]
    ]


def load_curves(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Every run's loss curve under ``out_dir`` (or in an exported ``curves.csv``) as one
    DataFrame: the columns of
    ``jscale.schema.CURVE_COLUMNS`` plus ``train_key`` (the checkpoint's name: the point's id
    without its inference precision, and its training hash).  Join to the records on
    ``point_id.str.rsplit("-", n=1).str[0] == train_key.str.rsplit("-", n=1).str[0]``."""
    p = Path(out_dir)
    if p.suffix == ".csv" and p.is_file():  # an exported table (OUT/curves.csv)
        return pd.read_csv(p)
    d = p / CURVES
    files = sorted(d.glob("*.csv")) if d.is_dir() else []
    if not files:
        raise ResultsError(f"{out_dir}: no loss curves (expected {d}/*.csv, written by a sweep)")
    return pd.concat([pd.read_csv(f).assign(train_key=f.stem) for f in files], ignore_index=True)


def finished_points(out_dir: str | os.PathLike) -> set[str]:
    """The point ids that have a complete record in ``out_dir``."""
    d = Path(out_dir) / RECORDS
    return {p.stem for p in d.glob("*.json")} if d.is_dir() else set()


def _read_records(files) -> pd.DataFrame:
    """The JSON records ``files`` as one table; ``ResultsError`` naming an unreadable one."""
    rows = []
    for f in files:
        try:
            rows.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ResultsError(f"{f}: unreadable record ({e})") from None
    return pd.DataFrame(rows)


def load_ladder(out_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The latency ladder of a sweep (``OUT/ladder/*.json``, or a ``latency_ladder.csv``
    table), one row per (size, precision), sorted by size and precision; None when the sweep
    has none.  The columns are checked against ``jscale.schema`` (``table="ladder"``)."""
    p = Path(out_dir)
    if p.is_file():
        df = pd.read_csv(p)
    else:
        if (p / "latency_ladder.csv").is_file() and not (p / LADDER).is_dir():
            return load_ladder(p / "latency_ladder.csv")
        files = sorted((p / LADDER).glob("*.json")) if (p / LADDER).is_dir() else []
        if not files:
            return None
        df = _read_records(files)
    if df.empty:
        return None
    try:
        schema.check_columns(df.columns, where=str(p), table="ladder")
    except schema.SchemaError as e:
        raise ResultsError(str(e)) from None
    return df.sort_values([schema.N, schema.PRECISION], kind="stable").reset_index(drop=True)


def load_results(out_dir: str | os.PathLike, *, check: bool = True) -> pd.DataFrame:
    """All records under ``out_dir`` as a DataFrame, one row per point.

    ``out_dir`` is a sweep's output directory (with ``records/``), or a ``.csv``/``.jsonl``
    results table.  Rows are sorted by non-embedding params, seed and precisions when those
    columns exist.  ``check``: the columns must match ``jscale.schema`` (no unknown column,
    every core column, the latency columns all or none); ``check=False`` loads any table (e.g.
    published data, for ``jscale.analysis``).  Raises ``ResultsError`` naming the path (and
    the columns) if there is nothing to load or the check fails.
    """
    p = Path(out_dir)
    if p.is_file():
        if p.suffix == ".csv":
            df = pd.read_csv(p)
        elif p.suffix in (".jsonl", ".json"):
            df = pd.read_json(p, lines=p.suffix == ".jsonl")
        else:
            raise ResultsError(f"{p}: a results file must be .csv or .jsonl")
    else:
        if not p.is_dir():
            raise ResultsError(f"{p}: no such results directory or .csv/.jsonl file")
        files = sorted((p / RECORDS).glob("*.json"))
        if not files:
            raise ResultsError(
                f"{p}: no results (expected {RECORDS}/*.json written by `jscale sweep`)"
            )
        df = _read_records(files)
    if df.empty:
        raise ResultsError(f"{p}: the results table is empty")
    if check:
        try:
            schema.check_columns(df.columns, where=str(p))
        except schema.SchemaError as e:
            raise ResultsError(
                f"{e} (load it with check=False, or `--no-check` on the command line, to "
                f"read a table that is not a jscale sweep's)"
            ) from None
    first = [k for k in _FIRST if k in df]  # the point's identity and headline numbers lead
    df = df[first + [c for c in df.columns if c not in first]]
    keys = [k for k in (schema.N, "seed", "train_precision", schema.PRECISION) if k in df]
    return df.sort_values(keys, kind="stable").reset_index(drop=True) if keys else df


_FIRST = (
    "point_id",
    "size_target_params_non_embedding",
    schema.N,
    "params_total",
    "seed",
    "train_precision",
    schema.PRECISION,
    schema.TOKENS,
    schema.LOSS,
    schema.LOSS_SE,
    schema.DECODE,
    schema.PREFILL,
    "weight_bytes",
    "kv_cache_bytes",
)
