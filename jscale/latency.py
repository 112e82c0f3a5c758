"""Inference latency, measured the way inference runs, beside the machine's roofline.

The programs timed are ``jscale.generate``'s (re-exported here): ``prefill`` (the prompt
``[B, P]`` into an empty KV cache of ``P + G`` positions), ``decode`` (G greedy steps in one
``lax.scan`` inside one jit, the cache donated) and ``generate`` (both).

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

How each precision runs (kernel layout, row padding) is a ``jscale.formulation.Formulation``:
by default the fastest the autotune measured for the policy's format and the model's shape
class on this device (``autotune.choice``); the record says which, and why.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from jscale import autotune, formulation, precision, roofline, schema, sharding
from jscale.config import (
    LATENCY_REPEATS,
    LATENCY_WARMUP,
    ConfigError,
    ModelConfig,
    check_positive_int,
    kv_cache_bytes,
)
from jscale.formulation import Formulation
from jscale.generate import decode, generate, prefill  # noqa: F401  (re-exported)


def _stats(name: str, x_ms: np.ndarray) -> dict[str, float]:
    q1, med, q3 = np.percentile(x_ms, [25, 50, 75])
    return {
        f"{name}_median": float(med),
        f"{name}_q1": float(q1),
        f"{name}_q3": float(q3),
        f"{name}_min": float(x_ms.min()),
        f"{name}_max": float(x_ms.max()),
    }


def _memory(compiled, prefix: str) -> dict[str, int]:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {
        f"xla_{prefix}_{k}_bytes": int(getattr(m, f"{k}_size_in_bytes"))
        for k in ("argument", "output", "temp", "generated_code")
    }


def _rate(roof: dict, fmt: str) -> float:
    """Measured matmul FLOP/s of the matmul that format ``fmt`` really runs: fp32 for fp32 and
    int8 weight-only (cast to fp32 in the graph), bf16 for bf16, int8 x int8 for w8a8."""
    key = {"bf16": "matmul_bf16_flops_per_s", "w8a8": "matmul_int8_flops_per_s"}.get(
        fmt, "matmul_flops_per_s"
    )
    return roof.get(key, roof["matmul_flops_per_s"])


def compute_seconds(
    cfg: ModelConfig, policy: precision.Policy, tokens: int, keys: int, roof: dict
) -> float:
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


def measure_latency(
    params,
    cfg: ModelConfig,
    policy="fp32",
    *,
    batch: int = 1,
    prompt_tokens: int = 128,
    gen_tokens: int = 32,
    repeats: int = LATENCY_REPEATS,
    warmup: int = LATENCY_WARMUP,
    roof: dict | None = None,
    mesh=None,
    form: Formulation | None = None,
) -> dict:
    """Latency of prefill and decode for float32 ``params`` (as trained) run in precision
    ``policy`` (a name or a ``Policy``) and formulation ``form`` (None: ``autotune.choice``,
    the fastest the autotune measured for this precision and shape class on this device).

    The params are converted (``precision.convert_params``) and laid out
    (``formulation.arrange``) first.  ``roof``: the machine's rates (``roofline.roofline()``,
    measured and cached when None); it must hold at least ``read_bandwidth_bytes_per_s`` and
    ``matmul_flops_per_s``.  Returns one flat dict of the ``latency`` columns of
    ``jscale.schema`` (each with its unit there): compile seconds, ``prefill_ms_*`` and
    ``decode_ms_per_token_*`` (median, q1, q3, min, max over ``repeats`` timed runs, each after
    ``warmup`` untimed ones), tokens/s, weight and KV-cache bytes, XLA's memory analysis, the
    roofline bounds and efficiencies.  Raises ``ConfigError`` before compiling on a bad
    argument or if ``prompt_tokens + gen_tokens > cfg.max_seq_len``.

    mesh (``jscale.sharding.make_mesh``): the converted params are placed with the FSDP rule,
    the prompt split by batch over "data" when it divides, and the KV cache by batch over "data"
    and heads over "fsdp"; XLA partitions prefill and decode and inserts the collectives, whose
    time is part of every measured number.  The roofline bounds are then for the whole mesh
    (``mesh_devices`` x the one-device rates, ideal scaling), so efficiency < 1 includes
    communication.
    """
    pol = precision.get_policy(policy)
    for name, v in (
        ("batch", batch),
        ("prompt_tokens", prompt_tokens),
        ("gen_tokens", gen_tokens),
        ("repeats", repeats),
    ):
        check_positive_int(v, name)
    if prompt_tokens + gen_tokens > cfg.max_seq_len:
        raise ConfigError(
            f"prompt_tokens + gen_tokens = {prompt_tokens} + {gen_tokens} exceeds "
            f"ModelConfig.max_seq_len = {cfg.max_seq_len}"
        )
    roof = roofline.roofline() if roof is None else roof
    missing = [k for k in ("read_bandwidth_bytes_per_s", "matmul_flops_per_s") if k not in roof]
    if missing:
        raise ConfigError(
            f"roof lacks {', '.join(missing)}: pass jscale.roofline.roofline() (or None to "
            f"measure it), or a dict with at least those rates"
        )
    if form is None:
        form, how = autotune.choice(pol, cfg, cache_bytes=roof.get("cache_bytes"))
    else:
        how = {
            "formulation_source": "given",
            "formulation_class": formulation.shape_class(cfg, pol.fmt),
        }
    run_params = formulation.arrange(precision.convert_params(params, pol), form)
    prompt_BxP = jax.random.randint(
        jax.random.key(0), (batch, prompt_tokens), 0, cfg.vocab_size, jnp.int32
    )
    n_devices = 1
    if mesh is not None:
        run_params = sharding.put(run_params, sharding.tree_shardings(run_params, mesh))
        prompt_BxP = sharding.put(prompt_BxP, sharding.tokens_sharding(mesh, batch))
        n_devices = mesh.size

    timing = _time_prefill_and_decode(
        run_params, cfg, prompt_BxP, gen_tokens, pol, form, mesh, repeats, warmup
    )
    bounds = _roofline_bounds(
        cfg,
        pol,
        batch,
        prompt_tokens,
        gen_tokens,
        precision.param_bytes(run_params),
        roof,
        n_devices,
        timing,
    )
    return schema.part(
        "latency",
        {
            "latency_batch": batch,
            "prompt_tokens": prompt_tokens,
            "gen_tokens": gen_tokens,
            "latency_repeats": repeats,
            "kernel_layout": form.kernel_layout,
            "matmul_min_rows": form.min_rows,
            **how,
            **timing,
            **bounds,
            "mesh_shape": sharding.mesh_shape_str(mesh),
            "mesh_devices": n_devices,
        },
    )


def _time_prefill_and_decode(
    run_params, cfg, prompt_BxP, gen_tokens, pol, form, mesh, repeats, warmup
) -> dict:
    """Compile prefill and decode ahead of time (concurrently), then time ``warmup + repeats``
    runs of each and keep the last ``repeats``: the timing and memory columns of a latency
    record."""
    batch, prompt_tokens = prompt_BxP.shape
    # the decode program is lowered against the prefill's output shapes, so both compile at
    # once, one per thread (XLA compiles without the GIL): compile times overlap
    if mesh is None:
        token_shape, cache_shape = jax.eval_shape(
            lambda p, x: prefill(p, cfg, x, gen_tokens, pol, form=form), run_params, prompt_BxP
        )
    else:  # the decode program must see the cache's sharding: take it from a real prefill
        token_shape, cache_shape = prefill(
            run_params, cfg, prompt_BxP, gen_tokens, pol, form=form, mesh=mesh
        )

    def timed(lower):
        t0 = time.perf_counter()
        exe = lower().compile()
        return exe, time.perf_counter() - t0

    with ThreadPoolExecutor(2) as pool:
        pre = pool.submit(
            timed,
            lambda: prefill.lower(
                run_params, cfg, prompt_BxP, gen_tokens, pol, form=form, mesh=mesh
            ),
        )
        dec = pool.submit(
            timed,
            lambda: decode.lower(
                run_params,
                cache_shape,
                token_shape,
                cfg=cfg,
                gen_tokens=gen_tokens,
                policy=pol,
                form=form,
                mesh=mesh,
            ),
        )
        (prefill_exe, prefill_compile_s), (decode_exe, decode_compile_s) = (
            pre.result(),
            dec.result(),
        )

    prefill_s, decode_s = [], []
    for run in range(warmup + repeats):
        start = time.perf_counter()
        token_B, cache = prefill_exe(run_params, prompt_BxP)
        jax.block_until_ready((token_B, cache))
        prefilled = time.perf_counter()
        tokens_BxG, cache = decode_exe(run_params, cache, token_B)
        jax.block_until_ready(tokens_BxG)
        decoded = time.perf_counter()
        if run >= warmup:
            prefill_s.append(prefilled - start)
            decode_s.append((decoded - prefilled) / gen_tokens)
    prefill_ms, decode_ms = 1e3 * np.array(prefill_s), 1e3 * np.array(decode_s)
    return {
        "compile_prefill_s": prefill_compile_s,
        "compile_decode_s": decode_compile_s,
        **_stats("prefill_ms", prefill_ms),
        **_stats("decode_ms_per_token", decode_ms),
        "prefill_tokens_per_s": batch * prompt_tokens / (np.median(prefill_ms) / 1e3),
        "decode_tokens_per_s": batch / (np.median(decode_ms) / 1e3),
        **_memory(prefill_exe, "prefill"),
        **_memory(decode_exe, "decode"),
    }


def _roofline_bounds(
    cfg, pol, batch, prompt_tokens, gen_tokens, weight_bytes, roof, n_devices, timing
) -> dict:
    """The bytes, roofline bounds and efficiencies of a latency record (see the module
    docstring)."""
    positions = prompt_tokens + gen_tokens
    kv_bytes = kv_cache_bytes(cfg, batch, positions, 2 if pol.attention == "bf16" else 4)
    bandwidth = roof["read_bandwidth_bytes_per_s"] * n_devices
    memory_s = (weight_bytes + kv_bytes) / bandwidth
    decode_compute_s = compute_seconds(cfg, pol, batch, positions, roof) / n_devices
    prefill_compute_s = (
        compute_seconds(cfg, pol, batch * prompt_tokens, positions, roof) / n_devices
    )
    decode_bound_s, prefill_bound_s = (
        max(memory_s, decode_compute_s),
        max(memory_s, prefill_compute_s),
    )
    return {
        "weight_bytes": weight_bytes,
        "kv_cache_bytes": kv_bytes,
        "decode_bound_ms_per_token": 1e3 * decode_bound_s,
        "decode_bound_kind": "memory" if memory_s >= decode_compute_s else "compute",
        "decode_efficiency": 1e3 * decode_bound_s / timing["decode_ms_per_token_median"],
        "prefill_bound_ms": 1e3 * prefill_bound_s,
        "prefill_bound_kind": "memory" if memory_s >= prefill_compute_s else "compute",
        "prefill_efficiency": 1e3 * prefill_bound_s / timing["prefill_ms_median"],
        "roofline_read_bandwidth_bytes_per_s": bandwidth,
        "roofline_matmul_flops_per_s": _rate(roof, pol.fmt) * n_devices,
        "roofline_rw_bandwidth_bytes_per_s": roof.get("bandwidth_bytes_per_s", float("nan"))
        * n_devices,
        "roofline_cache_bytes": roof.get("cache_bytes", float("nan")),
    }
