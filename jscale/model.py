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

import flax.linen as nn
import jax
import jax.numpy as jnp

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
    """``x @ w`` over the last axis of x (any leading shape), with a hand-written backward.

    The maths is plain autodiff; only the weight gradient's formulation differs.  XLA:CPU
    computes the autodiff ``dw = x^T g`` (contracting the token axis of both operands) by
    transposing the wider of the two ``[tokens, features]`` operands, fused with whatever
    elementwise op produced it (e.g. the GELU backward): ~40% of a training step at 1e7
    parameters.  Transposing the narrower operand instead (``x^T g`` or ``(g^T x)^T``)
    halves the MLP's backward time (benchmarks/README.md); on GPU/TPU it is neutral.
    """
    return x_NxI @ w_IxO


def _linear_fwd(x, w):
    return x @ w, (x, w)


def _linear_bwd(res, g):
    x, w = res
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dw = x2.T @ g2 if x2.shape[1] <= g2.shape[1] else (g2.T @ x2).T
    return g @ w.T, dw.astype(w.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


class Dense(nn.Module):
    """Bias-free projection ``[..., in] -> [..., features]``; kernel ``[in, features]``."""

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        return linear(x, kernel)


class RMSNorm(nn.Module):
    @nn.compact
    def __call__(self, x_BxTxD):
        scale_D = self.param("scale", nn.initializers.ones, (x_BxTxD.shape[-1],))
        x = x_BxTxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        return (x * scale_D).astype(x_BxTxD.dtype)


class Block(nn.Module):
    cfg: ModelConfig
    dense: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x_BxTxD, pos_BxT):
        c = self.cfg
        B, T, _ = x_BxTxD.shape
        out_init = nn.initializers.variance_scaling(1 / (2 * c.n_layers), "fan_in", "normal")

        h = RMSNorm(name="attn_norm")(x_BxTxD)
        qkv_BxTx3D = self.dense(3 * c.d_model, name="qkv")(h)
        qkv_3xBxHxTxK = qkv_BxTx3D.reshape(B, T, 3, c.n_heads, c.head_dim).transpose(2, 0, 3, 1, 4)
        pos_Bx1xT = pos_BxT[:, None, :]
        q = rope(qkv_3xBxHxTxK[0], pos_Bx1xT, c.rope_base) * (1 / math.sqrt(c.head_dim))
        k = rope(qkv_3xBxHxTxK[1], pos_Bx1xT, c.rope_base)
        att_BxHxTxT = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=jnp.float32)
        causal_Bx1xTxT = pos_BxT[:, None, :, None] >= pos_BxT[:, None, None, :]
        att_BxHxTxT = jax.nn.softmax(jnp.where(causal_Bx1xTxT, att_BxHxTxT, -jnp.inf), axis=-1)
        o_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", att_BxHxTxT.astype(q.dtype), qkv_3xBxHxTxK[2])
        o_BxTxHxK = o_BxHxTxK.transpose(0, 2, 1, 3)
        x_BxTxD = x_BxTxD + self.dense(c.d_model, name="out", kernel_init=out_init)(
            o_BxTxHxK.reshape(B, T, c.d_model))

        h = RMSNorm(name="mlp_norm")(x_BxTxD)
        h_BxTxF = nn.gelu(self.dense(c.d_ff, name="up")(h))
        return x_BxTxD + self.dense(c.d_model, name="down", kernel_init=out_init)(h_BxTxF)


class Transformer(nn.Module):
    """``apply(params, tokens_BxT, pos_BxT=None) -> logits_BxTxV`` (float32 logits).

    ``dense`` builds every projection matmul (default: ``Dense``, bias-free); it is the
    one place a precision policy plugs in, so every precision runs this same code.
    """

    cfg: ModelConfig
    dense: Callable[..., nn.Module] | None = None

    @nn.compact
    def __call__(self, tokens_BxT, pos_BxT=None):
        c = self.cfg
        dense = self.dense or Dense
        if pos_BxT is None:
            pos_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
        embed = nn.Embed(c.vocab_size, c.d_model, name="embed",
                         embedding_init=nn.initializers.normal(1 / math.sqrt(c.d_model)))
        x_BxTxD = embed(tokens_BxT)
        for i in range(c.n_layers):
            x_BxTxD = Block(c, dense, name=f"block_{i}")(x_BxTxD, pos_BxT)
        x_BxTxD = RMSNorm(name="final_norm")(x_BxTxD)
        if c.tie_embeddings:
            logits_BxTxV = embed.attend(x_BxTxD)
        else:
            logits_BxTxV = dense(c.vocab_size, name="head")(x_BxTxD)
        return logits_BxTxV.astype(jnp.float32)


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
    """Float32 parameters for ``cfg``, a pure function of ``key``."""
    tokens = jnp.zeros((1, min(8, cfg.max_seq_len)), jnp.int32)
    return Transformer(cfg).init(key, tokens)["params"]


def apply(params: Params, cfg: ModelConfig, tokens_BxT: jax.Array,
          pos_BxT: jax.Array | None = None) -> jax.Array:
    """Logits ``[B, T, V]`` (float32) for integer tokens ``[B, T]``; pure and jittable."""
    if tokens_BxT.shape[-1] > cfg.max_seq_len:
        raise ValueError(f"sequence of {tokens_BxT.shape[-1]} tokens exceeds ModelConfig.max_seq_len "
                         f"= {cfg.max_seq_len}")
    return Transformer(cfg).apply({"params": params}, tokens_BxT, pos_BxT)


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
    mask zeroes half of it; the FLOPs are spent anyway).  Norms, softmax, GELU and RoPE are
    elementwise and not counted (a few % of the total at d_model >= 128).
    ``train = 3 * forward`` (backward = 2 x forward).
    """
    d, f, n_l = cfg.d_model, cfg.d_ff, cfg.n_layers
    matmul_weights = n_l * (4 * d * d + 2 * d * f)
    forward = 2 * matmul_weights + 2 * d * cfg.vocab_size + 4 * n_l * seq_len * d
    return {"forward": float(forward), "train": float(3 * forward)}
