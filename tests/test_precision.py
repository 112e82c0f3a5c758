"""Precision policies: quantization maths against float64 references, conversion, bytes,
and the loss each precision costs a briefly trained model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jscale import data, formulation, model, precision, train
from jscale.config import ModelConfig, TrainConfig, count_params
from jscale.evaluate import compare_precisions

# the model jitted whole: op-by-op dispatch of a forward pass costs more than compiling it
APPLY = jax.jit(model.apply, static_argnames=("cfg", "policy", "form"))


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(precision.PrecisionError, match="fp32, bf16, int8, w8a8, int4, fp8"):
        precision.get_policy("int2")
    with pytest.raises(precision.PrecisionError, match="unknown layer name.*valid layers are"):
        precision.get_policy("int8", layers=["qkv", "attn"])
    assert precision.get_policy("int8", layers=["qkv", "embed"]).layers == {"qkv", "embed"}


@pytest.mark.parametrize("axis", [0, 1])
def test_quantize_dequantize_error_at_most_half_a_step(axis):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 48)) * rng.uniform(0.01, 3, size=(1, 48) if axis == 0 else (64, 1))
    w[:, 5 if axis == 0 else 0] = 0.0  # an all-zero channel (axis 0) / mixed row (axis 1)
    q, s = precision.quantize(jnp.asarray(w, jnp.float32), axis=axis)
    assert q.dtype == jnp.int8 and int(jnp.abs(q).max()) <= 127
    s64 = np.expand_dims(np.asarray(s, np.float64), axis)
    # the independent reference: a step is absmax / 127 of each channel, computed in float64
    step = np.expand_dims(np.abs(w).max(axis=axis), axis) / 127
    np.testing.assert_allclose(s64, np.where(step == 0, 1.0, step), rtol=1e-6)
    err = np.abs(np.asarray(q, np.float64) * s64 - w)
    assert np.all(err <= s64 / 2 * (1 + 1e-5) + 1e-7)
    top = np.squeeze(step, axis)  # per-channel absmax / 127 in float64
    assert np.all(np.abs(np.asarray(q)).max(axis=axis) == np.where(top > 0, 127, 0))


def test_int8_matmuls_match_float64_reference_within_their_bounds():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7, 40)).astype(np.float32)
    w = (rng.standard_normal((40, 24)) * 0.2).astype(np.float32)
    q, s = precision.quantize(jnp.asarray(w), axis=0)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    s64 = np.asarray(s, np.float64)
    exact = x64 @ w64

    # weight-only: error comes only from the weights: |dy_j| <= sum_i |x_i| * s_j / 2
    y = np.asarray(precision.matmul(jnp.asarray(x), q, s, "int8"), np.float64)
    bound = np.abs(x64) @ np.broadcast_to(s64 / 2, w.shape)
    assert np.all(np.abs(y - exact) <= bound * (1 + 1e-4) + 1e-5)
    assert np.abs(y - exact).max() > 0  # it really is quantized

    # w8a8: the int32 accumulation is exact, so the result equals (xq @ wq) * sx * sw with
    # per-token absmax quantization of x, done here independently in float64 numpy
    xs64 = np.abs(x64).max(-1) / 127
    xq64 = np.clip(np.round(x64 / xs64[..., None]), -127, 127)
    wq64 = np.asarray(q, np.float64)
    y8 = np.asarray(precision.matmul(jnp.asarray(x), q, s, "w8a8"), np.float64)
    ref = (xq64 @ wq64) * xs64[..., None] * s64
    np.testing.assert_allclose(y8, ref, rtol=1e-6, atol=1e-6)
    # ... and stays within the quantization bound of the exact product:
    # |x w - xq sx wq sw| <= sum_i (|x_i| sw/2 + |w_i| sx/2 + sx sw / 4)
    sx = xs64[..., None]
    bound8 = (
        np.abs(x64) @ np.broadcast_to(s64 / 2, w.shape)
        + (sx / 2) * np.abs(w64).sum(0)
        + w.shape[0] * sx * s64 / 4
    )
    assert np.all(np.abs(y8 - exact) <= bound8 * (1 + 1e-4) + 1e-5)


def test_int8_matmul_uses_integer_accumulation():
    q = jnp.ones((4, 2), jnp.int8)
    hlo = (
        jax.jit(lambda x: precision.matmul(x, q, jnp.ones(2), "w8a8"))
        .lower(jnp.ones((3, 4)))
        .as_text()
    )
    assert "xi8>" in hlo and "xi32>" in hlo  # int8 operands, int32 accumulator (StableHLO types)


CFG = ModelConfig(d_model=64, n_layers=2, n_heads=1, max_seq_len=128)


def test_converted_bytes_shrink_as_they_must():
    p = model.init_params(CFG, jax.random.key(0))
    fp32 = precision.param_bytes(p)
    assert fp32 == 4 * count_params(CFG)["total"]
    d, f, L, V = CFG.d_model, CFG.d_ff, CFG.n_layers, CFG.vocab_size
    matrices = L * (4 * d * d + 2 * d * f) + V * d
    scales = L * (3 * d + d + f + d) + V
    norms = (2 * L + 1) * d
    # bf16: 2 bytes per matrix entry; the norm scales stay fp32 -> about half
    assert precision.param_bytes(precision.convert_params(p, "bf16")) == 2 * matrices + 4 * norms
    assert abs((2 * matrices + 4 * norms) / fp32 - 0.5) < 0.01
    # int8 on all layers: 1 byte per matrix entry + 4-byte scale per output channel; norms stay fp32
    every = precision.get_policy("int8", layers=precision.LAYERS)
    assert (
        precision.param_bytes(precision.convert_params(p, every))
        == matrices + 4 * scales + 4 * norms
    )
    assert 0.25 < (matrices + 4 * scales + 4 * norms) / fp32 < 0.3  # about a quarter, plus scales
    # the default int8 keeps the embedding fp32
    assert precision.param_bytes(precision.convert_params(p, "int8")) == (
        matrices - V * d + 4 * (scales - V) + 4 * norms + 4 * V * d
    )


# fp8a8 stores and transposes exactly as fp8 (its activations are quantized at run time)
@pytest.mark.parametrize("name", [p for p in precision.POLICIES if p != "fp8a8"])
def test_out_in_layout_stores_each_kernel_transposed_and_computes_the_same(name):
    p = model.init_params(CFG, jax.random.key(0))
    a = precision.convert_params(p, name)
    out_in = formulation.Formulation("out_in", 1)
    b = formulation.arrange(a, out_in)
    for layer in ("qkv", "out", "up", "down"):
        ka, kb = a["block_0"][layer], b["block_0"][layer]
        np.testing.assert_array_equal(np.asarray(kb["kernel"]), np.asarray(ka["kernel"]).T)
        if "scale" in ka:  # still one scale per output channel
            np.testing.assert_array_equal(np.asarray(kb["scale"]), np.asarray(ka["scale"]))
    np.testing.assert_array_equal(
        np.asarray(b["embed"]["embedding"]), np.asarray(a["embed"]["embedding"])
    )
    tok = jax.random.randint(jax.random.key(1), (2, 12), 0, CFG.vocab_size)
    la = np.asarray(APPLY(a, CFG, tok, policy=name))
    lb = np.asarray(APPLY(b, CFG, tok, policy=name, form=out_in))
    np.testing.assert_allclose(lb, la, atol=1e-5 * np.abs(la).max(), rtol=0)
    with pytest.raises(
        precision.PrecisionError, match="kernel_layout='in_out'.*formulation.arrange"
    ):
        APPLY(b, CFG, tok, policy=name)  # laid out for out_in, run as trained: named


def test_quantized_policy_refuses_unconverted_params():
    p = model.init_params(CFG, jax.random.key(0))
    with pytest.raises(precision.PrecisionError, match="convert_params"):
        APPLY(p, CFG, jnp.zeros((1, 8), jnp.int32), policy="int8")


def test_fp32_policy_is_the_model_and_other_policies_only_perturb_it():
    p = model.init_params(CFG, jax.random.key(1))
    tok = jax.random.randint(jax.random.key(2), (2, 32), 0, 256)
    ref = np.asarray(APPLY(p, CFG, tok), np.float64)
    for name, tol in [("bf16", 0.05), ("int8", 0.05), ("w8a8", 0.08)]:
        z = np.asarray(APPLY(precision.convert_params(p, name), CFG, tok, policy=name), np.float64)
        rel = np.linalg.norm(z - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert 0 < rel.max() < tol, name


@pytest.fixture(scope="module")
def trained(corpus):
    tc = TrainConfig(steps=150, batch_size=16, seq_len=128, lr=3e-3, eval_tokens=32768)
    return train.train(CFG, tc, corpus, progress=False), data.eval_batches(corpus.test, 128, 32768)


@pytest.mark.slow
@pytest.mark.xdist_group("trained")  # one worker builds the module fixture
def test_precision_loss_costs_on_a_trained_model(trained):
    r, ev = trained
    df = compare_precisions(r.params, CFG, ev).set_index("inference_precision")
    assert list(df.index) == ["fp32", "bf16", "int8", "w8a8"]
    fp32 = df.loc["fp32", "eval_loss_nats"]
    assert fp32 == pytest.approx(r.eval["eval_loss_nats"], rel=1e-9)  # same sequences, same model
    assert abs(df.loc["bf16", "eval_loss_nats"] / fp32 - 1) < 0.01
    for name in ("int8", "w8a8"):
        assert abs(df.loc[name, "eval_loss_nats"] / fp32 - 1) < 0.03, name
    for name in ("bf16", "int8", "w8a8"):
        assert 0 < df.loc[name, "logit_rel_err_mean"] <= df.loc[name, "logit_rel_err_max"] < 0.1
    assert df.loc["bf16", "param_bytes_vs_fp32"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
@pytest.mark.xdist_group("trained")  # one worker builds the module fixture
def test_bf16_training_tracks_fp32_training(corpus, trained):
    r32, _ = trained
    tc = TrainConfig(
        steps=150, batch_size=16, seq_len=128, lr=3e-3, eval_tokens=32768, compute="bf16"
    )
    r16 = train.train(CFG, tc, corpus, progress=False)
    assert jax.tree.leaves(r16.params)[0].dtype == jnp.float32  # fp32 master weights
    assert abs(r16.eval["eval_loss_nats"] / r32.eval["eval_loss_nats"] - 1) < 0.02
    assert not np.array_equal(r16.losses_nats, r32.losses_nats)  # really a different computation


def test_every_layer_int8_including_tied_embedding_runs_close_to_fp32():
    p = model.init_params(CFG, jax.random.key(3))
    tok = jax.random.randint(jax.random.key(4), (2, 32), 0, 256)
    every = precision.get_policy("int8", layers=precision.LAYERS)
    q = precision.convert_params(p, every)
    assert q["embed"]["embedding"].dtype == jnp.int8 and q["embed"]["scale"].shape == (
        CFG.vocab_size,
    )
    ref = np.asarray(APPLY(p, CFG, tok), np.float64)
    z = np.asarray(APPLY(q, CFG, tok, policy=every), np.float64)
    rel = np.linalg.norm(z - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert 0 < rel.max() < 0.05
    # the head under this policy is x @ (q_E * s_E)^T exactly: dequantized in float64 here
    e64 = (
        np.asarray(q["embed"]["embedding"], np.float64)
        * np.asarray(q["embed"]["scale"], np.float64)[:, None]
    )
    np.testing.assert_allclose(
        np.abs(e64 - np.asarray(p["embed"]["embedding"], np.float64)).max(0),
        np.zeros(CFG.d_model),
        atol=np.asarray(q["embed"]["scale"]).max() / 2 + 1e-7,
    )


@pytest.mark.slow
@pytest.mark.xdist_group("trained")  # one worker builds the module fixture
def test_custom_layer_policies_are_measured_and_labelled(trained):
    r, ev = trained
    every = precision.get_policy("int8", layers=precision.LAYERS)
    df = compare_precisions(r.params, CFG, ev[:16], policies=["int8", every]).set_index(
        "inference_precision"
    )
    assert list(df.index) == ["fp32", "int8", "int8[down,embed,head,out,qkv,up]"]
    assert df.loc["int8[down,embed,head,out,qkv,up]", "param_bytes"] < df.loc["int8", "param_bytes"]


# ----------------------------------------------------------------------------- int4 and fp8


def test_int4_packing_round_trips_in_both_layouts():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.integers(-8, 8, size=(64, 24)), jnp.int8)
    packed = precision.pack_int4(q)
    assert packed.dtype == jnp.uint8 and packed.shape == (32, 24)  # half a byte per weight
    np.testing.assert_array_equal(np.asarray(precision.unpack_int4(packed)), np.asarray(q))
    # laid out out_in (rows are output channels): unpacked along the input axis, axis 1
    np.testing.assert_array_equal(
        np.asarray(precision.unpack_int4(packed.T, axis=1)), np.asarray(q).T
    )
    # nibble order: input 2i low, 2i + 1 high (two's complement)
    two = precision.pack_int4(jnp.asarray([[3], [-2]], jnp.int8))
    assert int(two[0, 0]) == 3 | (14 << 4)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_group_quantization_error_at_most_half_a_step(group):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((256, 40)) * rng.uniform(0.1, 3, size=(256, 1))  # rows of other scale
    packed, scale = precision.quantize_int4(jnp.asarray(w, jnp.float32), group)
    assert scale.shape == (256 // group, 40)
    q = np.asarray(precision.unpack_int4(packed), np.float64)
    assert q.min() >= -8 and q.max() <= 7
    s = np.repeat(np.asarray(scale, np.float64), group, axis=0)
    err = np.abs(w - q * s)
    assert np.all(err <= s / 2 + 8 * 2**-24 * 7.5 * s)  # half a step, up to float32 rounding
    # the scale is each group's absmax / 7.5: the grid spans the whole int4 range (float64)
    ref = np.abs(w.reshape(256 // group, group, 40)).max(axis=1) / 7.5
    np.testing.assert_allclose(np.asarray(scale), ref, rtol=1e-6)


def test_fp8_quantization_keeps_three_mantissa_bits():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((128, 16))
    q, scale = precision.quantize_fp8(jnp.asarray(w, jnp.float32), axis=0)
    assert q.dtype == jnp.float8_e4m3fn and scale.shape == (16,)
    np.testing.assert_allclose(np.asarray(scale), np.abs(w).max(axis=0) / 448, rtol=1e-6)
    back = np.asarray(q, np.float64) * np.asarray(scale, np.float64)
    normal = np.abs(w / np.asarray(scale)) >= 2**-6  # e4m3's smallest normal
    # round to nearest with 3 mantissa bits: relative error at most 2^-4
    assert np.all(np.abs(back - w)[normal] <= 2**-4 * np.abs(w)[normal] * (1 + 1e-6))


@pytest.mark.parametrize("fmt", ["int4-g32", "fp8", "fp8a8"])
def test_new_format_matmuls_match_float64_references(fmt):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 64))
    w = rng.standard_normal((64, 48))
    if fmt.startswith("int4"):
        packed, scale = precision.quantize_int4(jnp.asarray(w, jnp.float32), 32)
        wq = np.asarray(precision.unpack_int4(packed), np.float64) * np.repeat(
            np.asarray(scale, np.float64), 32, axis=0
        )
        ref, stored = x @ wq, packed
    else:
        stored, scale = precision.quantize_fp8(jnp.asarray(w, jnp.float32), axis=0)
        wq = np.asarray(stored, np.float64) * np.asarray(scale, np.float64)
        if fmt == "fp8":
            ref = x @ wq
        else:  # activations to fp8 per token too
            xq, xs = precision.quantize_fp8(jnp.asarray(x, jnp.float32), axis=-1)
            ref = (np.asarray(xq, np.float64) * np.asarray(xs, np.float64)[:, None]) @ wq
    got = np.asarray(precision.matmul(jnp.asarray(x, jnp.float32), stored, scale, fmt))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # the quantization is real: the result differs from the float64 product of w
    assert np.abs(got - x @ w).max() > 1e-3


def test_int4_and_fp8_bytes_are_exact():
    p = model.init_params(CFG, jax.random.key(0))
    d, f, L, V = CFG.d_model, CFG.d_ff, CFG.n_layers, CFG.vocab_size
    block = L * (4 * d * d + 2 * d * f)  # block projection weights
    fixed = 4 * (V * d + (2 * L + 1) * d)  # fp32 embedding and norm scales
    # int4-g64: half a byte per weight, a 4-byte scale per 64 inputs per output channel
    scales = L * (d // 64 * (3 * d + d + f) + f // 64 * d)
    assert precision.param_bytes(precision.convert_params(p, "int4")) == (
        block // 2 + 4 * scales + fixed
    )
    # fp8: one byte per weight, a 4-byte scale per output channel
    out_channels = L * (3 * d + d + f + d)
    for name in ("fp8", "fp8a8"):
        assert precision.param_bytes(precision.convert_params(p, name)) == (
            block + 4 * out_channels + fixed
        )


@pytest.mark.parametrize("name", ["int4", "fp8", "fp8a8"])
def test_new_formats_refuse_unconverted_weights_and_non_block_layers(name):
    p = model.init_params(CFG, jax.random.key(0))
    with pytest.raises(precision.PrecisionError, match="convert_params"):
        APPLY(p, CFG, jnp.zeros((1, 8), jnp.int32), policy=name)
    with pytest.raises(precision.PrecisionError, match="block projections only"):
        precision.get_policy(name, layers=["qkv", "embed"])
    assert precision.get_policy("int4-g32").bits == 4 and precision.get_policy(name).bits in (4, 8)
    with pytest.raises(precision.PrecisionError, match="int4-g32"):
        precision.get_policy("int4-g48")
