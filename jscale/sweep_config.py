"""Sweep configs: one TOML file names sizes x precisions x seeds and how to train and measure.

``load_sweep(path)`` reads and validates the whole file before any compute: unknown keys,
wrong types and impossible values raise ``ConfigError`` naming the key (``[train].lr``).
The result is a ``Sweep``: the resolved ``ModelConfig`` per size, a ``TrainPoint`` per
(size, token budget, seed, lr, training precision), the inference precisions and the latency
settings.  With ``schedule = "wsd"`` the points that differ only in their token budget share one
trunk (``TrainPoint.trunk``): the sweep trains the trunk once, to the largest budget's cooldown,
and each budget is a short cooldown branch from it.

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
    # n_layers = 2                 # or fix the depth: the ladder varies the width only
    # n_heads = 2                  # or fix the head count (instead of head_dim): heads widen
    tie_embeddings = true

    [replicates]                   # optional: more seeds on some sizes (seed-to-seed noise)
    seeds = [1]
    sizes = [1e4, 3e4]             # size targets of [sizes]

    [tokens]                       # token budgets per size (a number or a list): exactly one of
    fixed = [1e6, 3e6]             #   the same budgets for every size
    # per_param = [5, 20, 80]      #   tokens = per_param x non-embedding params
    # compute = [1e11, 1e12]       #   IsoFLOP: C in FLOPs; each size gets tokens = C / (6 N)
    # tokens_per_param = [2, 500]  #   compute only: keep the (size, C) pairs whose tokens / N
    #                              #   lies in this window, i.e. the sizes around C's optimum
    min = 0                        # per_param: clamps (tokens); compute: pairs outside dropped
    max = 1e12
    max_epochs = 4.0               # refuse a run that repeats the training split more often

    [train]                        # TrainConfig fields (not steps/tokens/seed/compute) plus
    lr = 3e-3                      # peak lr (or a list: every lr is trained, analysis picks the
    lr_ref_params = 1e5            # best per size and budget on the model-selection split) at
    lr_exponent = 0.0              # lr_ref_params: lr(N) = lr * (N / lr_ref_params) ** -lr_exponent
    schedule = "wsd"               # "wsd": per (size, seed, lr) one constant-lr trunk, and per
    cooldown_frac = 0.2            # budget a cooldown branch from it; "cosine": a run per budget
    cooldown_shape = "1-sqrt"      # or "linear"
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
import re
import tomllib
from pathlib import Path
from typing import Any

from jscale import data, memory
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
from jscale.memory import MAX_PARAMS
from jscale.precision import names

MAX_SEED = 2**31 - 1  # seeds are int32 everywhere (jax.random.key, numpy)

PRECISIONS = names()  # fp32, bf16, int8, w8a8, int4 (int4-g32, int4-g128), fp8, fp8a8
DEFAULT_PRECISIONS = ("fp32", "bf16", "int8", "w8a8")
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
    "replicates",
}
_SIZES = {
    "params_non_embedding",
    "ladder",
    "aspect_ratio",
    "head_dim",
    "n_heads",
    "n_layers",
    "tie_embeddings",
}
_LADDER = {"lo", "hi", "per_decade"}
_TOKENS = {"fixed", "per_param", "compute", "tokens_per_param", "min", "max", "max_epochs"}
_REPLICATES = {"seeds", "sizes"}
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
    "ladder",
}
_LADDER_LATENCY = {"lo", "hi", "per_decade", "sizes", "aspect_ratio", "head_dim", "precisions"}
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
    """One model to train: a size target, its resolved config, and its training config (token
    budget, seed, lr, training precision, schedule).  ``compute_budget``: the IsoFLOP budget C
    (FLOPs) the point belongs to, or None."""

    size_target: float
    model: ModelConfig
    train: TrainConfig
    compute_budget: float | None = None

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def train_precision(self) -> str:
        return self.train.compute

    @property
    def budget(self) -> int:
        """The token budget as the config gives it (``train_tokens_target``)."""
        return self.train.tokens

    @property
    def trunk(self) -> tuple | None:
        """What the points sharing one WSD trunk have in common (None for cosine: no trunk)."""
        if self.train.schedule != "wsd":
            return None
        return (self.size_target, self.seed, self.train.lr, self.train_precision)


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

    max_epochs: float = 4.0
    notes: tuple[str, ...] = ()  # what the design cannot identify, said before training
    # [latency.ladder]: (target, config) of each random-weight model timed in every precision
    ladder: tuple = ()
    ladder_precisions: tuple = ()  # the ladder's precisions (default: ``precisions``)

    @property
    def n_records(self) -> int:
        return len(self.train_points) * len(self.precisions)

    def groups(self) -> list[list[TrainPoint]]:
        """The training points as runs of one trunk each (budgets ascending); a cosine point is a
        group of its own.  Order: as ``train_points``."""
        out: dict = {}
        for k, p in enumerate(self.train_points):
            out.setdefault(p.trunk if p.trunk is not None else ("run", k), []).append(p)
        return [sorted(g, key=lambda p: p.budget) for g in out.values()]


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


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _seed(v: Any, key: str) -> int:
    x = _count(v, key, lo=0)
    if x > MAX_SEED:
        raise _err(key, f"must be at most {MAX_SEED} (2^31 - 1), got {v!r}")
    return x


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
        targets = [_number(x, "sizes.params_non_embedding", lo=1e3, hi=MAX_PARAMS) for x in v]
    else:
        lad = _table(d["ladder"], "sizes.ladder")
        _check_keys(lad, _LADDER, "sizes.ladder.")
        for k in ("lo", "hi"):
            if k not in lad:
                raise _err(f"sizes.ladder.{k}", "missing")
        lo = _number(lad["lo"], "sizes.ladder.lo", lo=1e3, hi=MAX_PARAMS)
        hi = _number(lad["hi"], "sizes.ladder.hi", lo=lo, hi=MAX_PARAMS)
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
    if "n_layers" in d:
        kw["n_layers"] = _count(d["n_layers"], "sizes.n_layers")
    if "n_heads" in d:
        if "head_dim" in d:
            raise _err(
                "sizes.n_heads",
                "give head_dim (the heads' width; their number grows with d_model) or n_heads "
                "(their number; their width grows with d_model), not both",
            )
        kw["n_heads"] = _count(d["n_heads"], "sizes.n_heads")
    tie = d.get("tie_embeddings", True)
    if not isinstance(tie, bool):
        raise _err("sizes.tie_embeddings", f"must be true or false, got {tie!r}")
    kw["tie_embeddings"] = tie
    return sorted(targets), kw


def _number_list(v: Any, key: str, **kw) -> list[float]:
    vals = v if isinstance(v, list) else [v]
    if not vals:
        raise _err(key, "must be a number or a non-empty list of numbers")
    out = [_number(x, key, **kw) for x in vals]
    if len(set(out)) != len(out):
        raise _err(key, f"lists a value twice: {vals}")
    return sorted(out)


def _token_rule(d: dict):
    """``(budgets_for(n) -> [(tokens, C or None), ...], max_epochs)`` from ``[tokens]``."""
    _check_keys(d, _TOKENS, "tokens.")
    given = [k for k in ("fixed", "per_param", "compute") if k in d]
    if len(given) != 1:
        raise _err(
            "tokens",
            "give exactly one of fixed = <tokens or list>, per_param = <tokens per non-embedding "
            "param, or list>, compute = <IsoFLOP budgets in FLOPs, list>"
            + (f"; got {', '.join(given)}" if given else ""),
        )
    max_epochs = _number(d.get("max_epochs", 4.0), "tokens.max_epochs", lo=0, strict_lo=True)
    if "tokens_per_param" in d and "compute" not in d:
        raise _err("tokens.tokens_per_param", "applies to compute = [...] only")
    if "fixed" in d:
        if "min" in d or "max" in d:
            raise _err("tokens", "min and max apply to per_param and compute only")
        fixed = [_count(x, "tokens.fixed") for x in _number_list(d["fixed"], "tokens.fixed", lo=1)]
        return (lambda n: [(t, None) for t in fixed]), max_epochs
    tmin = _count(d.get("min", 1), "tokens.min")
    tmax = _count(d.get("max", 10**15), "tokens.max", lo=tmin)
    if "per_param" in d:
        per = _number_list(d["per_param"], "tokens.per_param", lo=0, strict_lo=True)

        def per_param(n):
            budgets = sorted({int(min(max(round(r * n), tmin), tmax)) for r in per})
            return [(t, None) for t in budgets]

        return per_param, max_epochs
    budgets_c = _number_list(d["compute"], "tokens.compute", lo=0, strict_lo=True)
    window = d.get("tokens_per_param", [0, math.inf])
    if not isinstance(window, list) or len(window) != 2:
        raise _err("tokens.tokens_per_param", f"must be [lo, hi], got {window!r}")
    lo = _number(window[0], "tokens.tokens_per_param", lo=0)
    hi = (
        window[1] if window[1] == math.inf else _number(window[1], "tokens.tokens_per_param", lo=lo)
    )

    def iso(n):
        out = []
        for c in budgets_c:
            t = round(c / (6 * n))
            if tmin <= t <= tmax and lo <= t / n <= hi:
                out.append((t, c))
        return out

    return iso, max_epochs


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
    try:
        text = p.read_bytes().decode("utf-8")  # TOML is UTF-8
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{p}: cannot read the sweep config ({e}); it must be a readable UTF-8 TOML file"
        ) from None
    return parse_sweep(text, where=str(p), out_dir=out_dir)


def _build(raw: dict, text: str, out_dir_override: str | None) -> Sweep:
    _check_keys(raw, _TOP, "")
    for k in ("sizes", "tokens"):
        if k not in raw:
            raise _err(f"[{k}]", "missing table")
    name = raw.get("name", "sweep")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _err(
            "name",
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            f"(it names records and the default out_dir runs/NAME), got {name!r}",
        )
    out_dir = out_dir_override or raw.get("out_dir", f"runs/{name}")
    if not isinstance(out_dir, str) or not out_dir:
        raise _err("out_dir", f"must be a non-empty path string, got {out_dir!r}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise _err("out_dir", f"{out_dir} is a file, not a directory; name another out_dir")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise _err("seeds", "must be a non-empty list of integers >= 0")
    seeds = [_seed(s, "seeds") for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise _err("seeds", f"lists a seed twice: {seeds}")
    precisions = _names(raw.get("precisions", list(DEFAULT_PRECISIONS)), "precisions", PRECISIONS)
    train_precisions = _names(
        raw.get("train_precisions", ["fp32"]), "train_precisions", TRAIN_PRECISIONS
    )

    targets, size_kw = _sizes(_table(raw["sizes"], "[sizes]"))
    corpus = _table(raw.get("corpus", {}), "[corpus]")
    _check_keys(corpus, _CORPUS, "corpus.")
    cpath = corpus.get("path", "")
    if not isinstance(cpath, str):
        raise _err(
            "corpus.path", f'must be a path string ("" for the default corpus), got {cpath!r}'
        )
    val_percent = _number(
        corpus.get("val_percent", 2.0), "corpus.val_percent", lo=0, strict_lo=True, hi=99
    )
    size_kw["vocab_size"] = data.corpus_vocab_size(cpath)  # a token corpus's, else bytes
    budgets_for, max_epochs = _token_rule(_table(raw["tokens"], "[tokens]"))
    extra_seeds = _replicates(raw.get("replicates"), targets, seeds)

    tr = dict(_table(raw.get("train", {}), "[train]"))
    _check_keys(tr, _TRAIN_FIELDS | _TRAIN_EXTRA, "train.")
    lr_ref = _number(tr.pop("lr_ref_params", 1e5), "train.lr_ref_params", lo=0, strict_lo=True)
    lr_exp = _number(tr.pop("lr_exponent", 0.0), "train.lr_exponent", lo=-2, hi=2)
    lrs = _number_list(tr.pop("lr", TrainConfig.lr), "train.lr", lo=0, strict_lo=True)
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
            for k in _LATENCY - {"enabled", "kernel_layout", "min_rows", "ladder"}
            if k in lat
        },
    )
    ladder_shapes = _latency_ladder(lat.get("ladder"), latency, size_kw) if enabled else ()
    ladder_precisions = precisions
    if ladder_shapes and "precisions" in lat["ladder"]:
        ladder_precisions = _names(
            lat["ladder"]["precisions"], "latency.ladder.precisions", PRECISIONS
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
        budgets = budgets_for(n)
        for seed in seeds + extra_seeds.get(t, []):
            for lr in lrs:
                for train_precision in train_precisions:
                    points += _points_of_trunk(
                        t, cfg, tr, budgets, lr * (n / lr_ref) ** -lr_exp, seed, train_precision
                    )
    if cpath and not Path(cpath).expanduser().exists():
        need = max(p.train.total_steps * p.train.tokens_per_step for p in points) if points else 0
        raise _err(
            "corpus.path",
            f"{cpath} does not exist; this sweep's largest run trains {need:.3g} tokens, so it "
            f"needs a training split of at least {need / max_epochs:.3g} tokens "
            f"(tokens.max_epochs = {max_epochs:g}): make one with `jscale tokenize TEXT --out "
            f"{cpath}` (docs/data.md)",
        )
    if not points:
        raise _err(
            "tokens",
            "no (size, budget) pair is left: widen tokens.tokens_per_param or tokens.min/max, or "
            "choose compute budgets nearer the sizes (tokens = C / (6 N))",
        )
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
        max_epochs=max_epochs,
        notes=tuple(_design_notes(points)),
        ladder=tuple(ladder_shapes),
        ladder_precisions=tuple(ladder_precisions),
    )


def check_memory(sweep: Sweep, memory_bytes: float | None = None) -> None:
    """``ConfigError`` (with the GiB numbers) when training, evaluating or timing a point of
    ``sweep`` would need more than ``memory.FRACTION`` of the device's memory (``memory_bytes``,
    default: the default device's).  ``jscale.sweep`` calls it before any compute; ``--plan``
    prints it as a warning (a sweep may be planned on a smaller machine than it runs on)."""
    if memory_bytes is None:
        memory_bytes = memory.device_bytes()
    seen = set()
    for p in sweep.train_points:
        key = (p.model, p.train.batch_size, p.train.seq_len, p.train.eval_batch_size)
        if key not in seen:
            seen.add(key)
            memory.check_training(p.model, p.train, memory_bytes, f"sizes ({p.size_target:.3g})")


def _latency_ladder(raw, latency: Latency, size_kw: dict) -> list:
    """``[latency.ladder]`` resolved to ``(target, config)`` pairs (``jscale.ladder.shapes``),
    after checking that the largest fits the device's memory (``hi = "auto"``: the largest
    that does)."""
    from jscale import ladder

    if raw is None:
        return []
    lad = _table(raw, "[latency.ladder]")
    _check_keys(lad, _LADDER_LATENCY, "latency.ladder.")
    kw = {
        "aspect_ratio": _number(
            lad.get("aspect_ratio", 64.0), "latency.ladder.aspect_ratio", lo=0, strict_lo=True
        ),
        "head_dim": _count(lad.get("head_dim", 32), "latency.ladder.head_dim", lo=1),
        "vocab_size": size_kw["vocab_size"],
        "max_seq_len": latency.prompt_tokens + latency.gen_tokens,
        "tie_embeddings": size_kw.get("tie_embeddings", True),
    }
    mem = memory.device_bytes()
    if "sizes" in lad:
        if any(k in lad for k in ("lo", "hi", "per_decade")):
            raise _err("latency.ladder", "give sizes, or lo / hi / per_decade, not both")
        targets = _number_list(lad["sizes"], "latency.ladder.sizes", lo=1e3, hi=MAX_PARAMS)
        out = []
        for t in targets:
            out += [s for s in ladder.shapes(t, t, 1, **kw) if not out or s[1] != out[-1][1]]
        ladder.check_memory([cfg for _, cfg in out], mem, "latency.ladder.sizes")
        return out
    lo = _number(lad.get("lo", 1e4), "latency.ladder.lo", lo=1e3, hi=MAX_PARAMS)
    hi = lad.get("hi", "auto")
    if hi == "auto":
        hi = ladder.largest_fitting(mem, **kw) if math.isfinite(mem) else 1e9
    else:
        hi = _number(hi, "latency.ladder.hi", lo=lo, hi=MAX_PARAMS)
    per_decade = _count(lad.get("per_decade", 3), "latency.ladder.per_decade", lo=1)
    if per_decade > 24:
        raise _err("latency.ladder.per_decade", f"must be at most 24, got {per_decade}")
    out = ladder.shapes(lo, max(lo, hi), per_decade, **kw)
    ladder.check_memory([cfg for _, cfg in out], mem, "latency.ladder.hi")
    return out


def _train_config(tr: dict, **kw) -> TrainConfig:
    try:
        return TrainConfig(**{**tr, **kw})
    except (ConfigError, TypeError) as e:  # name the key as it is written in the file
        raise ConfigError(
            str(e).replace("TrainConfig: ", "[train]: ").replace("TrainConfig.", "train.")
        ) from None


def _points_of_trunk(target, cfg, tr, budgets, lr, seed, train_precision) -> list[TrainPoint]:
    """The points of one (size, seed, lr, training precision): one per token budget.  WSD points
    share the warm-up of the smallest budget (``warmup_frac`` of its steps unless
    ``warmup_steps`` is given), so their schedules agree up to each cooldown."""
    kw = dict(lr=lr, seed=seed, compute=train_precision)
    tcs = [(_train_config(tr, tokens=tok, **kw), c) for tok, c in budgets]
    if tcs and tcs[0][0].schedule == "wsd" and tr.get("warmup_steps") is None:
        warm = tcs[0][0].total_warmup_steps
        tcs = [(dataclasses.replace(tc, warmup_steps=warm), c) for tc, c in tcs]
    return [TrainPoint(target, cfg, tc, c) for tc, c in tcs]


def _replicates(d, targets: list[float], seeds: list[int]) -> dict[float, list[int]]:
    """``[replicates]``: {size target: extra seeds}."""
    if d is None:
        return {}
    d = _table(d, "[replicates]")
    _check_keys(d, _REPLICATES, "replicates.")
    for k in ("seeds", "sizes"):
        if k not in d:
            raise _err(f"replicates.{k}", "missing")
    extra = d["seeds"]
    if not isinstance(extra, list) or not extra:
        raise _err("replicates.seeds", "must be a non-empty list of integers >= 0")
    extra = [_seed(x, "replicates.seeds") for x in extra]
    if len(set(extra)) != len(extra) or set(extra) & set(seeds):
        raise _err("replicates.seeds", f"lists a seed twice or one of seeds = {seeds}: {extra}")
    sizes = d["sizes"]
    if not isinstance(sizes, list) or not sizes:
        raise _err("replicates.sizes", "must be a non-empty list of size targets from [sizes]")
    out = {}
    for v in sizes:
        x = _number(v, "replicates.sizes")
        match = [t for t in targets if abs(t / x - 1) < 0.01]
        if not match:
            raise _err(
                "replicates.sizes",
                f"{v!r} is not a size target of [sizes] ({', '.join(f'{t:.4g}' for t in targets)})",
            )
        out[match[0]] = extra
    return out


def _design_notes(points: list[TrainPoint]) -> list[str]:
    """What the grid cannot identify, said before anything is trained."""
    notes = []
    budgets = {p.size_target: set() for p in points}
    for p in points:
        budgets[p.size_target].add(p.budget)
    if all(len(b) == 1 for b in budgets.values()):
        if len({b for bs in budgets.values() for b in bs}) == 1:
            notes.append(
                "one token budget for every size: L(N, D) (the Chinchilla form) is not "
                "identified, only L(N) at that budget; give several budgets per size"
            )
        else:
            notes.append(
                "one budget per size: N and D change together, so their effects on the loss "
                "cannot be told apart; give several budgets per size"
            )
    cs = {}
    for p in points:
        if p.compute_budget is not None:
            cs.setdefault(p.compute_budget, set()).add(p.size_target)
    for c, sizes in sorted(cs.items()):
        if len(sizes) < 3:
            notes.append(
                f"IsoFLOP budget C = {c:.3g} FLOPs has {len(sizes)} size(s) in the window: "
                "its parabola needs 3 or more"
            )
    seeds = {}
    for p in points:
        seeds.setdefault((p.size_target, p.budget), set()).add(p.seed)
    if all(len(s) == 1 for s in seeds.values()):
        notes.append(
            "one seed per model: seed-to-seed noise is not measured, and error bars hold only "
            "the held-out sampling noise; add [replicates]"
        )
    return notes
