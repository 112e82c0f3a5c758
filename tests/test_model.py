"""The transformer: causality, exact parameter counts, analytic FLOPs, RoPE, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jscale import formulation, model
from jscale.config import ModelConfig, count_params, flops_per_token

# the model jitted whole: op-by-op dispatch of a forward pass costs more than compiling it
APPLY = jax.jit(model.apply, static_argnames=("cfg", "policy", "form"))


SMALL = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=256, max_seq_len=32)


@pytest.fixture(scope="module")
def small_params():
    return model.init_params(SMALL, jax.random.key(0))


# --------------------------------------------------------------------------- causality


@pytest.mark.parametrize("t", [0, 5, 31])
def test_causal_changing_token_t_changes_nothing_before_t(small_params, t):
    rng = np.random.default_rng(t)
    tokens = rng.integers(0, 256, size=(2, 32)).astype(np.int32)
    changed = tokens.copy()
    changed[:, t] = (tokens[:, t] + 1 + rng.integers(0, 254, size=2)) % 256  # a different token
    assert (changed[:, t] != tokens[:, t]).all()

    f = jax.jit(lambda p, x: model.apply(p, SMALL, x))
    a = np.asarray(f(small_params, tokens))
    b = np.asarray(f(small_params, changed))
    # strictly earlier positions: bit-for-bit identical
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    # position t itself sees its own token: the mask must not be too strict
    for row in range(2):
        assert np.abs(a[row, t] - b[row, t]).max() > 1e-4
    if t + 1 < 32:  # and later positions see it too
        assert np.abs(a[:, t + 1 :] - b[:, t + 1 :]).max() > 1e-4


def test_later_positions_attend_to_earlier_tokens(small_params):
    """Changing only token 0 changes the logits at the last position (information flows
    forward through attention, not just through the token's own position)."""
    tokens = np.random.default_rng(1).integers(0, 256, size=(1, 32)).astype(np.int32)
    changed = tokens.copy()
    changed[0, 0] = (tokens[0, 0] + 7) % 256
    a = np.asarray(APPLY(small_params, SMALL, tokens))
    b = np.asarray(APPLY(small_params, SMALL, changed))
    assert np.abs(a[0, -1] - b[0, -1]).max() > 1e-5


def test_explicit_positions_match_default(small_params):
    tokens = np.random.default_rng(2).integers(0, 256, size=(2, 16)).astype(np.int32)
    pos = np.broadcast_to(np.arange(16), (2, 16))
    np.testing.assert_allclose(
        np.asarray(APPLY(small_params, SMALL, tokens, pos)),
        np.asarray(APPLY(small_params, SMALL, tokens)),
        rtol=0,
        atol=1e-6,
    )


# --------------------------------------------------------------------------- shapes, dtypes, limits


def test_logits_dtype_and_shape(small_params):
    tokens = jnp.zeros((3, 17), jnp.int32)
    logits = APPLY(small_params, SMALL, tokens)
    assert logits.dtype == jnp.float32
    assert logits.shape == (3, 17, 256)
    assert np.isfinite(np.asarray(logits)).all()


def test_max_seq_len_accepted_and_exceeded(small_params):
    assert APPLY(small_params, SMALL, jnp.zeros((1, 32), jnp.int32)).shape == (1, 32, 256)
    with pytest.raises(ValueError, match="max_seq_len"):
        APPLY(small_params, SMALL, jnp.zeros((1, 33), jnp.int32))


def test_init_is_pure_function_of_key():
    a = jax.tree.leaves(model.init_params(SMALL, jax.random.key(3)))
    b = jax.tree.leaves(model.init_params(SMALL, jax.random.key(3)))
    c = jax.tree.leaves(model.init_params(SMALL, jax.random.key(4)))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert any(not np.array_equal(np.asarray(x), np.asarray(z)) for x, z in zip(a, c))
    assert all(x.dtype == jnp.float32 for x in a)


# --------------------------------------------------------------------------- parameter counts

COUNT_CONFIGS = [
    ModelConfig(d_model=32, n_layers=1, n_heads=1, vocab_size=256, max_seq_len=16),
    ModelConfig(
        d_model=32, n_layers=2, n_heads=2, vocab_size=256, max_seq_len=16, tie_embeddings=False
    ),
    ModelConfig(d_model=48, n_layers=3, n_heads=3, d_ff=40, vocab_size=300, max_seq_len=16),
    ModelConfig(
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=100,
        vocab_size=97,
        max_seq_len=16,
        tie_embeddings=False,
    ),
    ModelConfig(d_model=16, n_layers=3, n_heads=1, d_ff=16, vocab_size=2, max_seq_len=8),
]


def _closed_form_non_embedding(n_layers, d, d_ff):
    # per block: qkv (3 d^2) + out (d^2) + up and down (2 d d_ff) + two RMSNorm scales (2 d);
    # plus the final norm (d).  RoPE has no parameters.
    return n_layers * (4 * d * d + 2 * d * d_ff + 2 * d) + d


@pytest.mark.parametrize(
    "cfg",
    COUNT_CONFIGS,
    ids=lambda c: (
        f"d{c.d_model}L{c.n_layers}f{c.d_ff}V{c.vocab_size}"
        f"{'tied' if c.tie_embeddings else 'untied'}"
    ),
)
def test_count_params_exact(cfg):
    # eval_shape traces init_params without running it: the same shapes, much faster
    params = jax.eval_shape(lambda k: model.init_params(cfg, k), jax.random.key(0))
    counts = count_params(cfg)
    leaves = jax.tree.leaves(params)
    assert counts["total"] == sum(int(x.size) for x in leaves)

    embed = params["embed"]["embedding"]
    assert embed.shape == (cfg.vocab_size, cfg.d_model)
    expected_embedding = embed.size
    if cfg.tie_embeddings:
        assert "head" not in params
    else:
        expected_embedding += params["head"]["kernel"].size
    assert counts["embedding"] == expected_embedding
    assert counts["embedding"] == cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    assert counts["non_embedding"] == _closed_form_non_embedding(
        cfg.n_layers, cfg.d_model, cfg.d_ff
    )
    assert counts["total"] == counts["embedding"] + counts["non_embedding"]


def test_count_params_default_d_ff_is_four_d():
    cfg = ModelConfig(d_model=64, n_layers=3, n_heads=1)
    # the Kaplan form n_layers * (12 d^2 + 2 d) + d when d_ff = 4 d
    assert count_params(cfg)["non_embedding"] == 3 * (12 * 64**2 + 2 * 64) + 64


# --------------------------------------------------------------------------- FLOPs


def _xla_flops(cfg, B, T):
    params = model.init_params(cfg, jax.random.key(0))
    tokens = jnp.zeros((B, T), jnp.int32)
    compiled = jax.jit(lambda p, t: model.apply(p, cfg, t)).lower(params, tokens).compile()
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0]
    return float(ca["flops"])


