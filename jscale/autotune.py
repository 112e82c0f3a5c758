"""Time every candidate formulation on the machine at hand, once, and remember the timings.

``timings(fmt, shape_class, cache_bytes)`` returns the median milliseconds of one batch-1
decode step's projections under each of ``formulation.CANDIDATES``, measured at first use on
the default device and cached in ``$JSCALE_CACHE_DIR/formulations.json`` keyed by the device
(platform, kind, count, host CPUs) and the JAX version, next to the roofline.  A different CPU
or JAX version measures again; ``refresh=True`` forces it (``jscale autotune --refresh``).

What is timed: ``STEPS`` decode-like steps in one jit, each pushing one token's activations
through every layer's four projections (``qkv``, ``out``, ``up``, ``down``; ``d_ff = 4 d``) by
``formulation.project``, in format ``fmt``, with random weights of the class's representative
shape (``REPRESENTATIVE``; ``streaming`` has enough layers that its weights are 1.5x the
measured cache, and at least 48 MiB).  Compiled ahead of time (compile time not timed), one
untimed run, then ``REPEATS`` timed runs.  Attention, norms and the head are the same under every
candidate and left out.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jscale import formulation, precision
from jscale.runtime import cache_dir

STEPS = 2
REPEATS = 3
# shape class -> (d_model, layers); streaming's layers are set from the cache (see module doc)
REPRESENTATIVE = {"small": (64, 2), "resident": (256, 2), "streaming": (1024, None)}
_VERSION = "v1"


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
    if layers is None:
        cache = cache_bytes if cache_bytes is not None and math.isfinite(cache_bytes) else 0.0
        per_layer = 12 * d * d * formulation._BYTES.get(fmt, 4)
        layers = max(2, math.ceil(max(1.5 * cache, 48 * 2**20) / per_layer))
    return d, layers


def _weights(fmt: str, d: int, layers: int, form: formulation.Formulation, key):
    """Random weights of ``layers`` blocks in ``fmt``, laid out for ``form``: per layer
    ``{name: (kernel, scale)}`` with scales per output channel for the integer formats."""
    shapes = {"qkv": (d, 3 * d), "out": (d, d), "up": (d, 4 * d), "down": (4 * d, d)}
    out = []
    for i in range(layers):
        layer = {}
        for j, (name, (n_in, n_out)) in enumerate(shapes.items()):
            k = jax.random.fold_in(key, 4 * i + j)
            shape = form.kernel_shape(n_in, n_out)
            if fmt in ("int8", "w8a8"):
                w = jax.random.randint(k, shape, -127, 128, jnp.int8)
                layer[name] = (w, jnp.full((n_out,), 1 / (127 * math.sqrt(n_in)), jnp.float32))
            else:
                dt = jnp.bfloat16 if fmt == "bf16" else jnp.float32
                layer[name] = (
                    (jax.random.normal(k, shape, jnp.float32) / math.sqrt(n_in)).astype(dt),
                    None,
                )
        out.append(layer)
    return out


def _steps(weights, x_1xD, fmt: str, form: formulation.Formulation):
    def body(_, x):
        for layer in weights:
            proj = lambda h, n: formulation.project(h, *layer[n], fmt, form)  # noqa: E731
            d = x.shape[-1]
            x = x + proj(proj(x, "qkv")[:, :d], "out")
            x = x + proj(jax.nn.gelu(proj(x, "up")), "down")
            x = x * jax.lax.rsqrt(jnp.mean(x * x) + 1e-6)
        return x

    return jax.lax.fori_loop(0, STEPS, body, x_1xD)


def time_candidates(
    fmt: str, shape_class: str, cache_bytes: float | None = None
) -> dict[str, dict[str, float]]:
    """Time every candidate formulation for ``fmt`` in ``shape_class`` now: per candidate name,
    ``{"ms": median ms per decode step, "q1", "q3", "compile_s"}``."""
    precision.get_policy(fmt)  # a known format, or PrecisionError
    d, layers = representative(shape_class, fmt, cache_bytes)
    x = jax.random.normal(jax.random.key(1), (1, d), jnp.float32)
    out, by_layout = {}, {}
    for form in formulation.CANDIDATES:
        if form.kernel_layout not in by_layout:  # one set of weights per layout
            by_layout.clear()
            by_layout[form.kernel_layout] = _weights(fmt, d, layers, form, jax.random.key(0))
        w = by_layout[form.kernel_layout]
        t0 = time.perf_counter()
        exe = jax.jit(_steps, static_argnames=("fmt", "form")).lower(w, x, fmt, form).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(exe(w, x))
        t = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            jax.block_until_ready(exe(w, x))
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
    key, dev = f"{fmt}|{shape_class}", device_key()
    entry = None if refresh else cached().get(key)
    if entry is None or set(entry.get("candidates", {})) != {
        f.name for f in formulation.CANDIDATES
    }:
        cands = time_candidates(fmt, shape_class, cache_bytes)
        d, layers = representative(shape_class, fmt, cache_bytes)
        entry = {
            "candidates": cands,
            "choice": min(cands, key=lambda n: cands[n]["ms"]),
            "d_model": d,
            "layers": layers,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        everything = _read()  # re-read: another process may have added entries meanwhile
        everything.setdefault(dev, {})[key] = entry
        path = _path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(everything, indent=1))
        os.replace(tmp, path)
    return {name: c["ms"] for name, c in entry["candidates"].items()}


def markdown(entries: dict | None = None) -> str:
    """The cached timings (default: this device's) as a markdown table: per format and shape
    class, each candidate's median ms per step and its speed against ``in_out:1``."""
    entries = cached() if entries is None else entries
    names = [f.name for f in formulation.CANDIDATES]
    lines = [
        f"Autotuned formulations on {device_key().split('|', 1)[1]}: median ms per batch-1 "
        f"decode step of the projections ({STEPS} steps per run, {REPEATS} runs), "
        "speed-up against in_out:1; the choice in bold.",
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
