"""The latency ladder: its shapes, random weights, memory check, config, records, and the laws
fitted on it."""

import math

import jax
import numpy as np
import pandas as pd
import pytest

from jscale import analysis, figures, ladder, memory, model, results, schema
from jscale.config import ConfigError, ModelConfig, count_params
from jscale.sweep_config import parse_sweep

N = schema.N

BASE = """
name = "lad"
precisions = ["fp32"]
[sizes]
params_non_embedding = [2e3]
[tokens]
fixed = 8192
[train]
batch_size = 4
seq_len = 32
eval_tokens = 512
[latency]
prompt_tokens = 8
gen_tokens = 4
repeats = 2
warmup = 1
"""


def test_shapes_grow_smoothly_and_land_near_their_targets():
    """Depth never decreases with N (round((N / 12 a^2)^(1/3))), every model is new, and the
    analytic count lands within 35% of its target from 1e5 up (the width steps by one 32-wide
    head; below, one head is a large step: within a factor 1.6)."""
    out = ladder.shapes(1e4, 1e9, 4, aspect_ratio=64.0, head_dim=32)
    depths = [cfg.n_layers for _, cfg in out]
    assert depths == sorted(depths) and depths[0] == 1
    for t, cfg in out:
        assert cfg.n_layers == max(1, round((t / (12 * 64**2)) ** (1 / 3)))
        n = count_params(cfg)["non_embedding"]
        assert abs(math.log(n / t)) < math.log(1.35 if t >= 1e5 else 1.6), (t, n)
    ns = [count_params(c)["non_embedding"] for _, c in out]
    assert ns == sorted(ns) and len(set(ns)) == len(ns)


def test_random_params_have_the_models_tree_and_fan_in_scale():
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=2, max_seq_len=16)
    p = ladder.random_params(cfg, jax.random.key(3))
    ref = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
    assert jax.tree.structure(p) == jax.tree.structure(ref)
    assert [x.shape for x in jax.tree.leaves(p)] == [x.shape for x in jax.tree.leaves(ref)]
    up = np.asarray(p["block_0"]["up"]["kernel"])  # [64, 256]: N(0, 1/64)
    assert abs(up.std() - 1 / 8) < 0.01 and abs(up.mean()) < 0.01
    assert np.all(np.asarray(p["final_norm"]["scale"]) == 1)
    same = ladder.random_params(cfg, jax.random.key(3))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(same)))


def test_memory_check_refuses_with_the_numbers():
    cfg = ladder.shapes(1e9, 1e9, 1)[0][1]
    need = memory.latency_bytes(cfg)
    assert need == memory.LATENCY_FACTOR * 4 * count_params(cfg)["total"]
    ladder.check_memory([cfg], need / memory.FRACTION * 1.01, "x")  # fits
    with pytest.raises(ConfigError, match=r"x: timing the model of .* needs about .* GiB"):
        ladder.check_memory([cfg], need, "x")
    ladder.check_memory([cfg], float("nan"), "x")  # unknown memory: no check
    top = ladder.largest_fitting(8 * 2**30)
    big = ladder.shapes(top, top, 1)[0][1]
    assert memory.latency_bytes(big) <= memory.FRACTION * 8 * 2**30
    bigger = ladder.shapes(top * 10 ** (1 / 8), top * 10 ** (1 / 8), 1)[0][1]
    assert memory.latency_bytes(bigger) > memory.FRACTION * 8 * 2**30


@pytest.mark.parametrize(
    "table, match",
    [
        ("sizes = [1e4, 3e4]\nlo = 1e4", "sizes, or lo / hi / per_decade, not both"),
        ("sizes = []", "latency.ladder.sizes"),
        ("lo = 1e4\nhi = 1e5\nper_decade = 30", "latency.ladder.per_decade"),
        ("lo = 1e4\nhi = 1e3", "latency.ladder.hi"),
        ("hi = 1e14", "latency.ladder.hi"),
        ("lo = 1e4\nhi = 1e13", "latency.ladder.hi: timing the model of"),
        ("step = 2", "latency.ladder.step"),
    ],
)
def test_bad_ladder_tables_name_the_key(table, match):
    with pytest.raises(ConfigError, match=match):
        parse_sweep(BASE + "[latency.ladder]\n" + table + "\n", out_dir="x")


