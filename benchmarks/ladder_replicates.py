"""Would shape replicates make the latency laws predict?  The top of the ladder at several aspect
ratios, and the leave-2-largest-out error of each law on one shape per size and on the median
over the shapes.

Each target size is built at every ``--aspects`` ratio (d_model / n_layers, as
``jscale.ladder.shapes`` builds it), so each size has several widths and depths of about the same
N.  Every model of one precision is compiled first, then each is timed ``--rounds`` times after
one warm-up: prefill of a 128-token prompt, then 16 decode steps, batch 1, in the formulation
the autotune picks.  It prints each model's medians, then per precision and quantity the worst
relative error of ``affine`` and ``power`` laws (``jscale.analysis.extrapolation_check``, k = 2)
fitted on the medians of aspect 64 alone (the sweep's ladder) and on the median over all
aspects per size.

    python benchmarks/ladder_replicates.py          # 5 sizes x 3 aspects x 4 precisions
    python benchmarks/ladder_replicates.py --precisions fp32 --aspects 48,64
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jscale import analysis, autotune, formulation, ladder, latency, precision, roofline
from jscale.config import config_for_params, count_params

GEN = 16


def compiled(target: float, aspect: float, pol, roof) -> dict:
    """One ladder model at ``target`` and ``aspect``: its converted params, prompt, and the
    compiled prefill and decode programs."""
    cfg = config_for_params(
        target, n_layers=ladder.depth(target, aspect), head_dim=32, vocab_size=256, max_seq_len=1024
    )
    form, _ = autotune.choice(pol, cfg, cache_bytes=roof.get("cache_bytes"))
    params = ladder.random_params(cfg, jax.random.key(0))
    run_params = formulation.arrange(precision.convert_params(params, pol), form)
    prompt = jax.random.randint(jax.random.key(0), (1, 128), 0, 256, jnp.int32)
    tok, cache = jax.eval_shape(
        lambda p, x: latency.prefill(p, cfg, x, GEN, pol, form=form), run_params, prompt
    )
    pre = latency.prefill.lower(run_params, cfg, prompt, GEN, pol, form=form, mesh=None)
    dec = latency.decode.lower(
        run_params, cache, tok, cfg=cfg, gen_tokens=GEN, policy=pol, form=form, mesh=None
    )
    return {
        "target": target,
        "aspect": aspect,
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "N": count_params(cfg)["non_embedding"],
        "params": run_params,
        "prompt": prompt,
        "pre": pre.compile(),
        "dec": dec.compile(),
    }


def once(m: dict) -> tuple[float, float]:
    """(prefill ms, decode ms per token) of one run."""
    t0 = time.perf_counter()
    tok, cache = m["pre"](m["params"], m["prompt"])
    jax.block_until_ready((tok, cache))
    t1 = time.perf_counter()
    jax.block_until_ready(m["dec"](m["params"], cache, tok)[0])
    return 1e3 * (t1 - t0), 1e3 * (time.perf_counter() - t1) / GEN


def worst_error(rows: pd.DataFrame, col: str, form: str) -> float:
    """Worst |relative error| of ``form`` on the 2 largest targets, fitted on the others, on the
    per-target median of ``col``."""
    g = rows.groupby("target").agg(N=("N", "median"), y=(col, "median")).reset_index()
    try:
        ex = analysis.extrapolation_check(g, form, x="N", y="y", k=2, n_bootstrap=0)
    except (ValueError, ArithmeticError, RuntimeError):
        return float("nan")
    return float(ex["rel_error"].abs().max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1.25e7,2.5e7,5e7,1.05e8,2e8")
    ap.add_argument("--aspects", default="48,64,96")
    ap.add_argument("--precisions", default="fp32,bf16,int8,w8a8")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    roof = roofline.roofline()
    sizes = [float(s) for s in a.sizes.split(",")]
    aspects = [float(s) for s in a.aspects.split(",")]
    rows = []
    for prec in a.precisions.split(","):
        pol = precision.get_policy(prec)
        models = [compiled(t, asp, pol, roof) for t in sizes for asp in aspects]
        for m in models:
            once(m)  # warm-up
        for m in models:
            runs = np.array([once(m) for _ in range(a.rounds)])
            keep = ("target", "aspect", "d_model", "n_layers", "N")
            rows.append(
                {"precision": prec, **{k: m[k] for k in keep}}
                | {"prefill_ms": np.median(runs[:, 0]), "decode_ms": np.median(runs[:, 1])}
            )
        del models
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"), "\n")
    ref = 64.0 if 64.0 in aspects else aspects[0]
    print(f"| precision | quantity | form | aspect {ref:g} only | median over {a.aspects} |")
    print("|---|---|---|---:|---:|")
    for prec, sub in df.groupby("precision", sort=False):
        for col in ("decode_ms", "prefill_ms"):
            for form in ("affine", "power"):
                one = worst_error(sub[sub["aspect"] == ref], col, form)
                print(
                    f"| {prec} | {col.split('_')[0]} | {form} | {one:.0%} | "
                    f"{worst_error(sub, col, form):.0%} |"
                )


if __name__ == "__main__":
    main()
