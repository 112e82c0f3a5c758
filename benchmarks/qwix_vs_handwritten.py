"""qwix (Google's JAX quantization library) against jscale's hand-written int8 path.

Both quantize the same trained model's four block projections (qkv, out, up, down) with
symmetric absmax per-output-channel int8 weights; ``w8a8`` also quantizes each token's
activations (dynamic absmax).  Measured:

* held-out loss of a ladder model trained briefly on the default corpus, and its change
  against fp32 on the same sequences;
* forward latency of a [B, 128]-token prompt at batch 1 and 8 (jitted, compiled ahead, 3
  warm-up calls, ``--repeats`` timed calls; median and interquartile range), on the trained
  model and on a randomly initialised larger one (speed does not depend on the values).

    pip install qwix                       # not a jscale dependency
    python benchmarks/qwix_vs_handwritten.py
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jscale import data, model, precision, train
from jscale.config import TrainConfig, config_for_params, count_params


def qwix_model(cfg, params, fmt):
    import qwix

    rule = qwix.QuantizationRule(
        module_path=r".*(qkv|out|up|down)$",
        weight_qtype=jnp.int8,
        act_qtype=jnp.int8 if fmt == "w8a8" else None,
        act_batch_axes=(0, 1),
    )  # per-token activation scales, as jscale
    m = qwix.quantize_model(model.Transformer(cfg), qwix.PtqProvider([rule]))
    tok = jnp.zeros((1, 8), jnp.int32)
    qp = qwix.quantize_params(params, jax.eval_shape(m.init, jax.random.key(0), tok)["params"])
    return jax.jit(lambda p, t: m.apply({"params": p}, t)), qp


def ours(cfg, params, fmt):
    pol = precision.get_policy(fmt)
    return jax.jit(lambda p, t: model.apply(p, cfg, t, policy=pol)), precision.convert_params(
        params, fmt
    )


def seq_losses(fn, qp, ev):
    out = []
    for i in range(0, len(ev), 32):
        b = ev[i : i + 32]
        lp = jax.nn.log_softmax(fn(qp, b[:, :-1]), -1)
        out.append(
            -np.asarray(jnp.take_along_axis(lp, b[:, 1:, None], -1)[..., 0].mean(1), np.float64)
        )
    return np.concatenate(out)


def latency_ms(fn, qp, batch, seq, repeats):
    tok = jnp.zeros((batch, seq), jnp.int32)
    c = fn.lower(qp, tok).compile()
    for _ in range(3):
        jax.block_until_ready(c(qp, tok))
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(c(qp, tok))
        t.append((time.perf_counter() - t0) * 1e3)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return med, q3 - q1


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=float, default=1e5, help="trained model (non-embedding params)")
    ap.add_argument("--tokens", type=float, default=2e6, help="training tokens")
    ap.add_argument(
        "--speed-size", type=float, default=1e7, help="random-init model for latency only"
    )
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args(argv)

    corpus = data.load_corpus()
    cfg = config_for_params(a.size, max_seq_len=256)
    tc = TrainConfig(tokens=int(a.tokens), batch_size=16, seq_len=128, eval_tokens=65_536)
    r = train.train(cfg, tc, corpus, progress=False)
    ev = data.eval_batches(corpus.val, 128, 65_536)
    big = config_for_params(a.speed_size, max_seq_len=256)
    big_params = model.init_params(big, jax.random.key(0))

    print(
        f"jax {jax.__version__}, {jax.devices()[0].device_kind}; "
        f"trained model N={count_params(cfg)['non_embedding']:,} ({a.tokens:.0e} tokens); "
        f"latency also at N={count_params(big)['non_embedding']:,} (random init)\n"
    )
    print(
        "| precision | implementation | loss nats/token | delta vs fp32 (SE) | "
        "ms B=1 small | ms B=8 small | ms B=1 large | ms B=8 large |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    ref = None
    for fmt, impl in [
        ("fp32", "jscale"),
        ("bf16", "jscale"),
        ("int8", "jscale"),
        ("int8", "qwix"),
        ("w8a8", "jscale"),
        ("w8a8", "qwix"),
    ]:
        build = ours if impl == "jscale" else qwix_model
        fn, qp = build(cfg, r.params, fmt)
        losses = seq_losses(fn, qp, ev)
        ref = losses if ref is None else ref
        d = losses - ref
        cells = []
        bfn, bqp = build(big, big_params, fmt)
        for f, p in ((fn, qp), (bfn, bqp)):
            for b in (1, 8):
                m, iqr = latency_ms(f, p, b, 128, a.repeats)
                cells.append(f"{m:.2f} ± {iqr / 2:.2f}")
        print(
            f"| {fmt} | {impl} | {losses.mean():.4f} | "
            f"{d.mean():+.5f} ({d.std(ddof=1) / np.sqrt(len(d)):.5f}) | "
            + " | ".join(cells)
            + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