@pytest.mark.parametrize(
    "cfg,T,B",
    [
        (ModelConfig(d_model=256, n_layers=2, n_heads=4, max_seq_len=256), 256, 4),
        (
            ModelConfig(d_model=128, n_layers=3, n_heads=2, max_seq_len=128, tie_embeddings=False),
            128,
            4,
        ),
    ],
    ids=["d256", "d128-untied"],
)
@pytest.mark.slow
def test_forward_flops_match_xla_cost_analysis(cfg, T, B):
    analytic = flops_per_token(cfg, T)["forward"] * B * T
    xla = _xla_flops(cfg, B, T)
    assert abs(analytic / xla - 1) < 0.10, (analytic, xla)


def test_flops_closed_form_and_train_is_three_forward():
    cfg = ModelConfig(d_model=96, n_layers=3, n_heads=3, d_ff=200, vocab_size=300)
    T = 77
    d, f, L, V = 96, 200, 3, 300
    # 2 FLOPs per multiply-add: weights (qkv + out + up + down), head, and q k^T + att v
    expected = 2 * L * (4 * d * d + 2 * d * f) + 2 * d * V + 2 * 2 * L * T * d
    fl = flops_per_token(cfg, T)
    assert fl["forward"] == expected
    assert fl["train"] == 3 * fl["forward"]


@pytest.mark.parametrize("T,offset", [(256, 0), (256, 1000), (100, 7)])
def test_causal_attention_matches_float64_reference(T, offset):
    rng = np.random.default_rng(4)
    B, H, K = 2, 3, 8
    q, k, v = (rng.standard_normal((B, H, T, K)).astype(np.float32) for _ in range(3))
    pos = np.broadcast_to(offset + np.arange(T), (B, T)).astype(np.int32)
    got = np.asarray(
        model.causal_attention(
            *(jnp.asarray(a) for a in (q, k, v)), jnp.asarray(pos), jnp.asarray(pos)
        )
    )
    s = np.einsum("bhtk,bhsk->bhts", q.astype(np.float64), k.astype(np.float64))
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = np.einsum("bhts,bhsk->bhtk", p / p.sum(-1, keepdims=True), v.astype(np.float64))
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)


# --------------------------------------------------------------------------- RoPE


