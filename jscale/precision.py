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
| ``int4`` | int4 (2 per byte), fp32 scale per G inputs | float32 | dequantise, fp32 matmul |
| ``fp8`` | float8 e4m3, per-output-channel scale | float32 | fp32 matmul, output scaled |
| ``fp8a8`` | float8 e4m3, per-output scale | float8 e4m3, per-token scale | fp8 x fp8 -> fp32 |

``int8`` casts its int8 weights to fp32 in the graph.  ``w8a8`` quantizes activations with a
dynamic per-token absmax scale, runs int8 x int8 -> int32 (``preferred_element_type``) and
rescales the output.  ``int4`` is ``int4-g64``: groups of 64 input channels (``int4-g32`` and
``int4-g128`` name the other group sizes; a projection whose input width the group does not
divide uses one group per output channel); weights in [-8, 7] on a grid of ``absmax / 7.5`` (the
full int4 range: 13% less loss than ``absmax / 7`` on [-7, 7], benchmarks/README.md), packed two
per ``uint8`` along
the input axis, so they take half a byte each plus ``4 / G`` bytes of scale.  The fp8 formats
scale each output channel so its absmax is e4m3's largest finite value, 448.

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
    def bits(self) -> int:
        """Bits per converted weight (the precision law's P): 32, 16, 8 or 4."""
        return BITS[self.fmt.split("-")[0]]

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
    "int4": Policy("int4", "int4-g64", frozenset(BLOCK_LAYERS)),
    "fp8": Policy("fp8", "fp8", frozenset(BLOCK_LAYERS)),
    "fp8a8": Policy("fp8a8", "fp8a8", frozenset(BLOCK_LAYERS)),
}
BITS = {"fp32": 32, "bf16": 16, "int8": 8, "w8a8": 8, "int4": 4, "fp8": 8, "fp8a8": 8}
GROUP_SIZES = (32, 64, 128)  # int4's groups of input channels (``int4-gG``)
# Integer and fp8 formats: the dtype of converted weights (int4: two per uint8).
STORED = {"int8": "int8", "w8a8": "int8", "int4": "uint8", "fp8": "float8_e4m3fn"}
STORED["fp8a8"] = STORED["fp8"]
NEW_FORMATS = ("int4", "fp8", "fp8a8")  # block projections only (not the embedding or head)


def _int4_policy(name: str) -> Policy | None:
    """``int4-gG`` (G in ``GROUP_SIZES``) as a policy, else None."""
    if name.startswith("int4-g") and name[6:].isdigit() and int(name[6:]) in GROUP_SIZES:
        return Policy(name, name, frozenset(BLOCK_LAYERS))
    return None


def names() -> tuple[str, ...]:
    """Every valid precision name: ``POLICIES`` and the int4 group sizes."""
    return (*POLICIES, *(f"int4-g{g}" for g in GROUP_SIZES if g != 64))


def base_format(fmt: str) -> str:
    """``int4-g32`` -> ``int4``; other formats are their own base."""
    return fmt.split("-")[0]


def group_size(fmt: str, n_in: int) -> int:
    """The int4 group (input channels per scale) of a projection with ``n_in`` inputs: the
    format's G when it divides ``n_in``, else ``n_in`` (one group per output channel)."""
    g = int(fmt.split("-g")[1])
    return g if n_in % g == 0 else n_in


def get_policy(policy: str | Policy, layers: list[str] | tuple[str, ...] | None = None) -> Policy:
    """The policy named ``policy`` (or ``policy`` itself), optionally converting other
    ``layers``."""
    if isinstance(policy, Policy):
        p = policy
    elif policy in POLICIES:
        p = POLICIES[policy]
    elif isinstance(policy, str) and _int4_policy(policy) is not None:
        p = _int4_policy(policy)
    else:
        raise PrecisionError(
            f"unknown precision {policy!r}; valid precisions are: {', '.join(names())}"
        )
    if layers is not None:
        bad = sorted(set(layers) - set(LAYERS))
        if bad:
            raise PrecisionError(
                f"unknown layer name(s) {', '.join(bad)} for precision {p.name!r}; "
                f"valid layers are: {', '.join(LAYERS)}"
            )
        extra = sorted(set(layers) - set(BLOCK_LAYERS))
        if base_format(p.fmt) in NEW_FORMATS and extra:
            raise PrecisionError(
                f"precision {p.name!r} converts block projections only "
                f"({', '.join(BLOCK_LAYERS)}), not {', '.join(extra)}"
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


FP8_MAX = 448.0  # e4m3's largest finite value


def quantize_fp8(w: jax.Array, axis: int = 0) -> tuple[jax.Array, jax.Array]:
    """Float8 e4m3 ``w`` scaled per slice along every axis but ``axis`` so each slice's absmax
    is ``FP8_MAX``: ``(q float8_e4m3fn, scale float32 with axis removed)``, ``w ~= q * scale``."""
    w = w.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=axis) / FP8_MAX
    scale = jnp.where(scale == 0, 1.0, scale)
    return (w / jnp.expand_dims(scale, axis)).astype(jnp.float8_e4m3fn), scale


