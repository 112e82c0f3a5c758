"""KV-cache decoding and latency measurement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jscale import latency, model, precision
from jscale.config import ModelConfig

CFG = ModelConfig(d_model=64, n_layers=2, n_heads=2, max_seq_len=48)


@pytest.fixture(scope="module")
def params():
    return model.init_params(CFG, jax.random.key(0))


@pytest.mark.parametrize("layout,rows", [("in_out", 1), ("out_in", 1), ("out_in", 4)])
# w8a8 quantizes each token's activations: a last-bit difference in a sum (the cached path adds
# the cache and the new tokens' attention separately) can flip one rounding and move the
# logits by about one activation step, ~0.5% of their scale here; fp32 checks the mechanism.
@pytest.mark.parametrize("policy,tol", [("fp32", 1e-4), ("bf16", 3e-2), ("int8", 1e-4), ("w8a8", 1e-2)])
def test_prefill_plus_decode_matches_full_forward(params, policy, tol, layout, rows):
    """Prompt of 16, a chunk of 3 against the filled cache, then one token at a time, in either
    kernel layout and with the decode tokens padded to 4 rows (batch 2 < 4), against the full
    forward pass of the training layout."""
    tok = jax.random.randint(jax.random.key(1), (2, 24), 0, 256)
    full = np.asarray(model.apply(precision.convert_params(params, policy), CFG, tok, policy=policy))
    pol = precision.get_policy(policy, kernel_layout=layout, min_rows=rows)
    q = precision.convert_params(params, pol)
    cache = model.init_cache(CFG, 2, 30, pol)
    logits, cache = model.apply_cached(q, CFG, tok[:, :16], cache, pol)
    steps = [np.asarray(logits)]
    logits, cache = model.apply_cached(q, CFG, tok[:, 16:19], cache, pol)
    steps.append(np.asarray(logits))
    for t in range(19, 24):
        logits, cache = model.apply_cached(q, CFG, tok[:, t:t + 1], cache, pol)
        steps.append(np.asarray(logits))
    inc = np.concatenate(steps, axis=1)
    assert int(cache["length"]) == 24
    scale = np.abs(full).max()
    np.testing.assert_allclose(inc, full, atol=tol * scale, rtol=0)


def test_generate_equals_greedy_rollout_of_full_forward(params):
    prompt = jax.random.randint(jax.random.key(2), (2, 10), 0, 256)
    got = np.asarray(latency.generate(params, CFG, prompt, 6))
    seq = np.asarray(prompt)
    for _ in range(6):  # independent reference: re-run the whole sequence each step
        nxt = np.asarray(model.apply(params, CFG, jnp.asarray(seq)))[:, -1].argmax(-1)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(got, seq[:, 10:])


def test_prompt_plus_generation_longer_than_max_seq_len(params):
    with pytest.raises(ValueError, match="max_seq_len"):
        latency.measure_latency(params, CFG, prompt_tokens=40, gen_tokens=9, roof={})
    with pytest.raises(ValueError, match="max_seq_len"):
        model.init_cache(CFG, 1, 49)


def test_measure_latency_statistics_and_bounds(params):
    roof = {"matmul_flops_per_s": 1e11, "read_bandwidth_bytes_per_s": 1e10, "bandwidth_bytes_per_s": 3e10}
    r = latency.measure_latency(params, CFG, "fp32", batch=2, prompt_tokens=16, gen_tokens=8, repeats=5,
                                warmup=1, roof=roof)
    assert r["n_repeats"] == 5
    for name in ("prefill_ms", "decode_ms_per_token"):
        assert 0 < r[f"{name}_min"] <= r[f"{name}_q1"] <= r[f"{name}_median"] <= r[f"{name}_q3"] <= r[f"{name}_max"]
    assert r["decode_tokens_per_s"] == pytest.approx(2 / (r["decode_ms_per_token_median"] / 1e3))
    assert r["prefill_tokens_per_s"] == pytest.approx(2 * 16 / (r["prefill_ms_median"] / 1e3))
    assert r["weight_bytes"] == 4 * model.count_params(CFG)["total"]
    assert r["kv_cache_bytes"] == 2 * CFG.n_layers * 2 * (16 + 8) * CFG.d_model * 4
    # bound from the analytic counts: decode reads all weights + the KV buffers once per step
    d, L, S = CFG.d_model, CFG.n_layers, 24
    mm = L * (4 * d * d + 2 * d * CFG.d_ff)
    mem_s = (r["weight_bytes"] + r["kv_cache_bytes"]) / 1e10
    flop_s = 2 * (2 * mm + 2 * d * 256 + 4 * L * S * d) / 1e11
    assert r["decode_bound_ms_per_token"] == pytest.approx(1e3 * max(mem_s, flop_s))
    assert r["decode_efficiency"] == pytest.approx(r["decode_bound_ms_per_token"] / r["decode_ms_per_token_median"])
    assert r["compile_prefill_s"] > 0 and r["compile_decode_s"] > 0
    assert r["xla_decode_argument_bytes"] >= r["weight_bytes"]
    # the bound uses the read-only bandwidth; the read + write probe is only reported
    assert r["roofline_read_bandwidth_bytes_per_s"] == 1e10 and r["roofline_rw_bandwidth_bytes_per_s"] == 3e10


@pytest.mark.parametrize("policy", ["fp32", "bf16", "int8", "w8a8",
                                    precision.get_policy("fp32", kernel_layout="in_out", min_rows=1)])
def test_cache_written_in_place_without_copies(params, policy):
    """The decode loop updates every K/V buffer in place: no copy of a cache-shaped buffer in
    the optimized program, for every precision in the formulation latency measures it in and
    as trained (reading the buffer after writing it made XLA:CPU copy each one 4 times per
    step, ~17% of a 1e8-parameter decode step)."""
    import re
    pol = latency.inference_policy(policy)
    q = precision.convert_params(params, pol)
    tok, cache = latency.prefill(q, CFG, jnp.zeros((1, 16), jnp.int32), 8, pol)
    hlo = latency.decode.lower(q, cache, tok, cfg=CFG, gen_tokens=8, policy=pol).compile().as_text()
    k = cache["layers"][0]["k"]
    dt, shape = {"float32": "f32", "bfloat16": "bf16"}[k.dtype.name], ",".join(map(str, k.shape))
    assert re.search(rf"{dt}\[{shape}\]", hlo)  # the cache is in the program...
    assert not re.search(rf"= {dt}\[{shape}\]\S* copy\(", hlo)  # ...and never copied


def test_inference_formulation_choice():
    best = (latency.FASTEST_LAYOUT["cpu"]["w8a8"], latency.FASTEST_ROWS["cpu"]["w8a8"][latency.FASTEST_LAYOUT["cpu"]["w8a8"]])
    p = latency.inference_policy("w8a8", platform="cpu")
    assert (p.kernel_layout, p.min_rows, p.fmt) == (*best, "w8a8")
    p = latency.inference_policy("fp32", platform="tpu")  # not measured there: as trained
    assert (p.kernel_layout, p.min_rows) == ("in_out", 1)
    p = latency.inference_policy("bf16", "in_out", np.int64(3), platform="cpu")
    assert (p.kernel_layout, p.min_rows) == ("in_out", 3)
    # an explicit layout gets the rows measured best for that layout
    p = latency.inference_policy("bf16", "in_out", platform="cpu")
    assert p.min_rows == latency.FASTEST_ROWS["cpu"]["bf16"]["in_out"]
    # models too small for padding to pay run unpadded
    small = ModelConfig(d_model=64, n_layers=2, n_heads=2, max_seq_len=48)  # 64 x 256 weights
    big = ModelConfig(d_model=128, n_layers=1, n_heads=2, max_seq_len=48)   # 128 x 512 = 2^16
    assert latency.inference_policy("w8a8", platform="cpu", cfg=small).min_rows == 1
    assert latency.inference_policy("w8a8", platform="cpu", cfg=big).min_rows == best[1]
    assert latency.inference_policy("w8a8", min_rows=4, platform="cpu", cfg=small).min_rows == 4
    # a Policy that sets its own layout / rows keeps them under "auto"
    own = precision.get_policy("w8a8", kernel_layout="in_out", min_rows=2)
    p = latency.inference_policy(own, platform="cpu")
    assert (p.kernel_layout, p.min_rows) == ("in_out", 2)
    with pytest.raises(ValueError, match="kernel_layout"):
        latency.measure_latency({}, CFG, kernel_layout="columns", roof={})
    with pytest.raises(ValueError, match="min_rows"):
        latency.measure_latency({}, CFG, min_rows=0, roof={})
    with pytest.raises(ValueError, match="read_bandwidth_bytes_per_s"):  # before any compile
        latency.measure_latency({}, CFG, prompt_tokens=8, gen_tokens=2, roof={"matmul_flops_per_s": 1e9})


def test_measured_formulation_is_recorded(params):
    roof = {"matmul_flops_per_s": 1e11, "read_bandwidth_bytes_per_s": 1e10}
    for layout, rows in (("in_out", 1), ("out_in", 4)):
        r = latency.measure_latency(params, CFG, "fp32", prompt_tokens=8, gen_tokens=2, repeats=1, warmup=0,
                                    roof=roof, kernel_layout=layout, min_rows=rows)
        assert (r["kernel_layout"], r["matmul_min_rows"]) == (layout, rows)


def test_bound_charges_each_part_at_its_own_matmul_rate(params):
    # distinct, made-up rates so that every part's rate shows in the bound
    roof = {"matmul_flops_per_s": 1e9, "matmul_bf16_flops_per_s": 4e9, "matmul_int8_flops_per_s": 16e9,
            "read_bandwidth_bytes_per_s": 1e15}  # so the bound is compute time
    d, f, L, V, S = CFG.d_model, CFG.d_ff, CFG.n_layers, CFG.vocab_size, 16 + 4
    proj = L * 2 * (4 * d * d + 2 * d * f)  # FLOPs per token of the block projections
    head, att = 2 * d * V, 4 * L * S * d
    expect = {"fp32": (proj + head + att) / 1e9,
              "bf16": (proj + head + att) / 4e9,           # everything in bf16, attention too
              "int8": (proj + head + att) / 1e9,           # weight-only runs fp32 matmuls
              "w8a8": proj / 16e9 + (head + att) / 1e9}    # head (embedding) and attention stay fp32
    for pol, per_token_s in expect.items():
        r = latency.measure_latency(params, CFG, pol, batch=1, prompt_tokens=16, gen_tokens=4, repeats=1,
                                    warmup=0, roof=roof)
        assert r["decode_bound_kind"] == "compute"
        assert r["decode_bound_ms_per_token"] == pytest.approx(1e3 * per_token_s, rel=1e-9), pol
        assert r["prefill_bound_ms"] == pytest.approx(1e3 * 16 * per_token_s, rel=1e-9), pol
        assert r["kv_cache_bytes"] == 2 * L * S * d * (2 if pol == "bf16" else 4)


def test_roofline_probes_report_consistent_statistics():
    from jscale import roofline
    m = roofline.measure_matmul_flops(128, repeats=3, dtype="bf16")
    assert m["matmul_n"] == 128
    assert 0 < m["matmul_bf16_flops_per_s_min"] <= m["matmul_bf16_flops_per_s"] <= m["matmul_bf16_flops_per_s_max"]
    r = roofline.measure_read_bandwidth(mib=8, repeats=3)
    assert r["read_bandwidth_method"] in ("xla_sum", "xla_row_sum", "numpy_threaded_dot")
    assert 0 < r["read_bandwidth_bytes_per_s_min"] <= r["read_bandwidth_bytes_per_s"] <= r["read_bandwidth_bytes_per_s_max"]
