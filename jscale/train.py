"""Training: one jitted pure train step, AdamW with warm-up + cosine decay, the training loop.

The optimizer state and params are pytrees passed in and out.  ``steps_per_call`` steps
run inside one jitted ``lax.scan`` with the params and optimizer state donated, so small
models are not dominated by per-step dispatch.  Losses are checked for NaN/Inf after each
call; a non-finite loss raises ``TrainingDiverged`` naming the first bad step.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jscale import data, evaluate, model, sharding
from jscale.config import ConfigError, ModelConfig, TrainConfig, flops_per_token


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or Inf."""


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW whose lr warms up linearly from 0 to ``tc.lr`` and
    decays (cosine) to ``tc.lr * tc.min_lr_ratio`` at the last step.  Weight decay applies
    to matrices (ndim >= 2), not to norm scales."""
    sched = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=tc.lr,
        warmup_steps=tc.total_warmup_steps,
        decay_steps=max(tc.total_steps, tc.total_warmup_steps + 1),
        end_value=tc.lr * tc.min_lr_ratio,
    )

    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    return optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(sched, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay, mask=decay_mask),
    )


def train_step(
    params,
    opt_state,
    batch_BxT1,
    *,
    cfg: ModelConfig,
    opt: optax.GradientTransformation,
    policy="fp32",
):
    """One optimizer step; returns (params, opt_state, loss_nats, grad_norm).  ``policy``
    "bf16" computes in bfloat16 from the float32 master params (mixed precision)."""
    loss, grads = jax.value_and_grad(
        lambda p: model.token_losses(p, cfg, batch_BxT1, policy).mean()
    )(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)


def make_train_chunk(
    cfg: ModelConfig, opt: optax.GradientTransformation, policy="fp32", shardings=None
):
    """Jitted ``(params, opt_state, batches_SxBxT1) -> (params, opt_state, losses_S, gnorms_S)``
    running S steps in one ``lax.scan``; params and opt_state are donated.

    shardings: None (one device), or ``(params, opt_state, batches, scalars)`` shardings
    (``jscale.sharding``): they become the jit's ``in_shardings`` / ``out_shardings``, so the
    params and optimizer state keep their (FSDP) placement across calls and XLA's SPMD
    partitioner inserts the collectives."""

    def chunk(params, opt_state, batches):
        def body(carry, batch):
            p, s, loss, gn = train_step(*carry, batch, cfg=cfg, opt=opt, policy=policy)
            return (p, s), (loss, gn)

        (params, opt_state), (losses, gnorms) = jax.lax.scan(body, (params, opt_state), batches)
        return params, opt_state, losses, gnorms

    if shardings is None:
        return jax.jit(chunk, donate_argnums=(0, 1))
    p_sh, o_sh, b_sh, r_sh = shardings
    return jax.jit(
        chunk,
        donate_argnums=(0, 1),
        in_shardings=(p_sh, o_sh, b_sh),
        out_shardings=(p_sh, o_sh, r_sh, r_sh),
    )


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns.  losses_nats / grad_norms: per optimizer step (training
    batches).  eval: the dict of ``jscale.evaluate.evaluate`` (empty when skipped).
    train_seconds: wall time of the training loop excluding compilation (``compile_seconds``).
    tokens_per_second: trained tokens over train_seconds.  flops_per_token_train: analytic
    (``jscale.config.flops_per_token``)."""

    params: Any
    losses_nats: np.ndarray
    grad_norms: np.ndarray
    eval: dict[str, float]
    train_seconds: float
    compile_seconds: float
    tokens: int
    tokens_per_second: float
    flops_per_token_train: float

    def final_loss_nats(self) -> float:
        """Mean training loss over the last 5% of steps (``n_steps // 20``, at least one)."""
        k = max(1, len(self.losses_nats) // 20)
        return float(np.mean(self.losses_nats[-k:]))


def check_train_inputs(
    cfg: ModelConfig, tc: TrainConfig, corpus: data.Corpus, mesh=None
) -> np.ndarray:
    """Everything that would make ``train`` fail, checked before any compute: the sequence fits
    the model, the mesh divides the batch, the corpus holds a training window and the held-out
    set.  Returns the held-out set ``[N, T+1]``."""
    if tc.seq_len > cfg.max_seq_len:
        raise ConfigError(
            f"TrainConfig.seq_len ({tc.seq_len}) exceeds "
            f"ModelConfig.max_seq_len ({cfg.max_seq_len})"
        )
    sharding.check_batch(mesh, tc.batch_size, "TrainConfig.batch_size")
    data.train_batch(corpus.train, tc.seed, 0, 1, tc.seq_len)
    return data.eval_batches(corpus.val, tc.seq_len, tc.eval_tokens)


class _Trainer:
    """The state of one training run between jitted calls: params and optimizer state (on
    device, possibly sharded), the compiled chunk functions, and the losses read back so far."""

    def __init__(self, cfg: ModelConfig, tc: TrainConfig, corpus: data.Corpus, params, mesh):
        self.tc, self.corpus, self.mesh = tc, corpus, mesh
        opt = make_optimizer(tc)
        if mesh is None:
            self.params, self.opt_state = params, opt.init(params)
            self.chunk_fn, self.batch_sharding = make_train_chunk(cfg, opt, tc.compute), None
        else:
            p_sh = sharding.tree_shardings(params, mesh)
            o_sh = sharding.tree_shardings(jax.eval_shape(opt.init, params), mesh)
            self.batch_sharding = sharding.batch_sharding(
                mesh, ndim=3, batch_axis=1
            )  # [steps, batch, T+1]
            self.params = sharding.put(params, p_sh)
            self.opt_state = jax.jit(opt.init, out_shardings=o_sh)(self.params)
            self.chunk_fn = make_train_chunk(
                cfg, opt, tc.compute, (p_sh, o_sh, self.batch_sharding, sharding.replicated(mesh))
            )
        self.losses, self.gnorms = [], []

    def batches(self, start: int, n: int):
        """Steps ``start .. start + n - 1``'s batches, ``[n, B, T+1]`` (placed on the mesh)."""
        tc = self.tc
        b = np.stack(
            [
                data.train_batch(self.corpus.train, tc.seed, s, tc.batch_size, tc.seq_len)
                for s in range(start, start + n)
            ]
        )
        return b if self.batch_sharding is None else sharding.put(b, self.batch_sharding)

    def compile(self) -> dict:
        """Ahead-of-time compiled chunk functions, one per chunk length the run needs."""
        total, per = self.tc.total_steps, self.tc.steps_per_call
        return {
            n: self.chunk_fn.lower(self.params, self.opt_state, self.batches(0, n)).compile()
            for n in {min(per, total), total % per or min(per, total)}
        }

    def record(self, first_step: int, losses_dev, gnorms_dev) -> int:
        """Read back one call's losses and gradient norms; ``TrainingDiverged`` at the first
        non-finite one.  Returns the number of steps recorded."""
        losses, gnorms = (
            np.asarray(sharding.gather(losses_dev)),
            np.asarray(sharding.gather(gnorms_dev)),
        )
        bad = np.flatnonzero(~(np.isfinite(losses) & np.isfinite(gnorms)))
        if bad.size:
            i = bad[0]
            what = (
                f"training loss is {losses[i]}"
                if not np.isfinite(losses[i])
                else f"gradient norm is {gnorms[i]}"
            )
            raise TrainingDiverged(
                f"{what} at optimizer step {first_step + i + 1} of {self.tc.total_steps}; "
                f"lower TrainConfig.lr (now {self.tc.lr}) or check the data"
            )
        self.losses.append(losses)
        self.gnorms.append(gnorms)
        return len(losses)


def train(
    cfg: ModelConfig,
    tc: TrainConfig,
    corpus: data.Corpus,
    *,
    params=None,
    progress: bool = True,
    progress_position: int = 0,
    evaluate_heldout: bool = True,
    mesh=None,
) -> TrainResult:
    """Train ``cfg`` on ``corpus`` per ``tc`` and evaluate on its fixed held-out set.

    params: starting parameters (default: ``model.init_params`` with key ``tc.seed``).
    progress: show a tqdm bar (tokens, tokens/s, ETA) on a terminal; ``progress_position``
    is its line (a sweep puts its own bar above it).  ``evaluate_heldout=False`` skips the
    held-out evaluation (``TrainResult.eval`` is then empty): a sweep evaluates every precision
    itself.  ``tc.compute`` "bf16" trains in mixed precision (fp32 master params, bf16
    matmuls); the held-out loss is then evaluated in bf16 too.
    mesh: a ``jax.sharding.Mesh`` from ``jscale.sharding.make_mesh`` (None: one device, the
    default device).  Params and optimizer state are then placed with the FSDP rule, each batch
    split over ("data", "fsdp"), and the training program is partitioned by XLA (GSPMD); the
    batches, schedule and maths are those of one device, so losses agree within float rounding.
    The returned params stay sharded.
    Raises ``TrainingDiverged`` at the first non-finite loss or gradient norm; ``ConfigError``
    (before any compute) for inputs ``check_train_inputs`` refuses.
    """
    eval_set = check_train_inputs(cfg, tc, corpus, mesh)
    if params is None:
        params = model.init_params(cfg, jax.random.key(tc.seed))
    else:  # the train call donates its inputs; never consume the caller's arrays
        params = jax.tree.map(jnp.copy, params)
    run = _Trainer(cfg, tc, corpus, params, mesh)

    t0 = time.perf_counter()
    compiled = run.compile()
    compile_s = time.perf_counter() - t0

    total, per = tc.total_steps, tc.steps_per_call
    bar = _progress(total * tc.tokens_per_step, progress, progress_position)
    t0 = time.perf_counter()
    try:
        step, pending = 0, None  # pending: (first step, losses, gnorms) of the call in flight
        while step < total:
            n = min(per, total - step)
            run.params, run.opt_state, losses_dev, gnorms_dev = compiled[n](
                run.params, run.opt_state, run.batches(step, n)
            )
            if pending is not None:  # overlaps host-side batching and readback with device compute
                bar.update(run.record(*pending) * tc.tokens_per_step)
                bar.set_postfix(loss=f"{run.losses[-1][-1]:.3f}", refresh=False)
            pending, step = (step, losses_dev, gnorms_dev), step + n
        run.record(*pending)
        jax.block_until_ready(run.params)
    finally:
        bar.close()
    train_s = time.perf_counter() - t0

    ev = {}
    if evaluate_heldout:
        ev = evaluate.evaluate(
            run.params, cfg, eval_set, tc.eval_batch_size, policy=tc.compute, mesh=mesh
        )
    tokens = total * tc.tokens_per_step
    return TrainResult(
        params=run.params,
        losses_nats=np.concatenate(run.losses),
        grad_norms=np.concatenate(run.gnorms),
        eval=ev,
        train_seconds=train_s,
        compile_seconds=compile_s,
        tokens=tokens,
        tokens_per_second=tokens / train_s,
        flops_per_token_train=flops_per_token(cfg, tc.seq_len)["train"],
    )


def _progress(total_tokens: int, enabled: bool, position: int = 0):
    """A tqdm bar in tokens (rate = tokens/s, with ETA); off when disabled or not on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total_tokens,
        unit="tok",
        unit_scale=True,
        disable=None if enabled else True,
        desc="train",
        dynamic_ncols=True,
        mininterval=0.5,
        position=position,
        leave=position == 0,
    )
