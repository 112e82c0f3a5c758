"""Time every candidate formulation on the machine at hand, once, and remember the timings.

``timings(fmt, shape_class, cache_bytes)`` returns the median milliseconds of one batch-1
decode step's projections under each of ``formulation.CANDIDATES``, measured at first use on
the default device and cached in ``$JSCALE_CACHE_DIR/formulations.json`` keyed by the device
(platform, kind, count, host CPUs) and the JAX version, next to the roofline.  A different CPU
or JAX version measures again; ``refresh=True`` forces it (``jscale autotune --refresh``).

What is timed: the real batch-1 decode step (``jscale.generate.decode``, ``STEPS`` greedy steps
in one jit, from an empty KV cache) of a random-weight model of the class's representative
shape (``REPRESENTATIVE``: d_model x layers, with d_ff = 4 d_model and 32-wide heads; ``large``
is 864 x 8, 2.9e8 bytes of fp32 weights, with more layers where the format's weights would not
reach 1.5x the measured cache, so they stream from memory), under each candidate.  Compiled
ahead of time (compile time not timed), one untimed run, then ``REPEATS`` timed runs.  A
micro-benchmark of the projections alone was tried first and ranked fp32's layouts the other
way round from the whole step, and a 3-layer model (108 MB of fp32) ranked them level while 8
layers and more agree with the 1e8 models (out_in 1.2x faster here), so the whole step of a
large model is timed.  The candidates compile concurrently (two threads) before any is timed.

``choice`` turns the timings into the formulation a record runs, keeping what a config pins.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from jscale import formulation, generate, ladder, model, precision
from jscale.config import ModelConfig
from jscale.runtime import cache_dir

STEPS = 4
REPEATS = 3
# shape class -> (d_model, layers); large gets more layers when 1.5x the cache needs them
REPRESENTATIVE = {"small": (64, 2), "large": (864, 8)}
MAX_LAYERS = 48  # 1.7 GB of float32 weights to convert: narrow formats on a huge cache stop here
_VERSION = "v3"


def device_key() -> str:
    """The cache key of this device: what makes timings transferable (or not)."""
    d = jax.devices()[0]
    return (
        f"{_VERSION}|{d.platform}|{d.device_kind}|{jax.device_count()}|{os.cpu_count()}|"
        f"{jax.__version__}"
    )


def representative(shape_class: str, fmt: str, cache_bytes: float | None) -> tuple[int, int]:
    """``(d_model, layers)`` the class is timed at in format ``fmt``."""
    if shape_class not in REPRESENTATIVE:
        raise ValueError(
            f"shape class must be one of {', '.join(REPRESENTATIVE)}, got {shape_class!r}"
        )
    d, layers = REPRESENTATIVE[shape_class]
    if shape_class == "large":
        cache = cache_bytes if cache_bytes is not None and math.isfinite(cache_bytes) else 0.0
        per_layer = 12 * d * d * precision.get_policy(fmt).bits / 8
        layers = min(MAX_LAYERS, max(layers, math.ceil(1.5 * cache / per_layer)))
    return d, layers


def representative_config(shape_class: str, fmt: str, cache_bytes: float | None):
    """The ``ModelConfig`` timed for ``shape_class`` in ``fmt``."""

    d, layers = representative(shape_class, fmt, cache_bytes)
    return ModelConfig(d_model=d, n_layers=layers, n_heads=d // 32, max_seq_len=STEPS + 1)


def time_candidates(
    fmt: str, shape_class: str, cache_bytes: float | None = None
) -> dict[str, dict[str, float]]:
    """Time every candidate formulation for ``fmt`` in ``shape_class`` now: per candidate name,
    ``{"ms": median ms per decode step, "q1", "q3", "compile_s"}``."""

    pol = precision.get_policy(fmt)  # a known format, or PrecisionError
    cfg = representative_config(shape_class, fmt, cache_bytes)
    converted = precision.convert_params(ladder.random_params(cfg, jax.random.key(0)), pol)
    token = jnp.zeros((1,), jnp.int32)

    def fresh_cache():
        return model.init_cache(cfg, 1, STEPS + 1, pol)

    def compiled(form):  # lowered here, compiled on a worker thread (XLA releases the GIL)
        params = formulation.arrange(converted, form)
        lowered = generate.decode.lower(
            params, fresh_cache(), token, cfg=cfg, gen_tokens=STEPS, policy=pol, form=form
        )
        t0 = time.perf_counter()
        return params, lowered.compile(), time.perf_counter() - t0

    with ThreadPoolExecutor(2) as pool:  # every candidate compiles before any is timed
        programs = list(pool.map(compiled, formulation.CANDIDATES))
    out = {}
    for form, (params, exe, compile_s) in zip(formulation.CANDIDATES, programs):
        t = []
        for run in range(REPEATS + 1):
            cache = jax.block_until_ready(fresh_cache())
            t0 = time.perf_counter()
            jax.block_until_ready(exe(params, cache, token))
            if run:  # the first run is a warm-up
                t.append((time.perf_counter() - t0) * 1e3 / STEPS)
        q1, med, q3 = np.percentile(t, [25, 50, 75])
        out[form.name] = {
            "ms": float(med),
            "q1": float(q1),
            "q3": float(q3),
            "compile_s": compile_s,
        }
    return out


def _path():
    return cache_dir() / "formulations.json"


def _read() -> dict:
    try:
        return json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}  # missing or garbled: measured again


def cached() -> dict:
    """Every cached timing of this device: ``{"fmt|class": entry}`` (entry as ``timings``
    stores it: ``candidates`` with their timings, ``choice``, ``d_model``, ``layers``,
    ``measured_at``)."""
    return _read().get(device_key(), {})


def timings(
    fmt: str, shape_class: str, cache_bytes: float | None = None, *, refresh: bool = False
) -> dict[str, float]:
    """Median ms per decode step of every candidate (by name) for ``fmt`` in
    ``shape_class``: from the cache, or measured now (``time_candidates``) and cached."""
    entry = None if refresh else cached().get(f"{fmt}|{shape_class}")
    if entry is None or set(entry.get("candidates", {})) != {
        f.name for f in formulation.CANDIDATES
    }:
        d, layers = representative(shape_class, fmt, cache_bytes)
        entry = store(fmt, shape_class, time_candidates(fmt, shape_class, cache_bytes), d, layers)
    return {name: c["ms"] for name, c in entry["candidates"].items()}


def store(
    fmt: str, shape_class: str, candidates: dict, d_model: int | None = None, layers=None
) -> dict:
    """Cache ``candidates`` (per candidate name ``{"ms": ..}``, as ``time_candidates``
    returns them) as this device's timings for ``fmt`` in ``shape_class``, atomically, and
    return the entry.  The autotune stores what it measures; the tests store a fixed ranking
    so that they never spend time autotuning."""
    entry = {
        "candidates": candidates,
        "choice": min(candidates, key=lambda n: candidates[n]["ms"]),
        "d_model": d_model,
        "layers": layers,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    everything = _read()  # re-read: another process may have added entries meanwhile
    everything.setdefault(device_key(), {})[f"{fmt}|{shape_class}"] = entry
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(everything, indent=1))
    os.replace(tmp, path)
    return entry


def choice(
    policy,
    cfg: ModelConfig | None = None,
    *,
    kernel_layout: str = "auto",
    min_rows: int | str = "auto",
    cache_bytes: float | None = None,
) -> tuple[formulation.Formulation, dict]:
    """The formulation inference runs ``policy`` in for ``cfg``, and where it came from.

    ``kernel_layout`` and ``min_rows`` are each pinned when given, else ``"auto"``.  Both
    pinned: that formulation.  Otherwise the autotune's
    timings for the policy's format and ``cfg``'s shape class (``timings``:
    measured on the default device at first use, then cached) pick the fastest candidate that
    agrees with the pins (or the fastest overall, with the pinned fields replaced).
    ``cache_bytes``: the measured effective cache (``roofline.roofline()["cache_bytes"]``),
    which sizes the ``large`` class's timing model.  Returns ``(form, info)`` with ``info`` the
    record's provenance: ``formulation_source`` (``autotune``, ``pinned`` or ``autotune +
    pinned``) and ``formulation_class``."""
    fmt = precision.get_policy(policy).fmt
    pinned = formulation.pins(kernel_layout, min_rows)
    klass = formulation.shape_class(cfg, fmt)
    info = {"formulation_class": klass}
    if len(pinned) == 2:
        form = formulation.apply_pins(formulation.TRAINED, pinned)
        return form, {**info, "formulation_source": "pinned"}
    ms = timings(fmt, klass, cache_bytes)
    ranked = sorted(formulation.CANDIDATES, key=lambda f: ms[f.name])
    agree = [f for f in ranked if formulation.apply_pins(f, pinned) == f]
    best = agree[0] if agree else formulation.apply_pins(ranked[0], pinned)
    if jax.process_count() > 1:  # each process timed its own device; they must run one program
        best = _process_0s(best)
    return best, {**info, "formulation_source": "autotune + pinned" if pinned else "autotune"}


def _process_0s(form: formulation.Formulation) -> formulation.Formulation:
    """Process 0's ``form``, on every process of a multi-host job (a collective: every process
    calls it in the same order).  Their own timings may rank the candidates differently, and a
    sharded program compiled in two formulations exchanges mismatched collectives."""
    from jax.experimental import multihost_utils

    mine = np.array([formulation.KERNEL_LAYOUTS.index(form.kernel_layout), form.min_rows], np.int32)
    layout, rows = (int(x) for x in multihost_utils.broadcast_one_to_all(mine))
    return formulation.Formulation(formulation.KERNEL_LAYOUTS[layout], rows)


def choose(policy, cfg: ModelConfig | None = None, **kw) -> formulation.Formulation:
    """``choice(policy, cfg, **kw)``'s formulation alone."""
    return choice(policy, cfg, **kw)[0]


