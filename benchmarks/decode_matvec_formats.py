"""Why only w8a8 beats fp32 at batch-1 decode on XLA:CPU: one token through a chain of square
projections in each format and formulation, against the read-bandwidth bound of its weights.

Each variant pushes one activation vector through ``--layers`` weight matrices of
``--width`` x ``--width`` (``x <- tanh(W x)``), in one jit, with the weights as arguments.
``loop`` runs the chain 4 times inside a ``fori_loop`` (as a decode step's scan does), so XLA may
hoist loop-invariant work on the weights (a cast) out of the loop.  Median of 7 runs after one
warm-up; bound = weight bytes / the measured read bandwidth (``jscale.roofline``).

    python benchmarks/decode_matvec_formats.py              # 36 x 2048^2: 151M weights
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jscale import roofline


def _timeit(f, *a, n=7):
    jax.block_until_ready(f(*a))
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f(*a))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def _rows(x, rows):
    return jnp.pad(x[None], ((0, rows - 1), (0, 0)))


def _dot(a, b, acc=jnp.float32):  # a [R, I], b [O, I] -> [R, O]
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=acc)


def variants(d):
    bf, f32 = jnp.bfloat16, jnp.float32

    def w8a8(x, w, s, rows):
        xs = jnp.max(jnp.abs(x)) / 127
        xq = jnp.round(x / xs).astype(jnp.int8)
        return _dot(_rows(xq, rows), w, jnp.int32)[0].astype(f32) * xs * s

    return {  # name: (matvec(x [I], w, scale) -> [O], weight format, bytes per weight)
        "fp32 dot out_in": (lambda x, w, s: w @ x, "fp32", 4),
        "fp32 dot in_out": (lambda x, w, s: x @ w.T, "fp32", 4),
        "bf16 dot 1 row": (lambda x, w, s: _dot(x.astype(bf)[None], w)[0], "bf16", 2),
        "bf16 dot 4 rows": (lambda x, w, s: _dot(_rows(x.astype(bf), 4), w)[0], "bf16", 2),
        "int8 cast + dot": (lambda x, w, s: (w.astype(f32) @ x) * s, "int8", 1),
        "int8 fused mul-sum": (lambda x, w, s: (w.astype(f32) * x).sum(-1) * s, "int8", 1),
        "w8a8 dot 4 rows": (lambda x, w, s: w8a8(x, w, s, 4), "int8", 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--width", type=int, default=2048)
    a = ap.parse_args()
    L, D = a.layers, a.width
    bw = roofline.roofline()["read_bandwidth_bytes_per_s"]
    w32 = [jax.random.normal(jax.random.key(i), (D, D)) / np.sqrt(D) for i in range(L)]
    scale = [jnp.max(jnp.abs(w), axis=1) / 127 for w in w32]
    weights = {
        "fp32": w32,
        "bf16": [w.astype(jnp.bfloat16) for w in w32],
        "int8": [jnp.round(w / s[:, None]).astype(jnp.int8) for w, s in zip(w32, scale)],
    }
    x0 = jnp.ones((D,), jnp.float32)
    print(f"jax {jax.__version__}; {L} x {D}^2 weights; read bandwidth {bw / 1e9:.1f} GB/s\n")
    print("| variant | chain ms | in a loop, ms per pass | bound ms | efficiency (chain, loop) |")
    print("|---|---:|---:|---:|---|")
    for name, (mv, fmt, b) in variants(D).items():

        def chain(ws, ss, x, mv=mv):
            for w, s in zip(ws, ss):
                x = jnp.tanh(mv(x, w, s))
            return x

        def loop(ws, ss, x, chain=chain):
            return jax.lax.fori_loop(0, 4, lambda i, x: chain(ws, ss, x), x)

        t = _timeit(jax.jit(chain), weights[fmt], scale, x0)
        t_loop = _timeit(jax.jit(loop), weights[fmt], scale, x0) / 4
        bound = L * D * D * b / bw
        print(
            f"| {name} | {t * 1e3:.2f} | {t_loop * 1e3:.2f} | {bound * 1e3:.2f} | "
            f"{bound / t:.2f}, {bound / t_loop:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
