"""Where a training step's time goes: forward, forward + backward, and the whole step (AdamW,
clipping) of one batch, each jitted alone, median of 5 runs after a warm-up.

    python benchmarks/train_step_breakdown.py 1e5 8e5 1.1e7      # ladder targets
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jscale import data, model, train
from jscale.config import TrainConfig, config_for_params


def _median_s(f, *args, n=5) -> float:
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None):
    targets = [float(x) for x in (argv if argv is not None else sys.argv[1:])] or [1e5, 1.1e7]
    corpus = data.load_corpus()
    for target in targets:
        cfg = config_for_params(target, max_seq_len=1024)
        tc = TrainConfig(steps=1, batch_size=32, seq_len=128)
        params = model.init_params(cfg, jax.random.key(0))
        batch = jnp.asarray(data.train_batch(corpus.train, 0, 0, tc.batch_size, tc.seq_len))
        loss = lambda p, b: model.token_losses(p, cfg, b).mean()  # noqa: E731
        opt = train.make_optimizer(tc)
        state = opt.init(params)
        step = jax.jit(
            lambda p, s, b: train.train_step(
                p, s, b, jnp.float32(1e-3), cfg=cfg, opt=opt, policy="fp32"
            )
        )
        tf = _median_s(jax.jit(loss), params, batch)
        tg = _median_s(jax.jit(jax.value_and_grad(loss)), params, batch)
        ts = _median_s(step, params, state, batch)
        print(
            f"{cfg.d_model} x {cfg.n_layers}: forward {tf * 1e3:.1f} ms, forward + backward "
            f"{tg * 1e3:.1f} ms, step {ts * 1e3:.1f} ms ({tc.tokens_per_step / ts:,.0f} tokens/s)"
        )


if __name__ == "__main__":
    main()
