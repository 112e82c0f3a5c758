"""Numeric precision policies: what each matmul runs in, and converting trained params.

A ``Policy`` names, for every *converted* layer, the format of its weights and of its input
activations.  The model has one code path for every precision: each projection calls
``matmul(x, w, scale, fmt)`` with its layer's format, so a policy never needs a model copy.

| policy | converted weights | activations into the matmul | matmul |
|---|---|---|---|
| ``fp32`` | float32 | float32 | fp32 x fp32 -> fp32 |
| ``bf16`` | bfloat16 | bfloat16 (cast per matmul) | bf16 x bf16, fp32 accumulate |
| ``int8`` | int8, per-output-channel absmax scale (fp32) | float32 | int8 weights cast to fp32 in the graph, fp32 matmul, output scaled |
| ``w8a8`` | int8, per-output-channel scale | int8, dynamic per-token absmax scale | int8 x int8 -> int32 (``preferred_element_type``), rescaled |

Which layers are converted (``Policy.layers``) is explicit.  Layer names: ``qkv``, ``out``,
``up``, ``down`` (the four block projections), ``embed`` (token embedding, and the output
head when tied) and ``head`` (the untied output head).  Defaults: ``bf16`` converts all of
them; ``int8`` and ``w8a8`` convert the four block projections and keep the embedding and head
in fp32 (they are the "embedding" parameters excluded from N, and the usual PTQ practice).
Pass ``layers=`` to ``get_policy`` to change that.  Always float, whatever the policy: RMSNorm
(fp32), softmax (fp32), the residual stream (fp32), the loss (fp32).  The attention score and
value matmuls (``q k^T``, ``p v``) run in ``Policy.attention`` (fp32, or bf16 for ``bf16``).

Kernel layout (``Policy.kernel_layout``): ``in_out`` stores each projection kernel ``[in, out]``
as trained; ``out_in`` stores it transposed, ``[out, in]`` (rows are output channels).  Same
maths, different memory order: at batch 1 a decode step is a matrix-vector product per
projection, and XLA:CPU streams fp32 ``[out, in]`` kernels faster
(``benchmarks/decode_matvec_layout.py``: 1.25x on the projections, 1.2x on a whole fp32 decode
step at 1e8), so ``jscale.latency`` measures most inference in ``out_in`` (its "auto").
``convert_params`` transposes the kernels of the policy's layout; training stays ``in_out``.

Quantization is symmetric absmax: ``scale = max|w| / 127`` per output channel (per
embedding row), ``q = round(w / scale)`` in [-127, 127], so ``|w - q * scale| <= scale / 2``.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp

LAYERS = ("qkv", "out", "up", "down", "embed", "head")
KERNEL_LAYOUTS = ("in_out", "out_in")
BLOCK_LAYERS = ("qkv", "out", "up", "down")


class PrecisionError(ValueError):
    """An unknown policy or layer name; the message lists the valid ones."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """A precision policy.  name: one of ``POLICIES``.  fmt: the format of converted layers
    (see module docstring).  layers: the converted layers; others run fp32.  attention:
    dtype of the attention score / value matmul inputs (``fp32`` or ``bf16``).  kernel_layout
    and min_rows: None (the default) means not chosen, and runs as trained (``in_out``, 1);
    ``jscale.latency`` fills them with the fastest measured values.  kernel_layout:
    how projection kernels are stored, ``in_out`` (``[in, out]``, as trained) or ``out_in``
    (``[out, in]``, the faster batch-1 inference layout on XLA:CPU); see the module docstring.
    min_rows: each projection's tokens are padded with zero rows to at least this many (the
    extra outputs are dropped): XLA:CPU hands matmuls of >= 2 rows to its YNNPACK library,
    whose bf16 and int8 x int8 kernels make a whole batch-1 decode step 1.4x (bf16) and 1.7-3x
    (w8a8) faster than XLA's own matrix-vector code does (benchmarks/README.md).  Same
    result; 1 = no padding."""

    name: str
    fmt: str
    layers: frozenset[str]
    attention: str = "fp32"
    kernel_layout: str | None = None
    min_rows: int | None = None

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


def get_policy(policy: str | Policy, layers: list[str] | tuple[str, ...] | None = None,
               kernel_layout: str | None = None, min_rows: int | None = None) -> Policy:
    """The policy named ``policy`` (or ``policy`` itself), optionally with other ``layers``,
    another ``kernel_layout`` (one of ``KERNEL_LAYOUTS``) or ``min_rows`` (a positive int)."""
    if isinstance(policy, Policy):
        p = policy
    elif policy in POLICIES:
        p = POLICIES[policy]
    else:
        raise PrecisionError(f"unknown precision {policy!r}; valid precisions are: {', '.join(POLICIES)}")
    if layers is not None:
        bad = sorted(set(layers) - set(LAYERS))
        if bad:
            raise PrecisionError(f"unknown layer name(s) {', '.join(bad)} for precision {p.name!r}; "
                                 f"valid layers are: {', '.join(LAYERS)}")
        p = dataclasses.replace(p, layers=frozenset(layers))
    if kernel_layout is not None:
        if kernel_layout not in KERNEL_LAYOUTS:
            raise PrecisionError(f"unknown kernel layout {kernel_layout!r}; valid layouts are: "
                                 f"{', '.join(KERNEL_LAYOUTS)}")
        p = dataclasses.replace(p, kernel_layout=kernel_layout)
    if min_rows is not None:
        if not is_positive_int(min_rows):
            raise PrecisionError(f"min_rows must be a positive integer, got {min_rows!r}")
        p = dataclasses.replace(p, min_rows=int(min_rows))
    return p


def is_positive_int(v: Any) -> bool:
    """An integer (Python or numpy, not bool) >= 1."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1


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


