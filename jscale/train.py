"""Training: one jitted pure train step, AdamW with warm-up + cosine decay, held-out eval.

The optimizer state and params are pytrees passed in and out.  ``steps_per_call`` steps
run inside one jitted ``lax.scan`` with the params and optimizer state donated, so small
models are not dominated by per-step dispatch.  Losses are checked for NaN/Inf after each
call; a non-finite loss raises ``TrainingDiverged`` naming the first bad step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jscale import data, model, precision
from jscale.config import ConfigError, ModelConfig, TrainConfig

LN2 = math.log(2.0)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or Inf."""


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW whose lr warms up linearly from 0 to ``tc.lr`` and
    decays (cosine) to ``tc.lr * tc.min_lr_ratio`` at the last step.  Weight decay applies
    to matrices (ndim >= 2), not to norm scales."""
    sched = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=tc.lr, warmup_steps=tc.total_warmup_steps,
        decay_steps=max(tc.total_steps, tc.total_warmup_steps + 1), end_value=tc.lr * tc.min_lr_ratio)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(sched, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay, mask=decay_mask))


def token_losses(params, cfg: ModelConfig, batch_BxT1: jax.Array, policy="fp32") -> jax.Array:
    """Next-token cross-entropy ``[B, T]`` in nats (float32) for a batch of T+1 tokens,
    with the model run in precision ``policy`` (``jscale.precision``)."""
    inputs, targets = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
    logits_BxTxV = model.apply(params, cfg, inputs, policy=policy)
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp_BxTxV, targets[..., None], axis=-1)[..., 0]


def train_step(params, opt_state, batch_BxT1, *, cfg: ModelConfig, opt: optax.GradientTransformation,
               policy="fp32"):
    """One optimizer step; returns (params, opt_state, loss_nats, grad_norm).  ``policy``
    "bf16" computes in bfloat16 from the float32 master params (mixed precision)."""
    loss, grads = jax.value_and_grad(lambda p: token_losses(p, cfg, batch_BxT1, policy).mean())(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)


def make_train_chunk(cfg: ModelConfig, opt: optax.GradientTransformation, policy="fp32", shardings=None):
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
    return jax.jit(chunk, donate_argnums=(0, 1), in_shardings=(p_sh, o_sh, b_sh),
                   out_shardings=(p_sh, o_sh, r_sh, r_sh))


@functools.partial(jax.jit, static_argnames=("cfg", "policy"))
def _seq_mean_losses(params, cfg: ModelConfig, batch_BxT1, policy):
    return token_losses(params, cfg, batch_BxT1, policy).mean(axis=1)


def sequence_losses(params, cfg: ModelConfig, batches_NxT1: np.ndarray, batch_size: int = 32,
                    policy="fp32", mesh=None) -> np.ndarray:
    """Mean next-token loss (nats) of each of N fixed sequences ``[N, T+1]``: float64 ``[N]``.
    With a ``mesh`` each batch is split over its devices when they divide ``batch_size``
    (else replicated); the params keep whatever placement they have."""
    policy = precision.get_policy(policy)
    put = lambda b: b
    if mesh is not None:
        from jscale import sharding
        sh = (sharding.batch_sharding(mesh) if batch_size % sharding.batch_devices(mesh) == 0
              else sharding.replicated(mesh))
        put = lambda b: sharding.put(b, sh)
    out = []
    for i in range(0, len(batches_NxT1), batch_size):
        b = batches_NxT1[i:i + batch_size]
        pad = batch_size - len(b)
        if pad:  # keep one compiled shape; padded rows are dropped below
            b = np.concatenate([b, np.repeat(b[-1:], pad, axis=0)])
        out.append(np.asarray(_gather(_seq_mean_losses(params, cfg, put(b), policy)),
                              dtype=np.float64)[:batch_size - pad])
    return np.concatenate(out)


def _gather(x):
    """``x`` itself, or a full host copy when it spans several processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jscale import sharding
        return sharding.to_host(x)
    return x


