"""KV-cache decoding and latency measurement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jscale import autotune, formulation, latency, model, precision, schema
from jscale.config import ModelConfig, count_params

CFG = ModelConfig(d_model=64, n_layers=2, n_heads=2, max_seq_len=48)
# the model jitted whole (op-by-op dispatch of the reference passes costs more than compiling)
APPLY = jax.jit(model.apply, static_argnames=("cfg", "policy", "form"))
APPLY_CACHED = jax.jit(model.apply_cached, static_argnames=("cfg", "policy", "form"))


@pytest.fixture(scope="module")
def params():
    return model.init_params(CFG, jax.random.key(0))


LAYOUTS = [("in_out", 1), ("out_in", 1), ("out_in", 4)]
# w8a8 quantizes each token's activations: a last-bit difference in a sum (the cached path adds
# the cache and the new tokens' attention separately) can flip one rounding and move the
# logits by about one activation step, ~0.5% of their scale here; fp32 checks the mechanism.
# fp8 and fp8a8 cast like int8 and w8a8 in every layout: two layouts cover them.
DECODE_CASES = (
    [(p, t, *lr) for p, t in (("fp32", 1e-4), ("int4", 1e-4)) for lr in LAYOUTS]
    + [
        pytest.param(p, t, *lr, marks=pytest.mark.slow)
        for p, t in (("bf16", 3e-2), ("int8", 1e-4), ("w8a8", 1e-2))
        for lr in LAYOUTS
    ]
    + [
        pytest.param(p, t, *lr, marks=pytest.mark.slow)
        for p, t in (("fp8", 1e-4), ("fp8a8", 2e-2))
        for lr in (LAYOUTS[0], LAYOUTS[2])
    ]
)


@pytest.mark.parametrize("policy,tol,layout,rows", DECODE_CASES)
def test_prefill_plus_decode_matches_full_forward(params, policy, tol, layout, rows):
    """Prompt of 16, a chunk of 3 against the filled cache, then one token at a time, in either
    kernel layout and with the decode tokens padded to 4 rows (batch 2 < 4), against the full
    forward pass of the training layout."""
    tok = jax.random.randint(jax.random.key(1), (2, 24), 0, 256)
    full = np.asarray(APPLY(precision.convert_params(params, policy), CFG, tok, policy=policy))
    form = formulation.Formulation(layout, rows)
    q = formulation.arrange(precision.convert_params(params, policy), form)
    cache = model.init_cache(CFG, 2, 30, policy)
    logits, cache = APPLY_CACHED(q, CFG, tok[:, :16], cache, policy, form)
    steps = [np.asarray(logits)]
    logits, cache = APPLY_CACHED(q, CFG, tok[:, 16:19], cache, policy, form)
    steps.append(np.asarray(logits))
    for t in range(19, 24):
        logits, cache = APPLY_CACHED(q, CFG, tok[:, t : t + 1], cache, policy, form)
        steps.append(np.asarray(logits))
    inc = np.concatenate(steps, axis=1)
    assert int(cache["length"]) == 24
    scale = np.abs(full).max()
    np.testing.assert_allclose(inc, full, atol=tol * scale, rtol=0)


@pytest.mark.slow
def test_generate_equals_greedy_rollout_of_full_forward(params):
    prompt = jax.random.randint(jax.random.key(2), (2, 10), 0, 256)
    got = np.asarray(latency.generate(params, CFG, prompt, 6))
    # independent reference: the whole sequence through the full forward pass at every step, in
    # a fixed buffer of 16 (causal: the logits at t do not depend on the unfilled tail)
    seq = np.zeros((2, 16), np.int32)
    seq[:, :10] = np.asarray(prompt)
    for t in range(10, 16):
        seq[:, t] = np.asarray(APPLY(params, CFG, jnp.asarray(seq)))[:, t - 1].argmax(-1)
    np.testing.assert_array_equal(got, seq[:, 10:])


def test_prompt_plus_generation_longer_than_max_seq_len(params):
    with pytest.raises(ValueError, match="max_seq_len"):
        latency.measure_latency(params, CFG, prompt_tokens=40, gen_tokens=9, roof={})
    with pytest.raises(ValueError, match="max_seq_len"):
        model.init_cache(CFG, 1, 49)


def test_measure_latency_statistics_and_bounds(params):
    roof = {
        "matmul_flops_per_s": 1e11,
        "read_bandwidth_bytes_per_s": 1e10,
        "bandwidth_bytes_per_s": 3e10,
    }
    r = latency.measure_latency(
        params, CFG, "fp32", batch=2, prompt_tokens=16, gen_tokens=8, repeats=5, warmup=1, roof=roof
    )
    assert r["latency_repeats"] == 5 and r["latency_batch"] == 2
    # every latency column (the sweep adds latency_from_point_id and latency_weights)
    assert set(r) == set(schema.columns("latency")) - {"latency_from_point_id", "latency_weights"}
    for name in ("prefill_ms", "decode_ms_per_token"):
        assert (
            0
            < r[f"{name}_min"]
            <= r[f"{name}_q1"]
            <= r[f"{name}_median"]
            <= r[f"{name}_q3"]
            <= r[f"{name}_max"]
        )
    assert r["decode_tokens_per_s"] == pytest.approx(2 / (r["decode_ms_per_token_median"] / 1e3))
    assert r["prefill_tokens_per_s"] == pytest.approx(2 * 16 / (r["prefill_ms_median"] / 1e3))
    assert r["weight_bytes"] == 4 * count_params(CFG)["total"]
    assert r["kv_cache_bytes"] == 2 * CFG.n_layers * 2 * (16 + 8) * CFG.d_model * 4
    # bound from the analytic counts: decode reads all weights + the KV buffers once per step
    d, L, S = CFG.d_model, CFG.n_layers, 24
    mm = L * (4 * d * d + 2 * d * CFG.d_ff)
    mem_s = (r["weight_bytes"] + r["kv_cache_bytes"]) / 1e10
    flop_s = 2 * (2 * mm + 2 * d * 256 + 4 * L * S * d) / 1e11
    assert r["decode_bound_ms_per_token"] == pytest.approx(1e3 * max(mem_s, flop_s))
    assert r["decode_efficiency"] == pytest.approx(
        r["decode_bound_ms_per_token"] / r["decode_ms_per_token_median"]
    )
    assert r["compile_prefill_s"] > 0 and r["compile_decode_s"] > 0
    assert r["xla_decode_argument_bytes"] >= r["weight_bytes"]
    # the bound uses the read-only bandwidth; the read + write probe is only reported
    assert (
        r["roofline_read_bandwidth_bytes_per_s"] == 1e10
        and r["roofline_rw_bandwidth_bytes_per_s"] == 3e10
    )


@pytest.mark.parametrize(
    "policy,form",
    [("fp32", None), ("w8a8", None)]
    + [pytest.param(*c, marks=pytest.mark.slow) for c in (("bf16", None), ("int8", None))]
    + [pytest.param("fp32", formulation.TRAINED, marks=pytest.mark.slow)],
)
def test_cache_written_in_place_without_copies(params, policy, form):
    """The decode loop updates every K/V buffer in place: no copy of a cache-shaped buffer in
    the optimized program, for every precision in the formulation latency measures it in and
    as trained (reading the buffer after writing it made XLA:CPU copy each one 4 times per
    step, ~17% of a 1e8-parameter decode step)."""
    import re

    pol = precision.get_policy(policy)
    form = form or autotune.choose(pol)
    q = formulation.arrange(precision.convert_params(params, pol), form)
    tok, cache = latency.prefill(q, CFG, jnp.zeros((1, 16), jnp.int32), 8, pol, form=form)
    hlo = (
        latency.decode.lower(q, cache, tok, cfg=CFG, gen_tokens=8, policy=pol, form=form)
        .compile()
        .as_text()
    )
    k = cache["layers"][0]["k"]
    dt, shape = {"float32": "f32", "bfloat16": "bf16"}[k.dtype.name], ",".join(map(str, k.shape))
    assert re.search(rf"{dt}\[{shape}\]", hlo)  # the cache is in the program...
    assert not re.search(rf"= {dt}\[{shape}\]\S* copy\(", hlo)  # ...and never copied


def _rank(names):
    """Candidate timings in which ``names`` come first, in that order (ms 1, 2, ...)."""
    order = list(names) + [f.name for f in formulation.CANDIDATES if f.name not in names]
    return {n: {"ms": 1.0 + i} for i, n in enumerate(order)}


def test_inference_formulation_choice(tmp_path, monkeypatch):
    """The choice is the fastest timed candidate for (format, shape class), agreeing with
    what a config pins; nothing is a per-CPU table."""
    monkeypatch.setenv("JSCALE_CACHE_DIR", str(tmp_path))
    F = formulation.Formulation
    small = ModelConfig(d_model=64, n_layers=2, n_heads=2, max_seq_len=48)  # 64 x 256 weights
    big = ModelConfig(d_model=128, n_layers=1, n_heads=2, max_seq_len=48)  # 128 x 512 = 2^16
    assert formulation.shape_class(small) == "small"
    assert formulation.shape_class(big) == formulation.shape_class(None) == "large"
    autotune.store("w8a8", "large", _rank(["out_in:4", "in_out:1"]))
    autotune.store("w8a8", "small", _rank(["in_out:1"]))
    form, info = autotune.choice("w8a8", big)
    assert form == F("out_in", 4)
    assert info == {"formulation_source": "autotune", "formulation_class": "large"}
    assert autotune.choose("w8a8", small) == formulation.TRAINED
    # a pinned layout: the fastest candidate with that layout
    assert autotune.choose("w8a8", big, kernel_layout="in_out") == F("in_out", 1)
    # a pin no candidate has: the fastest, with the pinned field replaced
    form, info = autotune.choice("w8a8", big, min_rows=np.int64(3))
    assert form == F("out_in", 3) and info["formulation_source"] == "autotune + pinned"
    # both pinned: no timing is consulted
    form, info = autotune.choice("bf16", big, kernel_layout="in_out", min_rows=2)
    assert form == F("in_out", 2) and info["formulation_source"] == "pinned"
    assert F.parse("out_in:4") == F("out_in", 4) and F("out_in", 4).name == "out_in:4"
    with pytest.raises(ValueError, match="kernel_layout"):
        autotune.choose("fp32", kernel_layout="columns")
    with pytest.raises(ValueError, match="min_rows"):
        autotune.choose("fp32", min_rows=0)
    with pytest.raises(ValueError, match="kernel_layout must be one of in_out, out_in"):
        F("columns", 1)
    with pytest.raises(ValueError, match="min_rows"):
        F("in_out", 0)
    with pytest.raises(ValueError, match="read_bandwidth_bytes_per_s"):  # before any compile
        latency.measure_latency(
            {}, CFG, prompt_tokens=8, gen_tokens=2, roof={"matmul_flops_per_s": 1e9}
        )


def test_measured_formulation_is_recorded(params):
    roof = {"matmul_flops_per_s": 1e11, "read_bandwidth_bytes_per_s": 1e10}
    for layout, rows in (("in_out", 1), ("out_in", 4)):
        r = latency.measure_latency(
            params,
            CFG,
            "fp32",
            prompt_tokens=8,
            gen_tokens=2,
            repeats=1,
            warmup=0,
            roof=roof,
            form=formulation.Formulation(layout, rows),
        )
        assert (r["kernel_layout"], r["matmul_min_rows"]) == (layout, rows)


def test_autotune_times_every_candidate_once_and_caches_the_fastest(tmp_path, monkeypatch):
    """A first use times every candidate on the real decode step and keeps the fastest (the
    argmin of what it measured); the second use reads the cache, keyed by this device; another
    device key measures again."""
    monkeypatch.setenv("JSCALE_CACHE_DIR", str(tmp_path))
    ms = autotune.timings("fp32", "small")
    assert set(ms) == {f.name for f in formulation.CANDIDATES}
    assert all(np.isfinite(v) and v > 0 for v in ms.values())
    entry = autotune.cached()["fp32|small"]
    assert entry["choice"] == min(ms, key=ms.get)
    assert (entry["d_model"], entry["layers"]) == autotune.REPRESENTATIVE["small"]
    assert autotune.choose("fp32", SMALL) == F_(entry["choice"])

    def never(*a, **k):
        raise AssertionError("timed again")

    monkeypatch.setattr(autotune, "time_candidates", never)
    assert autotune.timings("fp32", "small") == ms  # from the cache
    monkeypatch.setattr(autotune, "device_key", lambda: "another|device")
    with pytest.raises(AssertionError, match="timed again"):
        autotune.timings("fp32", "small")
    table = autotune.markdown({"fp32|small": entry})
    assert f"**{ms[entry['choice']]:.3g}" in table and "| fp32 | small |" in table


SMALL = ModelConfig(d_model=64, n_layers=2, n_heads=2, max_seq_len=48)
F_ = formulation.Formulation.parse


def test_autotune_large_model_streams_from_memory():
    """The large class is timed on weights of at least 1.5x the cache in every format."""
    cache = 64 * 2**20
    for fmt, b in (("fp32", 4), ("bf16", 2), ("int8", 1), ("w8a8", 1)):
        d, layers = autotune.representative("large", fmt, cache)
        assert 12 * d * d * layers * b >= 1.5 * cache
        assert (d, layers) == (864, max(8, -(-int(1.5 * cache) // (12 * 864 * 864 * b))))


def test_stored_roofline_is_returned_without_measuring(tmp_path, monkeypatch):
    from jscale import roofline

    monkeypatch.setenv("JSCALE_CACHE_DIR", str(tmp_path))

    def measured(*a, **k):
        raise AssertionError("roofline() measured although a roofline was stored")

    monkeypatch.setattr(roofline, "measure_matmul_flops", measured)
    rates = {k: 1e9 * (i + 1) for i, k in enumerate(roofline.STORED_RATES)}
    r = roofline.store(rates)
    assert roofline.roofline() == r
    assert r["read_bandwidth_bytes_per_s"] == 5e9 == r["read_bandwidth_bytes_per_s_max"]
    assert r["device_platform"] == jax.default_backend() and r["measured_at"] == "stored"
    with pytest.raises(ValueError, match="lack matmul_int8_flops_per_s"):
        roofline.store({k: v for k, v in rates.items() if "int8" not in k})