def test_ladder_config_resolves_sizes_and_ranges():
    s = parse_sweep(BASE + "[latency.ladder]\nsizes = [3e4, 1e4]\n", out_dir="x")
    assert [t for t, _ in s.ladder] == [1e4, 3e4]
    assert all(cfg.max_seq_len == 12 for _, cfg in s.ladder)  # prompt + generated tokens
    s = parse_sweep(BASE + "[latency.ladder]\nlo = 1e4\nhi = 1e6\nper_decade = 2\n", out_dir="x")
    assert [round(t) for t, _ in s.ladder][0] == 10000 and s.ladder[-1][0] == pytest.approx(1e6)
    assert parse_sweep(BASE, out_dir="x").ladder == ()
    off = BASE.replace("[latency]", "[latency]\nenabled = false")
    assert parse_sweep(off + "[latency.ladder]\nsizes = [1e4]\n", out_dir="x").ladder == ()


@pytest.mark.slow
def test_sweep_times_the_ladder_once_per_size_and_precision(tmp_path, corpus):
    """The ladder's records (random weights, one per size and precision) land in ``ladder/``,
    are exported as latency_ladder.csv, load with their own schema check, and a rerun skips
    them."""
    from jscale import sweep

    s = parse_sweep(BASE + "[latency.ladder]\nsizes = [1e4, 3e4]\n", out_dir=str(tmp_path / "o"))
    r = sweep.run_sweep(s, progress=False, echo=False)
    assert r.written == 1 + 2 and not r.failed
    sweep.export_csv(s.out_dir)
    lad = results.load_ladder(s.out_dir)
    assert list(lad["point_id"]) == ["ladder-N10000-fp32", "ladder-N30000-fp32"]
    assert set(lad["latency_weights"]) == {"random"}
    assert (lad["decode_ms_per_token_median"] > 0).all()
    assert lad["formulation_source"].iloc[0] == "autotune"
    for _, row in lad.iterrows():  # the analytic count of the timed shape
        cfg = dict(s.ladder)[row["size_target_params_non_embedding"]]
        assert row["params_non_embedding"] == count_params(cfg)["non_embedding"]
    csv = results.load_ladder(s.out_dir / "latency_ladder.csv")
    assert list(csv["point_id"]) == list(lad["point_id"])
    trained = results.load_results(s.out_dir)
    assert set(trained["latency_weights"]) == {"trained"}
    again = sweep.run_sweep(s, progress=False, echo=False)
    assert again.written == 0 and again.skipped == 3


def test_ladder_table_is_checked_against_its_schema(tmp_path):
    (tmp_path / "latency_ladder.csv").write_text("point_id,inference_precision\nx,fp32\n")
    with pytest.raises(results.ResultsError, match="missing columns: .*sweep_name"):
        results.load_ladder(tmp_path / "latency_ladder.csv")
    assert results.load_ladder(tmp_path / "nothing_here") is None


