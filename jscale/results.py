"""The results store: one JSON file per record, written atomically, never edited in place.

A sweep writes each record (one (size, seed, training precision, inference precision)
point) to ``DIR/records/<point_id>.json`` through a temporary file in the same directory,
``fsync`` and ``os.replace``.  A ``kill -9`` at any moment leaves either the whole record or
none of it (a stray ``.tmp`` file is ignored), and two processes never write the same file
(workers take disjoint points), so the store is safe on a shared filesystem too.  Redoing a
point (``--force``) replaces its file: there is never more than one record per point.

This module imports nothing of the model or training code: ``load_results`` works on any
machine that has the directory.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

RECORDS = "records"


class ResultsError(ValueError):
    """A results directory that is missing, empty or unreadable."""


def record_path(out_dir: str | os.PathLike, point_id: str) -> Path:
    return Path(out_dir) / RECORDS / f"{point_id}.json"


def _clean(v):
    """JSON-safe: numpy scalars to Python; NaN/Inf to None (JSON has no NaN)."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_record(out_dir: str | os.PathLike, point_id: str, record: dict) -> Path:
    """Write ``record`` (a flat dict) as the point's file, atomically; returns its path."""
    path = record_path(out_dir, point_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = json.dumps({"point_id": point_id, **{k: _clean(v) for k, v in record.items()}},
                      sort_keys=True, indent=1)
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


def finished_points(out_dir: str | os.PathLike) -> set[str]:
    """The point ids that have a complete record in ``out_dir``."""
    d = Path(out_dir) / RECORDS
    return {p.stem for p in d.glob("*.json")} if d.is_dir() else set()


def load_results(out_dir: str | os.PathLike) -> pd.DataFrame:
    """All records under ``out_dir`` as a DataFrame, one row per point.

    ``out_dir`` is a sweep's output directory (with ``records/``), or a ``.csv``/``.jsonl``
    results table.  Rows are sorted by non-embedding params, seed and precisions when those
    columns exist.  Raises ``ResultsError`` naming the path if there is nothing to load.
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
            raise ResultsError(f"{p}: no results (expected {RECORDS}/*.json written by `jscale sweep`)")
        rows = []
        for f in files:
            try:
                rows.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise ResultsError(f"{f}: unreadable record ({e})") from None
        df = pd.DataFrame(rows)
    if df.empty:
        raise ResultsError(f"{p}: the results table is empty")
    first = [k for k in _FIRST if k in df]  # the point's identity and headline numbers lead
    df = df[first + [c for c in df.columns if c not in first]]
    keys = [k for k in ("params_non_embedding", "seed", "train_precision", "inference_precision") if k in df]
    return df.sort_values(keys, kind="stable").reset_index(drop=True) if keys else df


_FIRST = ("point_id", "size_target_params_non_embedding", "params_non_embedding", "params_total", "seed",
          "train_precision", "inference_precision", "train_tokens", "eval_loss_nats", "eval_loss_se_nats",
          "decode_ms_per_token_median", "prefill_ms_median", "weight_bytes", "kv_cache_bytes")
