"""The decoder-only transformer: a Flax module used only through pure ``init``/``apply``.

Architecture (each choice and why):

* **Pre-norm residual blocks** ``x + attn(norm(x))``, ``x + mlp(norm(x))`` and a final norm:
  stable without warm-up tricks at every depth of the ladder.
* **RMSNorm** (learned scale, no bias, no mean subtraction): cheaper than LayerNorm and as
  good for LMs; one fewer reduction per norm matters for small models on CPU.
* **Rotary position encoding** (RoPE): no parameters, so the embedding / non-embedding split
  is just the token embedding (and untied head); relative positions; a KV cache only needs
  the absolute position of each new token.
* **GELU MLP with d_ff = 4 d_model, no biases**: the GPT-2 / Kaplan et al. block, so the
  non-embedding count is exactly ``n_layers * (12 d^2 + 2 d) + d`` and comparable with
  Kaplan's N; two large matmuls per MLP run closer to peak than SwiGLU's three.
* **Causal softmax attention in fp32**: scores, mask and softmax are computed in float32
  whatever the matmul precision, so low-precision runs differ only in their matmuls.
* **Tied or untied embeddings** (``ModelConfig.tie_embeddings``); the head is the transposed
  embedding when tied.

Shapes use B batch, T tokens, D d_model, H heads, K head width, F d_ff, V vocab.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp

from jscale import precision
from jscale.config import ModelConfig

Params = Any  # a pytree of arrays


def rope(x_XxTxK: jax.Array, pos_XxT: jax.Array, base: float) -> jax.Array:
    """Rotate channel pairs (i, i + K/2) of ``x [..., T, K]`` by angle pos * base^(-2i/K);
    ``pos [..., T]`` broadcasts against the leading axes of x (e.g. ``[B, 1, T]`` for heads)."""
    k = x_XxTxK.shape[-1]
    inv_freq_K2 = base ** (-jnp.arange(0, k // 2, dtype=jnp.float32) * 2 / k)
    ang_XxTxK2 = pos_XxT[..., None].astype(jnp.float32) * inv_freq_K2
    sin, cos = jnp.sin(ang_XxTxK2), jnp.cos(ang_XxTxK2)
    x1, x2 = jnp.split(x_XxTxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_XxTxK.dtype)


@jax.custom_vjp
def linear(x_NxI: jax.Array, w_IxO: jax.Array) -> jax.Array:
    """``x @ w`` over the last axis of x (any leading shape), accumulated in float32 (x and w
    float32, or both bfloat16), with a hand-written backward.

    The maths is plain autodiff; only the weight gradient's formulation differs.  XLA:CPU
    computes the autodiff ``dw = x^T g`` (contracting the token axis of both operands) by
    transposing the wider of the two ``[tokens, features]`` operands, fused with whatever
    elementwise op produced it (e.g. the GELU backward): ~40% of a training step at 1e7
    parameters.  Transposing the narrower operand instead (``x^T g`` or ``(g^T x)^T``)
    halves the MLP's backward time (benchmarks/README.md); on GPU/TPU it is neutral.
    The forward is a plain ``jax.lax.dot_general``, so libraries that intercept it (qwix)
    see every projection.
    """
    return _dot(x_NxI, w_IxO)


def _dot(a, b):
    return jax.lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), precision=_precision(a),
                               preferred_element_type=jnp.float32)


def _precision(a):
    """HIGHEST for float32 operands, so fp32 is true fp32 on GPU/TPU too (no TF32 / bf16
    passes by default there); no effect on CPU or on bf16 operands."""
    return jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None


def _linear_fwd(x, w):
    return _dot(x, w), (x, w)


def _linear_bwd(res, g):
    x, w = res
    g = g.astype(x.dtype)  # bf16 matmuls stay bf16 in the backward too
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dw = _dot(x2.T, g2) if x2.shape[1] <= g2.shape[1] else _dot(g2.T, x2).T
    return _dot(g, w.T).astype(x.dtype), dw.astype(w.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


def _quant_scale(module: nn.Module, w, fmt: str, n: int):
    """The ``scale [n]`` param of an int8 / w8a8 layer (None otherwise), after checking that
    its weights really were converted."""
    if fmt not in ("int8", "w8a8"):
        return None
    if w.dtype != jnp.int8 and not module.is_initializing():
        raise precision.PrecisionError(
            f"layer {module.name} runs in {fmt} but its weights are {w.dtype}: convert trained "
            f"params first with jscale.precision.convert_params(params, policy)")
    return module.param("scale", nn.initializers.ones, (n,))


def _project(x, w, scale, fmt: str, out_in: bool = False, min_rows: int = 1):
    """The one matmul of every projection: ``x @ w`` in format ``fmt`` (jscale.precision), or
    ``x @ w^T`` for a kernel stored ``[out, in]`` (``out_in``, inference only).  Float
    formats go through ``linear`` (fast backward); bf16 casts both operands, so bf16
    training computes from float32 master weights.  Fewer than ``min_rows`` tokens are
    padded with zero rows for the matmul and the extra outputs dropped (``Policy.min_rows``)."""
    rows = math.prod(x.shape[:-1])
    if rows < min_rows:
        x_RxI = jnp.pad(x.reshape(rows, x.shape[-1]), ((0, min_rows - rows), (0, 0)))
        y_RxO = _project(x_RxI, w, scale, fmt, out_in)
        return y_RxO[:rows].reshape(*x.shape[:-1], y_RxO.shape[-1])
    if fmt in ("fp32", "bf16"):
        dt = jnp.bfloat16 if fmt == "bf16" else jnp.float32
        x, w = x.astype(dt), w.astype(dt)
        if out_in:
            return jax.lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())), precision=_precision(x),
                                       preferred_element_type=jnp.float32)
        return linear(x, w)
    return precision.matmul(x, w, scale, fmt, out_in)


class Dense(nn.Module):
    """Bias-free projection ``[..., in] -> [..., features]``; kernel ``[in, features]`` (or
    ``[features, in]`` when ``layout`` is ``out_in``, see ``jscale.precision``), plus
    ``scale [features]`` when the layer runs in int8 / w8a8.  ``fmt``: its precision format."""

    features: int
    fmt: str = "fp32"
    kernel_init: Callable = nn.initializers.lecun_normal()
    layout: str | None = None   # None: as trained, "in_out"
    min_rows: int | None = None  # None: 1, no padding

    @nn.compact
    def __call__(self, x):
        out_in = self.layout == "out_in"
        init, shape = self.kernel_init, (x.shape[-1], self.features)
        if out_in:  # the transpose of the [in, out] init: same values for the same key
            init, shape = (lambda key, s, dt=jnp.float32: self.kernel_init(key, s[::-1], dt).T), shape[::-1]
        kernel = self.param("kernel", init, shape)
        scale = _quant_scale(self, kernel, self.fmt, self.features)
        return _project(x, kernel, scale, self.fmt, out_in, self.min_rows or 1)


class Embed(nn.Module):
    """Token embedding ``[V, D]`` (plus per-row ``scale [V]`` in int8 / w8a8); ``attend`` is
    the tied output head ``x @ embedding^T``."""

    vocab_size: int
    d_model: int
    fmt: str = "fp32"

    def setup(self):
        self.embedding = self.param("embedding", nn.initializers.normal(1 / math.sqrt(self.d_model)),
                                    (self.vocab_size, self.d_model))
        self.scale = _quant_scale(self, self.embedding, self.fmt, self.vocab_size)

    def __call__(self, tokens_BxT):
        e_BxTxD = jnp.take(self.embedding, tokens_BxT, axis=0).astype(jnp.float32)
        if self.scale is not None:
            e_BxTxD = e_BxTxD * jnp.take(self.scale, tokens_BxT, axis=0)[..., None]
        return e_BxTxD

    def attend(self, x_BxTxD):
        return _project(x_BxTxD, self.embedding.T, self.scale, self.fmt)


class RMSNorm(nn.Module):
    @nn.compact
    def __call__(self, x_BxTxD):
        scale_D = self.param("scale", nn.initializers.ones, (x_BxTxD.shape[-1],))
        x = x_BxTxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        return (x * scale_D).astype(x_BxTxD.dtype)


def causal_attention(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, pos_BxT, pos_BxS):
    """``softmax(q k^T + causal mask) v`` with fp32 scores and softmax; q is pre-scaled and
    query t sees key s iff ``pos_BxT[t] >= pos_BxS[s]``.  In training S = T; with a KV
    cache the keys are the whole cache buffer (slots not yet written have positions beyond
    every query, so they are masked).  The full T x S scores are computed (a version that
    skipped the blocks above the diagonal was 2x faster alone but only 5% faster in a
    training step on XLA:CPU, because of the slice copies it added; not worth its code)."""
    att_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK, precision=_precision(q_BxHxTxK),
                             preferred_element_type=jnp.float32)
    mask_Bx1xTxS = pos_BxT[:, None, :, None] >= pos_BxS[:, None, None, :]
    att_BxHxTxS = jax.nn.softmax(jnp.where(mask_Bx1xTxS, att_BxHxTxS, -jnp.inf), axis=-1)
    return jnp.einsum("bhts,bhsk->bhtk", att_BxHxTxS.astype(v_BxHxSxK.dtype), v_BxHxSxK,
                      precision=_precision(v_BxHxSxK), preferred_element_type=jnp.float32)


def cached_attention(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, kc_BxHxSxK, vc_BxHxSxK, pos_BxT):
    """Attention of T new tokens (at positions ``pos_BxT``, consecutive) over a KV cache
    ``kc, vc [B, H, S, K]`` whose slots ``s < pos_BxT[:, 0]`` are filled, and over their own
    keys and values ``k, v [B, H, T, K]`` (causally): ``causal_attention`` over the cache
    with the new keys written in, computed without reading the written buffer.  One softmax
    over both parts (scores concatenated, fp32).  Reading only the old cache lets XLA update
    the cache in place after the reads; reading the updated buffer made XLA:CPU copy every
    K/V buffer several times per decode step (benchmarks/README.md)."""
    S = kc_BxHxSxK.shape[2]
    prec = _precision(q_BxHxTxK)
    s_old = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, kc_BxHxSxK, precision=prec, preferred_element_type=jnp.float32)
    s_new = jnp.einsum("bhtk,bhuk->bhtu", q_BxHxTxK, k_BxHxTxK, precision=prec, preferred_element_type=jnp.float32)
    filled_Bx1x1xS = (jnp.arange(S) < pos_BxT[:, :1])[:, None, None, :]
    causal_Bx1xTxT = (pos_BxT[:, :, None] >= pos_BxT[:, None, :])[:, None]
    att = jax.nn.softmax(jnp.concatenate([jnp.where(filled_Bx1x1xS, s_old, -jnp.inf),
                                          jnp.where(causal_Bx1xTxT, s_new, -jnp.inf)], axis=-1), axis=-1)
    p_old, p_new = att[..., :S].astype(vc_BxHxSxK.dtype), att[..., S:].astype(v_BxHxTxK.dtype)
    return (jnp.einsum("bhts,bhsk->bhtk", p_old, vc_BxHxSxK, precision=prec, preferred_element_type=jnp.float32)
            + jnp.einsum("bhtu,bhuk->bhtk", p_new, v_BxHxTxK, precision=prec, preferred_element_type=jnp.float32))


class Block(nn.Module):
    cfg: ModelConfig
    policy: precision.Policy

    @nn.compact
    def __call__(self, x_BxTxD, pos_BxT, kv=None):
        """kv: this layer's cache ``{"k", "v": [B, H, S, K]}``; attention reads the filled
        cache and the new keys (``cached_attention``), then the new keys and values are written
        in place at positions ``pos_BxT[0]``.  Returns
        ``x`` (and the updated kv when one was given)."""
        c = self.cfg
        B, T, _ = x_BxTxD.shape
        out_init = nn.initializers.variance_scaling(1 / (2 * c.n_layers), "fan_in", "normal")

        p = self.policy
        dense = lambda feats, name, **kw: Dense(feats, p.layer_format(name), name=name,
                                                layout=p.kernel_layout, min_rows=p.min_rows, **kw)
        att_dtype = jnp.bfloat16 if self.policy.attention == "bf16" else jnp.float32

        h = RMSNorm(name="attn_norm")(x_BxTxD)
        qkv_BxTx3D = dense(3 * c.d_model, "qkv")(h)
        qkv_3xBxHxTxK = qkv_BxTx3D.astype(att_dtype).reshape(B, T, 3, c.n_heads, c.head_dim).transpose(2, 0, 3, 1, 4)
        pos_Bx1xT = pos_BxT[:, None, :]
        q = rope(qkv_3xBxHxTxK[0], pos_Bx1xT, c.rope_base) * (1 / math.sqrt(c.head_dim))
        k = rope(qkv_3xBxHxTxK[1], pos_Bx1xT, c.rope_base)
        v = qkv_3xBxHxTxK[2]
        if kv is None:
            o_BxHxTxK = causal_attention(q, k, v, pos_BxT, pos_BxT)
        else:
            k, v = k.astype(kv["k"].dtype), v.astype(kv["v"].dtype)
            o_BxHxTxK = cached_attention(q, k, v, kv["k"], kv["v"], pos_BxT)
            # The written values depend on the attention output (+ 0 * o: exact for finite o),
            # so XLA can order every read of the old buffers before the in-place write;
            # without it XLA:CPU copied each K/V buffer twice per decode step, ~12% of a 1e8
            # step (benchmarks/README.md).  optimization_barrier does not give that order.
            dep = (0.0 * o_BxHxTxK[..., :1]).astype(k.dtype)
            at = (0, 0, pos_BxT[0, 0], 0)
            kv = {"k": jax.lax.dynamic_update_slice(kv["k"], k + dep, at),
                  "v": jax.lax.dynamic_update_slice(kv["v"], v + dep, at)}
        o_BxTxHxK = o_BxHxTxK.transpose(0, 2, 1, 3)
        x_BxTxD = x_BxTxD + dense(c.d_model, "out", kernel_init=out_init)(
            o_BxTxHxK.reshape(B, T, c.d_model))

        h = RMSNorm(name="mlp_norm")(x_BxTxD)
        h_BxTxF = nn.gelu(dense(c.d_ff, "up")(h))
        x_BxTxD = x_BxTxD + dense(c.d_model, "down", kernel_init=out_init)(h_BxTxF)
        return x_BxTxD if kv is None else (x_BxTxD, kv)


class Transformer(nn.Module):
    """``apply(params, tokens_BxT, pos_BxT=None) -> logits_BxTxV`` (float32 logits).

    ``policy`` (``jscale.precision``) sets the format of every projection matmul and of the
    attention matmuls; it is the one place precision enters, so every precision runs this
    same code.
    """

    cfg: ModelConfig
    policy: precision.Policy = precision.POLICIES["fp32"]

    @nn.compact
    def __call__(self, tokens_BxT, pos_BxT=None, cache=None):
        c, p = self.cfg, self.policy
        B, T = tokens_BxT.shape
        if cache is not None:  # the new tokens follow the cache's filled positions
            pos_BxT = jnp.broadcast_to(cache["length"] + jnp.arange(T), (B, T))
        elif pos_BxT is None:
            pos_BxT = jnp.broadcast_to(jnp.arange(T), (B, T))
        embed = Embed(c.vocab_size, c.d_model, p.layer_format("embed"), name="embed")
        x_BxTxD = embed(tokens_BxT)
        layers = []
        for i in range(c.n_layers):
            block = Block(c, p, name=f"block_{i}")
            if cache is None:
                x_BxTxD = block(x_BxTxD, pos_BxT)
            else:
                x_BxTxD, kv = block(x_BxTxD, pos_BxT, cache["layers"][i])
                layers.append(kv)
        x_BxTxD = RMSNorm(name="final_norm")(x_BxTxD)
        if c.tie_embeddings:
            logits_BxTxV = embed.attend(x_BxTxD).astype(jnp.float32)
        else:
            logits_BxTxV = Dense(c.vocab_size, p.layer_format("head"), name="head",
                                 layout=p.kernel_layout, min_rows=p.min_rows)(x_BxTxD).astype(jnp.float32)
        if cache is None:
            return logits_BxTxV
        return logits_BxTxV, {"layers": layers, "length": cache["length"] + T}


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
    """Float32 parameters for ``cfg``, a pure function of ``key``."""
    tokens = jnp.zeros((1, min(8, cfg.max_seq_len)), jnp.int32)
    return Transformer(cfg).init(key, tokens)["params"]


def _run(cfg: ModelConfig, policy, params: Params, *args, **kw):
    """``Transformer.apply``, with a kernel stored in the other layout reported as such."""
    pol = precision.get_policy(policy)
    try:
        return Transformer(cfg, pol).apply({"params": params}, *args, **kw)
    except flax.errors.ScopeParamShapeError as e:
        raise precision.PrecisionError(
            f"params do not match policy {pol.label!r} with kernel_layout={pol.kernel_layout or 'in_out'!r}: convert the "
            f"float32 params as trained with jscale.precision.convert_params(params, policy), once, with the same "
            f"policy ({e})") from None


def apply(params: Params, cfg: ModelConfig, tokens_BxT: jax.Array, pos_BxT: jax.Array | None = None,
          policy: str | precision.Policy = "fp32") -> jax.Array:
    """Logits ``[B, T, V]`` (float32) for integer tokens ``[B, T]``; pure and jittable.

    policy: a precision name or ``Policy``; params must come from
    ``precision.convert_params(params, policy)`` for int8 / w8a8 and for any policy with
    ``kernel_layout="out_in"`` (bf16 also accepts fp32 params and casts them at each matmul:
    that is bf16 training with fp32 master weights).
    """
    if tokens_BxT.shape[-1] > cfg.max_seq_len:
        raise ValueError(f"sequence of {tokens_BxT.shape[-1]} tokens exceeds ModelConfig.max_seq_len "
                         f"= {cfg.max_seq_len}")
    return _run(cfg, policy, params, tokens_BxT, pos_BxT)


# --------------------------------------------------------------------------- KV cache

def init_cache(cfg: ModelConfig, batch: int, max_len: int, policy: str | precision.Policy = "fp32"):
    """An empty KV cache: ``{"layers": [{"k", "v": [B, H, max_len, K]}] * n_layers,
    "length": int32 scalar}`` (zeros; length 0), in bfloat16 for policies whose attention
    runs in bf16, else float32.  ``max_len`` (prompt + generated tokens) may not exceed
    ``cfg.max_seq_len``."""
    if not 0 < max_len <= cfg.max_seq_len:
        raise ValueError(f"prompt + generated tokens = {max_len} must be in [1, ModelConfig.max_seq_len "
                         f"= {cfg.max_seq_len}]")
    dt = jnp.bfloat16 if precision.get_policy(policy).attention == "bf16" else jnp.float32
    shape = (batch, cfg.n_heads, max_len, cfg.head_dim)
    return {"layers": [{"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(cfg.n_layers)],
            "length": jnp.zeros((), jnp.int32)}


def apply_cached(params: Params, cfg: ModelConfig, tokens_BxT: jax.Array, cache,
                 policy: str | precision.Policy = "fp32"):
    """Run T new tokens against a KV cache: ``(logits [B, T, V] float32, updated cache)``.
    Prefill is ``apply_cached`` on the prompt with an empty cache; one decode step is
    ``apply_cached`` on one token.  Pure and jittable; the caller must keep
    ``cache["length"] + T <= max_len``: inside jit an overflowing write is clamped by
    ``dynamic_update_slice``, not caught (``jscale.latency`` sizes its caches exactly)."""
    return _run(cfg, policy, params, tokens_BxT, cache=cache)


def kv_cache_bytes(cfg: ModelConfig, batch: int, max_len: int, itemsize: int = 4) -> int:
    """Bytes of the K and V buffers of a cache of ``max_len`` positions."""
    return 2 * cfg.n_layers * batch * max_len * cfg.d_model * itemsize


# --------------------------------------------------------------------------- analytic counts

def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter counts: ``total``, ``embedding`` (token embedding, plus the output
    head when untied) and ``non_embedding`` (everything else: blocks and final norm)."""
    d, f = cfg.d_model, cfg.d_ff
    per_layer = 3 * d * d + d * d + 2 * d * f + 2 * d  # qkv, out, up+down, two norm scales
    non_embedding = cfg.n_layers * per_layer + d
    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return {"total": non_embedding + embedding, "embedding": embedding,
            "non_embedding": non_embedding}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Matmul FLOPs per token for a sequence of ``seq_len`` tokens.

    ``forward = 2 * (matmul weights) + 2 * d_model * vocab + 4 * n_layers * seq_len * d_model``:
    a multiply-add is 2 FLOPs; the head is counted (tied or not); the attention term counts
    ``q k^T`` and ``att v`` over the full T x T score matrix, as XLA computes it (the causal
    mask zeroes half of it; the FLOPs are spent anyway).  Norms, softmax, GELU and RoPE are elementwise and not counted (a few % of the total at
    d_model >= 128).
    ``train = 3 * forward`` (backward = 2 x forward).
    """
    d, f, n_l = cfg.d_model, cfg.d_ff, cfg.n_layers
    matmul_weights = n_l * (4 * d * d + 2 * d * f)
    forward = 2 * matmul_weights + 2 * d * cfg.vocab_size + 4 * n_l * seq_len * d
    return {"forward": float(forward), "train": float(3 * forward)}
