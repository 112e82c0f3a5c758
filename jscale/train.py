"""Training: one jitted pure train step, AdamW with warm-up + cosine decay, the training loop.

The optimizer state and params are pytrees passed in and out.  ``steps_per_call`` steps
run inside one jitted ``lax.scan`` with the params and optimizer state donated, so small
models are not dominated by per-step dispatch.  Losses are checked for NaN/Inf after each
call; a non-finite loss raises ``TrainingDiverged`` naming the first bad step.
"""

from __future__ import annotations

import dataclasses
import math
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
    """Global-norm clipping, Adam moments and decoupled weight decay on matrices (ndim >= 2, not
    norm scales): AdamW without its learning rate.  ``train_step`` multiplies the update by the
    step's lr, an input (``lr_schedule``), so one compiled step serves every schedule, and a
    WSD cooldown branch continues a trunk's optimizer state unchanged."""

    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    return optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.scale_by_adam(b1=tc.b1, b2=tc.b2),
        optax.add_decayed_weights(tc.weight_decay, mask=decay_mask),
    )


def lr_schedule(tc: TrainConfig, steps) -> np.ndarray:
    """The peak-relative learning rate of optimizer updates ``steps`` (0-based), float32.

    Both schedules warm up linearly from 0 to ``tc.lr`` over ``tc.total_warmup_steps`` updates.
    ``cosine``: then cosine decay to ``tc.lr * tc.min_lr_ratio`` at the last step.  ``wsd``
    (warmup-stable-decay, Hägele et al. 2024): constant ``tc.lr`` until the cooldown's first
    update ``tc.cooldown_start``, then decay to ``tc.lr * tc.min_lr_ratio`` over the last
    ``tc.cooldown_steps`` updates, linearly or as ``1 - sqrt`` (``tc.cooldown_shape``).  Every WSD
    schedule with the same lr and warm-up is the same function before its cooldown, which is
    what makes a cooldown branch from a shared trunk equal to a separate run."""
    s = np.asarray(steps, np.float64)
    peak, end, w, total = tc.lr, tc.lr * tc.min_lr_ratio, tc.total_warmup_steps, tc.total_steps
    warm = peak * s / max(w, 1)
    if tc.schedule == "cosine":
        frac = np.clip((s - w) / max(total - w, 1), 0.0, 1.0)
        after = end + (peak - end) * 0.5 * (1 + np.cos(np.pi * frac))
    else:
        k = tc.cooldown_start
        frac = np.clip((s - k) / max(total - k, 1), 0.0, 1.0)
        shape = frac if tc.cooldown_shape == "linear" else np.sqrt(frac)
        after = np.where(s < k, peak, peak - (peak - end) * shape)
    return np.where(s < w, warm, after).astype(np.float32)


def train_step(
    params,
    opt_state,
    batch_BxT1,
    lr,
    *,
    cfg: ModelConfig,
    opt: optax.GradientTransformation,
    policy="fp32",
):
    """One optimizer step at learning rate ``lr`` (a float32 scalar); returns (params,
    opt_state, loss_nats, grad_norm).  ``policy`` "bf16" computes in bfloat16 from the float32
    master params (mixed precision)."""
    loss, grads = jax.value_and_grad(
        lambda p: model.token_losses(p, cfg, batch_BxT1, policy).mean()
    )(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: -lr * u, updates)
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)


def make_train_chunk(
    cfg: ModelConfig, opt: optax.GradientTransformation, policy="fp32", shardings=None
):
    """Jitted ``(params, opt_state, batches_SxBxT1, lrs_S) -> (params, opt_state, losses_S,
    gnorms_S)`` running S steps in one ``lax.scan``; params and opt_state are donated.

    shardings: None (one device), or ``(params, opt_state, batches, scalars)`` shardings
    (``jscale.sharding``): they become the jit's ``in_shardings`` / ``out_shardings``, so the
    params and optimizer state keep their (FSDP) placement across calls and XLA's SPMD
    partitioner inserts the collectives."""

    def chunk(params, opt_state, batches, lrs):
        def body(carry, batch_and_lr):
            p, s, loss, gn = train_step(*carry, *batch_and_lr, cfg=cfg, opt=opt, policy=policy)
            return (p, s), (loss, gn)

        (params, opt_state), (losses, gnorms) = jax.lax.scan(
            body, (params, opt_state), (batches, lrs)
        )
        return params, opt_state, losses, gnorms

    if shardings is None:
        return jax.jit(chunk, donate_argnums=(0, 1))
    p_sh, o_sh, b_sh, r_sh = shardings
    return jax.jit(
        chunk,
        donate_argnums=(0, 1),
        in_shardings=(p_sh, o_sh, b_sh, r_sh),
        out_shardings=(p_sh, o_sh, r_sh, r_sh),
    )


