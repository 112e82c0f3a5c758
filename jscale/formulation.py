"""How a backend runs the model's numbers: kernel layout, row padding, matrix-vector form, and
XLA:CPU tricks; and which of them is fastest on the machine at hand.

A ``jscale.precision.Policy`` says *what* every matmul computes in (fp32, bf16, int8, w8a8).
A ``Formulation`` says *how* the backend is handed that work, without changing the result:

* ``kernel_layout``: projection kernels stored ``in_out`` (``[in, out]``, as trained) or
  ``out_in`` (``[out, in]``, rows are output channels).  At batch 1 a decode step is a
  matrix-vector product per projection, and some backends stream one layout faster.
  ``arrange`` lays trained params out this way, once.
* ``min_rows``: each projection's tokens are padded with zero rows to at least this many (the
  extra outputs are dropped).  XLA:CPU hands matmuls of >= 2 rows to its YNNPACK library, whose
  bf16 and int8 x int8 kernels can beat XLA's own matrix-vector code.  1 = no padding.

Which is fastest differs between CPUs (an AVX2, an AVX-512 and an AMX machine disagree) and
between model sizes, so nothing here is a table measured on one machine: ``jscale.autotune``
times ``CANDIDATES`` on the default device per (format, shape class), once per device and JAX
version (cached next to the roofline), and ``autotune.choice`` picks the fastest, keeping any
field a config pins.  Shape classes (``shape_class``): ``small`` (the largest projection under
``PAD_MIN_WEIGHTS`` weights: dispatch dominates, padding costs more than it saves) and
``large`` (timed with weights streamed from memory: the regime a latency law extrapolates
in).  One choice for every large model keeps the formulation the same along a latency ladder,
so its law is not bent by a change of formulation.

Training always runs ``TRAINED`` (``in_out``, no padding).

Two more XLA:CPU formulations live here, each exact:

* ``linear``: the float projection with a custom backward that transposes the narrower operand
  of the weight gradient (XLA:CPU transposed the wider one: ~40% of a training step at 1e7).
* ``write_kv``: the decode cache update ordered after every read of the old cache, so XLA
  updates the buffers in place instead of copying them (~12% of a 1e8 decode step).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jscale import precision
from jscale.config import ConfigError, ModelConfig, is_positive_int

KERNEL_LAYOUTS = ("in_out", "out_in")
SHAPE_CLASSES = ("small", "large")
# Below this many weights in the largest projection (d_model x d_ff) a model is "small".
PAD_MIN_WEIGHTS = 2**16


@dataclasses.dataclass(frozen=True)
class Formulation:
    """How projections run: ``kernel_layout`` (``in_out`` | ``out_in``) and ``min_rows``
    (>= 1).  Hashable, so it can be a static argument of a jitted function.  ``name``:
    ``layout:rows`` (``out_in:4``); ``Formulation.parse`` reads it back."""

    kernel_layout: str = "in_out"
    min_rows: int = 1

    def __post_init__(self):
        if self.kernel_layout not in KERNEL_LAYOUTS:
            raise ConfigError(
                f"kernel_layout must be one of {', '.join(KERNEL_LAYOUTS)}, "
                f"got {self.kernel_layout!r}"
            )
        if not is_positive_int(self.min_rows):
            raise ConfigError(f"min_rows must be a positive integer, got {self.min_rows!r}")
        object.__setattr__(self, "min_rows", int(self.min_rows))

    @property
    def name(self) -> str:
        return f"{self.kernel_layout}:{self.min_rows}"

    @classmethod
    def parse(cls, name: str) -> "Formulation":
        """``"out_in:4"`` -> ``Formulation("out_in", 4)``; ``ConfigError`` when malformed."""
        layout, _, rows = str(name).partition(":")
        return cls(layout, int(rows) if rows.isdigit() else rows)

    def kernel_shape(self, n_in: int, n_out: int) -> tuple[int, int]:
        """The stored shape of a projection kernel from ``n_in`` to ``n_out`` features."""
        return (n_out, n_in) if self.kernel_layout == "out_in" else (n_in, n_out)


TRAINED = Formulation()
# What the autotune times for every format and shape class (the first is the baseline).
# in_out:4 was a candidate too: never the fastest of a large model in any format on the machine
# that made figures/ (docs/latency.md); dropped to keep the first use short.
CANDIDATES = tuple(Formulation.parse(n) for n in ("in_out:1", "out_in:1", "out_in:4"))


def shape_class(cfg: ModelConfig | None, fmt: str | None = None) -> str:
    """``cfg``'s shape class: ``small`` when ``d_model * d_ff`` is under ``PAD_MIN_WEIGHTS``,
    else ``large`` (also when no cfg is given).  ``fmt`` is accepted for symmetry with the
    autotune's key; the class does not depend on it."""
    if cfg is not None and cfg.d_model * cfg.d_ff < PAD_MIN_WEIGHTS:
        return "small"
    return "large"


