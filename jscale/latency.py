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

* decode step: ``max(bytes / bandwidth, flops / matmul rate)`` with bytes = all weight bytes
  + the K and V buffers read (the whole buffer of P + G positions, as executed) and flops =
  ``B * (2 * matmul weights + 2 * d * V + 4 * layers * (P + G) * d)``;
* prefill: the same with ``B * P`` tokens and the prompt's attention over the buffer;

where the matmul rate is the one of the precision's matmul (fp32 for fp32 and int8
weight-only, which dequantizes to fp32; bf16; int8 x int8 for w8a8).
``efficiency = bound / measured`` (1 = at the roofline).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jscale import model, precision, roofline
from jscale.config import ModelConfig


@functools.partial(jax.jit, static_argnames=("cfg", "gen_tokens", "policy"))
def prefill(params, cfg: ModelConfig, prompt_BxP, gen_tokens: int, policy):
    """Prompt into a fresh cache of ``P + gen_tokens`` positions: (next token [B], cache)."""
    cache = model.init_cache(cfg, prompt_BxP.shape[0], prompt_BxP.shape[1] + gen_tokens, policy)
    logits_BxPxV, cache = model.apply_cached(params, cfg, prompt_BxP, cache, policy)
    return jnp.argmax(logits_BxPxV[:, -1], axis=-1).astype(jnp.int32), cache


def _decode(params, cache, token_B, *, cfg, gen_tokens, policy):
    def step(carry, _):
        tok, c = carry
        logits_Bx1xV, c = model.apply_cached(params, cfg, tok[:, None], c, policy)
        nxt = jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32)
        return (nxt, c), tok
    (last, cache), toks_GxB = jax.lax.scan(step, (token_B, cache), None, length=gen_tokens)
    return toks_GxB.T, cache


decode = jax.jit(_decode, static_argnames=("cfg", "gen_tokens", "policy"), donate_argnums=(1,))
decode.__doc__ = """``gen_tokens`` greedy steps from ``token_B`` (the prefill's output): tokens
``[B, gen_tokens]`` (the first is ``token_B``) and the cache; the cache argument is donated."""


@functools.partial(jax.jit, static_argnames=("cfg", "gen_tokens", "policy"))
def generate(params, cfg: ModelConfig, prompt_BxP, gen_tokens: int, policy="fp32"):
    """Greedy generation of ``gen_tokens`` tokens after the prompt, in one jit: ``[B, G]``."""
    tok, cache = prefill(params, cfg, prompt_BxP, gen_tokens, policy)
    return _decode(params, cache, tok, cfg=cfg, gen_tokens=gen_tokens, policy=policy)[0]


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


def _matmul_rate(roof: dict, policy: precision.Policy) -> float:
    key = {"bf16": "matmul_bf16_flops_per_s", "w8a8": "matmul_int8_flops_per_s"}.get(policy.fmt, "matmul_flops_per_s")
    return roof.get(key, roof["matmul_flops_per_s"])


def measure_latency(params, cfg: ModelConfig, policy="fp32", *, batch: int = 1, prompt_tokens: int = 128,
                    gen_tokens: int = 32, repeats: int = 10, warmup: int = 2, roof: dict | None = None) -> dict:
    """Latency of prefill and decode for float32 ``params`` run in precision ``policy``.

    The params are converted with ``precision.convert_params`` first.  Returns one flat dict
    whose keys carry their units: compile seconds, ``prefill_ms_*`` and
    ``decode_ms_per_token_*`` (median, q1, q3, min, max over ``repeats`` timed runs, each
    after ``warmup`` untimed ones), tokens/s, weight and KV-cache bytes, XLA's memory
    analysis, the roofline bounds and efficiencies, device and versions.  Raises
    ``ValueError`` before compiling if ``prompt_tokens + gen_tokens > cfg.max_seq_len``.
    """
    pol = precision.get_policy(policy)
    for name, v in (("batch", batch), ("prompt_tokens", prompt_tokens), ("gen_tokens", gen_tokens),
                    ("repeats", repeats)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if prompt_tokens + gen_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt_tokens + gen_tokens = {prompt_tokens} + {gen_tokens} exceeds "
                         f"ModelConfig.max_seq_len = {cfg.max_seq_len}")
    roof = roof or roofline.roofline()
    qp = precision.convert_params(params, pol)
    prompt = jax.random.randint(jax.random.key(0), (batch, prompt_tokens), 0, cfg.vocab_size, jnp.int32)

    t0 = time.perf_counter()
    pre = prefill.lower(qp, cfg, prompt, gen_tokens, pol).compile()
    t1 = time.perf_counter()
    tok, cache = pre(qp, prompt)
    dec = decode.lower(qp, cache, tok, cfg=cfg, gen_tokens=gen_tokens, policy=pol).compile()
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

    d, L, S = cfg.d_model, cfg.n_layers, prompt_tokens + gen_tokens
    counts = model.count_params(cfg)
    matmul_weights = counts["non_embedding"] - (2 * L + 1) * d
    weight_bytes = precision.param_bytes(qp)
    kv_bytes = model.kv_cache_bytes(cfg, batch, S, 2 if pol.attention == "bf16" else 4)
    rate, bw = _matmul_rate(roof, pol), roof["bandwidth_bytes_per_s"]
    dec_flops = batch * (2 * matmul_weights + 2 * d * cfg.vocab_size + 4 * L * S * d)
    dec_bound_s = max((weight_bytes + kv_bytes) / bw, dec_flops / rate)
    pre_flops = batch * prompt_tokens * (2 * matmul_weights + 2 * d * cfg.vocab_size + 4 * L * S * d)
    pre_bound_s = max((weight_bytes + kv_bytes) / bw, pre_flops / rate)
    out = {
        "precision": pol.name, "batch": batch, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
        "n_repeats": repeats, "params_non_embedding": counts["non_embedding"], "params_total": counts["total"],
        "compile_prefill_s": t1 - t0, "compile_decode_s": t2 - t1,
        **_stats("prefill_ms", prefill_ms), **_stats("decode_ms_per_token", decode_ms),
        "prefill_tokens_per_s": batch * prompt_tokens / (np.median(prefill_ms) / 1e3),
        "decode_tokens_per_s": batch / (np.median(decode_ms) / 1e3),
        "weight_bytes": weight_bytes, "kv_cache_bytes": kv_bytes,
        **_memory(pre, "prefill"), **_memory(dec, "decode"),
        "decode_bound_ms_per_token": 1e3 * dec_bound_s,
        "decode_bound_kind": "memory" if (weight_bytes + kv_bytes) / bw >= dec_flops / rate else "compute",
        "decode_efficiency": 1e3 * dec_bound_s / float(np.median(decode_ms)),
        "prefill_bound_ms": 1e3 * pre_bound_s,
        "prefill_bound_kind": "memory" if (weight_bytes + kv_bytes) / bw >= pre_flops / rate else "compute",
        "prefill_efficiency": 1e3 * pre_bound_s / float(np.median(prefill_ms)),
        "roofline_bandwidth_bytes_per_s": bw, "roofline_matmul_flops_per_s": rate,
        **roofline.device_info(),
    }
    return out
