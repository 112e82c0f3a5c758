r"""Batch-1 decode and prefill of one ladder model in every precision x formulation.

A formulation is how the projections run (``jscale.precision.Policy``): the kernel layout
(``in_out`` as trained, ``out_in`` transposed) and the rows each projection's tokens are
padded to (``min_rows``: 1 = none; >= 2 lets XLA:CPU hand the product to YNNPACK).  Each is
timed with ``jscale.latency.measure_latency`` (median and q1..q3 of ``--repeats`` runs after 2
warm-ups); the speed-up is against the first formulation (default: as trained, ``in_out``/1) of
the same precision.  The fastest per precision is what ``formulation.FASTEST`` records for the
backend.

    python benchmarks/decode_formulations.py --size 1e8
    python benchmarks/decode_formulations.py --size 1e8 --batch 8 \
        --formulations in_out:1,out_in:1,in_out:1,out_in:1

(the last runs each layout twice, interleaved, to show the run-to-run spread).
"""

import argparse

import jax

from jscale import formulation, latency, model, precision, roofline
from jscale.config import config_for_params


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=1e8, help="target non-embedding params")
    ap.add_argument("--precisions", default="fp32,bf16,int8,w8a8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    ap.add_argument(
        "--formulations",
        default="in_out:1,out_in:1,in_out:4,out_in:4",
        help="comma-separated layout:rows pairs; the first is the baseline",
    )
    a = ap.parse_args()
    forms = []
    for f in a.formulations.split(","):
        layout, _, rows = f.partition(":")
        if layout not in ("in_out", "out_in") or not rows.isdigit() or int(rows) < 1:
            ap.error(
                f"--formulations: {f!r} is not layout:rows (layout in_out or out_in, rows >= 1)"
            )
        forms.append((layout, int(rows)))
    try:
        precisions = [precision.get_policy(p).name for p in a.precisions.split(",")]
    except precision.PrecisionError as e:
        ap.error(f"--precisions: {e}")
    cfg = config_for_params(a.size)
    params = model.init_params(cfg, jax.random.key(0))
    roof = roofline.roofline()
    print(
        f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {roof['host_cpus']} CPUs; "
        f"read bandwidth {roof['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; "
        f"d_model {cfg.d_model}, {cfg.n_layers} layers; "
        f"batch {a.batch}, prompt 128, 32 decode steps\n"
    )
    vs = "vs as trained" if forms[0] == ("in_out", 1) else f"vs {forms[0][0]}/{forms[0][1]}"
    print(
        f"| precision | layout | rows | decode ms/token | {vs} | decode eff | prefill ms | {vs} |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for prec in precisions:
        base = None
        for layout, rows in forms:
            r = latency.measure_latency(
                params,
                cfg,
                prec,
                batch=a.batch,
                repeats=a.repeats,
                roof=roof,
                form=formulation.Formulation(layout, rows),
            )
            dec, pre = r["decode_ms_per_token_median"], r["prefill_ms_median"]
            base = base or (dec, pre)
            print(
                f"| {prec} | {layout} | {rows} | {_ms(dec)} ({_ms(r['decode_ms_per_token_q1'])}.."
                f"{_ms(r['decode_ms_per_token_q3'])}) | {base[0] / dec:.2f}x | "
                f"{r['decode_efficiency']:.2f} | "
                f"{_ms(pre)} ({_ms(r['prefill_ms_q1'])}..{_ms(r['prefill_ms_q3'])}) | "
                f"{base[1] / pre:.2f}x |",
                flush=True,
            )


def _ms(x: float) -> str:
    """Milliseconds to 4 significant digits, without an exponent (0.04213, 18.86, 1104)."""
    return f"{x:.4g}" if x >= 1e-3 else f"{x:.2e}"


if __name__ == "__main__":
    main()
