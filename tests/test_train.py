"""Training loop, evaluation, optimizer schedule and divergence guard."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jscale import data, evaluate, model, train
from jscale.config import ConfigError, ModelConfig, TrainConfig

# the model jitted whole: op-by-op dispatch of a forward pass costs more than compiling it
APPLY = jax.jit(model.apply, static_argnames=("cfg", "policy", "form"))


TINY = ModelConfig(d_model=32, n_layers=1, n_heads=1, max_seq_len=32)


def _tiny_tc(**kw):
    base = dict(steps=20, batch_size=4, seq_len=32, eval_tokens=4096, steps_per_call=5)
    return TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------- determinism


@pytest.fixture(scope="module")
def tiny_run(corpus):
    return train.train(TINY, _tiny_tc(), corpus, progress=False)


@pytest.mark.slow
def test_train_result_fields(tiny_run):
    r = tiny_run
    assert r.losses_nats.shape == (20,) and r.grad_norms.shape == (20,)
    assert np.isfinite(r.losses_nats).all()
    assert np.all(r.grad_norms > 0) and np.isfinite(r.grad_norms).all()
    assert r.tokens == 20 * 4 * 32
    assert r.eval["eval_tokens"] == 4096  # 128 windows of 32 predicted tokens
    d, f, V, T = 32, 128, 256, 32
    assert r.flops_per_token_train == 3 * (2 * (4 * d * d + 2 * d * f) + 2 * d * V + 4 * T * d)
    # the first loss of an untrained byte model is near ln(256) = 5.55 (a little above:
    # random logits of unit variance add about 1/2 nat)
    assert 5.0 < r.losses_nats[0] < 7.0
    assert r.losses_nats[-5:].mean() < r.losses_nats[:5].mean()


def test_train_is_deterministic(corpus, tiny_run):
    again = train.train(TINY, _tiny_tc(), corpus, progress=False)
    np.testing.assert_array_equal(again.losses_nats, tiny_run.losses_nats)
    assert again.eval["eval_loss_nats"] == tiny_run.eval["eval_loss_nats"]
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(tiny_run.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_different_seed_gives_different_run(corpus, tiny_run):
    other = train.train(TINY, _tiny_tc(seed=1), corpus, progress=False)
    assert not np.array_equal(other.losses_nats, tiny_run.losses_nats)
    assert other.eval["eval_loss_nats"] != tiny_run.eval["eval_loss_nats"]


@pytest.mark.slow
def test_steps_per_call_does_not_change_the_run(corpus, tiny_run):
    """Chunking the same 20 steps as 3 + 3 + ... + 2 (a ragged last call) trains on the same
    batches with the same schedule; only float rounding of a different program may differ."""
    other = train.train(TINY, _tiny_tc(steps_per_call=3), corpus, progress=False)
    assert other.losses_nats.shape == (20,)
    np.testing.assert_allclose(other.losses_nats, tiny_run.losses_nats, rtol=1e-4)
    assert other.eval["eval_loss_nats"] == pytest.approx(tiny_run.eval["eval_loss_nats"], rel=1e-4)


# --------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_learns_below_unigram_entropy(corpus):
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=1, max_seq_len=128)
    tc = TrainConfig(steps=200, batch_size=16, seq_len=128, lr=3e-3, eval_tokens=32768)
    r = train.train(cfg, tc, corpus, progress=False)
    ev = r.eval
    h = corpus.unigram_entropy_bits()  # ~4.6 bits/byte; a unigram model cannot beat it
    # measured ~3.0 bits/byte after 200 steps
    assert ev["eval_bits_per_byte"] < 0.75 * h, (ev, h)
    # bits per byte: the nats of every predicted token over the bytes of text they stand for;
    # a separator (byte 0, between files) predicts no byte of text
    targets = data.eval_batches(corpus.test, 128, 32768)[:, 1:]
    n_bytes = np.count_nonzero(targets)
    assert ev["eval_bits_per_byte"] == pytest.approx(
        ev["eval_loss_nats"] * targets.size / n_bytes / math.log(2), rel=1e-9
    )
    assert ev["eval_bits_per_byte_se"] == pytest.approx(
        ev["eval_loss_se_nats"] / math.log(2), rel=0.05 if n_bytes < targets.size else 1e-9
    )
    assert 0 < ev["eval_loss_se_nats"] < 0.05 * ev["eval_loss_nats"]
    assert ev["eval_tokens"] == 32768
    # the training loss went down too
    assert r.losses_nats[-20:].mean() < r.losses_nats[:5].mean() - 1.0


# --------------------------------------------------------------------------- evaluate


def _reference_eval(params, cfg, batches):
    """float64 numpy next-token cross-entropy from the model's logits."""
    logits = np.asarray(APPLY(params, cfg, jnp.asarray(batches[:, :-1])), np.float64)
    targets = batches[:, 1:]
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    tgt = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    per_token = lse - tgt  # [N, T]
    per_seq = per_token.mean(1)
    return per_token.mean(), per_seq.std(ddof=1) / math.sqrt(len(per_seq))