def matmul(x_NxI: jax.Array, w_IxO: jax.Array, scale_O: jax.Array | None, fmt: str,
           out_in: bool = False) -> jax.Array:
    """``x @ w`` in format ``fmt`` (float32 result ``[..., O]``); with ``out_in`` the kernel
    is stored ``[O, I]`` and the product is ``x @ w^T``.

    Only the integer formats; the float ones (fp32, bf16) are ``jscale.model.linear``.
    int8: ``w`` is int8 with
    per-output scales; cast to fp32 in the graph (XLA:CPU materialises the fp32 weight), fp32
    matmul, output scaled per channel.  w8a8: ``x`` quantized per token (absmax over the last axis), int8 x int8 ->
    int32 accumulation, then rescaled by both scales.
    """
    dims = (((x_NxI.ndim - 1,), (1 if out_in else 0,)), ((), ()))
    if fmt == "int8":
        return jax.lax.dot_general(x_NxI.astype(jnp.float32), w_IxO.astype(jnp.float32), dims) * scale_O
    if fmt == "w8a8":
        xq, xs = quantize(x_NxI, axis=-1)
        acc = jax.lax.dot_general(xq, w_IxO, dims, preferred_element_type=jnp.int32)
        return acc.astype(jnp.float32) * xs[..., None] * scale_O
    raise PrecisionError(f"integer matmul format must be int8 or w8a8, got {fmt!r}")


# --------------------------------------------------------------------------- converting params

def convert_params(params: Any, policy: str | Policy) -> Any:
    """Convert trained float32 ``params`` to ``policy``: each converted layer's kernel becomes
    bfloat16 (bf16) or int8 plus a float32 ``scale`` per output channel (int8, w8a8); a
    converted embedding becomes bfloat16 or int8 with one scale per row (token), which is
    also per output channel of the tied head.  Under ``kernel_layout="out_in"`` every
    projection kernel (not the embedding) is stored transposed, ``[out, in]``, whatever its
    format.  Everything else is returned unchanged."""
    p = get_policy(policy)

    def conv(name: str, leaf_name: str, w, axis: int):
        fmt = p.layer_format(name)
        if leaf_name == "kernel" and p.kernel_layout == "out_in":
            w, axis = w.T, 1 - axis
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
            out[key] = {k: (conv(k, "kernel", v["kernel"], axis=0) if k in BLOCK_LAYERS else v)
                        for k, v in sub.items()}
        else:
            out[key] = sub
    return out


def param_bytes(params: Any) -> int:
    """Real bytes of a params pytree (sum of ``size * itemsize`` over leaves)."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))
