"""qwix (Google's JAX quantization library) against jscale's hand-written quantized formats.

Both quantize the same trained model's four block projections (qkv, out, up, down), absmax
symmetric, with the same granularity:

* ``int8``: int8 weights, one scale per output channel; ``w8a8`` also quantizes each token's
  activations to int8 (dynamic absmax, one scale per token).
* ``int4`` (``int4-g32``, ``int4-g128``): int4 weights with one scale per group of 64 (32,
  128) input channels and output channel (qwix: ``tile_size=G`` on the rule, sub-channel
  scales along the contracted axis).
* ``fp8``: float8 e4m3 weights, one scale per output channel; ``fp8a8`` also quantizes each
  token's activations to e4m3 (dynamic, one scale per token).

Measured:

* held-out loss of a ladder model trained briefly on the default corpus, and its change
  against fp32 on the same sequences (and qwix minus jscale, paired, per format);
* forward latency of a [B, 128]-token prompt at batch 1 and 8 (jitted, compiled ahead, 3
  warm-up calls, ``--repeats`` timed calls; median and interquartile range), on the trained
  model and on a randomly initialised larger one (speed does not depend on the values);
* bytes of the larger model's quantized params: as the compiled program takes them (its
  ``memory_analysis().argument_size_in_bytes`` less the tokens; this counts ``jnp.int4`` at
  half a byte, as XLA:CPU stores it, where ``Array.on_device_size_in_bytes()`` reports one
  byte) and as host numpy arrays (what a checkpoint writer gets; numpy's int4 takes a byte).
  ``--hlo DIR`` writes each compiled large-model program as text, for diffing.

    pip install qwix                       # not a jscale dependency; use a separate venv
    python benchmarks/qwix_vs_handwritten.py --formats int8,w8a8,int4,fp8,fp8a8
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jscale import data, model, precision, train
from jscale.config import TrainConfig, config_for_params, count_params

# qwix 0.1.8 (the newest at the time) with JAX 0.10.2 and flax 0.12.8: one patch is needed,
# see _patch_qwix_astype.
FORMATS = ("int8", "w8a8", "int4", "int4-g32", "int4-g128", "fp8", "fp8a8")


def qwix_rules(cfg, fmt):
    """qwix rules that quantize the block projections as jscale's ``fmt`` does: one per
    projection, since an int4 group that does not divide a projection's input width means one
    group per output channel there (``precision.group_size``)."""
    import qwix

    base = precision.base_format(fmt)
    weight = {"int8": jnp.int8, "w8a8": jnp.int8, "int4": jnp.int4}.get(base, jnp.float8_e4m3fn)
    act = {"w8a8": jnp.int8, "fp8a8": jnp.float8_e4m3fn}.get(base)
    n_in = {"qkv": cfg.d_model, "out": cfg.d_model, "up": cfg.d_model, "down": cfg.d_ff}
    rules = []
    for layer in precision.BLOCK_LAYERS:
        tile = None
        if base == "int4":
            g = precision.group_size(precision.get_policy(fmt).fmt, n_in[layer])
            tile = g if g < n_in[layer] else None  # None: one scale per output channel
        # dynamic activation scales are per token (every non-contracted axis);
        # act_batch_axes only matters for static scales
        rules.append(
            qwix.QuantizationRule(
                module_path=rf".*{layer}$",
                weight_qtype=weight,
                act_qtype=act,
                tile_size=tile,
                act_batch_axes=(0, 1),
            )
        )
    return rules


def _patch_qwix_astype():
    """qwix 0.1.8's ``WithAux.astype`` (the quantized weight a linen module sees) raises
    ``ValueError: Unsupported type: QArray`` from ``flax_util.update_boxed`` on every call;
    jscale's projection casts its kernel to the compute dtype (``w.astype(float32)``, a no-op
    here).  Give it ``QArray.astype``'s meaning (cast the dequantised dtype) without the box
    update, so the quantized weight reaches qwix's ``dot_general`` unchanged."""
    from qwix._src.providers import ptq

    def astype(self, dtype):
        return (
            self if jnp.dtype(dtype) == self.dtype else self.replace(array=self.array.astype(dtype))
        )

    ptq.WithAux.astype = astype


def qwix_model(cfg, params, fmt):
    import qwix

    _patch_qwix_astype()
    m = qwix.quantize_model(model.Transformer(cfg), qwix.PtqProvider(qwix_rules(cfg, fmt)))
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


