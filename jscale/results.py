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
    """The JSON records ``files`` as one table; ``ResultsError`` naming an unreadable or corrupt
    one (not a JSON object with a point id)."""
    rows = []
    for f in files:
        try:
            rec = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ResultsError(
                f"{f}: corrupt record ({e}); delete it and rerun the sweep to redo that point"
            ) from None
        if not isinstance(rec, dict) or "point_id" not in rec:
            raise ResultsError(
                f"{f}: corrupt record (holds {type(rec).__name__} {str(rec)[:40]!r}, not a "
                "record); delete it and rerun the sweep to redo that point"
            )
        rows.append(rec)
    return pd.DataFrame(rows)


MANIFEST = "manifest.json"


def _manifest(out_dir: Path) -> dict | None:
    """``OUT/manifest.json`` (written by every sweep run: the config's record ids and hashes),
    or None when absent or unreadable (then every record is loaded)."""
    try:
        m = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) else None


def _this_config(df: pd.DataFrame, out_dir: Path, kind: str, all_configs: bool):
    """The rows of ``df`` (records of ``OUT/kind``) of the config in ``OUT/manifest.json`` (id
    listed, hash equal), and a note saying what was left out; all of ``df`` (and "") with
    ``all_configs`` or without a manifest."""
    m = _manifest(out_dir)
    if all_configs or m is None or not isinstance(m.get(kind), dict) or df.empty:
        return df, ""
    want = pd.Series(m[kind], dtype=object)
    have = df["config_hash"] if "config_hash" in df else pd.Series(None, index=df.index)
    ok = df["point_id"].map(want).eq(have).to_numpy()
    note = ""
    if not ok.all():
        other = df.loc[~ok, "point_id"]
        note = (
            f"{len(other)} record(s) in {out_dir / kind} are not of the sweep "
            f"{m.get('sweep_name')!r} that last ran there ({out_dir / MANIFEST}; another config "
            f"or an older one, e.g. {other.iloc[0]}): left out; load them with "
            "all_configs=True (--all-configs)"
        )
    return df[ok].reset_index(drop=True), note


def _read_table(p: Path) -> pd.DataFrame:
    """A results table file (.csv or .jsonl); ``ResultsError`` naming it when it cannot be
    read (empty, truncated, garbled, not UTF-8)."""
    try:
        if p.suffix == ".csv":
            return pd.read_csv(p)
        if p.suffix in (".jsonl", ".json"):
            return pd.read_json(p, lines=p.suffix == ".jsonl")
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as e:
        what = "empty" if isinstance(e, pd.errors.EmptyDataError) else "unreadable"
        raise ResultsError(
            f"{p}: {what} results table ({str(e).splitlines()[0][:120]}); rerun "
            "`jscale sweep` to rebuild it from the records, or point at the sweep's directory"
        ) from None
    raise ResultsError(f"{p}: a results file must be .csv or .jsonl")


def load_ladder(
    out_dir: str | os.PathLike, *, all_configs: bool = False, log=None
) -> pd.DataFrame | None:
    """The latency ladder of a sweep (``OUT/ladder/*.json``, or a ``latency_ladder.csv``
    table), one row per (size, precision), sorted by size and precision; None when the sweep
    has none.  The columns are checked against ``jscale.schema`` (``table="ladder"``).  From a
    directory, only the records of the config in ``OUT/manifest.json`` unless ``all_configs``
    (``log`` gets a line saying what was left out)."""
    p = Path(out_dir)
    if p.is_file():
        df = _read_table(p)
    else:
        if (p / "latency_ladder.csv").is_file() and not (p / LADDER).is_dir():
            return load_ladder(p / "latency_ladder.csv")
        files = sorted((p / LADDER).glob("*.json")) if (p / LADDER).is_dir() else []
        if not files:
            return None
        df, note = _this_config(_read_records(files), p, LADDER, all_configs)
        if note and log is not None:
            log(note)
    if df.empty:
        return None
    try:
        schema.check_columns(df.columns, where=str(p), table="ladder")
    except schema.SchemaError as e:
        raise ResultsError(str(e)) from None
    return df.sort_values([schema.N, schema.PRECISION], kind="stable").reset_index(drop=True)


def load_results(
    out_dir: str | os.PathLike, *, check: bool = True, all_configs: bool = False, log=None
) -> pd.DataFrame:
    """All records under ``out_dir`` as a DataFrame, one row per point.

    ``out_dir`` is a sweep's output directory (with ``records/``), or a ``.csv``/``.jsonl``
    results table.  Rows are sorted by non-embedding params, seed and precisions when those
    columns exist.  ``check``: the columns must match ``jscale.schema`` (no unknown column,
    every core column, the latency columns all or none); ``check=False`` loads any table (e.g.
    published data, for ``jscale.analysis``).  Raises ``ResultsError`` naming the path (and
    the columns) if there is nothing to load or the check fails.

    Config identity: from a directory, only the records of the config that last ran there
    (``OUT/manifest.json``: each record's id and config hash); records of other configs are
    left out and ``log`` (a callable) gets a line saying so.  From a table with ``check``, one
    sweep only (one ``sweep_name`` and corpus, no point twice), else ``ResultsError``.
    ``all_configs=True`` loads everything.
    """
    p = Path(out_dir)
    if p.is_file():
        df = _read_table(p)
        if check and not all_configs:
            _one_sweep(df, p)
    else:
        if not p.is_dir():
            raise ResultsError(f"{p}: no such results directory or .csv/.jsonl file")
        files = sorted((p / RECORDS).glob("*.json"))
        if not files:
            raise ResultsError(
                f"{p}: no results (expected {RECORDS}/*.json written by `jscale sweep`)"
            )
        df, note = _this_config(_read_records(files), p, RECORDS, all_configs)
        if note and log is not None:
            log(note)
        if df.empty:
            raise ResultsError(f"{p}: no record of the sweep that last ran there ({note})")
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


def _one_sweep(df: pd.DataFrame, p: Path) -> None:
    """``ResultsError`` when the table mixes sweeps: several ``sweep_name`` or ``corpus_digest``
    values, or a point id twice (fitting them together would mix designs)."""
    for col in ("sweep_name", "corpus_digest"):
        if col in df and df[col].nunique() > 1:
            vals = ", ".join(map(str, df[col].dropna().unique()[:4]))
            raise ResultsError(
                f"{p}: rows of {df[col].nunique()} sweeps ({col}: {vals}); fit one at a time "
                "(filter the rows), or load with all_configs=True (--all-configs) to fit them "
                "together"
            )
    if "point_id" in df and df["point_id"].duplicated().any():
        dup = df.loc[df["point_id"].duplicated(), "point_id"].iloc[0]
        raise ResultsError(
            f"{p}: point {dup} appears twice (rows of two configs?); keep one, or load with "
            "all_configs=True (--all-configs)"
        )


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