def pins(kernel_layout, min_rows) -> dict:
    """The fields a caller pins (not ``"auto"``), checked: ``{"kernel_layout": .., "min_rows": ..}``
    or a subset."""
    if kernel_layout != "auto" and kernel_layout not in KERNEL_LAYOUTS:
        raise ConfigError(
            f"kernel_layout must be auto or one of {', '.join(KERNEL_LAYOUTS)}, "
            f"got {kernel_layout!r}"
        )
    if min_rows != "auto" and not is_positive_int(min_rows):
        raise ConfigError(f"min_rows must be auto or a positive integer, got {min_rows!r}")
    pins = {"kernel_layout": kernel_layout, "min_rows": min_rows}
    return {k: v for k, v in pins.items() if v != "auto"}


def apply_pins(form: Formulation, pins: dict) -> Formulation:
    """``form`` with the pinned fields replaced."""
    layout = pins.get("kernel_layout", form.kernel_layout)
    return Formulation(layout, int(pins.get("min_rows", form.min_rows)))


def arrange(params, form: Formulation):
    """``params`` (as ``precision.convert_params`` returns them, kernels ``[in, out]``) laid out
    for ``form``: under ``out_in`` every projection kernel is transposed (per-output-channel
    scales and the embedding are unchanged).  Pure; returns a new pytree."""
    if form.kernel_layout == "in_out":
        return params

    def leaf(path, x):
        return x.T if getattr(path[-1], "key", None) == "kernel" else x

    return jax.tree_util.tree_map_with_path(leaf, params)


# --------------------------------------------------------------------------- the projection


def _dot(a, b, b_in_axis: int = 0):
    return jax.lax.dot_general(
        a,
        b,
        (((a.ndim - 1,), (b_in_axis,)), ((), ())),
        precision=precision.dot_precision(a),
        preferred_element_type=jnp.float32,
    )


@jax.custom_vjp
def linear(x_NxI: jax.Array, w_IxO: jax.Array) -> jax.Array:
    """``x @ w`` (float32 result) with the weight gradient formulated for XLA:CPU.

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


def _linear_fwd(x, w):
    return _dot(x, w), (x, w)


def _linear_bwd(res, g):
    x, w = res
    g = g.astype(x.dtype)  # bf16 matmuls stay bf16 in the backward too
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dw = _dot(x2.T, g2) if x2.shape[1] <= g2.shape[1] else _dot(g2.T, x2).T
    return _dot(g, w.T).astype(x.dtype), dw.astype(w.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


def project(x, w, scale, fmt: str, form: Formulation = TRAINED):
    """The one matmul of every projection: ``x [..., I]`` times the kernel ``w`` (stored per
    ``form.kernel_layout``) in format ``fmt`` (``jscale.precision``), float32 ``[..., O]``.
    Float formats cast both operands (so bf16 training computes from float32 master weights);
    integer formats are ``precision.matmul``.  Fewer than ``form.min_rows`` tokens are padded
    with zero rows for the matmul and the extra outputs dropped."""
    rows = math.prod(x.shape[:-1])
    if rows < form.min_rows:
        x_RxI = jnp.pad(x.reshape(rows, x.shape[-1]), ((0, form.min_rows - rows), (0, 0)))
        y_RxO = project(x_RxI, w, scale, fmt, dataclasses.replace(form, min_rows=1))
        return y_RxO[:rows].reshape(*x.shape[:-1], y_RxO.shape[-1])
    w_in_axis = 1 if form.kernel_layout == "out_in" else 0
    if fmt in ("fp32", "bf16"):
        dt = jnp.bfloat16 if fmt == "bf16" else jnp.float32
        x, w = x.astype(dt), w.astype(dt)
        return _dot(x, w, w_in_axis) if w_in_axis else linear(x, w)  # out_in is inference only
    return precision.matmul(x, w, scale, fmt, w_in_axis)


def write_kv(kv: dict, k_BxHxTxK, v_BxHxTxK, o_BxHxTxK, start):
    """``kv`` (``{"k", "v": [B, H, S, K]}``) with the new keys and values written at position
    ``start``, after every read of the old buffers.

    The written values depend on the attention output ``o`` (``+ 0 * o``: exact for finite o),
    so XLA orders the reads of the old buffers before the in-place write; without it XLA:CPU
    copied each K/V buffer twice per decode step, ~12% of a 1e8 step (benchmarks/README.md).
    ``jax.lax.optimization_barrier`` does not give that order."""
    dep = (0.0 * o_BxHxTxK[..., :1]).astype(k_BxHxTxK.dtype)
    at = (0, 0, start, 0)
    return {
        "k": jax.lax.dynamic_update_slice(kv["k"], k_BxHxTxK + dep, at),
        "v": jax.lax.dynamic_update_slice(kv["v"], v_BxHxTxK + dep, at),
    }
