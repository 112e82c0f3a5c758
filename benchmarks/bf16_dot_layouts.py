"""bf16 dots on XLA:CPU by operand layout: the forward ``x w``, the input gradient ``g wᵀ`` and
the weight gradient ``xᵀ g`` of a projection (bf16 operands, fp32 accumulation), GFLOP/s
(median of 10) and whether the compiled program converts the operands to fp32 first.

    python benchmarks/bf16_dot_layouts.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

TOKENS, D_IN, D_OUT = 4096, 384, 1536  # 32 x 128 tokens; a 1e7 model's up projection
F32 = jnp.float32
CASES = {
    "forward x w": (
        lambda x, w, g: jax.lax.dot_general(
            x, w, (((1,), (0,)), ((), ())), preferred_element_type=F32
        )
    ),
    "input grad g wT": (
        lambda x, w, g: jax.lax.dot_general(
            g, w, (((1,), (1,)), ((), ())), preferred_element_type=F32
        )
    ),
    "weight grad xT g": (
        lambda x, w, g: jax.lax.dot_general(
            x, g, (((0,), (0,)), ((), ())), preferred_element_type=F32
        )
    ),
    "weight grad, transpose behind a barrier": (
        lambda x, w, g: jax.lax.dot_general(
            jax.lax.optimization_barrier(x.T),
            g,
            (((1,), (0,)), ((), ())),
            preferred_element_type=F32,
        )
    ),
}


def main():
    bf = jnp.bfloat16
    x, w, g = (
        jnp.ones((TOKENS, D_IN), bf),
        jnp.ones((D_IN, D_OUT), bf),
        jnp.ones((TOKENS, D_OUT), bf),
    )
    flops = 2 * TOKENS * D_IN * D_OUT
    for name, fn in CASES.items():
        f = jax.jit(fn)
        hlo = f.lower(x, w, g).compile().as_text().split("ENTRY")[1]
        jax.block_until_ready(f(x, w, g))
        ts = []
        for _ in range(10):
            t0 = time.perf_counter()
            jax.block_until_ready(f(x, w, g))
            ts.append(time.perf_counter() - t0)
        rate = flops / np.median(ts) / 1e9
        print(f"{name:42s} {rate:7.0f} GFLOP/s  fp32 convert: {'convert' in hlo}")


if __name__ == "__main__":
    main()
