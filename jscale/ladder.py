"""The latency ladder: randomly initialised models of smoothly growing shape, timed in every
precision, no training.

Latency depends on the shapes and the precision, not on what the weights learned, so a ladder
of random-weight models can span what the machine holds (1e4 .. 1e9 parameters on a 24 GiB
CPU) in minutes, while the trained models stay small.  Latency laws are fitted on the ladder
(``jscale.figures``); the loss-latency frontier uses the trained models' own measurements.

* ``shapes(lo, hi, per_decade, ...)``: the ladder's configs.  The depth is
  ``round((N / (12 a^2))^(1/3))`` (a = ``aspect_ratio`` = d_model / n_layers), which never
  decreases with N, and the width is the multiple of ``head_dim`` that brings the
  non-embedding count closest to N at that depth: latency follows N, not depth jumps.
* ``random_params(cfg, key)``: float32 params of ``cfg``'s shapes, drawn per leaf (kernels and
  embedding ``N(0, 1 / fan_in)``, norm scales 1), without tracing the model's initialiser.
* ``check_memory``, ``largest_fitting``: the ladder against the device's memory
  (``jscale.memory``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jscale import memory, model
from jscale.config import ModelConfig, config_for_params, count_params, ladder_targets


def depth(target: float, aspect_ratio: float) -> int:
    """The ladder's depth at ``target`` non-embedding params: ``round((N / (12 a^2))^(1/3))``,
    at least 1."""
    return max(1, round((target / (12 * aspect_ratio**2)) ** (1 / 3)))


def shapes(
    lo: float,
    hi: float,
    per_decade: int,
    *,
    aspect_ratio: float = 64.0,
    head_dim: int = 32,
    vocab_size: int = 256,
    max_seq_len: int = 1024,
    tie_embeddings: bool = True,
) -> list[tuple[float, ModelConfig]]:
    """``(target, config)`` for ``ladder_targets(lo, hi, per_decade)``; a target whose model
    repeats the previous one's is dropped."""
    out: list[tuple[float, ModelConfig]] = []
    for t in ladder_targets(lo, hi, per_decade):
        cfg = config_for_params(
            t,
            n_layers=depth(t, aspect_ratio),
            head_dim=head_dim,
            vocab_size=vocab_size,
            max_seq_len=max_seq_len,
            tie_embeddings=tie_embeddings,
        )
        if not out or cfg != out[-1][1]:
            out.append((t, cfg))
    return out


def largest_fitting(memory_bytes: float, **shape_kw) -> float:
    """The largest target (non-embedding params, on a grid of 10^(1/8) steps from 1e4) whose
    ladder model (``shapes``'s keywords ``shape_kw``) has ``memory.latency_bytes`` within
    ``memory.FRACTION`` of ``memory_bytes``."""
    t = 1e4
    while t < 1e13:
        nxt = t * 10 ** (1 / 8)
        if (
            memory.latency_bytes(shapes(nxt, nxt, 1, **shape_kw)[0][1])
            > memory.FRACTION * memory_bytes
        ):
            break
        t = nxt
    return t


def check_memory(configs: list[ModelConfig], memory_bytes: float, where: str) -> None:
    """``ConfigError`` naming the first config whose ``memory.latency_bytes`` exceeds
    ``memory.FRACTION`` of ``memory_bytes`` (with the numbers); NaN memory: no check."""
    for cfg in configs:
        n = count_params(cfg)["non_embedding"]
        memory.check(
            memory.latency_bytes(cfg),
            memory_bytes,
            where,
            f"timing the model of {n:.3g} non-embedding params (d_model {cfg.d_model} x "
            f"{cfg.n_layers} layers)",
            'lower hi, or set hi = "auto" (the largest that fits)',
        )


def random_params(cfg: ModelConfig, key: jax.Array):
    """Float32 params with ``jscale.model.init_params(cfg, .)``'s tree and shapes: every 2-D
    leaf (kernels ``[in, out]``, the embedding) ``N(0, 1 / shape[0])``, every 1-D leaf (norm
    scales) ones.  A pure function of ``key``; latency does not depend on the values."""
    tree = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for i, leaf in enumerate(leaves):
        if len(leaf.shape) == 2:
            k = jax.random.fold_in(key, i)
            scale = 1 / math.sqrt(leaf.shape[0])
            out.append(jax.random.normal(k, leaf.shape, jnp.float32) * scale)
        else:
            out.append(jnp.ones(leaf.shape, jnp.float32))
    return jax.tree.unflatten(treedef, out)