@pytest.mark.parametrize(
    "n_seq,batch_size", [(8, 4), (7, 4), (3, 8)], ids=["full", "ragged", "one-padded-batch"]
)
def test_evaluate_matches_float64_reference(n_seq, batch_size):
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=16)
    params = model.init_params(cfg, jax.random.key(7))
    params = jax.tree.map(lambda p: 3.0 * p, params)  # sharper, less uniform predictions
    rng = np.random.default_rng(n_seq)
    batches = rng.integers(0, 256, (n_seq, 17)).astype(np.int32)
    mean, se = _reference_eval(params, cfg, batches)
    assert mean > 0.5  # non-trivial
    ev = evaluate.evaluate(params, cfg, batches, batch_size=batch_size)
    assert ev["eval_loss_nats"] == pytest.approx(mean, rel=1e-5)
    assert ev["eval_loss_se_nats"] == pytest.approx(se, rel=1e-4)
    assert ev["eval_bits_per_byte"] == pytest.approx(mean / math.log(2), rel=1e-5)
    assert ev["eval_tokens"] == n_seq * 16


def test_token_losses_alignment():
    """token_losses[b, t] is the loss of predicting token t+1 from the logits at position t
    (a float64 reference from the logits; a target shifted by one would not match)."""
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=1, max_seq_len=16, vocab_size=256)
    params = model.init_params(cfg, jax.random.key(0))
    seq = (np.arange(17)[None] + 40).astype(np.int32)
    losses = np.asarray(model.token_losses(params, cfg, jnp.asarray(seq)), np.float64)
    logits = np.asarray(APPLY(params, cfg, jnp.asarray(seq[:, :-1])), np.float64)
    ref = -(
        logits[0, np.arange(16), seq[0, 1:]]
        - np.log(np.exp(logits[0] - logits[0].max(-1, keepdims=True)).sum(-1))
        - logits[0].max(-1)
    )
    np.testing.assert_allclose(losses[0], ref, rtol=1e-5)


# --------------------------------------------------------------------------- optimizer


