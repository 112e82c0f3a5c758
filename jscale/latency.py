"""Inference latency, measured the way inference runs, beside the machine's roofline.

* ``prefill``: the prompt ``[B, P]`` through the model into an empty KV cache of
  ``P + G`` positions; returns the greedy next token and the cache.
* ``decode``: G greedy decode steps in one ``lax.scan`` inside one jit (no host round-trip
  per token), the cache donated so it is updated in place.
* ``generate``: both, in one jit.

``measure_latency`` compiles both ahead of time (compile time reported apart), warms up,
then times ``repeats`` runs of each: prefill latency and per-token decode latency with
median, quartiles, min, max and n.  Beside every number it puts the roofline lower bound from
analytic bytes and FLOPs and the measured rates of this machine (``jscale.roofline``):

* decode step: ``max(bytes / read bandwidth, compute time)`` with bytes = all weight bytes + the
  K and V buffers read (the whole buffer of P + G positions, as executed) and compute time =
  the FLOPs of each part for B tokens, ``2 * weights`` per projection, ``2 d V`` for the
  head and ``4 layers (P + G) d`` for attention, each at the measured rate of the matmul
  that part really runs (``compute_seconds``);
* prefill: the same with ``B * P`` tokens;

rates: fp32 for fp32 layers and int8 weight-only (cast to fp32 in the graph), bf16 for
bf16, int8 x int8 for w8a8; unconverted layers (e.g. the head under int8) at fp32.
``efficiency = bound / measured`` (1 = at the roofline).  The bandwidth is the machine's
read-only streaming bandwidth (``roofline.measure_read_bandwidth``): inference reads weights
and cache and writes almost nothing.

How each precision runs: by default (``"auto"``) in the formulation whose batch-1 decode
measured fastest on the backend (``FASTEST_LAYOUT``, ``FASTEST_ROWS``): the kernel layout (``Policy.kernel_layout``)
and the rows each projection is padded to (``Policy.min_rows``); where nothing was measured,
as trained (``in_out``, no padding).  On XLA:CPU every precision decodes fastest with kernels
stored ``[out, in]``; bf16 and w8a8 also pad their one decode token to 4 rows, so XLA hands
the product to YNNPACK instead of its own fp32 matrix-vector code (benchmarks/README.md).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jscale import model, precision, roofline
from jscale.config import ModelConfig


# Measured on the 2-vCPU machine of record (benchmarks/README.md, "How each precision runs"):
# backend -> precision format -> the kernel layout of its fastest batch-1 decode, and the best
# row padding for each layout.  Backends and formats not listed run as trained (in_out, 1).
FASTEST_LAYOUT = {"cpu": {"fp32": "out_in", "bf16": "out_in", "int8": "out_in", "w8a8": "out_in"}}
FASTEST_ROWS = {"cpu": {"fp32": {"in_out": 1, "out_in": 1}, "bf16": {"in_out": 1, "out_in": 4},
                        "int8": {"in_out": 1, "out_in": 1}, "w8a8": {"in_out": 4, "out_in": 4}}}
# ...for models whose largest projection (d_model x d_ff) has at least this many weights;
# below it a padded product costs more than it saves (1e5 params: bf16 0.54-0.68x, w8a8 0.75x
# of unpadded; 1e6, 65,536 weights: bf16 0.97x, w8a8 1.37x), so smaller models run unpadded.
PAD_MIN_WEIGHTS = 2 ** 16


def inference_policy(policy, kernel_layout: str = "auto", min_rows: int | str = "auto",
                     platform: str | None = None, cfg: ModelConfig | None = None) -> precision.Policy:
    """``policy`` with the kernel layout and row padding inference runs in.

    Each of ``kernel_layout`` / ``min_rows`` is taken as given, or for ``"auto"``: the
    policy's own value when it sets one (``Policy.kernel_layout`` / ``min_rows`` not None);
    else the fastest measured on ``platform`` (default: the default device's) for the
    policy's format: ``FASTEST_LAYOUT``, then ``FASTEST_ROWS`` for that layout (1 when
    ``cfg`` is a model whose ``d_model * d_ff`` is under ``PAD_MIN_WEIGHTS``); else as
    trained (``in_out``, 1)."""
    pol = precision.get_policy(policy)
    if kernel_layout != "auto" and kernel_layout not in precision.KERNEL_LAYOUTS:
        raise ValueError(f"kernel_layout must be auto or one of {', '.join(precision.KERNEL_LAYOUTS)}, "
                         f"got {kernel_layout!r}")
    if min_rows != "auto" and not precision.is_positive_int(min_rows):
        raise ValueError(f"min_rows must be auto or a positive integer, got {min_rows!r}")
    platform = platform or jax.devices()[0].platform
    if kernel_layout == "auto":
        kernel_layout = pol.kernel_layout or FASTEST_LAYOUT.get(platform, {}).get(pol.fmt, "in_out")
    if min_rows == "auto":
        small = cfg is not None and cfg.d_model * cfg.d_ff < PAD_MIN_WEIGHTS
        min_rows = pol.min_rows or (1 if small else FASTEST_ROWS.get(platform, {}).get(pol.fmt, {}).get(kernel_layout, 1))
    return precision.get_policy(pol, kernel_layout=kernel_layout, min_rows=int(min_rows))


def _constrain_cache(cache, mesh):
    """With a mesh: the KV cache split by batch over "data" and heads over "fsdp"."""
    if mesh is None:
        return cache
    from jscale import sharding
    return jax.lax.with_sharding_constraint(cache, sharding.cache_shardings(cache, mesh))


@functools.partial(jax.jit, static_argnames=("cfg", "gen_tokens", "policy", "mesh"))
def prefill(params, cfg: ModelConfig, prompt_BxP, gen_tokens: int, policy, mesh=None):
    """Prompt into a fresh cache of ``P + gen_tokens`` positions: (next token [B], cache).
    ``mesh`` (``jscale.sharding``): the cache is constrained to its sharding (batch over
    "data", heads over "fsdp"); the params keep the placement they come with."""
    cache = _constrain_cache(model.init_cache(cfg, prompt_BxP.shape[0], prompt_BxP.shape[1] + gen_tokens, policy),
                             mesh)
    logits_BxPxV, cache = model.apply_cached(params, cfg, prompt_BxP, cache, policy)
    return jnp.argmax(logits_BxPxV[:, -1], axis=-1).astype(jnp.int32), _constrain_cache(cache, mesh)


def _decode(params, cache, token_B, *, cfg, gen_tokens, policy, mesh=None):
    def step(carry, _):
        tok, c = carry
        logits_Bx1xV, c = model.apply_cached(params, cfg, tok[:, None], c, policy)
        nxt = jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32)
        return (nxt, _constrain_cache(c, mesh)), tok
    (_, cache), toks_GxB = jax.lax.scan(step, (token_B, cache), None, length=gen_tokens)
    return toks_GxB.T, cache


decode = jax.jit(_decode, static_argnames=("cfg", "gen_tokens", "policy", "mesh"), donate_argnums=(1,))
decode.__doc__ = """``gen_tokens`` greedy steps from ``token_B`` (the prefill's output): tokens
``[B, gen_tokens]`` (the first is ``token_B``) and the cache; the cache argument is donated.
The cache must have room for ``gen_tokens`` more positions: inside jit a write past the
buffer is clamped, not caught (``prefill`` sizes it exactly).  ``mesh``: as in ``prefill``."""


@functools.partial(jax.jit, static_argnames=("cfg", "gen_tokens", "policy", "mesh"))
def generate(params, cfg: ModelConfig, prompt_BxP, gen_tokens: int, policy="fp32", mesh=None):
    """Greedy generation of ``gen_tokens`` tokens after the prompt, in one jit: ``[B, G]``."""
    tok, cache = prefill(params, cfg, prompt_BxP, gen_tokens, policy, mesh)
    return _decode(params, cache, tok, cfg=cfg, gen_tokens=gen_tokens, policy=policy, mesh=mesh)[0]


def _stats(name: str, x_ms: np.ndarray) -> dict[str, float]:
    q1, med, q3 = np.percentile(x_ms, [25, 50, 75])
    return {f"{name}_median": float(med), f"{name}_q1": float(q1), f"{name}_q3": float(q3),
            f"{name}_min": float(x_ms.min()), f"{name}_max": float(x_ms.max())}


def _memory(compiled, prefix: str) -> dict[str, int]:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {f"xla_{prefix}_{k}_bytes": int(getattr(m, f"{k}_size_in_bytes"))
            for k in ("argument", "output", "temp", "generated_code")}


def _rate(roof: dict, fmt: str) -> float:
    """Measured matmul FLOP/s of the matmul that format ``fmt`` really runs: fp32 for fp32 and
    int8 weight-only (cast to fp32 in the graph), bf16 for bf16, int8 x int8 for w8a8."""
    key = {"bf16": "matmul_bf16_flops_per_s", "w8a8": "matmul_int8_flops_per_s"}.get(fmt, "matmul_flops_per_s")
    return roof.get(key, roof["matmul_flops_per_s"])


def compute_seconds(cfg: ModelConfig, policy: precision.Policy, tokens: int, keys: int, roof: dict) -> float:
    """Lower bound on the matmul time of ``tokens`` tokens attending over ``keys`` positions:
    every part's FLOPs at the rate of the format it runs in (block projections and the head
    per ``policy.layers``; the attention ``q k^T`` and ``p v`` in ``policy.attention``)."""
    d, f, L = cfg.d_model, cfg.d_ff, cfg.n_layers
    parts = [(2 * d * 3 * d, "qkv"), (2 * d * d, "out"), (2 * d * f, "up"), (2 * f * d, "down")]
    s = sum(tokens * L * fl / _rate(roof, policy.layer_format(name)) for fl, name in parts)
    head = "embed" if cfg.tie_embeddings else "head"
    s += tokens * 2 * d * cfg.vocab_size / _rate(roof, policy.layer_format(head))
    s += tokens * 4 * L * keys * d / _rate(roof, "bf16" if policy.attention == "bf16" else "fp32")
    return s


def measure_latency(params, cfg: ModelConfig, policy="fp32", *, batch: int = 1, prompt_tokens: int = 128,
                    gen_tokens: int = 32, repeats: int = 10, warmup: int = 2, roof: dict | None = None,
                    mesh=None, kernel_layout: str = "auto", min_rows: int | str = "auto") -> dict:
    """Latency of prefill and decode for float32 ``params`` (as trained, ``in_out``) run in
    precision ``policy`` (a name or a ``Policy``).

    The params are converted with ``precision.convert_params`` first, their projection
    kernels stored in ``kernel_layout`` (``in_out`` as trained, ``out_in`` transposed) and each
    projection's tokens padded to ``min_rows`` rows; ``"auto"`` (default) takes the fastest
    measured formulation of this precision on this backend (``inference_policy``).  The record
    says which (``kernel_layout``, ``matmul_min_rows``).  ``roof``: the machine's rates
    (``jscale.roofline.roofline()``, measured and cached when None); it must hold at least
    ``read_bandwidth_bytes_per_s`` and ``matmul_flops_per_s`` (bytes/s, FLOP/s).  Returns one flat dict
    whose keys carry their units: compile seconds, ``prefill_ms_*`` and
    ``decode_ms_per_token_*`` (median, q1, q3, min, max over ``repeats`` timed runs, each
    after ``warmup`` untimed ones), tokens/s, weight and KV-cache bytes, XLA's memory
    analysis, the roofline bounds and efficiencies, device and versions.  Raises
    ``ValueError`` before compiling if ``prompt_tokens + gen_tokens > cfg.max_seq_len``.

    mesh (``jscale.sharding.make_mesh``): the converted params are placed with the FSDP rule
    (each matrix split along "fsdp" on its largest divisible dimension), the prompt split by
    batch over "data" when it divides, and the KV cache by batch over "data" and heads over
    "fsdp"; XLA partitions prefill and decode and inserts the collectives, whose time is part of
    every measured number.  The record then carries ``mesh_shape`` and ``mesh_devices``, and the
    roofline bounds are for the whole mesh: ``mesh_devices`` x the one-device bandwidth and
    matmul rates (ideal scaling, no collectives), so efficiency < 1 includes communication.
    """
    pol = inference_policy(policy, kernel_layout, min_rows, cfg=cfg)
    for name, v in (("batch", batch), ("prompt_tokens", prompt_tokens), ("gen_tokens", gen_tokens),
                    ("repeats", repeats)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if prompt_tokens + gen_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt_tokens + gen_tokens = {prompt_tokens} + {gen_tokens} exceeds "
                         f"ModelConfig.max_seq_len = {cfg.max_seq_len}")
    roof = roofline.roofline() if roof is None else roof
    missing = [k for k in ("read_bandwidth_bytes_per_s", "matmul_flops_per_s") if k not in roof]
    if missing:
        raise ValueError(f"roof lacks {', '.join(missing)}: pass jscale.roofline.roofline() (or None to "
                         f"measure it), or a dict with at least those rates")
    qp = precision.convert_params(params, pol)
    prompt = jax.random.randint(jax.random.key(0), (batch, prompt_tokens), 0, cfg.vocab_size, jnp.int32)
    n_dev = 1
    if mesh is not None:
        from jscale import sharding
        qp = sharding.put(qp, sharding.tree_shardings(qp, mesh))
        prompt = sharding.put(prompt, sharding.tokens_sharding(mesh, batch))
        n_dev = mesh.size

    t0 = time.perf_counter()
    pre = prefill.lower(qp, cfg, prompt, gen_tokens, pol, mesh).compile()
    t1 = time.perf_counter()
    tok, cache = pre(qp, prompt)
    dec = decode.lower(qp, cache, tok, cfg=cfg, gen_tokens=gen_tokens, policy=pol, mesh=mesh).compile()
    t2 = time.perf_counter()

    prefill_s, decode_s = [], []
    for r in range(warmup + repeats):
        a = time.perf_counter()
        tok, cache = pre(qp, prompt)
        jax.block_until_ready((tok, cache))
        b = time.perf_counter()
        out, cache = dec(qp, cache, tok)
        jax.block_until_ready(out)
        c = time.perf_counter()
        if r >= warmup:
            prefill_s.append(b - a)
            decode_s.append((c - b) / gen_tokens)
    prefill_ms, decode_ms = 1e3 * np.array(prefill_s), 1e3 * np.array(decode_s)

    S = prompt_tokens + gen_tokens
    counts = model.count_params(cfg)
    weight_bytes = precision.param_bytes(qp)
    kv_bytes = model.kv_cache_bytes(cfg, batch, S, 2 if pol.attention == "bf16" else 4)
    bw = roof["read_bandwidth_bytes_per_s"] * n_dev
    mem_s = (weight_bytes + kv_bytes) / bw
    dec_fl_s = compute_seconds(cfg, pol, batch, S, roof) / n_dev
    pre_fl_s = compute_seconds(cfg, pol, batch * prompt_tokens, S, roof) / n_dev
    dec_bound_s, pre_bound_s = max(mem_s, dec_fl_s), max(mem_s, pre_fl_s)
    out = {
        "precision": pol.name, "kernel_layout": pol.kernel_layout, "matmul_min_rows": pol.min_rows,
        "batch": batch, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
        "n_repeats": repeats, "params_non_embedding": counts["non_embedding"], "params_total": counts["total"],
        "compile_prefill_s": t1 - t0, "compile_decode_s": t2 - t1,
        **_stats("prefill_ms", prefill_ms), **_stats("decode_ms_per_token", decode_ms),
        "prefill_tokens_per_s": batch * prompt_tokens / (np.median(prefill_ms) / 1e3),
        "decode_tokens_per_s": batch / (np.median(decode_ms) / 1e3),
        "weight_bytes": weight_bytes, "kv_cache_bytes": kv_bytes,
        **_memory(pre, "prefill"), **_memory(dec, "decode"),
        "decode_bound_ms_per_token": 1e3 * dec_bound_s,
        "decode_bound_kind": "memory" if mem_s >= dec_fl_s else "compute",
        "decode_efficiency": 1e3 * dec_bound_s / float(np.median(decode_ms)),
        "prefill_bound_ms": 1e3 * pre_bound_s,
        "prefill_bound_kind": "memory" if mem_s >= pre_fl_s else "compute",
        "prefill_efficiency": 1e3 * pre_bound_s / float(np.median(prefill_ms)),
        "roofline_read_bandwidth_bytes_per_s": bw, "roofline_matmul_flops_per_s": _rate(roof, pol.fmt) * n_dev,
        "roofline_rw_bandwidth_bytes_per_s": roof.get("bandwidth_bytes_per_s", float("nan")) * n_dev,
        **roofline.device_info(),
        "mesh_shape": None if mesh is None else ",".join(f"{k}={v}" for k, v in mesh.shape.items()),
        "mesh_devices": n_dev,
    }
    return out