def curve_steps(total: int, per: int, per_decade: int = 5) -> list[int]:
    """Log-spaced steps (multiples of ``per``, about ``per_decade`` per decade, and ``total``)
    at which a run's held-out loss curve is sampled."""
    if total <= 0:
        return []
    n = max(1, math.ceil(math.log10(max(total / per, 1)) * per_decade))
    grid = per * np.round(np.geomspace(1, max(total / per, 1), n + 1))
    return sorted({int(s) for s in grid if 0 < s < total} | {total})


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns.  losses_nats / grad_norms: per optimizer step (training
    batches).  eval: the dict of ``jscale.evaluate.evaluate`` on the test split (empty when
    skipped).  curve: the loss curve (``Trainer.curve``: one dict per sampled step).
    train_seconds: wall time of the training loop excluding compilation (``compile_seconds``)
    and the curve's held-out evaluations.  tokens_per_second: trained tokens over
    train_seconds.  flops_per_token_train: analytic (``jscale.config.flops_per_token``)."""

    params: Any
    losses_nats: np.ndarray
    grad_norms: np.ndarray
    eval: dict[str, float]
    train_seconds: float
    compile_seconds: float
    tokens: int
    tokens_per_second: float
    flops_per_token_train: float
    curve: list = dataclasses.field(default_factory=list)

    def final_loss_nats(self) -> float:
        """Mean training loss over the last 5% of steps (``n_steps // 20``, at least one)."""
        k = max(1, len(self.losses_nats) // 20)
        return float(np.mean(self.losses_nats[-k:]))


def check_train_inputs(
    cfg: ModelConfig, tc: TrainConfig, corpus: data.Corpus, mesh=None
) -> np.ndarray:
    """Everything that would make ``train`` fail, checked before any compute: the sequence fits
    the model, the mesh divides the batch, the corpus holds a training window, the test set and
    a model-selection set.  Returns the test set ``[N, T+1]``."""
    if tc.seq_len > cfg.max_seq_len:
        raise ConfigError(
            f"TrainConfig.seq_len ({tc.seq_len}) exceeds "
            f"ModelConfig.max_seq_len ({cfg.max_seq_len})"
        )
    sharding.check_batch(mesh, tc.batch_size, "TrainConfig.batch_size")
    if cfg.vocab_size < corpus.vocab_size:
        raise ConfigError(
            f"ModelConfig.vocab_size ({cfg.vocab_size}) is smaller than the corpus's vocabulary "
            f"({corpus.vocab_size}, {corpus.tokenizer}: {corpus.name})"
        )
    for split, tokens in (("train", corpus.train), ("val", corpus.val)):
        if len(tokens) < tc.seq_len + 1:
            raise data.CorpusError(
                f"{corpus.where(split)} holds {len(tokens):,} tokens of the {split} split, too "
                f"few for one sequence of seq_len + 1 = {tc.seq_len + 1}"
            )
    data.train_batch(corpus.train, tc.seed, 0, 1, tc.seq_len)
    try:
        data.eval_batches(corpus.select, tc.seq_len, tc.seq_len)
        return data.eval_batches(corpus.test, tc.seq_len, tc.eval_tokens)
    except data.CorpusError as e:  # say which file is too short
        raise data.CorpusError(f"{corpus.where('val')}: {e}") from None


CURVE_TOKENS = 8_192  # held-out tokens behind each point of a loss curve (model-selection split)


class Trainer:
    """One training run between jitted calls: params and optimizer state (on device, possibly
    sharded), the next optimizer step, the compiled chunk functions, the losses read back so
    far and the loss curve.

    ``Trainer(cfg, tc, corpus)`` starts from ``model.init_params`` with key ``tc.seed``;
    ``params`` / ``opt_state`` / ``step`` continue a saved state (``host_state``); ``compiled``
    shares the compiled chunks of another trainer of the same model and training config (up to
    its lr schedule).  ``advance``
    trains up to a step under any schedule: a WSD trunk and its cooldown branches are one
    ``Trainer`` each, started from the trunk's state at the branch point.  Batches are a pure
    function of (``tc.seed``, step), so a continued run sees the batches the uninterrupted run
    would have seen, and gives the same params."""

    def __init__(
        self,
        cfg: ModelConfig,
        tc: TrainConfig,
        corpus: data.Corpus,
        *,
        params=None,
        opt_state=None,
        step: int = 0,
        mesh=None,
        curve: list | None = None,
        compiled: dict | None = None,
    ):
        self.cfg, self.tc, self.corpus, self.mesh = cfg, tc, corpus, mesh
        if params is None:
            params = model.init_params(cfg, jax.random.key(tc.seed))
        else:  # the chunk donates its inputs; never consume the caller's arrays
            params = jax.tree.map(jnp.array, params)
        opt = make_optimizer(tc)
        if mesh is None:
            self.params = params
            self.opt_state = (
                opt.init(params) if opt_state is None else jax.tree.map(jnp.array, opt_state)
            )
            self.chunk_fn, self.batch_sharding = make_train_chunk(cfg, opt, tc.compute), None
        else:
            p_sh = sharding.tree_shardings(params, mesh)
            o_sh = sharding.tree_shardings(jax.eval_shape(opt.init, params), mesh)
            self.batch_sharding = sharding.batch_sharding(
                mesh, ndim=3, batch_axis=1
            )  # [steps, batch, T+1]
            self.params = sharding.put(params, p_sh)
            self.opt_state = (
                jax.jit(opt.init, out_shardings=o_sh)(self.params)
                if opt_state is None
                else sharding.put(opt_state, o_sh)
            )
            self.chunk_fn = make_train_chunk(
                cfg, opt, tc.compute, (p_sh, o_sh, self.batch_sharding, sharding.replicated(mesh))
            )
        self.step = int(step)
        self.losses, self.gnorms = [], []
        self.curve = list(curve or [])
        # compiled chunks by length: pass a trunk's dict to its branches (the same model, batch
        # shape and optimizer; the lr is an input), so a branch compiles nothing
        self.compiled: dict[int, Any] = {} if compiled is None else compiled
        self.compile_seconds = self.train_seconds = self.curve_seconds = 0.0
        self._curve_set = None

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

    def _fn(self, n: int):
        """The compiled chunk of ``n`` steps (compiled ahead of time on first use, timed)."""
        if n not in self.compiled:
            t0 = time.perf_counter()
            lrs = np.zeros(n, np.float32)
            if self.batch_sharding is not None:
                lrs = sharding.put(lrs, sharding.replicated(self.mesh))
            self.compiled[n] = self.chunk_fn.lower(
                self.params, self.opt_state, self.batches(0, n), lrs
            ).compile()
            self.compile_seconds += time.perf_counter() - t0
        return self.compiled[n]

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

    def _curve_point(self, schedule: TrainConfig, phase: str) -> None:
        """Append the curve's row at the current step: the last call's mean training loss and
        the loss on ``CURVE_TOKENS`` tokens of the model-selection split."""
        t0 = time.perf_counter()
        if self._curve_set is None:
            self._curve_set = data.eval_batches(
                self.corpus.select, self.tc.seq_len, min(CURVE_TOKENS, self.tc.eval_tokens)
            )
        ev = evaluate.evaluate(
            self.params,
            self.cfg,
            self._curve_set,
            self.tc.eval_batch_size,
            policy=self.tc.compute,
            mesh=self.mesh,
        )
        self.curve.append(
            {
                "step": self.step,
                "tokens": self.step * self.tc.tokens_per_step,
                "lr": float(lr_schedule(schedule, [self.step - 1])[0]) if self.step else 0.0,
                "train_loss_nats": float(self.losses[-1].mean()) if self.losses else math.nan,
                "heldout_loss_nats": ev["eval_loss_nats"],
                "phase": phase,
            }
        )
        self.curve_seconds += time.perf_counter() - t0

    def advance(
        self,
        stop: int,
        schedule: TrainConfig | None = None,
        *,
        curve_at=(),
        phase: str = "train",
        bar=None,
    ) -> None:
        """Train from ``self.step`` up to step ``stop`` with the learning rates
        ``lr_schedule(schedule)`` (default ``self.tc``), in calls of ``tc.steps_per_call`` steps;
        when ``curve_at`` lists steps, add a point to the loss curve at each of them in the
        range and at ``stop``."""
        schedule = schedule or self.tc
        per = self.tc.steps_per_call
        marks = sorted({s for s in curve_at if self.step < s < stop} | {stop})
        t0, c0, e0 = time.perf_counter(), self.compile_seconds, self.curve_seconds
        pending = None  # (first step, losses, gnorms) of the call in flight
        for mark in marks:
            while self.step < mark:
                n = min(per, mark - self.step)
                fn = self._fn(n)
                lrs = lr_schedule(schedule, np.arange(self.step, self.step + n))
                if self.batch_sharding is not None:
                    lrs = sharding.put(lrs, sharding.replicated(self.mesh))
                self.params, self.opt_state, losses_dev, gnorms_dev = fn(
                    self.params, self.opt_state, self.batches(self.step, n), lrs
                )
                if pending is not None:  # overlaps host batching and readback with compute
                    steps = self.record(*pending)
                    if bar is not None:
                        bar.update(steps * self.tc.tokens_per_step)
                        bar.set_postfix(loss=f"{self.losses[-1][-1]:.3f}", refresh=False)
                pending = (self.step, losses_dev, gnorms_dev)
                self.step += n
            if pending is not None:
                steps = self.record(*pending)
                if bar is not None:
                    bar.update(steps * self.tc.tokens_per_step)
                pending = None
            if curve_at:
                jax.block_until_ready(self.params)
                self._curve_point(schedule, phase)
        jax.block_until_ready(self.params)
        # compilation and the curve's evaluations are not training time
        elapsed = time.perf_counter() - t0
        self.train_seconds += elapsed - (self.compile_seconds - c0) - (self.curve_seconds - e0)

    def host_state(self) -> dict:
        """``{"params", "opt_state"}`` as NumPy arrays (gathered from the mesh), for a checkpoint
        (``step`` is ``self.step``)."""
        to_np = lambda t: jax.tree.map(np.asarray, sharding.to_host(t) if self.mesh else t)  # noqa: E731
        return {"params": to_np(self.params), "opt_state": to_np(self.opt_state)}

    def losses_nats(self) -> np.ndarray:
        return np.concatenate(self.losses) if self.losses else np.zeros(0, np.float32)


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
    curve: bool = False,
) -> TrainResult:
    """Train ``cfg`` on ``corpus`` per ``tc`` (one run, its own schedule) and evaluate on the
    corpus's fixed test split.

    params: starting parameters (default: ``model.init_params`` with key ``tc.seed``).
    progress: show a tqdm bar (tokens, tokens/s, ETA) on a terminal; ``progress_position``
    is its line (a sweep puts its own bar above it).  ``evaluate_heldout=False`` skips the
    held-out evaluation (``TrainResult.eval`` is then empty): a sweep evaluates every precision
    itself.  ``curve``: sample the loss curve at log-spaced steps (``curve_steps``; otherwise
    only at the end).  ``tc.compute`` "bf16" trains in mixed precision (fp32 master params,
    bf16 matmuls); the held-out loss is then evaluated in bf16 too.
    mesh: a ``jax.sharding.Mesh`` from ``jscale.sharding.make_mesh`` (None: one device, the
    default device).  Params and optimizer state are then placed with the FSDP rule, each batch
    split over ("data", "fsdp"), and the training program is partitioned by XLA (GSPMD); the
    batches, schedule and maths are those of one device, so losses agree within float rounding.
    The returned params stay sharded.
    Raises ``TrainingDiverged`` at the first non-finite loss or gradient norm; ``ConfigError``
    (before any compute) for inputs ``check_train_inputs`` refuses.
    """
    eval_set = check_train_inputs(cfg, tc, corpus, mesh)
    run = Trainer(cfg, tc, corpus, params=params, mesh=mesh)
    total, per = tc.total_steps, tc.steps_per_call
    for n in {min(per, total), total % per or min(per, total)}:
        run._fn(n)  # compile ahead: compile time is reported apart from training time
    bar = _progress(total * tc.tokens_per_step, progress, progress_position)
    try:
        run.advance(total, curve_at=curve_steps(total, per) if curve else (), bar=bar)
    finally:
        bar.close()
    ev = {}
    if evaluate_heldout:
        ev = evaluate.evaluate(
            run.params,
            cfg,
            eval_set,
            tc.eval_batch_size,
            policy=tc.compute,
            mesh=mesh,
            bytes_N=data.window_bytes(eval_set, corpus.token_bytes),
        )
    tokens = total * tc.tokens_per_step
    return TrainResult(
        params=run.params,
        losses_nats=run.losses_nats(),
        grad_norms=np.concatenate(run.gnorms),
        eval=ev,
        train_seconds=run.train_seconds,
        compile_seconds=run.compile_seconds,
        tokens=tokens,
        tokens_per_second=tokens / run.train_seconds,
        flops_per_token_train=flops_per_token(cfg, tc.seq_len)["train"],
        curve=run.curve,
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