def test_optimizer_schedule_and_decay_mask():
    """The cosine schedule is optax's warmup_cosine_decay_schedule (an independent
    implementation); with zero gradients AdamW's Adam part is exactly zero, so each update is pure
    decoupled weight decay, w <- w (1 - lr wd), on matrices only (not norm scales)."""
    import optax

    lr, wd, W, S, ratio = 0.5, 1.0, 4, 20, 0.1
    tc = TrainConfig(steps=S, warmup_steps=W, lr=lr, weight_decay=wd, min_lr_ratio=ratio)
    ref = optax.warmup_cosine_decay_schedule(0.0, lr, W, S, lr * ratio)
    k = np.arange(S + 3)
    np.testing.assert_allclose(
        train.lr_schedule(tc, k), [float(ref(i)) for i in k], rtol=1e-6, atol=1e-8
    )
    opt = train.make_optimizer(tc)
    params = {"w": jnp.full((8, 8), 2.0, jnp.float32), "scale": jnp.ones((8,), jnp.float32)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = opt.init(params)
    updates, state = opt.update(zeros, state, params)
    np.testing.assert_array_equal(np.asarray(updates["scale"]), np.zeros(8))
    np.testing.assert_allclose(np.asarray(updates["w"]), wd * 2.0, rtol=1e-7)


def test_wsd_schedule_formula():
    """WSD: linear warm-up, constant peak, then the cooldown over the last cooldown_frac of the
    steps (whole calls) to lr * min_lr_ratio, 1-sqrt or linear (Hägele et al. 2024, eq. 1-2)."""
    lr, W, ratio = 1.0, 10, 0.1
    for shape in ("1-sqrt", "linear"):
        tc = TrainConfig(
            tokens=100 * 64 - 5,
            batch_size=2,
            seq_len=32,
            steps_per_call=10,
            lr=lr,
            warmup_steps=W,
            min_lr_ratio=ratio,
            schedule="wsd",
            cooldown_shape=shape,
        )
        assert tc.total_steps == 100  # rounded up to whole calls
        assert tc.cooldown_steps == 20 and tc.cooldown_start == 80
        got = train.lr_schedule(tc, np.arange(100))
        for s in range(100):
            if s < W:
                want = lr * s / W
            elif s < 80:
                want = lr
            else:
                f = (s - 80) / 20
                want = lr - (lr - lr * ratio) * (math.sqrt(f) if shape == "1-sqrt" else f)
            assert got[s] == pytest.approx(want, rel=1e-6, abs=1e-7), (shape, s)
    # every WSD schedule with the same warm-up is the same function before its cooldown
    short = TrainConfig(steps=50, warmup_steps=W, schedule="wsd", steps_per_call=10)
    long = TrainConfig(steps=200, warmup_steps=W, schedule="wsd", steps_per_call=10)
    k = np.arange(short.cooldown_start)
    np.testing.assert_array_equal(train.lr_schedule(short, k), train.lr_schedule(long, k))


def test_cosine_run_matches_optax_adamw(corpus):
    """The training step (AdamW with the lr as a per-step input) gives the losses of optax's own
    adamw with its schedule inside: an independent implementation of the same optimizer."""
    import optax

    tc = _tiny_tc(steps=12, steps_per_call=4, warmup_steps=3)
    ours = train.train(TINY, tc, corpus, progress=False, evaluate_heldout=False)
    sched = optax.warmup_cosine_decay_schedule(0.0, tc.lr, 3, 12, tc.lr * tc.min_lr_ratio)
    opt = optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(
            sched,
            b1=tc.b1,
            b2=tc.b2,
            weight_decay=tc.weight_decay,
            mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p),
        ),
    )
    params = model.init_params(TINY, jax.random.key(tc.seed))
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch):
        loss, g = jax.value_and_grad(lambda p: model.token_losses(p, TINY, batch).mean())(params)
        u, state = opt.update(g, state, params)
        return optax.apply_updates(params, u), state, loss

    from jscale import data

    losses = []
    for k in range(12):
        params, state, loss = step(params, state, data.train_batch(corpus.train, tc.seed, k, 4, 32))
        losses.append(float(loss))
    np.testing.assert_allclose(ours.losses_nats, losses, rtol=2e-5)
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_wsd_branch_from_trunk_equals_a_separate_run(corpus):
    """A cooldown branch started from a trunk's saved state (params and optimizer state as NumPy
    arrays, as a checkpoint holds them) gives the params of a separate WSD run to that budget:
    the trunk is the same function before the branch point, and batches depend on (seed, step)."""
    base = dict(
        batch_size=4,
        seq_len=32,
        eval_tokens=4096,
        steps_per_call=4,
        warmup_steps=4,
        schedule="wsd",
        cooldown_frac=0.25,
    )
    short, long = _tiny_tc(**{**base, "steps": 16}), _tiny_tc(**{**base, "steps": 32})
    direct = train.train(TINY, short, corpus, progress=False, evaluate_heldout=False)
    trunk = train.Trainer(TINY, long, corpus)
    trunk.advance(short.cooldown_start)  # the trunk runs under the long budget's schedule
    saved, at = trunk.host_state(), trunk.step
    trunk.advance(long.total_steps)  # the trunk goes on; the saved state is untouched
    branch = train.Trainer(TINY, short, corpus, step=at, **saved)
    branch.advance(short.total_steps, curve_at=[short.total_steps])
    for a, b in zip(jax.tree.leaves(branch.params), jax.tree.leaves(direct.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(branch.losses_nats(), direct.losses_nats[at:])
    (pt,) = branch.curve
    assert pt["step"] == 16 and pt["lr"] == pytest.approx(float(train.lr_schedule(short, [15])[0]))
    assert np.isfinite(pt["heldout_loss_nats"]) and pt["phase"] == "train"


def test_curve_steps_are_log_spaced_calls():
    steps = train.curve_steps(1000, 10, per_decade=4)
    assert steps[0] == 10 and steps[-1] == 1000 and all(s % 10 == 0 for s in steps)
    ratios = np.diff(np.log10(steps))
    assert len(steps) == 9 and np.allclose(ratios, 0.25, atol=0.08)


def test_nan_params_diverge_at_step_1(corpus):
    params = model.init_params(TINY, jax.random.key(0))
    leaves, treedef = jax.tree.flatten(params)
    leaves[0] = jnp.full_like(leaves[0], jnp.nan)
    poisoned = jax.tree.unflatten(treedef, leaves)
    with pytest.raises(train.TrainingDiverged) as e:
        train.train(TINY, _tiny_tc(steps=10), corpus, params=poisoned, progress=False)
    assert "step 1 of 10" in str(e.value)


@pytest.mark.slow
def test_train_does_not_consume_callers_params(corpus):
    params = model.init_params(TINY, jax.random.key(0))
    ref = np.asarray(jax.tree.leaves(params)[0]).copy()
    train.train(TINY, _tiny_tc(steps=2), corpus, params=params, progress=False)
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(params)[0]), ref
    )  # not deleted by donation


