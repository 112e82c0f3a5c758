"""What one decoder layer costs per weight in batch-1 decode, width by width.

The latency ladder grows width and depth together, so its time per weight mixes three things:
fixed per-call costs, cache effects (a smaller model's weights partly stay in cache) and the
decode kernel's speed at each width.  This separates the last: at each width it times random-
weight models of ``--layers`` (two depths) and takes the difference, which is the cost of the
extra layers alone, ``12 d^2`` weights each, streamed at that width.  The fixed costs cancel;
the printed "rest" is what is left at the shallower depth (negative when that model runs faster
per weight than the extra layers: it sits partly in cache).  The formulation column shows the
autotuned formulation at both depths when they differ (then the difference mixes two).

    python benchmarks/latency_per_layer.py                      # fp32, widths 416 .. 1024
    python benchmarks/latency_per_layer.py --precision bf16 --widths 512,1024
"""

from __future__ import annotations

import argparse

import jax

from jscale import autotune, ladder, latency, roofline
from jscale.config import ModelConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--widths", default="416,512,640,768,832,1024")
    ap.add_argument("--layers", default="2,6", help="two depths, shallow first")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    lo, hi = (int(x) for x in a.layers.split(","))
    roof = roofline.roofline()
    print(
        f"jax {jax.__version__}; {a.precision}, batch 1, prompt 128, 16 generated, "
        f"{a.repeats} repeats (median); read bandwidth "
        f"{roof['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s\n"
    )
    print(
        f"| d_model | formulation | ms/token at {lo} layers | at {hi} layers | ms per layer | "
        "ns per weight (extra layers) | rest at the shallow depth (ms) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for d in (int(w) for w in a.widths.split(",")):
        ms, forms = {}, []
        for n_layers in (lo, hi):
            cfg = ModelConfig(
                d_model=d, n_layers=n_layers, n_heads=d // 32, vocab_size=256, max_seq_len=256
            )
            form, _ = autotune.choice(a.precision, cfg, cache_bytes=roof.get("cache_bytes"))
            forms.append(form.name)
            lat = latency.measure_latency(
                ladder.random_params(cfg, jax.random.key(0)),
                cfg,
                a.precision,
                batch=1,
                prompt_tokens=128,
                gen_tokens=16,
                repeats=a.repeats,
                warmup=1,
                roof=roof,
                form=form,
            )
            ms[n_layers] = lat["decode_ms_per_token_median"]
        per_layer = (ms[hi] - ms[lo]) / (hi - lo)
        print(
            f"| {d} | {' / '.join(dict.fromkeys(forms))} | {ms[lo]:.3f} | {ms[hi]:.3f} | "
            f"{per_layer:.3f} | "
            f"{per_layer / (12 * d * d) * 1e6:.4f} | {ms[lo] - lo * per_layer:+.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
