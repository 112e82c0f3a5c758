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
from jscale.formulation import TRAINED, Formulation, project, write_kv

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


def _check_converted(module: nn.Module, w, fmt: str) -> None:
    """A ``PrecisionError`` when a layer that runs in an integer or fp8 format holds weights
    that were not converted to it (``precision.STORED``)."""
    want = precision.STORED.get(precision.base_format(fmt))
    if want is not None and w.dtype != jnp.dtype(want) and not module.is_initializing():
        raise precision.PrecisionError(
            f"layer {module.name} runs in {fmt} but its weights are {w.dtype}, not {want}: "
            f"convert trained params first with jscale.precision.convert_params(params, policy)"
        )


def _quant_scale(module: nn.Module, w, fmt: str, n: int):
    """The ``scale [n]`` param of an int8 / w8a8 / fp8 / fp8a8 layer (None for float formats),
    after checking that its weights really were converted."""
    if precision.base_format(fmt) not in precision.STORED:
        return None
    _check_converted(module, w, fmt)
    return module.param("scale", nn.initializers.ones, (n,))


class Dense(nn.Module):
    """Bias-free projection ``[..., in] -> [..., features]`` in format ``fmt``; its kernel is
    stored as ``form`` says (``[in, features]`` as trained), plus ``scale [features]`` when the
    layer runs in int8 / w8a8 / fp8 / fp8a8; in ``int4-gG`` the kernel is packed (``[in / 2,
    features]``, two weights per uint8) and ``scale`` is ``[in / G, features]``."""

    features: int
    fmt: str = "fp32"
    form: Formulation = TRAINED
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        n_in = x.shape[-1]
        if precision.base_format(self.fmt) == "int4":
            kernel = self.param(
                "kernel", _zeros(jnp.uint8), self.form.kernel_shape(n_in // 2, self.features)
            )
            _check_converted(self, kernel, self.fmt)
            g = precision.group_size(self.fmt, n_in)
            scale = self.param("scale", nn.initializers.ones, (n_in // g, self.features))
            return project(x, kernel, scale, self.fmt, self.form)
        kernel = self.param("kernel", self.kernel_init, self.form.kernel_shape(n_in, self.features))
        scale = _quant_scale(self, kernel, self.fmt, self.features)
        return project(x, kernel, scale, self.fmt, self.form)


def _zeros(dtype):
    def init(key, shape, dtype_=None):
        return jnp.zeros(shape, dtype)

    return init


class Embed(nn.Module):
    """Token embedding ``[V, D]`` (plus per-row ``scale [V]`` in int8 / w8a8); ``attend`` is
    the tied output head ``x @ embedding^T``."""

    vocab_size: int
    d_model: int
    fmt: str = "fp32"

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.initializers.normal(1 / math.sqrt(self.d_model)),
            (self.vocab_size, self.d_model),
        )
        self.scale = _quant_scale(self, self.embedding, self.fmt, self.vocab_size)

    def __call__(self, tokens_BxT):
        e_BxTxD = jnp.take(self.embedding, tokens_BxT, axis=0).astype(jnp.float32)
        if self.scale is not None:
            e_BxTxD = e_BxTxD * jnp.take(self.scale, tokens_BxT, axis=0)[..., None]
        return e_BxTxD

    def attend(self, x_BxTxD):
        return project(x_BxTxD, self.embedding.T, self.scale, self.fmt)


class RMSNorm(nn.Module):
    @nn.compact
    def __call__(self, x_BxTxD):
        scale_D = self.param("scale", nn.initializers.ones, (x_BxTxD.shape[-1],))
        x = x_BxTxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        return (x * scale_D).astype(x_BxTxD.dtype)


def causal_attention(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, pos_BxT, pos_BxS):
    """``softmax(q k^T + causal mask) v`` with fp32 scores and softmax; q is pre-scaled and
    query t sees key s iff ``pos_BxT[t] >= pos_BxS[s]``.  The full T x S scores are computed
    (skipping the blocks above the diagonal was only 5% faster in a training step on XLA:CPU,
    because of the slice copies it added; not worth its code)."""
    prec = precision.dot_precision(q_BxHxTxK)
    att_BxHxTxS = jnp.einsum(
        "bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK, precision=prec, preferred_element_type=jnp.float32
    )
    mask_Bx1xTxS = pos_BxT[:, None, :, None] >= pos_BxS[:, None, None, :]
    att_BxHxTxS = jax.nn.softmax(jnp.where(mask_Bx1xTxS, att_BxHxTxS, -jnp.inf), axis=-1)
    return jnp.einsum(
        "bhts,bhsk->bhtk",
        att_BxHxTxS.astype(v_BxHxSxK.dtype),
        v_BxHxSxK,
        precision=prec,
        preferred_element_type=jnp.float32,
    )


def cached_attention(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, kc_BxHxSxK, vc_BxHxSxK, pos_BxT):
    """Attention of T new tokens (at consecutive positions ``pos_BxT``) over a KV cache
    ``kc, vc [B, H, S, K]`` whose slots ``s < pos_BxT[:, 0]`` are filled, and causally over
    their own keys and values ``k, v [B, H, T, K]``: one softmax (fp32) over both parts.
    The same maths as ``causal_attention`` over the cache with the new keys written in, but
    it never reads the buffer being written, so XLA can update the cache in place
    (``jscale.formulation.write_kv``)."""
    S = kc_BxHxSxK.shape[2]
    prec = precision.dot_precision(q_BxHxTxK)
    att_old_BxHxTxS = jnp.einsum(
        "bhtk,bhsk->bhts", q_BxHxTxK, kc_BxHxSxK, precision=prec, preferred_element_type=jnp.float32
    )
    att_new_BxHxTxT = jnp.einsum(
        "bhtk,bhuk->bhtu", q_BxHxTxK, k_BxHxTxK, precision=prec, preferred_element_type=jnp.float32
    )
    filled_Bx1x1xS = (jnp.arange(S) < pos_BxT[:, :1])[:, None, None, :]
    causal_Bx1xTxT = (pos_BxT[:, :, None] >= pos_BxT[:, None, :])[:, None]
    att_BxHxTxST = jax.nn.softmax(
        jnp.concatenate(
            [
                jnp.where(filled_Bx1x1xS, att_old_BxHxTxS, -jnp.inf),
                jnp.where(causal_Bx1xTxT, att_new_BxHxTxT, -jnp.inf),
            ],
            axis=-1,
        ),
        axis=-1,
    )
    p_old, p_new = (
        att_BxHxTxST[..., :S].astype(vc_BxHxSxK.dtype),
        att_BxHxTxST[..., S:].astype(v_BxHxTxK.dtype),
    )
    return jnp.einsum(
        "bhts,bhsk->bhtk", p_old, vc_BxHxSxK, precision=prec, preferred_element_type=jnp.float32
    ) + jnp.einsum(
        "bhtu,bhuk->bhtk", p_new, v_BxHxTxK, precision=prec, preferred_element_type=jnp.float32
    )


class Block(nn.Module):
    """One pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    cfg: ModelConfig
    policy: precision.Policy
    form: Formulation = TRAINED

    @nn.compact
    def __call__(self, x_BxTxD, pos_BxT, kv=None):
        """kv: this layer's cache ``{"k", "v": [B, H, S, K]}``; attention reads the filled
        cache and the new keys (``cached_attention``), then the new keys and values are written
        at positions ``pos_BxT[0]``.  Returns ``x`` (and the updated kv when one was given)."""
        c, p = self.cfg, self.policy
        B, T, _ = x_BxTxD.shape
        out_init = nn.initializers.variance_scaling(1 / (2 * c.n_layers), "fan_in", "normal")

        def dense(features, name, **kw):
            return Dense(features, p.layer_format(name), self.form, name=name, **kw)

        att_dtype = jnp.bfloat16 if p.attention == "bf16" else jnp.float32

        h_BxTxD = RMSNorm(name="attn_norm")(x_BxTxD)
        qkv_BxTx3D = dense(3 * c.d_model, "qkv")(h_BxTxD).astype(att_dtype)
        qkv_3xBxHxTxK = qkv_BxTx3D.reshape(B, T, 3, c.n_heads, c.head_dim).transpose(2, 0, 3, 1, 4)
        pos_Bx1xT = pos_BxT[:, None, :]
        q_BxHxTxK = rope(qkv_3xBxHxTxK[0], pos_Bx1xT, c.rope_base) * (1 / math.sqrt(c.head_dim))
        k_BxHxTxK = rope(qkv_3xBxHxTxK[1], pos_Bx1xT, c.rope_base)
        v_BxHxTxK = qkv_3xBxHxTxK[2]
        if kv is None:
            o_BxHxTxK = causal_attention(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, pos_BxT, pos_BxT)
        else:
            k_BxHxTxK, v_BxHxTxK = k_BxHxTxK.astype(kv["k"].dtype), v_BxHxTxK.astype(kv["v"].dtype)
            o_BxHxTxK = cached_attention(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, kv["k"], kv["v"], pos_BxT)
            kv = write_kv(kv, k_BxHxTxK, v_BxHxTxK, o_BxHxTxK, pos_BxT[0, 0])
        o_BxTxD = o_BxHxTxK.transpose(0, 2, 1, 3).reshape(B, T, c.d_model)
        x_BxTxD = x_BxTxD + dense(c.d_model, "out", kernel_init=out_init)(o_BxTxD)

        h_BxTxD = RMSNorm(name="mlp_norm")(x_BxTxD)
        h_BxTxF = nn.gelu(dense(c.d_ff, "up")(h_BxTxD))
        x_BxTxD = x_BxTxD + dense(c.d_model, "down", kernel_init=out_init)(h_BxTxF)
        return x_BxTxD if kv is None else (x_BxTxD, kv)


class Transformer(nn.Module):
    """``apply(params, tokens_BxT, pos_BxT=None, cache=None) -> logits_BxTxV`` (float32).

    ``policy`` (``jscale.precision``) sets the format of every projection matmul and of the
    attention matmuls; ``form`` (``jscale.formulation``) how the backend runs them.  They are
    the only places precision and backend tuning enter, so every precision runs this same code.
    """

    cfg: ModelConfig
    policy: precision.Policy = precision.POLICIES["fp32"]
    form: Formulation = TRAINED

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
            block = Block(c, p, self.form, name=f"block_{i}")
            if cache is None:
                x_BxTxD = block(x_BxTxD, pos_BxT)
            else:
                x_BxTxD, kv = block(x_BxTxD, pos_BxT, cache["layers"][i])
                layers.append(kv)
        x_BxTxD = RMSNorm(name="final_norm")(x_BxTxD)
        if c.tie_embeddings:
            logits_BxTxV = embed.attend(x_BxTxD)
        else:
            logits_BxTxV = Dense(c.vocab_size, p.layer_format("head"), self.form, name="head")(
                x_BxTxD
            )
        logits_BxTxV = logits_BxTxV.astype(jnp.float32)
        if cache is None:
            return logits_BxTxV
        return logits_BxTxV, {"layers": layers, "length": cache["length"] + T}


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
    """Float32 parameters for ``cfg`` (kernels ``[in, out]``), a pure function of ``key``."""
    tokens = jnp.zeros((1, min(8, cfg.max_seq_len)), jnp.int32)
    return Transformer(cfg).init(key, tokens)["params"]


def _run(cfg: ModelConfig, policy, form: Formulation, params: Params, *args, **kw):
    """``Transformer.apply``, with params laid out for another formulation reported as such."""
    pol = precision.get_policy(policy)
    try:
        return Transformer(cfg, pol, form).apply({"params": params}, *args, **kw)
    except flax.errors.ScopeParamShapeError as e:
        raise precision.PrecisionError(
            f"params do not match policy {pol.label!r} with "
            f"kernel_layout={form.kernel_layout!r}: convert the float32 params as trained with "
            f"jscale.precision.convert_params(params, policy) and lay them out with "
            f"jscale.formulation.arrange(params, form), once, with the same policy and form ({e})"
        ) from None


def apply(
    params: Params,
    cfg: ModelConfig,
    tokens_BxT: jax.Array,
    pos_BxT: jax.Array | None = None,
    policy: str | precision.Policy = "fp32",
    form: Formulation = TRAINED,
) -> jax.Array:
    """Logits ``[B, T, V]`` (float32) for integer tokens ``[B, T]``; pure and jittable.

    policy: a precision name or ``Policy``; params must come from
    ``precision.convert_params(params, policy)`` for int8 / w8a8 (bf16 also accepts fp32
    params and casts them at each matmul: that is bf16 training with fp32 master weights), and
    from ``formulation.arrange(params, form)`` for a ``form`` other than as trained.
    """
    if tokens_BxT.shape[-1] > cfg.max_seq_len:
        raise ValueError(
            f"sequence of {tokens_BxT.shape[-1]} tokens exceeds ModelConfig.max_seq_len "
            f"= {cfg.max_seq_len}"
        )
    return _run(cfg, policy, form, params, tokens_BxT, pos_BxT)


def token_losses(
    params: Params, cfg: ModelConfig, batch_BxT1: jax.Array, policy="fp32"
) -> jax.Array:
    """Next-token cross-entropy ``[B, T]`` in nats (float32) for a batch of T+1 tokens, with
    the model run in precision ``policy``: the loss training minimises and evaluation reports."""
    inputs_BxT, targets_BxT = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
    logits_BxTxV = apply(params, cfg, inputs_BxT, policy=policy)
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
    return -jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]


# --------------------------------------------------------------------------- KV cache


def init_cache(cfg: ModelConfig, batch: int, max_len: int, policy: str | precision.Policy = "fp32"):
    """An empty KV cache: ``{"layers": [{"k", "v": [B, H, max_len, K]}] * n_layers,
    "length": int32 scalar}`` (zeros; length 0), in bfloat16 for policies whose attention
    runs in bf16, else float32.  ``max_len`` (prompt + generated tokens) may not exceed
    ``cfg.max_seq_len``."""
    if not 0 < max_len <= cfg.max_seq_len:
        raise ValueError(
            f"prompt + generated tokens = {max_len} must be in [1, ModelConfig.max_seq_len "
            f"= {cfg.max_seq_len}]"
        )
    dt = jnp.bfloat16 if precision.get_policy(policy).attention == "bf16" else jnp.float32
    shape = (batch, cfg.n_heads, max_len, cfg.head_dim)
    return {
        "layers": [
            {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(cfg.n_layers)
        ],
        "length": jnp.zeros((), jnp.int32),
    }


def apply_cached(
    params: Params,
    cfg: ModelConfig,
    tokens_BxT: jax.Array,
    cache,
    policy: str | precision.Policy = "fp32",
    form: Formulation = TRAINED,
):
    """Run T new tokens against a KV cache: ``(logits [B, T, V] float32, updated cache)``.
    Prefill is ``apply_cached`` on the prompt with an empty cache; one decode step is
    ``apply_cached`` on one token.  Pure and jittable; the caller must keep
    ``cache["length"] + T <= max_len``: inside jit an overflowing write is clamped by
    ``dynamic_update_slice``, not caught (``jscale.latency`` sizes its caches exactly)."""
    return _run(cfg, policy, form, params, tokens_BxT, cache=cache)