def _rope_reference(x, pos, base):
    """float64 numpy RoPE: channel pairs (i, i + K/2) as complex numbers, times
    exp(1j * pos * base^(-2i/K))."""
    x = np.asarray(x, np.float64)
    k = x.shape[-1]
    z = x[..., : k // 2] + 1j * x[..., k // 2 :]
    theta = base ** (-2.0 * np.arange(k // 2) / k)
    rot = np.exp(1j * np.asarray(pos, np.float64)[:, :, None, None] * theta)
    out = z * rot
    return np.concatenate([out.real, out.imag], axis=-1)


def test_rope_matches_complex_rotation_reference():
    # x is [B, T, H, K]; positions [B, T, 1] broadcast over the heads axis
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 3, 16)).astype(np.float32)
    pos = np.stack([np.arange(9), np.arange(100, 109)]).astype(np.int32)
    got = np.asarray(model.rope(jnp.asarray(x), jnp.asarray(pos)[:, :, None], 10_000.0))
    np.testing.assert_allclose(got, _rope_reference(x, pos, 10_000.0), atol=2e-4, rtol=0)


def test_rope_position_zero_is_identity_and_norm_preserving():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 5, 2, 8)).astype(np.float32)
    zeros = np.zeros((1, 5), np.int32)
    np.testing.assert_allclose(
        np.asarray(model.rope(jnp.asarray(x), jnp.asarray(zeros)[:, :, None], 10_000.0)),
        x,
        atol=1e-7,
    )
    pos = np.array([[0, 1, 17, 250, 1000]], np.int32)
    y = np.asarray(model.rope(jnp.asarray(x), jnp.asarray(pos)[:, :, None], 10_000.0))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    assert not np.allclose(y[0, 2], x[0, 2], atol=1e-3)  # it really rotates


@pytest.mark.parametrize("base", [10_000.0, 500.0])
def test_rope_scores_depend_only_on_relative_position(base):
    rng = np.random.default_rng(2)
    K, H = 32, 2
    q = rng.standard_normal((1, 1, H, K)).astype(np.float32)
    k = rng.standard_normal((1, 1, H, K)).astype(np.float32)

    def score(pq, pk):
        rq = np.asarray(
            model.rope(jnp.asarray(q), jnp.full((1, 1, 1), pq, jnp.int32), base), np.float64
        )
        rk = np.asarray(
            model.rope(jnp.asarray(k), jnp.full((1, 1, 1), pk, jnp.int32), base), np.float64
        )
        return (rq * rk).sum(-1)[0, 0]  # [H]

    for p, delta in [(0, 3), (5, 0), (2, 11), (7, 1)]:
        ref = score(p, p + delta)
        for c in [1, 13, 40]:
            np.testing.assert_allclose(score(p + c, p + delta + c), ref, atol=1e-4, rtol=0)
    # and the score really does depend on the offset (else the test is vacuous)
    assert np.abs(score(0, 0) - score(0, 5)).max() > 1e-2


# --------------------------------------------------------------------------- custom-VJP linear


@pytest.mark.parametrize(
    "d_in,d_out", [(8, 24), (24, 8), (16, 16)]
)  # both weight-gradient branches
def test_linear_gradients_match_float64_reference(d_in, d_out):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, d_in)).astype(np.float32)
    w = rng.standard_normal((d_in, d_out)).astype(np.float32)
    r = rng.standard_normal((3, 5, d_out)).astype(np.float32)  # upstream gradient
    dx, dw = jax.grad(lambda x, w: (formulation.linear(x, w) * r).sum(), argnums=(0, 1))(
        jnp.asarray(x), jnp.asarray(w)
    )
    x64, w64, r64 = (a.astype(np.float64) for a in (x, w, r))
    np.testing.assert_allclose(
        np.asarray(formulation.linear(jnp.asarray(x), jnp.asarray(w))),
        x64 @ w64,
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(np.asarray(dx), r64 @ w64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(dw), np.einsum("bti,bto->io", x64, r64), rtol=1e-5, atol=1e-5
    )


def test_bf16_linear_accumulates_in_fp32_and_its_gradients_match_reference():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((4, 300)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((300, 24)), jnp.bfloat16)
    y = formulation.linear(x, w)
    assert y.dtype == jnp.float32
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)  # exactly the bf16 values
    np.testing.assert_allclose(np.asarray(y), x64 @ w64, rtol=1e-5, atol=1e-4)  # fp32 accumulation
    r = rng.standard_normal((4, 24))
    dx, dw = jax.grad(lambda x, w: (formulation.linear(x, w) * r).sum(), argnums=(0, 1))(x, w)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    r16 = np.asarray(
        jnp.asarray(r, jnp.bfloat16), np.float64
    )  # the upstream gradient is cast to bf16
    np.testing.assert_allclose(np.asarray(dx, np.float64), r16 @ w64.T, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(dw, np.float64), x64.T @ r16, rtol=1e-2, atol=1e-2)