def latency_ms(fn, qp, batch, seq, repeats, hlo_path=None):
    """(median ms, interquartile range ms, bytes of the params as the compiled program takes
    them: its argument bytes less the tokens')."""
    tok = jnp.zeros((batch, seq), jnp.int32)
    c = fn.lower(qp, tok).compile()
    if hlo_path is not None:
        hlo_path.write_text(c.as_text())
    arg_bytes = c.memory_analysis().argument_size_in_bytes - tok.nbytes
    for _ in range(3):
        jax.block_until_ready(c(qp, tok))
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(c(qp, tok))
        t.append((time.perf_counter() - t0) * 1e3)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return med, q3 - q1, arg_bytes


def host_bytes(params):
    """Bytes of ``params`` as host numpy arrays (what a checkpoint writer is handed)."""
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(params))


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
    ap.add_argument(
        "--formats",
        default="int8,w8a8",
        help=f"comma-separated, each run by both libraries; from {', '.join(FORMATS)}",
    )
    ap.add_argument("--hlo", type=pathlib.Path, help="write compiled large-model HLO here")
    a = ap.parse_args(argv)
    fmts = a.formats.split(",")
    bad = sorted(set(fmts) - set(FORMATS))
    if bad:
        ap.error(f"unknown format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    if a.hlo:
        a.hlo.mkdir(parents=True, exist_ok=True)

    import qwix  # noqa: F401 - fail before training when qwix is missing

    corpus = data.load_corpus()
    cfg = config_for_params(a.size, max_seq_len=256)
    tc = TrainConfig(tokens=int(a.tokens), batch_size=16, seq_len=128, eval_tokens=65_536)
    r = train.train(cfg, tc, corpus, progress=False)
    ev = data.eval_batches(corpus.val, 128, 65_536)
    big = config_for_params(a.speed_size, max_seq_len=256)
    big_params = model.init_params(big, jax.random.key(0))
    fp32_bytes = host_bytes(big_params)

    print(
        f"jax {jax.__version__}, {jax.devices()[0].device_kind}; "
        f"trained model N={count_params(cfg)['non_embedding']:,} ({a.tokens:.0e} tokens, "
        f"d_model {cfg.d_model} x {cfg.n_layers}); latency also at "
        f"N={count_params(big)['non_embedding']:,} (random init, d_model {big.d_model} x "
        f"{big.n_layers}); fp32 params of the large model {fp32_bytes / 1e6:.2f} MB\n"
    )
    print(
        "| precision | implementation | loss nats/token | delta vs fp32 (SE) | "
        "ms B=1 small | ms B=8 small | ms B=1 large | ms B=8 large | "
        "large params MB in program | MB host numpy |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs = [("fp32", "jscale"), ("bf16", "jscale")]
    runs += [(f, impl) for f in fmts for impl in ("jscale", "qwix")]
    losses_of = {}
    for fmt, impl in runs:
        build = ours if impl == "jscale" else qwix_model
        fn, qp = build(cfg, r.params, fmt)
        losses = losses_of[fmt, impl] = seq_losses(fn, qp, ev)
        d = losses - losses_of["fp32", "jscale"]
        cells = []
        bfn, bqp = build(big, big_params, fmt)
        for f, p, hlo in ((fn, qp, None), (bfn, bqp, a.hlo)):
            for b in (1, 8):
                path = hlo / f"{fmt}_{impl}_B{b}.hlo.txt" if hlo else None
                m, iqr, arg_bytes = latency_ms(f, p, b, 128, a.repeats, path)
                cells.append(f"{m:.2f} ± {iqr / 2:.2f}")
        host = host_bytes(bqp)
        print(
            f"| {fmt} | {impl} | {losses.mean():.4f} | "
            f"{d.mean():+.5f} ({d.std(ddof=1) / np.sqrt(len(d)):.5f}) | "
            + " | ".join(cells)
            + f" | {arg_bytes / 1e6:.2f} | {host / 1e6:.2f} |",
            flush=True,
        )
        del bqp, qp
    print("\n| precision | loss qwix - jscale, nats/token (paired SE) |\n|---|---:|")
    for fmt in fmts:
        d = losses_of[fmt, "qwix"] - losses_of[fmt, "jscale"]
        print(f"| {fmt} | {d.mean():+.5f} ({d.std(ddof=1) / np.sqrt(len(d)):.5f}) |")


if __name__ == "__main__":
    main()
