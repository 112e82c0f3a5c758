"""What a model needs in memory, estimated before any compute, and the check that refuses what
the device cannot hold (``jscale sweep --plan`` prints the estimates).

The estimates count float32 bytes of what a program holds at once, with round factors that
err high (XLA's temporaries and the allocator take the rest); they are for refusing an
impossible run in a second, not for planning to the last GiB.

* ``train_bytes``: params, gradients and AdamW's two moments (16 B per parameter) plus the
  activations a training step keeps for the backward pass (per layer ``B T (10 d + 2 d_ff)`` and
  ``3 B H T^2`` floats for the attention scores, and ``3 B T V`` for the logits).
* ``eval_bytes``: params plus one evaluation batch's logits and activations.
* ``latency_bytes``: ``LATENCY_FACTOR`` x the float32 params (params, one converted copy, the
  KV cache, activations).
"""

from __future__ import annotations

import math
import os

from jscale.config import ConfigError, ModelConfig, TrainConfig, count_params

LATENCY_FACTOR = 2.5
# A run may use at most this fraction of the device's memory.
FRACTION = 0.6
# The largest model any config may ask for: far above what a device holds, and small enough
# that the shape search stays instant.
MAX_PARAMS = 1e13


def train_bytes(cfg: ModelConfig, tc: TrainConfig) -> float:
    """Bytes one training step of ``cfg`` with ``tc``'s batch holds at once (estimate)."""
    n = count_params(cfg)["total"]
    b, t = tc.batch_size, tc.seq_len
    d, f, h, v, layers = cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.vocab_size, cfg.n_layers
    floats = layers * (b * t * (10 * d + 2 * f) + 3 * b * h * t * t) + 3 * b * t * v
    return 16.0 * n + 4.0 * floats


def eval_bytes(cfg: ModelConfig, tc: TrainConfig) -> float:
    """Bytes evaluating one batch of ``tc.eval_batch_size`` sequences holds (estimate)."""
    n = count_params(cfg)["total"]
    b, t = tc.eval_batch_size, tc.seq_len
    floats = b * t * (3 * cfg.vocab_size + 10 * cfg.d_model + 2 * cfg.d_ff + cfg.n_heads * t)
    return 8.0 * n + 4.0 * floats


def latency_bytes(cfg: ModelConfig) -> float:
    """Bytes one latency measurement of ``cfg`` may hold at once (``LATENCY_FACTOR`` x the
    float32 params)."""
    return LATENCY_FACTOR * 4 * count_params(cfg)["total"]


def device_bytes() -> float:
    """The default device's memory: the allocator's limit on an accelerator, physical memory
    on a CPU (NaN when neither is known)."""
    import jax

    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("nan")


def check(need: float, memory: float, where: str, what: str, fix: str) -> None:
    """``ConfigError`` at ``where`` when ``need`` bytes exceed ``FRACTION`` of ``memory`` (NaN
    memory: no check); ``what`` names the model and the step, ``fix`` says what to change."""
    if math.isfinite(memory) and need > FRACTION * memory:
        raise ConfigError(
            f"{where}: {what} needs about {need / 2**30:.1f} GiB, more than {FRACTION:.0%} of "
            f"this device's {memory / 2**30:.1f} GiB; {fix}"
        )


def check_training(cfg: ModelConfig, tc: TrainConfig, memory: float, where: str) -> None:
    """``check`` of training, evaluating and timing ``cfg`` with ``tc`` (the largest need)."""
    n = count_params(cfg)["non_embedding"]
    model = f"the model of {n:.3g} non-embedding params (d_model {cfg.d_model} x {cfg.n_layers})"
    for step, need, fix in (
        ("training", train_bytes(cfg, tc), "use smaller sizes, batch_size or seq_len"),
        ("evaluating", eval_bytes(cfg, tc), "lower eval_batch_size"),
        ("timing", latency_bytes(cfg), "use smaller sizes"),
    ):
        check(need, memory, where, f"{step} {model}", fix)