@pytest.mark.slow
def test_huge_lr_diverges(corpus):
    # measured: NaN at step 4 for seeds 0..2 (lr 1e6 blows the weights up within a few steps)
    tc = _tiny_tc(lr=1e6, grad_clip=1e9, warmup_steps=0)
    with pytest.raises(train.TrainingDiverged, match=r"step \d+ of 20.*lr"):
        train.train(TINY, tc, corpus, progress=False)


def test_seq_len_longer_than_model_max(corpus):
    with pytest.raises(ConfigError, match="max_seq_len"):
        train.train(TINY, _tiny_tc(seq_len=33), corpus, progress=False)


def test_clustered_se_against_a_direct_computation():
    """The cluster-robust SE of a mean, against its formula written out in float64 loops; with one
    value per cluster it is the plain SE rescaled; clustering correlated values widens it."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(12), rng.integers(1, 9, 12))
    x = rng.normal(0, 1, 12)[groups] + rng.normal(0, 0.3, len(groups))  # shared per group
    n, G, m = len(x), 12, x.mean()
    direct = math.sqrt(G / (G - 1) * sum(sum(x[groups == g] - m) ** 2 for g in range(G))) / n
    assert evaluate.clustered_se(x, groups) == pytest.approx(direct, rel=1e-12)
    plain = evaluate.mean_and_se(x)[1]
    assert evaluate.clustered_se(x, groups) > 1.5 * plain  # correlated within groups
    y = rng.normal(0, 1, 30)
    assert evaluate.clustered_se(y, np.arange(30)) == pytest.approx(
        evaluate.mean_and_se(y)[1] * math.sqrt(30 / 29 * 29 / 30), rel=1e-12
    )
    assert math.isnan(evaluate.clustered_se(y, np.zeros(30)))
