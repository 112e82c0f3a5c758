"""Training-step time of the quick sweep's models under head layouts: 8-wide heads (the design
before 2026-12-03) against a fixed count of 1, 2 or 4 heads that widen with the model.

Each shape is two layers of d_model x 4 d_model at batch 8 x 128 (``experiments/quick.toml``),
AdamW, ``--steps-per-call`` steps in one jitted call (as the sweep runs them), compiled ahead of
time; one untimed call, then ``--calls`` timed calls. Prints the median ms per step with the
min..max over calls, and each layout's speed-up against 8-wide heads, per width.

    python benchmarks/train_heads.py                        # d_model 16 .. 96
    python benchmarks/train_heads.py --widths 48,96 --calls 9
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jscale import data, model, train
from jscale.config import ModelConfig, TrainConfig


def step_ms(corpus, d: int, heads: int, steps: int, calls: int) -> np.ndarray:
    """ms per optimizer step over ``calls`` timed calls of ``steps`` steps each."""
    cfg = ModelConfig(d_model=d, n_layers=2, n_heads=heads, vocab_size=256, max_seq_len=128)
    tc = TrainConfig(batch_size=8, seq_len=128, steps=10 * steps, steps_per_call=steps)
    opt = train.make_optimizer(tc)
    params = model.init_params(cfg, jax.random.key(0))
    state = opt.init(params)
    fn = train.make_train_chunk(cfg, opt, tc.compute)
    batch = np.stack([data.train_batch(corpus.train, 0, s, 8, 128) for s in range(steps)])
    lrs = train.lr_schedule(tc, np.arange(steps))
    compiled = fn.lower(params, state, batch, lrs).compile()
    times = []
    for i in range(calls + 1):
        t = time.perf_counter()
        params, state, loss, _ = compiled(params, state, batch, lrs)
        jax.block_until_ready(loss)
        if i:  # the first call is a warm-up
            times.append(time.perf_counter() - t)
    return np.array(times) / steps * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="16,24,32,48,64,80,96")
    ap.add_argument("--steps-per-call", type=int, default=20)
    ap.add_argument("--calls", type=int, default=7)
    a = ap.parse_args()
    corpus = data.load_corpus()
    layouts = {"8-wide": None, "1 head": 1, "2 heads": 2, "4 heads": 4}
    print(f"jax {jax.__version__}; batch 8 x 128, 2 layers; ms per step, median (min..max)\n")
    print("| d_model | " + " | ".join(layouts) + " |")
    print("|---:|" + "---:|" * len(layouts))
    for d in (int(w) for w in a.widths.split(",")):
        cells, base = [], None
        for name, heads in layouts.items():
            h = heads or max(1, d // 8)
            if d % h or (d // h) % 2:
                cells.append("-")
                continue
            t = step_ms(corpus, d, h, a.steps_per_call, a.calls)
            med = float(np.median(t))
            base = base or med
            cells.append(f"{med:.2f} ({t.min():.2f}..{t.max():.2f}) {base / med:.2f}x")
        print(f"| {d} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