def quantize_int4(w_IxO: jax.Array, group: int) -> tuple[jax.Array, jax.Array]:
    """Symmetric absmax int4 quantization of a kernel ``[I, O]`` in groups of ``group`` input
    channels (``group`` divides I; I even): ``scale [I / group, O] = max|w| / 7.5`` per group and
    output channel, ``q = round(w / scale)`` clipped to [-8, 7] (both ends of the int4 range
    are used: -absmax maps to -7.5 and rounds to -8, +absmax to 7.5 and clips to 7, still within
    half a step), packed two per byte along the input
    axis (input ``2i`` in the low nibble, ``2i + 1`` in the high one): ``(packed uint8
    [I / 2, O], scale float32 [I / group, O])``; ``|w - q * scale| <= scale / 2``."""
    i, o = w_IxO.shape
    w = w_IxO.astype(jnp.float32).reshape(i // group, group, o)
    scale = jnp.max(jnp.abs(w), axis=1) / 7.5
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.clip(jnp.round(w / scale[:, None, :]), -8, 7).astype(jnp.int8).reshape(i, o)
    return pack_int4(q), scale


def pack_int4(q_IxO: jax.Array) -> jax.Array:
    """int8 values in [-8, 7], ``[I, O]`` with I even -> ``uint8 [I / 2, O]``, two's-complement
    nibbles: row ``2i`` low, row ``2i + 1`` high."""
    u = q_IxO.astype(jnp.uint8) & 0xF
    return u[0::2] | (u[1::2] << 4)


def unpack_int4(p_HxO: jax.Array, axis: int = 0) -> jax.Array:
    """Inverse of ``pack_int4`` along ``axis`` (the packed input axis): int8 values in
    [-8, 7] with that axis twice as long."""
    lo = (p_HxO & 0xF).astype(jnp.int8)
    hi = (p_HxO >> 4).astype(jnp.int8)
    lo, hi = jnp.where(lo > 7, lo - 16, lo), jnp.where(hi > 7, hi - 16, hi)
    both = jnp.stack([lo, hi], axis=axis + 1)  # [..., H, 2, ...]: interleave along axis
    shape = list(p_HxO.shape)
    shape[axis] *= 2
    return both.reshape(shape)


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
    if base_format(fmt) == "int4":  # dequantise per group, then one fp32 matmul
        q = unpack_int4(w, axis=w_in_axis).astype(jnp.float32)
        n_in = q.shape[w_in_axis]
        g = group_size(fmt, n_in)
        s = jnp.repeat(scale_O, g, axis=0)  # [I, O]
        w_f = q * (s.T if w_in_axis else s)
        return jax.lax.dot_general(x_NxI.astype(jnp.float32), w_f, dims)
    if fmt == "fp8":
        return jax.lax.dot_general(x_NxI.astype(jnp.float32), w.astype(jnp.float32), dims) * scale_O
    if fmt == "fp8a8":
        xq, xs = quantize_fp8(x_NxI, axis=-1)
        acc = jax.lax.dot_general(xq, w, dims, preferred_element_type=jnp.float32)
        return acc * xs[..., None] * scale_O
    if fmt == "int8":
        return jax.lax.dot_general(x_NxI.astype(jnp.float32), w.astype(jnp.float32), dims) * scale_O
    if fmt == "w8a8":
        xq, xs = quantize(x_NxI, axis=-1)
        acc = jax.lax.dot_general(xq, w, dims, preferred_element_type=jnp.int32)
        return acc.astype(jnp.float32) * xs[..., None] * scale_O
    raise PrecisionError(f"matmul format must be int8, w8a8, int4-gG, fp8 or fp8a8, got {fmt!r}")


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
        if base_format(fmt) == "int4":
            q, s = quantize_int4(w, group_size(fmt, w.shape[0]))
        elif fmt in ("fp8", "fp8a8"):
            q, s = quantize_fp8(w, axis=axis)
        else:
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
