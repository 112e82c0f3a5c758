"""Numeric precision policies: what each matmul runs in, and converting trained params.

A ``Policy`` names, for every *converted* layer, the format of its weights and of its input
activations.  The model has one code path for every precision: each projection calls
``matmul(x, w, scale, fmt)`` with its layer's format, so a policy never needs a model copy.

| policy | converted weights | activations into the matmul | matmul |
|---|---|---|---|
| ``fp32`` | float32 | float32 | fp32 x fp32 -> fp32 |
| ``bf16`` | bfloat16 | bfloat16 (cast per matmul) | bf16 x bf16, fp32 accumulate |
| ``int8`` | int8, per-output-channel absmax scale (fp32) | float32 | fp32 matmul, output scaled |
| ``w8a8`` | int8, per-output-channel scale | int8, dynamic per-token scale | int8 x int8 -> int32 |

``int8`` casts its int8 weights to fp32 in the graph.  ``w8a8`` quantizes activations with a
dynamic per-token absmax scale, runs int8 x int8 -> int32 (``preferred_element_type``) and
rescales the output.

Which layers are converted (``Policy.layers``) is explicit.  Layer names: ``qkv``, ``out``,
``up``, ``down`` (the four block projections), ``embed`` (token embedding, and the output
head when tied) and ``head`` (the untied output head).  Defaults: ``bf16`` converts all of
them; ``int8`` and ``w8a8`` convert the four block projections and keep the embedding and head
in fp32 (they are the "embedding" parameters excluded from N, and the usual PTQ practice).
Pass ``layers=`` to ``get_policy`` to change that.  Always float, whatever the policy: RMSNorm
(fp32), softmax (fp32), the residual stream (fp32), the loss (fp32).  The attention score and
value matmuls (``q k^T``, ``p v``) run in ``Policy.attention`` (fp32, or bf16 for ``bf16``).

How a backend runs these formats (kernel layout, row padding) is not part of a policy: see
``jscale.formulation``.  A policy changes the numbers; a formulation only how fast they come.

Quantization is symmetric absmax: ``scale = max|w| / 127`` per output channel (per
embedding row), ``q = round(w / scale)`` in [-127, 127], so ``|w - q * scale| <= scale / 2``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

LAYERS = ("qkv", "out", "up", "down", "embed", "head")
BLOCK_LAYERS = ("qkv", "out", "up", "down")


class PrecisionError(ValueError):
    """An unknown policy or layer name; the message lists the valid ones."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """A precision policy: only what numbers are computed in.  name: one of ``POLICIES``.
    fmt: the format of converted layers (see module docstring).  layers: the converted layers;
    others run fp32.  attention: dtype of the attention score / value matmul inputs (``fp32``
    or ``bf16``)."""

    name: str
    fmt: str
    layers: frozenset[str]
    attention: str = "fp32"

    @property
    def label(self) -> str:
        """The name, plus the converted layers when they differ from the named default."""
        default = POLICIES.get(self.name)
        if default is None or default.layers == self.layers:
            return self.name
        return f"{self.name}[{','.join(sorted(self.layers))}]"

    def layer_format(self, layer: str) -> str:
        """The format layer ``layer`` runs in under this policy."""
        return self.fmt if layer in self.layers else "fp32"


POLICIES = {
    "fp32": Policy("fp32", "fp32", frozenset()),
    "bf16": Policy("bf16", "bf16", frozenset(LAYERS), attention="bf16"),
    "int8": Policy("int8", "int8", frozenset(BLOCK_LAYERS)),
    "w8a8": Policy("w8a8", "w8a8", frozenset(BLOCK_LAYERS)),
}


def get_policy(policy: str | Policy, layers: list[str] | tuple[str, ...] | None = None) -> Policy:
    """The policy named ``policy`` (or ``policy`` itself), optionally converting other
    ``layers``."""
    if isinstance(policy, Policy):
        p = policy
    elif policy in POLICIES:
        p = POLICIES[policy]
    else:
        raise PrecisionError(
            f"unknown precision {policy!r}; valid precisions are: {', '.join(POLICIES)}"
        )
    if layers is not None:
        bad = sorted(set(layers) - set(LAYERS))
        if bad:
            raise PrecisionError(
                f"unknown layer name(s) {', '.join(bad)} for precision {p.name!r}; "
                f"valid layers are: {', '.join(LAYERS)}"
            )
        p = dataclasses.replace(p, layers=frozenset(layers))
    return p


def dot_precision(a: jax.Array):
    """The ``precision=`` of a matmul with operand ``a``: HIGHEST for float32, so fp32 is true
    fp32 on GPU/TPU too (no TF32 / bf16 passes by default there); default otherwise (no effect
    on CPU, or on bf16 operands)."""
    return jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None


# --------------------------------------------------------------------------- quantization maths


def quantize(w: jax.Array, axis: int = 0) -> tuple[jax.Array, jax.Array]:
    """Symmetric absmax int8 quantization of ``w``, one scale per slice along every axis but
    ``axis`` (the reduced one).  For a kernel ``[in, out]`` use axis=0: per output channel.
    Returns ``(q int8 same shape, scale float32 with axis removed)``; ``w ~= q * scale``."""
    w = w.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=axis) / 127.0
    scale = jnp.where(scale == 0, 1.0, scale)  # an all-zero channel quantizes to 0 exactly
    q = jnp.clip(jnp.round(w / jnp.expand_dims(scale, axis)), -127, 127).astype(jnp.int8)
    return q, scale


def matmul(
    x_NxI: jax.Array, w: jax.Array, scale_O: jax.Array | None, fmt: str, w_in_axis: int = 0
) -> jax.Array:
    """``x @ w`` in integer format ``fmt``, float32 ``[..., O]``; ``w_in_axis`` is the kernel's
    input (contracted) axis: 0 for ``[I, O]``, 1 for ``[O, I]``.  The float formats (fp32, bf16)
    are ``jscale.formulation.project``.

    int8: ``w`` is int8 with per-output scales; cast to fp32 in the graph (XLA:CPU materialises
    the fp32 weight), fp32 matmul, output scaled per channel.  w8a8: ``x`` quantized per token
    (absmax over the last axis), int8 x int8 -> int32 accumulation, then rescaled by both scales.
    """
    dims = (((x_NxI.ndim - 1,), (w_in_axis,)), ((), ()))
    if fmt == "int8":
        return jax.lax.dot_general(x_NxI.astype(jnp.float32), w.astype(jnp.float32), dims) * scale_O
    if fmt == "w8a8":
        xq, xs = quantize(x_NxI, axis=-1)
        acc = jax.lax.dot_general(xq, w, dims, preferred_element_type=jnp.int32)
        return acc.astype(jnp.float32) * xs[..., None] * scale_O
    raise PrecisionError(f"integer matmul format must be int8 or w8a8, got {fmt!r}")


# --------------------------------------------------------------------------- converting params


def convert_params(params: Any, policy: str | Policy) -> Any:
    """Convert trained float32 ``params`` to ``policy``: each converted layer's kernel becomes
    bfloat16 (bf16) or int8 plus a float32 ``scale`` per output channel (int8, w8a8); a
    converted embedding becomes bfloat16 or int8 with one scale per row (token), which is
    also per output channel of the tied head.  Kernels stay ``[in, out]`` (lay them out for a
    backend with ``jscale.formulation.arrange``).  Everything else is returned unchanged."""
    p = get_policy(policy)

    def conv(name: str, leaf_name: str, w, axis: int):
        fmt = p.layer_format(name)
        if fmt == "fp32":
            return {leaf_name: w}
        if fmt == "bf16":
            return {leaf_name: w.astype(jnp.bfloat16)}
        q, s = quantize(w, axis=axis)
        return {leaf_name: q, "scale": s}

    out = {}
    for key, sub in params.items():
        if key == "embed":
            out[key] = conv("embed", "embedding", sub["embedding"], axis=1)
        elif key == "head":
            out[key] = conv("head", "kernel", sub["kernel"], axis=0)
        elif key.startswith("block_"):
            out[key] = {
                k: (conv(k, "kernel", v["kernel"], axis=0) if k in BLOCK_LAYERS else v)
                for k, v in sub.items()
            }
        else:
            out[key] = sub
    return out


def param_bytes(params: Any) -> int:
    """Real bytes of a params pytree (sum of ``size * itemsize`` over leaves)."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))
