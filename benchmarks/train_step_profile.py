"""Where one training step's (or one decode call's) time goes, by the model operation each
compiled op comes from.

Jits forward + backward of the loss (``model.token_losses``) for one shape, traces 10 calls with
the JAX profiler, and sums each executed XLA op's time under the ``op_name`` its HLO metadata
gives (the einsum, softmax piece or projection it was lowered from; all blocks together).
Ops run partly in parallel on the CPU's threads, so the sum can exceed the wall time, which is
printed beside it.  ``--decode P``: instead, batch-1 decode of 16 tokens after a 128-token
prompt (``jscale.latency.decode``) of a random-weight model in precision P and the formulation
the autotune picks; times are per call (16 steps).

    python benchmarks/train_step_profile.py --d-model 96 --heads 12   # a quick-sweep shape
    python benchmarks/train_step_profile.py --d-model 256 --layers 4 --heads 4 --batch-size 32
    python benchmarks/train_step_profile.py --decode fp32 --d-model 576 --layers 8 --heads 18
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jscale import autotune, data, formulation, ladder, latency, model, precision, roofline
from jscale.config import ModelConfig


def profile(cfg: ModelConfig, batch_size: int, seq_len: int, calls: int = 10):
    """``(wall ms per call, {op source: ms per call})`` of the jitted forward + backward."""
    corpus = data.load_corpus()
    batch = jnp.asarray(data.train_batch(corpus.train, 0, 0, batch_size, seq_len))
    params = model.init_params(cfg, jax.random.key(0))
    step = jax.jit(jax.value_and_grad(lambda p, b: model.token_losses(p, cfg, b).mean()))
    compiled = step.lower(params, batch).compile()
    return op_times(compiled.as_text(), lambda: step(params, batch), calls)


def profile_decode(cfg: ModelConfig, prec: str, calls: int = 10, gen: int = 16):
    """``(wall ms per call, {op source: ms per call})`` of one ``latency.decode`` call of ``gen``
    batch-1 steps after a 128-token prompt, random weights, the autotuned formulation."""
    pol = precision.get_policy(prec)
    form, _ = autotune.choice(pol, cfg, cache_bytes=roofline.roofline().get("cache_bytes"))
    params = ladder.random_params(cfg, jax.random.key(0))
    run_params = formulation.arrange(precision.convert_params(params, pol), form)
    prompt = jax.random.randint(jax.random.key(0), (1, 128), 0, cfg.vocab_size, jnp.int32)
    token, cache = latency.prefill(run_params, cfg, prompt, gen, pol, form=form)
    kw = {"cfg": cfg, "gen_tokens": gen, "policy": pol, "form": form}
    compiled = latency.decode.lower(run_params, cache, token, **kw).compile()
    state = {"cache": cache}

    def call():  # the cache is donated: each call hands on the one it returns
        out, state["cache"] = compiled(run_params, state["cache"], token)
        return out

    return op_times(compiled.as_text(), call, calls)


def op_times(hlo: str, call, calls: int):
    """``(wall ms per call, {op source: ms per call})`` of ``calls`` runs of ``call`` (a
    compiled program whose optimised HLO text is ``hlo``), traced by the JAX profiler."""
    source = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        if not m:
            continue
        op = re.search(r'op_name="([^"]*)"', line)
        if op:
            name = re.sub(r"^jit\([^)]*\)/", "", op.group(1))
            source[m.group(1)] = re.sub(r"block_\d+/", "", name)
        else:  # XLA dropped the metadata (e.g. a decode loop's dots): the op's kind
            source[m.group(1)] = re.sub(r"\.\d+$", "", m.group(1)) + " (no op_name)"
    jax.block_until_ready(call())
    walls = []
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        for _ in range(calls):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            walls.append(time.perf_counter() - t0)
        jax.profiler.stop_trace()
        (trace,) = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
        events = json.load(gzip.open(trace))["traceEvents"]
    per = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in source:
            per[source[e["name"]]] += e["dur"] / 1e3 / calls  # us -> ms per call
    return 1e3 * float(np.median(walls)), per


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=96)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--decode", metavar="PRECISION", help="profile batch-1 decode instead")
    a = ap.parse_args(argv)
    if a.decode:
        cfg = ModelConfig(d_model=a.d_model, n_layers=a.layers, n_heads=a.heads, vocab_size=256)
        wall, per = profile_decode(cfg, a.decode)
        what = f"{a.decode} decode of 16 tokens after 128, batch 1"
    else:
        cfg = ModelConfig(
            d_model=a.d_model, n_layers=a.layers, n_heads=a.heads, max_seq_len=a.seq_len
        )
        wall, per = profile(cfg, a.batch_size, a.seq_len)
        what = f"batch {a.batch_size} x {a.seq_len}: forward + backward"
    total = sum(per.values())
    print(
        f"d_model {a.d_model} x {a.layers} layers, {a.heads} heads of {cfg.head_dim}, {what}: "
        f"{wall:.2f} ms wall (median of 10), {total:.2f} ms summed over ops"
    )
    unit = "call" if a.decode else "step"
    print(f"| ms per {unit} | share | op source (jvp: forward, transpose: backward) |")
    print("|---:|---:|---|")
    for name, ms in per.most_common(a.top):
        print(f"| {ms:.2f} | {ms / total:.0%} | `{name[:90]}` |")


if __name__ == "__main__":
    main()
