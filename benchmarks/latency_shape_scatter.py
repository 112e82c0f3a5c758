"""How far latency strays from a smooth law in N: batch-1 decode of neighbouring widths at one
depth, per weight.

A latency law in N assumes that the time per weight changes smoothly with the model's size.
This times random-weight models of ``--widths`` at ``--layers`` layers (32-wide heads, d_ff =
4 d_model) in one precision, in the formulation the autotune picks (as the sweep's ladder
does), and prints ns per non-embedding weight and the fraction of the read-bandwidth bound
(``decode_efficiency``). Scatter between neighbouring widths, beyond the q1..q3 spread of one
width's repeats, is a property of the shapes on this machine, not noise: no law in N can
predict single sizes closer than it.

    python benchmarks/latency_shape_scatter.py                       # fp32, 512 .. 1024 x 8
    python benchmarks/latency_shape_scatter.py --precision w8a8 --repeats 5
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from jscale import autotune, ladder, latency, roofline
from jscale.config import ModelConfig, count_params


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--widths", default="512,576,640,704,768,832,896,960,1024")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    roof = roofline.roofline()
    print(
        f"jax {jax.__version__}; {a.precision}, {a.layers} layers, batch 1, prompt 128, "
        f"{a.gen_tokens} generated; read bandwidth {roof['read_bandwidth_bytes_per_s'] / 1e9:.1f} "
        "GB/s\n"
    )
    cols = ["d_model", "N non-emb", "formulation", "decode ms/token (q1..q3)", "ns per weight"]
    print("| " + " | ".join(cols) + " | efficiency |")
    print("|---:|---:|---|---:|---:|---:|")
    per_weight = []
    for d in (int(w) for w in a.widths.split(",")):
        cfg = ModelConfig(
            d_model=d, n_layers=a.layers, n_heads=d // 32, vocab_size=256, max_seq_len=256
        )
        params = ladder.random_params(cfg, jax.random.key(0))
        form, _ = autotune.choice(a.precision, cfg, cache_bytes=roof.get("cache_bytes"))
        lat = latency.measure_latency(
            params,
            cfg,
            a.precision,
            batch=1,
            prompt_tokens=128,
            gen_tokens=a.gen_tokens,
            repeats=a.repeats,
            warmup=1,
            roof=roof,
            form=form,
        )
        n = count_params(cfg)["non_embedding"]
        ms = lat["decode_ms_per_token_median"]
        per_weight.append(ms / n * 1e6)
        print(
            f"| {d} | {n:.3g} | {form.name} | {ms:.3f} ({lat['decode_ms_per_token_q1']:.3f}.."
            f"{lat['decode_ms_per_token_q3']:.3f}) | {per_weight[-1]:.4f} | "
            f"{lat['decode_efficiency']:.2f} |",
            flush=True,
        )
    pw = np.array(per_weight)
    print(
        f"\nns per weight: median {np.median(pw):.4f}, max / min {pw.max() / pw.min():.2f}, "
        f"largest deviation from the median {np.max(np.abs(pw / np.median(pw) - 1)):.0%}"
    )


if __name__ == "__main__":
    main()