def _synthetic_ladder(c=0.02, k=2e-7, noise=0.02, seed=0):
    """A ladder table whose decode and prefill follow t = c + k N exactly (times log-normal
    noise), with the small sizes in the small formulation class and 10x slower there."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in np.geomspace(1e4, 1e8, 13):
        for prec, scale in (("fp32", 1.0), ("w8a8", 0.5)):
            small = n < 3e5
            t = (c + k * scale * n) * (10 if small else 1) * np.exp(rng.normal(0, noise))
            rows.append(
                {
                    schema.N: n,
                    schema.PRECISION: prec,
                    schema.DECODE: t,
                    schema.PREFILL: 20 * t,
                    "formulation_class": "small" if small else "large",
                    "decode_efficiency": 0.5,
                }
            )
    return pd.DataFrame(rows)


def test_latency_laws_are_fitted_on_the_ladders_large_class():
    """With a ladder, the latency laws see only its large-class rows: the affine truth is
    recovered (k within 10%) although the small-class rows are 10x off the law."""
    lad = _synthetic_ladder()
    trained = pd.DataFrame(
        {
            schema.N: [1e4, 2e4, 4e4, 8e4],
            schema.PRECISION: "fp32",
            schema.LOSS: [3.0, 2.8, 2.6, 2.5],
            schema.DECODE: [5.0, 5.0, 5.0, 5.0],  # not the law: must not be fitted
        }
    )
    f = figures.fit_all(trained, n_bootstrap=0, quantities=("decode",), ladder=lad)
    assert f.latency_regime["decode"] == "large class"
    assert "latency ladder" in f.latency_basis
    fit = f.get("decode", "fp32")
    large = (lad[schema.PRECISION] == "fp32") & (lad["formulation_class"] == "large")
    assert fit.n_points == large.sum() == 8  # the 5 small sizes left out
    if f.forms["decode"].form == "affine":
        assert fit.params["k"] == pytest.approx(2e-7, rel=0.1)
    pred = fit.predict(np.array([1e9]))["y"].iloc[0]
    assert pred == pytest.approx(0.02 + 2e-7 * 1e9, rel=0.15)
    # the sizes held out: 10^(4 + i/3) for i = 11, 12, against i = 10 (21.5M) fitted
    reach = "decode: the extrapolation check predicts N = 46.4M (2.2x) and 100M (4.6x), from "
    assert [n for n in f.notes if n.startswith(reach)] == [reach + "sizes up to 21.5M"]
    fig = figures.latency_vs_params(trained, fits=f, ladder=lad)
    assert len(fig.axes) == 3  # decode, prefill, efficiency


def test_latency_laws_are_fitted_on_the_top_of_the_ladder():
    """With 5 large-class sizes within LADDER_FIT_SPAN of the largest, only those are fitted
    (below them a kernel ramp-up, latency growing as N^0.6, bends the large class) and the
    top's affine truth is recovered at 1e9; with 4 there, the whole large class, noted."""
    rows = []
    for n in [1e4, 1e5, 1e6, 3e6, 6e6, 1.25e7, 2.5e7, 5e7, 1e8, 2e8]:
        top = n >= 2e8 / figures.LADDER_FIT_SPAN
        t = 0.05 + 1e-7 * n if top else (0.05 + 1e-7 * 1.25e7) * (n / 1.25e7) ** 0.6
        for prec, scale in (("fp32", 1.0), ("w8a8", 0.5)):
            rows.append(
                {
                    schema.N: n,
                    schema.PRECISION: prec,
                    schema.DECODE: t * scale,
                    "formulation_class": "small" if n < 1e5 else "large",
                }
            )
    lad = pd.DataFrame(rows)
    out = figures.Fits()
    fitted = figures._ladder_region(lad, "decode", out)
    assert out.latency_regime["decode"] == "top of the ladder"
    assert any("top of the ladder, the 5 sizes from 12.5M" in n for n in out.notes), out.notes
    assert sorted(fitted[N].unique()) == [1.25e7, 2.5e7, 5e7, 1e8, 2e8]
    mask = figures._fitted_mask(lad[lad[schema.PRECISION] == "fp32"], "top of the ladder")
    assert sorted(lad.loc[mask[mask].index, N]) == [1.25e7, 2.5e7, 5e7, 1e8, 2e8]
    fp32 = fitted[fitted[schema.PRECISION] == "fp32"]
    law = analysis.fit(fp32, "affine", x=N, y=schema.DECODE, interval="none")
    assert law.predict(np.array([1e9]))["y"].iloc[0] == pytest.approx(0.05 + 1e-7 * 1e9, rel=0.02)
    # one size fewer at the top: the whole large class (6 sizes), with a note saying why
    out = figures.Fits()
    figures._ladder_region(lad[lad[N] != 2.5e7], "decode", out)
    assert out.latency_regime["decode"] == "large class" and "within 20x" in out.notes[-1]


def test_shipped_ladders_span_four_decades_to_1e8():
    from pathlib import Path

    from jscale.sweep_config import load_sweep

    root = Path(__file__).resolve().parent.parent / "experiments"
    for name, top in (("quick", 1e8), ("gpu_ladder", 1e9)):
        s = load_sweep(root / f"{name}.toml")
        ns = [count_params(cfg)["non_embedding"] for _, cfg in s.ladder]
        assert ns == sorted(ns) and math.log10(ns[-1] / ns[0]) >= 4 and ns[-1] >= top, name
        large = [c for _, c in s.ladder if c.d_model * c.d_ff >= 2**16]
        assert len(large) >= figures.LADDER_MIN_SIZES, name  # the laws leave the small out
    top = [n for n in ns if n >= ns[-1] / figures.LADDER_FIT_SPAN]
    if name == "quick":  # the quick ladder's laws are fitted on its top 1.3 decades
        assert len(top) >= figures.LADDER_MIN_SIZES


def test_two_point_error_is_the_exact_law_through_two_points():
    xs, ys = np.array([1.0, 2.0, 4.0]), np.array([3.0, 5.0, 8.0])
    # affine through (1, 3), (2, 5): 3 + 2 (x - 1) = 9 at 4; power: 5 (4/2)^log2(5/3) = 25/3
    assert figures._two_point_error(xs, ys, "affine") == pytest.approx(9 / 8 - 1)
    assert figures._two_point_error(xs, ys, "power") == pytest.approx((25 / 3) / 8 - 1)
    assert np.isnan(figures._two_point_error(xs, ys, "offset_power"))


