"""Training throughput of ladder models vs the machine's dense matmul rate.

For each size: build the ladder config, compile the jitted multi-step train call (AOT,
compile time reported apart), run one untimed warm-up call, then time ``--calls`` calls of
``--steps-per-call`` optimizer steps each on real corpus batches.  Reports tokens/s and
achieved training FLOP/s (analytic ``flops_per_token(...)["train"]`` x tokens/s) as a
fraction of the measured dense fp32 matmul FLOP/s (``jscale.roofline``): median and
min..max over calls.

    python benchmarks/train_throughput.py                      # sizes 1e4 1e5 1e6 1e7
    python benchmarks/train_throughput.py --sizes 1e6 --batch-size 32 --torch
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from jscale import data, model, roofline, train
from jscale.config import TrainConfig, config_for_params, count_params, flops_per_token


def bench_jax(cfg, tc, corpus, calls):
    opt = train.make_optimizer(tc)
    params = model.init_params(cfg, jax.random.key(0))
    state = opt.init(params)
    fn = train.make_train_chunk(cfg, opt, tc.compute)
    batches = [
        np.stack(
            [
                data.train_batch(
                    corpus.train, 0, c * tc.steps_per_call + s, tc.batch_size, tc.seq_len
                )
                for s in range(tc.steps_per_call)
            ]
        )
        for c in range(calls + 1)
    ]
    lrs = train.lr_schedule(tc, np.arange(tc.steps_per_call))
    t0 = time.perf_counter()
    compiled = fn.lower(params, state, batches[0], lrs).compile()
    compile_s = time.perf_counter() - t0
    params, state, loss, _ = compiled(params, state, batches[0], lrs)  # warm-up
    jax.block_until_ready(loss)
    times = []
    for b in batches[1:]:
        t0 = time.perf_counter()
        params, state, loss, _ = compiled(params, state, b, lrs)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    return np.array(times), compile_s


def bench_torch(cfg, tc, corpus, calls):
    """The same model in PyTorch eager on CPU (reference point; needs torch installed)."""
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from torch_reference import torch_train_times

    return torch_train_times(cfg, tc, corpus, calls)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes",
        nargs="+",
        type=float,
        default=[1e4, 1e5, 1e6, 1e7],
        help="target non-embedding parameter counts",
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps-per-call", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5, help="timed calls per size")
    ap.add_argument(
        "--compute", default="fp32", choices=["fp32", "bf16"], help="training precision"
    )
    ap.add_argument(
        "--torch", action="store_true", help="also time PyTorch eager (CPU) on the same model"
    )
    a = ap.parse_args(argv)

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from hf_latency import cpu_model  # the benchmarks' one reading of /proc/cpuinfo

    roof = roofline.roofline()
    peak = roof["matmul_flops_per_s"]
    corpus = data.load_corpus()
    print(
        f"device: {roof['device_kind']} ({roof['host_cpus']} host CPUs: {cpu_model()}), "
        f"jax {jax.__version__}"
    )
    print(
        f"measured dense fp32 matmul: {peak / 1e9:.0f} GFLOP/s (median; {roof['matmul_n']}^3); "
        f"batch {a.batch_size} x seq {a.seq_len}, {a.steps_per_call} steps/call, "
        f"{a.calls} timed calls, "
        f"compute {a.compute}\n"
    )
    cols = (
        "| N non-emb | d_model x layers | compile s | tokens/s median (min..max) | "
        "train GFLOP/s | % of matmul peak |"
    )
    if a.torch:
        cols += " torch eager tokens/s | jax / torch |"
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    for target in a.sizes:
        cfg = config_for_params(target, max_seq_len=max(1024, a.seq_len))
        tc = TrainConfig(
            steps=a.steps_per_call * (a.calls + 1),
            batch_size=a.batch_size,
            seq_len=a.seq_len,
            steps_per_call=a.steps_per_call,
            compute=a.compute,
        )
        times, compile_s = bench_jax(cfg, tc, corpus, a.calls)
        tps = tc.tokens_per_step * tc.steps_per_call / times
        fpt = flops_per_token(cfg, a.seq_len)["train"]
        n = count_params(cfg)["non_embedding"]
        row = (
            f"| {n:.3g} | {cfg.d_model} x {cfg.n_layers} | {compile_s:.1f} | "
            f"{np.median(tps):,.0f} ({tps.min():,.0f}..{tps.max():,.0f}) | "
            f"{np.median(tps) * fpt / 1e9:.1f} | "
            f"{100 * np.median(tps) * fpt / peak:.0f}% |"
        )
        if a.torch:  # PyTorch's best of two runs (its first run pays allocator warm-up)
            runs = [bench_torch(cfg, tc, corpus, a.calls) for _ in range(2)]
            ttimes = min(runs, key=np.median)
            ttps = tc.tokens_per_step * tc.steps_per_call / ttimes
            row += (
                f" {np.median(ttps):,.0f} ({ttps.min():,.0f}..{ttps.max():,.0f}) | "
                f"{np.median(tps) / np.median(ttps):.2f} |"
            )
        print(row, flush=True)


if __name__ == "__main__":
    main()
