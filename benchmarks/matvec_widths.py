"""Where the per-width speed of batch-1 decode comes from: XLA's matrix-vector dot, width by width.

A decode step streams every weight once through four matrix-vector products per layer
(``qkv`` [3d, d], ``out`` [d, d], ``up`` [4d, d], ``down`` [d, 4d] in the ``out_in`` layout the
autotune picks for fp32 on a CPU).  This times each of those products alone, one program of
several distinct float32 matrices of one shape (about ``--mbytes`` MB in all, so they stream
from memory, not cache), for each width, and prints GB/s read and the fraction of the machine's
read-bandwidth bound (``jscale.roofline``, measured in the same process or cached).

``--blocked KB`` adds the same product with the contraction split into chunks of KB
(``[d / KB, rows, KB]``, one batched dot and a sum): the kernel then sees the same contraction
length at every width.  ``--row-blocks MB`` adds it with the output rows split into blocks of
about MB megabytes (``[S, rows / S, cols]``, S the divisor of ``rows`` nearest the matrix's size
/ MB; one batched dot): every block is then about the same size at every width.

Run it under ``taskset -c 0`` to time one core (the bound stays the cached two-core one).

    python benchmarks/matvec_widths.py                                  # widths 448 .. 1024
    python benchmarks/matvec_widths.py --blocked 32 --widths 544,576,832
    python benchmarks/matvec_widths.py --row-blocks 3
    taskset -c 0 python benchmarks/matvec_widths.py
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/matvec_widths.py
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jscale import roofline

PROJECTIONS = {"qkv": (3, 1), "out": (1, 1), "up": (4, 1), "down": (1, 4)}  # rows, cols / d


def row_blocks(rows: int, cols: int, mbytes: float) -> int:
    """The number of row blocks of about ``mbytes`` MB for a float32 ``[rows, cols]`` matrix:
    the divisor of ``rows`` nearest ``rows * cols * 4 / (mbytes * 1e6)`` (at least 1)."""
    want = max(1.0, rows * cols * 4 / (mbytes * 1e6))
    return min((s for s in range(1, rows + 1) if rows % s == 0), key=lambda s: abs(s - want))


def program(rows: int, cols: int, blocked: int, blocks: int = 0):
    """A jitted ``f(ws, x_1xC) -> [1, rows]`` that multiplies ``x`` by each of the weight
    matrices (``[rows, cols]``, ``[cols / blocked, rows, blocked]`` or ``[blocks, rows /
    blocks, cols]``) in turn, each product feeding the next input so XLA cannot skip or merge
    them."""

    def f(ws, x):
        acc = jnp.zeros((1, rows), jnp.float32)
        for w in ws:
            if blocks:
                xb = jnp.broadcast_to(x, (blocks, 1, cols))
                dims = (((2,), (2,)), ((0,), (0,)))
                y = lax.dot_general(xb, w, dims, precision="highest").reshape(1, rows)
            elif blocked:
                xb = x.reshape(cols // blocked, 1, blocked)
                dims = (((2,), (2,)), ((0,), (0,)))
                y = lax.dot_general(xb, w, dims, precision="highest").sum(0)
            else:
                y = lax.dot_general(x, w, (((1,), (1,)), ((), ())), precision="highest")
            acc = acc + y
            x = x + 1e-3 * jnp.resize(y, (1, cols))
        return acc

    return jax.jit(f)


def rate(
    rows: int, cols: int, mbytes: float, repeats: int, blocked: int, blocks: int = 0
) -> np.ndarray:
    """Bytes per second of each timed run (``repeats`` after one warm-up)."""
    n = max(2, round(mbytes * 1e6 / (rows * cols * 4)))
    key = jax.random.key(0)
    if blocks:
        shape = (blocks, rows // blocks, cols)
    else:
        shape = (cols // blocked, rows, blocked) if blocked else (rows, cols)
    ws = [jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32) for i in range(n)]
    f, x = program(rows, cols, blocked, blocks), jnp.ones((1, cols), jnp.float32)
    jax.block_until_ready(f(ws, x))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(ws, x))
        out.append(n * rows * cols * 4 / (time.perf_counter() - t0))
    return np.array(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="448,512,544,576,608,640,704,768,832,896,960,1024")
    ap.add_argument("--projections", default="qkv,up,down")
    ap.add_argument("--blocked", type=int, default=0, help="also time contraction chunks of KB")
    ap.add_argument("--row-blocks", type=float, default=0, help="also time row blocks of ~MB")
    ap.add_argument("--mbytes", type=float, default=256.0)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    roof = roofline.roofline()
    bound = roof["read_bandwidth_bytes_per_s"]
    projs = a.projections.split(",")
    kinds = [("", 0, 0.0)]  # (label, contraction chunk, row-block MB)
    kinds += [(f" /{a.blocked}", a.blocked, 0.0)] if a.blocked else []
    kinds += [(f" rows ~{a.row_blocks:g} MB", 0, a.row_blocks)] if a.row_blocks else []
    print(
        f"jax {jax.__version__}; float32, batch 1, about {a.mbytes:g} MB of weights per "
        f"program, {a.repeats} runs; read-bandwidth bound {bound / 1e9:.1f} GB/s\n"
    )
    head = [f"{p}{label}" for p in projs for label, _, _ in kinds]
    print("| d_model | " + " | ".join(f"{h} GB/s (q1..q3), of bound" for h in head) + " |")
    print("|---:|" + "---:|" * len(head))
    for d in (int(w) for w in a.widths.split(",")):
        cells = []
        for p in projs:
            r, c = (m * d for m in PROJECTIONS[p])
            for _, kb, mb in kinds:
                if kb and c % kb:
                    cells.append("-")
                    continue
                blocks = row_blocks(r, c, mb) if mb else 0
                x = rate(r, c, a.mbytes, a.repeats, kb, blocks) / 1e9
                q1, med, q3 = np.percentile(x, [25, 50, 75])
                tag = f" ({blocks} blocks)" if blocks else ""
                cells.append(f"{med:.1f} ({q1:.1f}..{q3:.1f}), {med * 1e9 / bound:.2f}{tag}")
        print(f"| {d} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