def markdown(entries: dict | None = None) -> str:
    """The cached timings (default: this device's) as a markdown table: per format and shape
    class, each candidate's median ms per decode step and its speed against ``in_out:1``."""
    entries = cached() if entries is None else entries
    names = [f.name for f in formulation.CANDIDATES]
    lines = [
        f"Autotuned formulations on {device_key().split('|', 1)[1]}: median ms per batch-1 "
        f"decode step ({STEPS} steps per run, {REPEATS} runs) of a random-weight model "
        "(d_model x layers), speed-up against in_out:1; the choice in bold.",
        "",
        "| format | class | shape | " + " | ".join(names) + " | choice |",
        "|---|---|---|" + "---:|" * len(names) + "---|",
    ]
    for key in sorted(entries):
        e = entries[key]
        fmt, klass = key.split("|")
        base = e["candidates"][names[0]]["ms"]
        cells = []
        for n in names:
            ms = e["candidates"][n]["ms"]
            cell = f"{ms:.3g} ({base / ms:.2f}x)"
            cells.append(f"**{cell}**" if n == e["choice"] else cell)
        shape = f"{e['d_model']} x {e['layers']}"
        lines.append(f"| {fmt} | {klass} | {shape} | " + " | ".join(cells) + f" | {e['choice']} |")
    return "\n".join(lines) + "\n"