def _two_law_ladder(noise=0.01, rng=0):
    """The quick ladder's top 5 sizes, 1% lognormal noise: fp32 prefill affine (17 ms + 0.8 ms
    per million params), bf16 prefill a power law N^0.7 (a rate that grows with size); decode
    affine in both."""
    rng = np.random.default_rng(rng)
    rows = []
    for n in (1.25e7, 2.5e7, 5e7, 1.05e8, 2e8):
        for prec in ("fp32", "bf16"):
            pre = 17 + 0.8e-6 * n if prec == "fp32" else 30 * (n / 1.25e7) ** 0.7
            rows.append(
                {
                    schema.N: n,
                    schema.PRECISION: prec,
                    schema.DECODE: (0.1 + 2e-7 * n) * np.exp(rng.normal(0, noise)),
                    schema.PREFILL: pre * np.exp(rng.normal(0, noise)),
                    "formulation_class": "large",
                }
            )
    return pd.DataFrame(rows)


def test_each_precision_gets_the_latency_form_of_its_own_truth():
    """On a ladder where fp32 prefill is affine and bf16 prefill a power law, each precision's
    form is chosen without its 2 largest sizes and then predicts them; one form for both (the
    old rule, chosen on fp32) misses bf16's by far more than 15%."""
    lad = _two_law_ladder()
    trained = pd.DataFrame(
        {schema.N: [1e4, 2e4, 4e4], schema.PRECISION: "fp32", schema.LOSS: [3.0, 2.8, 2.6]}
    )
    f = figures.fit_all(trained, n_bootstrap=0, quantities=("decode", "prefill"), ladder=lad)
    forms = {p: form for p, (form, _, kk) in f.precision_forms["prefill"].items() if kk == 2}
    assert forms == {"fp32": "affine", "bf16": "power"}
    assert {p: form for p, (form, _, _) in f.precision_forms["decode"].items()} == {
        "fp32": "affine",
        "bf16": "affine",
    }
    bf16 = f.get("prefill", "bf16")
    assert bf16.form == "power" and bf16.params["b"] == pytest.approx(0.7, abs=0.05)
    for q in ("decode", "prefill"):
        for p in ("fp32", "bf16"):
            ex = f.extrapolation[q][p]
            assert np.max(np.abs(ex["y_pred"] / ex["y"] - 1)) < 0.05, (q, p)
    wrong = analysis.extrapolation_check(
        lad[lad[schema.PRECISION] == "bf16"], "affine", x=N, y=schema.PREFILL, k=2
    )
    assert np.max(np.abs(wrong["rel_error"])) > 0.15  # why one form for all does not do
    md = figures.fit_table_markdown(f)
    assert md.count("**prefill latency (ms/prompt)**") == 2  # an affine and a power block
    assert "y = k N^b (power)" in md and "| bf16 | " in md
    assert "prefill: per precision, the form that best predicts" in md
    assert "bf16 power (affine +" in md
    assert "per precision" in figures._law_tex(f)
    tex = figures.fit_table_latex(f)
    assert tex.count(r"\textbf{prefill latency (ms/prompt)}") == 2


def test_few_ladder_sizes_choose_with_fewer_held_out_or_say_they_could_not():
    """4 sizes: the choice holds out 1 (3 left, the two-point check) and so does the check; 3
    sizes: no out-of-sample choice, and the note says the reference form was used."""
    lad = _two_law_ladder()
    trained = pd.DataFrame(
        {schema.N: [1e4, 2e4, 4e4], schema.PRECISION: "fp32", schema.LOSS: [3.0, 2.8, 2.6]}
    )
    four = lad[lad[N] < 2e8]
    f = figures.fit_all(trained, n_bootstrap=0, quantities=("prefill",), ladder=four)
    form, errs, kk = f.precision_forms["prefill"]["bf16"]
    assert kk == 1 and form == "power" and set(errs) >= {"affine", "power"}
    assert f.extrapolation["prefill"]["bf16"]["k"].iloc[0] == 1
    assert "its 1 largest held out" in f.form_reasons["prefill"]
    three = lad[lad[N] < 1e8]
    f = figures.fit_all(trained, n_bootstrap=0, quantities=("prefill",), ladder=three)
    assert f.precision_forms["prefill"]["bf16"][2] == 0
    assert "not out of sample" in f.form_reasons["prefill"]
    assert len(f.get("prefill", "bf16").predict(np.array([]))) == 0
