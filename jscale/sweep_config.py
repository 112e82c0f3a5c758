"""Sweep configs: one TOML file names sizes x precisions x seeds and how to train and measure.

``load_sweep(path)`` reads and validates the whole file before any compute: unknown keys,
wrong types and impossible values raise ``ConfigError`` naming the key (``[train].lr``).
The result is a ``Sweep``: the resolved ``ModelConfig`` per size, a ``TrainConfig`` per
(size, seed, training precision), the inference precisions and the latency settings.

File layout (every key optional except ``[sizes]`` and ``[tokens]``)::

    name = "quick"                 # label written into every record
    out_dir = "runs/quick"         # relative to the current directory
    seeds = [0]
    precisions = ["fp32", "bf16", "int8", "w8a8"]   # inference precisions
    train_precisions = ["fp32"]                     # "fp32" and/or "bf16" (mixed)

    [sizes]                        # target non-embedding params: a list, or a ladder
    params_non_embedding = [1e4, 3e4, 1e5]
    # ladder = { lo = 1e4, hi = 1e6, per_decade = 4 }
    aspect_ratio = 64              # d_model / n_layers the ladder aims for
    head_dim = 64
    tie_embeddings = true

    [tokens]                       # training tokens per model: exactly one of
    fixed = 2e6                    #   the same budget for every size
    # per_param = 20               #   tokens = per_param x non-embedding params
    min = 0                        # clamps for per_param (tokens)
    max = 1e12

    [train]                        # TrainConfig fields (not steps/tokens/seed/compute) plus
    lr = 3e-3                      # peak lr at lr_ref_params non-embedding params;
    lr_ref_params = 1e5            # lr(N) = lr * (N / lr_ref_params) ** -lr_exponent
    lr_exponent = 0.0
    batch_size = 16
    seq_len = 256
    eval_tokens = 262144

    [latency]
    enabled = true
    batch = 1
    prompt_tokens = 128
    gen_tokens = 32
    repeats = 5
    warmup = 2
    kernel_layout = "auto"         # auto (fastest measured per precision), in_out, out_in
    min_rows = "auto"              # auto, or pad each projection's tokens to this many rows

    [corpus]
    path = ""                      # "" = Python's standard library (embedded default)
    val_percent = 2.0

    [mesh]                         # optional: shard training and latency over a device mesh
    data = -1                      # (jscale.sharding.make_mesh; -1 = all remaining devices)
    fsdp = 1
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

from jscale.config import (
    LATENCY_REPEATS,
    LATENCY_WARMUP,
    ConfigError,
    ModelConfig,
    TrainConfig,
    config_for_params,
    count_params,
    ladder_targets,
)
from jscale.formulation import KERNEL_LAYOUTS
from jscale.precision import POLICIES

PRECISIONS = tuple(POLICIES)  # fp32, bf16, int8, w8a8
TRAIN_PRECISIONS = ("fp32", "bf16")
_TOP = {
    "name",
    "out_dir",
    "seeds",
    "precisions",
    "train_precisions",
    "sizes",
    "tokens",
    "train",
    "latency",
    "corpus",
    "mesh",
}
_SIZES = {"params_non_embedding", "ladder", "aspect_ratio", "head_dim", "tie_embeddings"}
_LADDER = {"lo", "hi", "per_decade"}
_TOKENS = {"fixed", "per_param", "min", "max"}
_TRAIN_EXTRA = {"lr_ref_params", "lr_exponent"}
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {
    "steps",
    "tokens",
    "seed",
    "compute",
}
_LATENCY = {
    "enabled",
    "batch",
    "prompt_tokens",
    "gen_tokens",
    "repeats",
    "warmup",
    "kernel_layout",
    "min_rows",
}
_KERNEL_LAYOUTS = ("auto", *KERNEL_LAYOUTS)
_CORPUS = {"path", "val_percent"}
_MESH = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class Latency:
    """How latency is measured for every record (see ``jscale.latency.measure_latency``)."""

    enabled: bool = True
    batch: int = 1
    prompt_tokens: int = 128
    gen_tokens: int = 32
    repeats: int = LATENCY_REPEATS
    warmup: int = LATENCY_WARMUP
    kernel_layout: str = "auto"
    min_rows: int | str = "auto"


@dataclasses.dataclass(frozen=True)
class TrainPoint:
    """One model to train: a size target, its resolved config, one seed, one training precision."""

    size_target: float
    model: ModelConfig
    train: TrainConfig

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def train_precision(self) -> str:
        return self.train.compute


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A validated sweep: ``train_points`` (size-major order) x ``precisions``."""

    name: str
    out_dir: Path
    train_points: tuple[TrainPoint, ...]
    precisions: tuple[str, ...]
    latency: Latency
    corpus_path: str | None
    val_percent: float
    source: str  # the TOML text, copied into the output directory
    mesh: dict | None = None  # [mesh] {"data": .., "fsdp": ..} as given (None: one device)

    @property
    def n_records(self) -> int:
        return len(self.train_points) * len(self.precisions)