def mean_and_se(x: np.ndarray) -> tuple[float, float]:
    """Mean of ``x`` and its standard error ``std(ddof=1) / sqrt(n)`` (nan when n < 2)."""
    n = len(x)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def evaluate(params, cfg: ModelConfig, batches_NxT1: np.ndarray, batch_size: int = 32,
             policy="fp32", mesh=None) -> dict[str, float]:
    """Held-out loss on fixed sequences ``[N, T+1]`` in precision ``policy``.

    Returns ``eval_loss_nats`` (mean next-token loss, nats/token), ``eval_loss_se_nats``
    (standard error over the N per-sequence means), ``eval_bits_per_byte`` and its SE
    (nats / ln 2: one token is one byte) and ``eval_tokens``.  The mean is accumulated in
    float64 on the host.  ``mesh``: see ``sequence_losses``.
    """
    n = len(batches_NxT1)
    mean, se = mean_and_se(sequence_losses(params, cfg, batches_NxT1, batch_size, policy, mesh))
    return {"eval_loss_nats": mean, "eval_loss_se_nats": se, "eval_bits_per_byte": mean / LN2,
            "eval_bits_per_byte_se": se / LN2, "eval_tokens": int(n * (batches_NxT1.shape[1] - 1))}


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns.  losses_nats / grad_norms: per optimizer step (training
    batches).  eval: the dict of ``evaluate``.  train_seconds: wall time of the training loop
    excluding compilation (``compile_seconds``).  tokens_per_second: trained tokens over
    train_seconds.  flops_per_token_train: analytic (``model.flops_per_token``)."""

    params: Any
    losses_nats: np.ndarray
    grad_norms: np.ndarray
    eval: dict[str, float]
    train_seconds: float
    compile_seconds: float
    tokens: int
    tokens_per_second: float
    flops_per_token_train: float


def train(cfg: ModelConfig, tc: TrainConfig, corpus: data.Corpus, *, params=None,
          progress: bool = True, progress_position: int = 0, evaluate_heldout: bool = True,
          mesh=None) -> TrainResult:
    """Train ``cfg`` on ``corpus`` per ``tc`` and evaluate on its fixed held-out set.

    params: starting parameters (default: ``model.init_params`` with key ``tc.seed``).
    progress: show a tqdm bar (tokens, tokens/s, ETA) on a terminal; ``progress_position``
    is its line (a sweep puts its own bar above it).  ``evaluate_heldout=False`` skips the
    held-out evaluation (``TrainResult.eval`` is then empty): a sweep evaluates every precision
    itself.
    ``tc.compute`` "bf16" trains in mixed precision (fp32 master params, bf16 matmuls); the
    held-out loss is then evaluated in bf16 too.
    mesh: a ``jax.sharding.Mesh`` from ``jscale.sharding.make_mesh`` (None: one device, the
    default device).  Params and optimizer state are then placed with the FSDP rule, each batch
    split over ("data", "fsdp"), and the training program is partitioned by XLA (GSPMD); the
    batches, schedule and maths are those of one device, so losses agree within float rounding.
    The returned params stay sharded.
    Raises ``TrainingDiverged`` at the first non-finite loss or gradient norm; ``ConfigError`` if
    ``tc.seq_len > cfg.max_seq_len`` or (with a mesh) the mesh's data x fsdp devices do not
    divide ``tc.batch_size``.
    """
    if tc.seq_len > cfg.max_seq_len:
        raise ConfigError(f"TrainConfig.seq_len ({tc.seq_len}) exceeds ModelConfig.max_seq_len ({cfg.max_seq_len})")
    if mesh is not None:
        from jscale import sharding
        nb = sharding.batch_devices(mesh)
        if tc.batch_size % nb:
            raise ConfigError(f"TrainConfig.batch_size ({tc.batch_size}) must be divisible by the mesh's "
                              f"data x fsdp = {nb} devices ({sharding.mesh_shape_str(mesh)}): each device "
                              f"takes an equal share of every batch")
    eval_set = data.eval_batches(corpus.val, tc.seq_len, tc.eval_tokens)  # fail early on a tiny corpus
    data.train_batch(corpus.train, tc.seed, 0, 1, tc.seq_len)

    opt = make_optimizer(tc)
    if params is None:
        params = model.init_params(cfg, jax.random.key(tc.seed))
    else:  # the train call donates its inputs; never consume the caller's arrays
        params = jax.tree.map(jnp.copy, params)
    total, per = tc.total_steps, tc.steps_per_call

    def batches(start, n):
        return np.stack([data.train_batch(corpus.train, tc.seed, s, tc.batch_size, tc.seq_len)
                         for s in range(start, start + n)])

    if mesh is None:
        opt_state = opt.init(params)
        chunk_fn = make_train_chunk(cfg, opt, tc.compute)
    else:
        p_sh = sharding.tree_shardings(params, mesh)
        o_sh = sharding.tree_shardings(jax.eval_shape(opt.init, params), mesh)
        b_sh = sharding.batch_sharding(mesh, ndim=3, batch_axis=1)  # [steps, batch, T+1]
        params = sharding.put(params, p_sh)
        opt_state = jax.jit(opt.init, out_shardings=o_sh)(params)
        chunk_fn = make_train_chunk(cfg, opt, tc.compute, (p_sh, o_sh, b_sh, sharding.replicated(mesh)))
        host_batches = batches
        batches = lambda start, n: sharding.put(host_batches(start, n), b_sh)

    t0 = time.perf_counter()
    compiled = {}
    for n in {min(per, total), total % per or min(per, total)}:
        compiled[n] = chunk_fn.lower(params, opt_state, batches(0, n)).compile()
    compile_s = time.perf_counter() - t0

    bar = _progress(total * tc.tokens_per_step, progress, progress_position)
    losses, gnorms = [], []
    pending = None  # (first step, losses, gnorms) of the call in flight

    def drain(p):
        start, l_dev, g_dev = p
        l, g = np.asarray(_gather(l_dev)), np.asarray(_gather(g_dev))
        bad = np.flatnonzero(~(np.isfinite(l) & np.isfinite(g)))
        if bad.size:
            bar.close()
            i = bad[0]
            what = f"training loss is {l[i]}" if not np.isfinite(l[i]) else f"gradient norm is {g[i]}"
            raise TrainingDiverged(f"{what} at optimizer step {start + i + 1} of {total}; "
                                   f"lower TrainConfig.lr (now {tc.lr}) or check the data")
        losses.append(l)
        gnorms.append(g)
        bar.update(len(l) * tc.tokens_per_step)
        bar.set_postfix(loss=f"{l[-1]:.3f}", refresh=False)

    t0 = time.perf_counter()
    step = 0
    while step < total:
        n = min(per, total - step)
        b = batches(step, n)
        params, opt_state, l_dev, g_dev = compiled[n](params, opt_state, b)
        if pending is not None:
            drain(pending)  # overlaps host-side batching and readback with device compute
        pending, step = (step, l_dev, g_dev), step + n
    drain(pending)
    jax.block_until_ready(params)
    train_s = time.perf_counter() - t0
    bar.close()

    ev = evaluate(params, cfg, eval_set, tc.eval_batch_size, policy=tc.compute, mesh=mesh) if evaluate_heldout else {}
    tokens = total * tc.tokens_per_step
    return TrainResult(params=params, losses_nats=np.concatenate(losses), grad_norms=np.concatenate(gnorms),
                       eval=ev, train_seconds=train_s, compile_seconds=compile_s, tokens=tokens,
                       tokens_per_second=tokens / train_s,
                       flops_per_token_train=model.flops_per_token(cfg, tc.seq_len)["train"])


def _progress(total_tokens: int, enabled: bool, position: int = 0):
    """A tqdm bar in tokens (rate = tokens/s, with ETA); off when disabled or not on a terminal."""
    from tqdm.auto import tqdm
    return tqdm(total=total_tokens, unit="tok", unit_scale=True, disable=None if enabled else True,
                desc="train", dynamic_ncols=True, mininterval=0.5, position=position, leave=position == 0)
