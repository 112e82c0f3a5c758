"""Where one training step's time goes, by the model operation each compiled op comes from.

Jits forward + backward of the loss (``model.token_losses``) for one shape, traces 10 calls with
the JAX profiler, and sums each executed XLA op's time under the ``op_name`` its HLO metadata
gives (the einsum, softmax piece or projection it was lowered from; both blocks together).
Ops run partly in parallel on the CPU's threads, so the sum can exceed the wall time, which is
printed beside it.

    python benchmarks/train_step_profile.py --d-model 96 --heads 12   # a quick-sweep shape
    python benchmarks/train_step_profile.py --d-model 256 --layers 4 --heads 4 --batch-size 32
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

from jscale import data, model
from jscale.config import ModelConfig


def profile(cfg: ModelConfig, batch_size: int, seq_len: int, calls: int = 10):
    """``(wall ms per call, {op source: ms per call})`` of the jitted forward + backward."""
    corpus = data.load_corpus()
    batch = jnp.asarray(data.train_batch(corpus.train, 0, 0, batch_size, seq_len))
    params = model.init_params(cfg, jax.random.key(0))
    step = jax.jit(jax.value_and_grad(lambda p, b: model.token_losses(p, cfg, b).mean()))
    hlo = step.lower(params, batch).compile().as_text()
    source = {}
    for line in hlo.splitlines():
        m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', line)
        if m:
            name = re.sub(r"^jit\([^)]*\)/", "", m.group(2))
            source[m.group(1)] = re.sub(r"block_\d+/", "", name)
    jax.block_until_ready(step(params, batch))
    walls = []
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        for _ in range(calls):
            t0 = time.perf_counter()
            jax.block_until_ready(step(params, batch))
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
    a = ap.parse_args(argv)
    cfg = ModelConfig(d_model=a.d_model, n_layers=a.layers, n_heads=a.heads, max_seq_len=a.seq_len)
    wall, per = profile(cfg, a.batch_size, a.seq_len)
    total = sum(per.values())
    print(
        f"d_model {a.d_model} x {a.layers} layers, {a.heads} heads of {cfg.head_dim}, batch "
        f"{a.batch_size} x {a.seq_len}: forward + backward {wall:.2f} ms wall (median of 10), "
        f"{total:.2f} ms summed over ops"
    )
    print("| ms per step | share | op source (jvp: forward, transpose: backward) |")
    print("|---:|---:|---|")
    for name, ms in per.most_common(a.top):
        print(f"| {ms:.2f} | {ms / total:.0%} | `{name[:90]}` |")


if __name__ == "__main__":
    main()
