r"""Data-parallel / FSDP training on fake CPU devices against one device: the overhead.

Fake CPU devices (``--xla_force_host_platform_device_count``) share the same cores and memory,
so a mesh cannot be faster here; what this measures is the cost of the partitioned program
(per-device slicing, collectives, scheduling) against the one-device program, for the same
training run (the losses agree within float rounding).  Run it with the flag set:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/sharded_train_cpu.py
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/sharded_train_cpu.py \
        --size 1e6 --steps 40

For each setting: ``jscale.train`` (AOT compile timed apart) of the same steps, ``--repeats``
times; prints compile s, median train s and tokens/s, and the final-loss difference to one device.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from jscale import data, sharding, train
from jscale.config import TrainConfig, config_for_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=1e5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    n = jax.device_count()
    cfg = config_for_params(a.size, max_seq_len=a.seq_len)
    tc = TrainConfig(
        steps=a.steps,
        batch_size=a.batch_size,
        seq_len=a.seq_len,
        steps_per_call=10,
        eval_tokens=a.seq_len,
    )
    corpus = data.load_corpus()
    settings = {"1 device (no mesh)": None}
    if n > 1:
        settings.update({f"data={n}": dict(data=n), f"fsdp={n}": dict(data=1, fsdp=n)})
        if n % 2 == 0 and n > 2:
            settings[f"data=2,fsdp={n // 2}"] = dict(data=2, fsdp=n // 2)
    print(
        f"{jax.device_count()} {jax.devices()[0].platform} devices; "
        f"d_model={cfg.d_model} n_layers={cfg.n_layers}; "
        f"{a.steps} steps x {tc.tokens_per_step} tokens; median of {a.repeats}\n"
    )
    print("| mesh | compile s | train s | tokens/s | vs 1 device | final loss - 1 device |")
    print("|---|---:|---:|---:|---:|---:|")
    base = ref_loss = None
    for name, kw in settings.items():
        mesh = None if kw is None else sharding.make_mesh(**kw)
        runs = [
            train.train(cfg, tc, corpus, progress=False, evaluate_heldout=False, mesh=mesh)
            for _ in range(a.repeats)
        ]
        ts = float(np.median([r.train_seconds for r in runs]))
        tps = runs[0].tokens / ts
        base = base or tps
        ref_loss = runs[0].losses_nats[-1] if ref_loss is None else ref_loss
        print(
            f"| {name} | {np.median([r.compile_seconds for r in runs]):.1f} | "
            f"{ts:.2f} | {tps:,.0f} | "
            f"{tps / base:.2f} | {runs[0].losses_nats[-1] - ref_loss:+.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