def _err(key: str, msg: str) -> ConfigError:
    return ConfigError(f"{key}: {msg}")


def _table(d: Any, key: str) -> dict:
    if not isinstance(d, dict):
        raise _err(key, f"must be a table, got {type(d).__name__}")
    return d


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise _err(
            f"{where}{unknown[0]}" if where else unknown[0],
            f"unknown key; allowed "
            f"{'in [' + where.rstrip('.') + ']' if where else 'at the top level'}: "
            f"{', '.join(sorted(allowed))}",
        )


def _number(
    v: Any, key: str, *, lo: float | None = None, hi: float | None = None, strict_lo: bool = False
) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _err(key, f"must be a finite number, got {v!r}")
    if lo is not None and (v <= lo if strict_lo else v < lo):
        raise _err(key, f"must be {'>' if strict_lo else '>='} {lo:g}, got {v!r}")
    if hi is not None and v > hi:
        raise _err(key, f"must be <= {hi:g}, got {v!r}")
    return float(v)


def _count(v: Any, key: str, lo: int = 1) -> int:
    x = _number(v, key, lo=lo)
    if x != int(x):
        raise _err(key, f"must be a whole number, got {v!r}")
    return int(x)


def _names(v: Any, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise _err(key, f"must be a non-empty list of {', '.join(allowed)}")
    for x in v:
        if x not in allowed:
            raise _err(key, f"unknown value {x!r}; allowed: {', '.join(allowed)}")
    if len(set(v)) != len(v):
        raise _err(key, f"lists a value twice: {v}")
    return tuple(v)


def _sizes(d: dict) -> tuple[list[float], dict]:
    _check_keys(d, _SIZES, "sizes.")
    has_list, has_ladder = "params_non_embedding" in d, "ladder" in d
    if has_list == has_ladder:
        raise _err(
            "sizes",
            "give exactly one of params_non_embedding = [...] or ladder = {lo, hi, per_decade}",
        )
    if has_list:
        v = d["params_non_embedding"]
        if not isinstance(v, list) or not v:
            raise _err(
                "sizes.params_non_embedding",
                "must be a non-empty list of numbers (e.g. [1e4, 1e5])",
            )
        targets = [_number(x, "sizes.params_non_embedding", lo=1e3) for x in v]
    else:
        lad = _table(d["ladder"], "sizes.ladder")
        _check_keys(lad, _LADDER, "sizes.ladder.")
        for k in ("lo", "hi"):
            if k not in lad:
                raise _err(f"sizes.ladder.{k}", "missing")
        lo = _number(lad["lo"], "sizes.ladder.lo", lo=1e3)
        hi = _number(lad["hi"], "sizes.ladder.hi", lo=lo)
        targets = ladder_targets(
            lo, hi, _count(lad.get("per_decade", 2), "sizes.ladder.per_decade")
        )
    if len(set(targets)) != len(targets):
        raise _err("sizes", f"lists a size twice: {targets}")
    kw = {
        "aspect_ratio": _number(
            d.get("aspect_ratio", 64.0), "sizes.aspect_ratio", lo=0, strict_lo=True
        ),
        "head_dim": _count(d.get("head_dim", 64), "sizes.head_dim", lo=8),
    }
    tie = d.get("tie_embeddings", True)
    if not isinstance(tie, bool):
        raise _err("sizes.tie_embeddings", f"must be true or false, got {tie!r}")
    kw["tie_embeddings"] = tie
    return sorted(targets), kw


def _token_rule(d: dict):
    _check_keys(d, _TOKENS, "tokens.")
    if ("fixed" in d) == ("per_param" in d):
        raise _err(
            "tokens",
            "give exactly one of fixed = <tokens> or per_param = <tokens per non-embedding param>",
        )
    if "fixed" in d:
        if "min" in d or "max" in d:
            raise _err("tokens", "min and max apply to per_param only")
        fixed = _count(d["fixed"], "tokens.fixed")
        return lambda n: fixed
    per = _number(d["per_param"], "tokens.per_param", lo=0, strict_lo=True)
    tmin = _count(d.get("min", 1), "tokens.min")
    tmax = _count(d.get("max", 10**15), "tokens.max", lo=tmin)
    return lambda n: int(min(max(round(per * n), tmin), tmax))


def parse_sweep(text: str, *, where: str = "<sweep>", out_dir: str | None = None) -> Sweep:
    """Validate a sweep config given as TOML text; ``where`` names the file in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    try:
        return _build(raw, text, out_dir)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_sweep(path: str | Path, *, out_dir: str | None = None) -> Sweep:
    """Read and validate the sweep config at ``path`` (``out_dir`` overrides the file's)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"{p}: {'is a directory, not a' if p.is_dir() else 'no such'} "
            "sweep config file (a .toml)"
        )
    return parse_sweep(p.read_text(), where=str(p), out_dir=out_dir)


def _build(raw: dict, text: str, out_dir_override: str | None) -> Sweep:
    _check_keys(raw, _TOP, "")
    for k in ("sizes", "tokens"):
        if k not in raw:
            raise _err(f"[{k}]", "missing table")
    name = raw.get("name", "sweep")
    if not isinstance(name, str) or not name:
        raise _err("name", f"must be a non-empty string, got {name!r}")
    out_dir = out_dir_override or raw.get("out_dir", f"runs/{name}")
    if not isinstance(out_dir, str) or not out_dir:
        raise _err("out_dir", f"must be a non-empty path string, got {out_dir!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise _err("seeds", "must be a non-empty list of integers >= 0")
    seeds = [_count(s, "seeds", lo=0) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise _err("seeds", f"lists a seed twice: {seeds}")
    precisions = _names(raw.get("precisions", list(PRECISIONS)), "precisions", PRECISIONS)
    train_precisions = _names(
        raw.get("train_precisions", ["fp32"]), "train_precisions", TRAIN_PRECISIONS
    )

    targets, size_kw = _sizes(_table(raw["sizes"], "[sizes]"))
    tokens_for = _token_rule(_table(raw["tokens"], "[tokens]"))

    tr = dict(_table(raw.get("train", {}), "[train]"))
    _check_keys(tr, _TRAIN_FIELDS | _TRAIN_EXTRA, "train.")
    lr_ref = _number(tr.pop("lr_ref_params", 1e5), "train.lr_ref_params", lo=0, strict_lo=True)
    lr_exp = _number(tr.pop("lr_exponent", 0.0), "train.lr_exponent", lo=-2, hi=2)
    for k, v in tr.items():  # TOML floats like 2.62e5 for integer fields
        if (
            isinstance(v, float)
            and v.is_integer()
            and isinstance(getattr(TrainConfig, k, None), int)
        ):
            tr[k] = int(v)

    lat = _table(raw.get("latency", {}), "[latency]")
    _check_keys(lat, _LATENCY, "latency.")
    enabled = lat.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _err("latency.enabled", f"must be true or false, got {enabled!r}")
    layout = lat.get("kernel_layout", "auto")
    if layout not in _KERNEL_LAYOUTS:
        raise _err(
            "latency.kernel_layout", f"must be one of {', '.join(_KERNEL_LAYOUTS)}, got {layout!r}"
        )
    rows = lat.get("min_rows", "auto")
    if (isinstance(rows, str) and rows != "auto") or isinstance(rows, bool):
        raise _err("latency.min_rows", f'must be "auto" or a positive integer, got {rows!r}')
    rows = rows if rows == "auto" else _count(rows, "latency.min_rows", lo=1)
    latency = Latency(
        enabled=enabled,
        kernel_layout=layout,
        min_rows=rows,
        **{
            k: _count(lat[k], f"latency.{k}", lo=0 if k == "warmup" else 1)
            for k in _LATENCY - {"enabled", "kernel_layout", "min_rows"}
            if k in lat
        },
    )

    corpus = _table(raw.get("corpus", {}), "[corpus]")
    _check_keys(corpus, _CORPUS, "corpus.")
    cpath = corpus.get("path", "")
    if not isinstance(cpath, str):
        raise _err(
            "corpus.path", f'must be a path string ("" for the default corpus), got {cpath!r}'
        )
    if cpath and not Path(cpath).expanduser().exists():
        raise _err("corpus.path", f"{cpath} does not exist")
    val_percent = _number(
        corpus.get("val_percent", 2.0), "corpus.val_percent", lo=0, strict_lo=True, hi=99
    )

    mesh = None
    if "mesh" in raw:
        m = _table(raw["mesh"], "[mesh]")
        _check_keys(m, set(_MESH), "mesh.")
        mesh = {"data": -1, "fsdp": 1}
        for k in _MESH:
            if k in m:
                v = m[k]
                if isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1):
                    raise _err(
                        f"mesh.{k}",
                        f"must be a positive integer or -1 (all remaining devices), got {v!r}",
                    )
                mesh[k] = v
        if mesh["data"] == -1 and mesh["fsdp"] == -1:
            raise _err("mesh", "at most one of data, fsdp may be -1 (all remaining devices)")
        bs = tr.get("batch_size", TrainConfig.batch_size)
        fixed = math.prod(v for v in mesh.values() if v != -1)
        if isinstance(bs, int) and bs % fixed:
            raise _err(
                "mesh", f"data x fsdp must divide train.batch_size = {bs}; {fixed} devices do not"
            )

    seq_len = tr.get("seq_len", TrainConfig.seq_len)
    max_seq = max(
        seq_len if isinstance(seq_len, int) else 1, latency.prompt_tokens + latency.gen_tokens
    )
    points, seen = [], {}
    for t in targets:
        cfg = config_for_params(t, max_seq_len=max_seq, **size_kw)
        if cfg in seen:
            raise _err(
                "sizes",
                f"targets {seen[cfg]:.4g} and {t:.4g} give the same ladder model "
                f"(d_model={cfg.d_model}, n_layers={cfg.n_layers}); drop one or space them further",
            )
        seen[cfg] = t
        n = count_params(cfg)["non_embedding"]
        lr = tr.get("lr", TrainConfig.lr)
        if isinstance(lr, (int, float)) and not isinstance(lr, bool):
            lr = lr * (n / lr_ref) ** -lr_exp
        for seed in seeds:
            for train_precision in train_precisions:
                try:
                    tc = TrainConfig(
                        **{**tr, "lr": lr}, tokens=tokens_for(n), seed=seed, compute=train_precision
                    )
                except (ConfigError, TypeError) as e:  # name the key as it is written in the file
                    raise ConfigError(
                        str(e)
                        .replace("TrainConfig: ", "[train]: ")
                        .replace("TrainConfig.", "train.")
                    ) from None
                points.append(TrainPoint(size_target=t, model=cfg, train=tc))
    return Sweep(
        name=name,
        out_dir=Path(out_dir),
        train_points=tuple(points),
        precisions=precisions,
        latency=latency,
        corpus_path=cpath or None,
        val_percent=val_percent,
        source=text,
        mesh=mesh,
    )
