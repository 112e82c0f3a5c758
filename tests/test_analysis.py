"""jscale.analysis: recovery of known laws, interval coverage, real convergence, validation, errors.

References are independent of the fitter: the generating parameters, closed forms, a numpy
least-squares bootstrap, and a brute-force grid minimisation.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jscale import analysis
from jscale.analysis import AnalysisError

N12 = np.geomspace(1e6, 1e9, 12)
TRUE = {
    "saturating": (
        {"E": 1.7, "A": 300.0, "alpha": 0.3},
        lambda p, N, D: p["E"] + p["A"] * N ** -p["alpha"],
    ),
    "power": ({"k": 3e-4, "b": 0.8}, lambda p, N, D: p["k"] * N ** p["b"]),
    "offset_power": (
        {"c": 0.05, "k": 2e-3, "b": 0.4},
        lambda p, N, D: p["c"] + p["k"] * N ** p["b"],
    ),
    "chinchilla": (
        {"E": 1.82, "A": 482.0, "alpha": 0.348, "B": 2085.4, "beta": 0.366},
        lambda p, N, D: p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"],
    ),
}


def _chinchilla_data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e12), n))
    return N, D


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("form", list(TRUE))
def test_noiseless_recovery(form):
    true, law = TRUE[form]
    N, D = _chinchilla_data() if form == "chinchilla" else (N12, None)
    f = analysis.fit(None, form=form, x=N, y=law(true, N, D), d=D, n_bootstrap=20)
    assert f.form == form and f.param_names == tuple(true)
    for k, v in true.items():
        assert f.params[k] == pytest.approx(v, rel=1e-5), k
        lo, hi = f.intervals[k]
        assert lo == pytest.approx(v, rel=1e-4) and hi == pytest.approx(v, rel=1e-4)
    assert f.converged and f.n_converged == 20 and f.n_points == len(N)
    assert f.r2_log == pytest.approx(1.0, abs=1e-9) and f.rmse_log < 1e-7
    assert np.max(np.abs(f.residuals_log)) < 1e-7


def _user_form(init):
    return analysis.Form(
        "sat_raw",
        lambda p, x, d: jnp.exp(p["le"]) + jnp.exp(p["la"]) * (x / 1e6) ** -p["alpha"],
        ("le", "la", "alpha"),
        init_grid=init,
    )


@pytest.mark.slow
def test_user_form_recovery_and_far_start():
    """A user form, started from one point far from the optimum (E 17x too small, A 10x too
    large, alpha 3x too large): the fitter must walk all the way, not stop near the start."""
    a_true = 300.0 * 1e6**-0.3
    y = 1.7 + 300.0 * N12**-0.3
    f = analysis.fit(
        None,
        form=_user_form(np.array([[np.log(0.1), np.log(10 * a_true), 1.0]])),
        x=N12,
        y=y,
        n_bootstrap=0,
    )
    assert f.diagnostics["n_starts"] == 1 and f.converged
    assert np.exp(f.params["le"]) == pytest.approx(1.7, rel=1e-5)
    assert np.exp(f.params["la"]) == pytest.approx(a_true, rel=1e-4)
    assert f.params["alpha"] == pytest.approx(0.3, rel=1e-5)
    # no resamples: no bootstrap interval; the profile interval of an exact fit is t * se, tiny
    assert f.n_bootstrap == 0 and np.isnan(f.bootstrap_intervals["alpha"][0])
    assert f.intervals["alpha"] == pytest.approx((0.3, 0.3), rel=1e-4)
    g = analysis.fit(
        None,
        form=_user_form({"le": [-1.0, 0.0], "la": [2.0, 5.0], "alpha": [0.5, 1.0]}),
        x=N12,
        y=y,
        n_bootstrap=10,
    )
    assert g.diagnostics["n_starts"] == 8 and g.params["alpha"] == pytest.approx(0.3, rel=1e-5)


@pytest.mark.slow
def test_bootstrap_spread_matches_least_squares_bootstrap():
    """With a huge Huber delta the objective is least squares in log space, so the power-law
    fit is ordinary least squares of log y on log N. Its row-bootstrap spread, computed here
    with numpy, must match jscale's: a bootstrap whose resamples stayed at their start (the
    full-data optimum) would show almost no spread."""
    rng = np.random.default_rng(3)
    N = np.geomspace(1e6, 1e10, 40)
    y = 2.0 * N**-0.25 * np.exp(rng.normal(0, 0.1, N.size))
    f = analysis.fit(None, form="power", x=N, y=y, n_bootstrap=1000, huber_delta=1e3, seed=1)
    lx, ly = np.log(N), np.log(y)
    slope, icpt = np.polyfit(lx, ly, 1)
    assert f.params["b"] == pytest.approx(slope, rel=1e-8)
    assert f.params["k"] == pytest.approx(np.exp(icpt), rel=1e-7)
    idx = rng.integers(0, N.size, (4000, N.size))
    ref = np.array([np.polyfit(lx[i], ly[i], 1)[0] for i in idx])
    assert f.n_converged >= 990
    assert np.std(f.bootstrap_params[:, 1]) == pytest.approx(np.std(ref), rel=0.12)
    lo, hi = f.intervals["b"]
    rlo, rhi = np.percentile(ref, [2.5, 97.5])
    assert abs(lo - rlo) < 0.2 * (rhi - rlo) and abs(hi - rhi) < 0.2 * (rhi - rlo)


@pytest.mark.slow
def test_noisy_intervals_cover_truth():
    """Lognormal noise (sigma 0.02), 10 sizes x 3 repeats: the default (profile-likelihood)
    95% intervals contain every true parameter in at least 83% of 30 trials (binomial SD 4% at
    95%; benchmarks/fit_calibration.py measures it on 150), and the row bootstrap's in most of
    6, neither degenerate."""
    true, law = TRUE["saturating"]
    N = np.repeat(np.geomspace(1e6, 1e9, 10), 3)
    hits, hits_b, widths = {k: 0 for k in true}, {k: 0 for k in true}, []
    trials = 30
    for t in range(trials):
        rng = np.random.default_rng(100 + t)
        y = law(true, N, None) * np.exp(rng.normal(0, 0.02, N.size))
        boot = 200 if t < 6 else 0
        f = analysis.fit(None, form="saturating", x=N, y=y, n_bootstrap=boot, seed=t)
        assert f.interval_method == "profile" and f.converged
        for k, v in true.items():
            hits[k] += f.intervals[k][0] <= v <= f.intervals[k][1]
            if boot:
                hits_b[k] += f.bootstrap_intervals[k][0] <= v <= f.bootstrap_intervals[k][1]
        widths.append(f.intervals["alpha"][1] - f.intervals["alpha"][0])
    for k in true:
        assert 0.83 * trials <= hits[k], (k, hits)
        assert hits_b[k] >= 4, (k, hits_b)
    assert min(widths) > 0.01


# --------------------------------------------------------------------------- derived and validation


@pytest.mark.slow
def test_compute_optimal_against_brute_force():
    true, law = TRUE["chinchilla"]
    N, D = _chinchilla_data(40, seed=1)
    f = analysis.fit(None, form="chinchilla", x=N, y=law(true, N, D), d=D, n_bootstrap=20)
    for C in (1e20, 1e24):
        grid = np.geomspace(1e6, 1e14, 400_001)  # minimise L(N, C/(6N)) over N directly
        n_star = grid[np.argmin(law(true, grid, C / (6 * grid)))]
        out = analysis.compute_optimal(f, C)
        assert out["N"] == pytest.approx(n_star, rel=1e-4)
        assert out["D"] == pytest.approx(C / (6 * n_star), rel=1e-4)
        assert out["N_lo"] <= out["N"] * (1 + 1e-6) and out["N_hi"] >= out["N"] * (1 - 1e-6)
    arr = analysis.compute_optimal(f, np.array([1e20, 1e24]), flops_per_param_token=8.0)
    assert arr["N"].shape == (2,)
    np.testing.assert_allclose(arr["N"] * arr["D"] * 8.0, [1e20, 1e24], rtol=1e-10)
    with pytest.raises(AnalysisError, match="chinchilla"):
        analysis.compute_optimal(analysis.fit(None, "power", N12, N12**0.5, n_bootstrap=0), 1e20)


@pytest.mark.slow
def test_predict_and_extrapolation_on_exact_law():
    true, law = TRUE["saturating"]
    df = pd.DataFrame({"N": N12, "loss": law(true, N12, None)})
    f = analysis.fit(df, form="saturating", x="N", y="loss", n_bootstrap=20)
    p = f.predict([1e10, 1e11])
    assert list(p.columns) == ["x", "y", "y_lo", "y_hi"]
    np.testing.assert_allclose(p["y"], law(true, np.array([1e10, 1e11]), None), rtol=1e-7)
    ex = analysis.extrapolation_check(df, form="saturating", x="N", y="loss", k=3, n_bootstrap=20)
    assert list(ex.columns) == ["x", "y", "y_pred", "y_lo", "y_hi", "rel_error", "n_fit_points"]
    np.testing.assert_allclose(ex["x"], N12[-3:])
    assert (ex["n_fit_points"] == 9).all() and np.abs(ex["rel_error"]).max() < 1e-6
    tc, lawc = TRUE["chinchilla"]
    N, D = _chinchilla_data(20, seed=2)
    pc = analysis.fit(None, "chinchilla", N, lawc(tc, N, D), d=D, n_bootstrap=10).predict(
        [1e11], [1e12]
    )
    assert list(pc.columns) == ["x", "d", "y", "y_lo", "y_hi"]
    assert pc["y"][0] == pytest.approx(lawc(tc, 1e11, 1e12), rel=1e-6)


def test_noisy_residuals_in_input_order():
    true, law = TRUE["power"]
    y = law(true, N12, None)
    y[4] *= 1.5  # one outlier; Huber keeps the rest on the line
    f = analysis.fit(
        None, "power", N12[::-1].copy(), y[::-1].copy(), n_bootstrap=0, huber_delta=1e-3
    )
    assert int(np.argmax(np.abs(f.residuals_log))) == 7
    assert f.residuals_log[7] == pytest.approx(np.log(1.5), rel=1e-3)
    assert f.params["b"] == pytest.approx(0.8, rel=1e-4)


@pytest.mark.slow
def test_groups_and_tidy_table():
    rows = []
    truth = {"bf16": (1.9, 250.0, 0.28), "fp32": (1.7, 300.0, 0.3), "int8": (2.0, 400.0, 0.33)}
    for prec, (E, A, a) in truth.items():
        rows += [
            {
                "inference_precision": prec,
                "params_non_embedding": n,
                "eval_loss_nats": E + A * n**-a,
            }
            for n in N12
        ]
    df = pd.DataFrame(rows)
    analysis.fit(df[df.inference_precision == "bf16"], n_bootstrap=30)  # compiles (once per shape)
    before = analysis._TRACES["count"]
    fits = analysis.fit_groups(df, by="inference_precision", form="saturating", n_bootstrap=30)
    assert analysis._TRACES["count"] == before  # equal-size groups share the compiled code
    assert list(fits) == ["bf16", "fp32", "int8"]
    for prec, (E, A, a) in truth.items():
        assert fits[prec].params["E"] == pytest.approx(E, rel=1e-5)
        assert fits[prec].params["alpha"] == pytest.approx(a, rel=1e-5)
    t = analysis.fit_table(fits)
    assert list(t.columns) == [
        "group",
        "form",
        "param",
        "estimate",
        "lo",
        "hi",
        "estimate_ref",
        "lo_ref",
        "hi_ref",
        "x_ref",
        "d_ref",
        "interval_method",
        "n_points",
        "n_bootstrap",
        "n_converged",
        "r2_log",
        "rmse_log",
        "n_warnings",
    ]
    assert len(t) == 9 and set(t["group"]) == set(truth)
    assert t.set_index(["group", "param"]).loc[("int8", "A"), "estimate"] == pytest.approx(
        400.0, rel=1e-4
    )
    assert len(analysis.fit_table(fits["fp32"])) == 3
    s = fits["fp32"].summary()
    assert (
        s["form"] == "saturating" and s["alpha"] == pytest.approx(0.3, rel=1e-5) and "alpha_lo" in s
    )
    ex = analysis.extrapolation_check(
        df, form="saturating", k=1, by="inference_precision", n_bootstrap=10
    )
    assert list(ex["group"]) == ["bf16", "fp32", "int8"] and np.abs(ex["rel_error"]).max() < 1e-6


def test_no_recompile_for_same_shape():
    true, law = TRUE["offset_power"]
    noise = np.exp(0.01 * np.random.default_rng(0).standard_normal(len(N12)))
    analysis.fit(None, "offset_power", N12, law(true, N12, None) * noise, n_bootstrap=16)
    before = analysis._TRACES["count"]  # grid, polish, bootstrap and profile all compiled
    g = analysis.fit(
        None,
        "offset_power",
        N12 * 2,
        law(true, N12 * 2, None) * noise[::-1],
        n_bootstrap=16,
        seed=5,
    )
    assert analysis._TRACES["count"] == before and g.converged


# ------------------------------------------------------------------------- errors, scoping, imports


def test_errors():
    df = pd.DataFrame({"N": N12, "loss": 2 + N12**-0.3})
    with pytest.raises(AnalysisError, match="'loss'.*NaN"):
        analysis.fit(
            df.assign(loss=np.where(np.arange(12) == 3, np.nan, df["loss"])), x="N", y="loss"
        )
    with pytest.raises(AnalysisError, match="x must be positive"):
        analysis.fit(df.assign(N=-df["N"]), x="N", y="loss")
    with pytest.raises(AnalysisError, match="y must be positive"):
        analysis.fit(None, "power", N12, np.r_[0.0, np.ones(11)])
    with pytest.raises(AnalysisError, match="at least 4 distinct sizes"):
        analysis.fit(None, "saturating", N12[:3], 2 + N12[:3] ** -0.3)
    # issue 15's refusals: constant x, constant y, too few distinct sizes (rows do not count)
    with pytest.raises(AnalysisError, match="x .* one distinct value"):
        analysis.fit(None, "power", np.full(12, 1e5), np.linspace(1, 2, 12))
    with pytest.raises(AnalysisError, match="y .* is constant"):
        analysis.fit(None, "saturating", N12, np.full(12, 2.0))
    with pytest.raises(
        AnalysisError, match="needs at least 4 distinct sizes .* got 3 \\(in 9 rows\\)"
    ):
        analysis.fit(None, "saturating", np.repeat(N12[:3], 3), np.repeat(2 + N12[:3] ** -0.3, 3))
    with pytest.raises(AnalysisError, match="mismatched lengths"):
        analysis.fit(None, "power", N12, np.ones(11))
    with pytest.raises(AnalysisError, match="NaN or infinite"):
        analysis.fit(None, "power", np.r_[N12[:-1], np.nan], np.ones(12))
    with pytest.raises(AnalysisError, match="saturating, power, offset_power, affine, chinchilla"):
        analysis.fit(df, form="cubic", x="N", y="loss")
    with pytest.raises(AnalysisError, match="'tokens'.*N, loss"):
        analysis.fit(df, form="chinchilla", x="N", y="loss", d="tokens")
    with pytest.raises(AnalysisError, match="'params'.*N, loss"):
        analysis.fit(df, x="params", y="loss")
    with pytest.raises(AnalysisError, match="distinct sizes"):
        analysis.extrapolation_check(df, x="N", y="loss", k=12)
    assert issubclass(AnalysisError, ValueError)


def test_x64_is_scoped():
    analysis.fit(None, "power", N12, 2 * N12**0.5, n_bootstrap=5)
    assert jnp.zeros(1).dtype == jnp.float32
    assert not jax.config.jax_enable_x64


def test_import_is_isolated():
    code = (
        "import sys, jscale.analysis, jscale; jscale.fit; "
        "print(sorted(m for m in sys.modules "
        "if m in ('flax', 'jscale.model', 'jscale.train', 'jscale.data')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------- learning-rate selection


def _lr_table():
    """Two sizes x 3 lrs x 2 seeds x 2 precisions. The selection loss is best at lr 3e-3 for
    size 1e6 (seed 0 alone would pick 1e-3) and at the grid's top, 1e-2, for size 1e7; the
    test loss is deliberately best elsewhere, so a selector that read it would pick wrong."""
    sel = {  # (size, lr) -> selection loss per seed
        (1e6, 1e-3): (2.90, 3.30),
        (1e6, 3e-3): (2.95, 3.00),
        (1e6, 1e-2): (3.20, 3.20),
        (1e7, 1e-3): (2.80, 2.80),
        (1e7, 3e-3): (2.70, 2.70),
        (1e7, 1e-2): (2.60, 2.62),
    }
    rows = []
    for (n, lr), pair in sel.items():
        for s, v in enumerate(pair):
            for prec in ("fp32", "int8"):
                rows.append(
                    dict(
                        params_non_embedding=n,
                        train_tokens_target=20 * int(n),
                        train_precision="fp32",
                        inference_precision=prec,
                        lr_peak=lr,
                        seed=s,
                        select_loss_nats=v,
                        eval_loss_nats=10.0 - v,  # lowest where the selection loss is highest
                    )
                )
    return pd.DataFrame(rows)


def test_select_lr_uses_selection_loss_over_seeds_and_flags_the_edge():
    df = _lr_table()
    ch = analysis.lr_choices(df)
    assert list(ch["params_non_embedding"]) == [1e6, 1e7]
    assert list(ch["lr"]) == [3e-3, 1e-2]  # means over seeds: 1e6 -> 2.975 < 3.10 < 3.20
    assert ch["score"].to_numpy() == pytest.approx([2.975, 2.61])
    assert list(ch["edge"]) == ["", "high"] and list(ch["n_seeds"]) == [2, 2]
    assert ch["lr_grid"].iloc[0] == (1e-3, 3e-3, 1e-2)
    out = analysis.select_lr(df)
    assert len(out) == 2 * 2 * 2  # both sizes, every seed and precision at the chosen lr
    assert set(zip(out["params_non_embedding"], out["lr_peak"])) == {(1e6, 3e-3), (1e7, 1e-2)}
    assert set(out["inference_precision"]) == {"fp32", "int8"}
    # int8 rows' selection loss is ignored (chosen on fp32): favouring 1e-3 there changes nothing
    df2 = df.assign(
        select_loss_nats=np.where(
            (df["inference_precision"] == "int8") & (df["lr_peak"] == 1e-3),
            0.1,
            df["select_loss_nats"],
        )
    )
    assert list(analysis.lr_choices(df2)["lr"]) == [3e-3, 1e-2]


def test_select_lr_passes_one_lr_through_and_names_missing_columns():
    df = _lr_table()
    one = df[df["lr_peak"] == 3e-3]
    assert analysis.select_lr(one) is one
    assert analysis.select_lr(df.drop(columns=["lr_peak"])) is not None
    with pytest.raises(AnalysisError, match="'select_loss_nats'"):
        analysis.select_lr(df.drop(columns=["select_loss_nats"]))
    with pytest.raises(AnalysisError, match="'select_loss_nats'.*NaN"):
        analysis.lr_choices(df.assign(select_loss_nats=np.nan))


# ------------------------------------------------------------------------- cluster bootstrap


def _clustered(rng, n_sizes=10, n_seeds=2, per=4, sd_cluster=0.05, sd_row=0.005):
    """Power law y = 2 N^-0.25 with a shared log-noise per cluster (size, seed) and a small
    independent noise per row: ``per`` rows (token branches) per cluster."""
    sizes = np.geomspace(1e6, 1e9, n_sizes)
    N = np.repeat(sizes, n_seeds * per)
    cl = np.repeat(np.arange(n_sizes * n_seeds), per)
    u = rng.normal(0, sd_cluster, n_sizes * n_seeds)[cl] + rng.normal(0, sd_row, N.size)
    return N, 2.0 * N**-0.25 * np.exp(u), cl


@pytest.mark.slow
def test_cluster_bootstrap_spread_matches_numpy_cluster_bootstrap():
    """Least squares (huge Huber delta): the power fit is OLS of log y on log N. A numpy bootstrap
    that resamples whole clusters is the reference for the spread of b."""
    rng = np.random.default_rng(7)
    N, y, cl = _clustered(rng)
    f = analysis.fit(None, "power", N, y, n_bootstrap=600, huber_delta=1e3, cluster=cl, seed=2)
    assert f.bootstrap_unit == "clusters (given labels)" and f.n_clusters == 20
    lx, ly = np.log(N), np.log(y)
    G = cl.max() + 1
    members = [np.flatnonzero(cl == g) for g in range(G)]
    ref = []
    for _ in range(3000):
        idx = np.concatenate([members[g] for g in rng.integers(0, G, G)])
        ref.append(np.polyfit(lx[idx], ly[idx], 1)[0])
    assert f.n_converged >= 590
    assert np.std(f.bootstrap_params[:, 1]) == pytest.approx(np.std(ref), rel=0.15)
    rows = analysis.fit(None, "power", N, y, n_bootstrap=600, huber_delta=1e3, seed=2)
    assert np.std(rows.bootstrap_params[:, 1]) < 0.7 * np.std(ref)  # rows: too narrow


@pytest.mark.slow
def test_cluster_bootstrap_covers_truth_where_row_bootstrap_does_not():
    """40 synthetic tables with cluster-correlated noise: the 95% cluster-bootstrap interval of
    the exponent covers the truth (-0.25) at about the nominal rate, the row bootstrap's far
    less often (it treats the 8 branches of a model as 8 independent points; on these seeds it
    covers in about half the trials)."""
    trials, hit_c, hit_r = 40, 0, 0
    for t in range(trials):
        N, y, cl = _clustered(np.random.default_rng(1000 + t), per=8)
        df = pd.DataFrame({"N": N, "y": y, "model": cl})
        kw = dict(form="power", x="N", y="y", n_bootstrap=200, huber_delta=1e3, seed=t)
        fc = analysis.fit(df, cluster="model", **kw)
        fr = analysis.fit(df, **kw)
        hit_c += fc.intervals["b"][0] <= -0.25 <= fc.intervals["b"][1]
        hit_r += fr.intervals["b"][0] <= -0.25 <= fr.intervals["b"][1]
    assert hit_c >= 0.8 * trials, hit_c
    assert hit_r <= 0.7 * trials, hit_r


def test_cluster_errors():
    df = pd.DataFrame({"N": N12, "y": 2 * N12**0.5, "seed": 0})
    with pytest.raises(AnalysisError, match="'model' \\(cluster\\) not in the table"):
        analysis.fit(df, "power", x="N", y="y", cluster="model", n_bootstrap=5)
    with pytest.raises(AnalysisError, match="one cluster"):
        analysis.fit(df, "power", x="N", y="y", cluster="seed", n_bootstrap=5)
    with pytest.raises(AnalysisError, match="3 labels for 12 rows"):
        analysis.fit(None, "power", N12, 2 * N12**0.5, cluster=[0, 1, 2], n_bootstrap=5)


# ---------------------------------------------------------------------- IsoFLOP, approaches 2 and 3

CH = {"E": 1.8, "A": 400.0, "alpha": 0.34, "B": 1500.0, "beta": 0.28}
A_TRUE = CH["beta"] / (CH["alpha"] + CH["beta"])  # N_opt ~ C^a


def _ch_law(N, D):
    return CH["E"] + CH["A"] * N ** -CH["alpha"] + CH["B"] * D ** -CH["beta"]


def _n_opt_true(C):
    """argmin over N of L(N, C / 6N), by brute force on a fine grid (no closed form used)."""
    grid = np.geomspace(1e3, 1e13, 200_001)
    return grid[np.argmin(_ch_law(grid, C / (6 * grid)))]


BUDGETS = (1e17, 1e18, 1e19, 1e20)


def _iso_table(budgets=BUDGETS, span=8.0, k=7, noise=0.0, seed=0, shift=None):
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        centre = _n_opt_true(C) * ((shift or {}).get(C, 1.0))
        for n in centre * np.geomspace(1 / span, span, k):
            D = C / (6 * n)
            rows.append(
                dict(
                    compute_budget_flops=C,
                    params_non_embedding=n,
                    train_tokens=D,
                    eval_loss_nats=_ch_law(n, D) * np.exp(noise * rng.standard_normal()),
                )
            )
    return pd.DataFrame(rows)


def test_isoflop_recovers_the_compute_optimal_exponent():
    iso = analysis.isoflop(_iso_table(noise=0.002), n_bootstrap=300)
    assert iso.frontier_ok and iso.n_interior == 4 and iso.budgets["interior"].all()
    assert iso.a == pytest.approx(A_TRUE, abs=0.02) and iso.b == pytest.approx(1 - A_TRUE, abs=0.02)
    lo, hi = iso.a_interval
    assert lo < hi and lo <= A_TRUE <= hi
    for r in iso.budgets.itertuples():  # each minimum within 10% of the brute-force optimum
        assert r.N_opt == pytest.approx(_n_opt_true(r.C), rel=0.1)
        assert r.D_opt * r.N_opt * 6 == pytest.approx(r.C, rel=1e-12)
    opt = iso.optimal([1e21])
    assert opt["N_opt"][0] == pytest.approx(_n_opt_true(1e21), rel=0.15)
    assert opt["N_lo"][0] < opt["N_opt"][0] < opt["N_hi"][0]
    # the parabola is exact least squares: compare with numpy's polyfit at one budget
    d = _iso_table(noise=0.002)
    d = d[d["compute_budget_flops"] == 1e18]
    ref = np.polyfit(np.log(d["params_non_embedding"]), d["eval_loss_nats"], 2)
    n = np.geomspace(1e6, 1e8, 5)
    np.testing.assert_allclose(iso.parabola(1e18, n), np.polyval(ref, np.log(n)), rtol=1e-10)


def test_isoflop_flags_a_budget_sampled_on_one_side():
    # at 1e19 every sampled size is 10x to 100x below the optimum: the minimum is not interior
    df = _iso_table(span=3.0, k=5, shift={1e19: 1 / 30})
    iso = analysis.isoflop(df, n_bootstrap=50)
    b = iso.budgets.set_index("C")
    assert not b.loc[1e19, "interior"] and b.loc[1e19, "reason"].startswith("minimum above")
    assert b.drop(index=1e19)["interior"].all() and iso.n_interior == 3
    assert iso.a == pytest.approx(A_TRUE, abs=0.02)  # from the other three budgets only
    one = analysis.isoflop(df[df["compute_budget_flops"].isin([1e17, 1e19])], n_bootstrap=10)
    assert not one.frontier_ok and np.isnan(one.a) and "1 of 2 budgets" in one.frontier_note
    with pytest.raises(AnalysisError, match="no IsoFLOP frontier"):
        one.optimal([1e20])


def test_isoflop_errors():
    df = _iso_table()
    with pytest.raises(AnalysisError, match="'compute_budget_flops'"):
        analysis.isoflop(df.drop(columns=["compute_budget_flops"]))
    few = df[~((df["compute_budget_flops"] == 1e18) & (df.index % 7 > 1))]  # 2 sizes at 1e18
    with pytest.raises(AnalysisError, match="at least 3 distinct sizes.*C=1e\\+18 has 2"):
        analysis.isoflop(few)
    two = pd.concat([df.assign(inference_precision=p) for p in ("fp32", "int8")])
    with pytest.raises(AnalysisError, match="one inference precision"):
        analysis.isoflop(two)
    with pytest.raises(AnalysisError, match="no finite compute budget"):
        analysis.isoflop(df.assign(compute_budget_flops=np.nan))


def test_chinchilla_refuses_one_distinct_d():
    df = _iso_table().assign(train_tokens=1e9)
    with pytest.raises(AnalysisError, match="2 distinct values of d \\(column 'train_tokens'\\)"):
        analysis.fit(df, form="chinchilla")


@pytest.mark.slow
def test_approach3_exponents_and_side_by_side():
    """Noiseless Chinchilla grid: approach 3 gives a = beta/(alpha+beta) exactly and N_opt at
    each budget equal to the brute-force optimum; approach 2 agrees within a few percent."""
    df = _iso_table()
    f = analysis.fit(df, form="chinchilla", n_bootstrap=30)
    ch = analysis.chinchilla_frontier(f, BUDGETS)
    assert ch["a"] == pytest.approx(A_TRUE, rel=1e-4) and ch["b"] == pytest.approx(
        1 - A_TRUE, rel=1e-4
    )
    assert ch["a_lo"] <= A_TRUE * (1 + 1e-4) and ch["a_hi"] >= A_TRUE * (1 - 1e-4)
    np.testing.assert_allclose(ch["optimal"]["N_opt"], [_n_opt_true(C) for C in BUDGETS], rtol=1e-3)
    cmp = analysis.compare_approaches(analysis.isoflop(df, n_bootstrap=50), f)
    assert list(cmp["quantity"]) == ["a", "b"] + ["N_opt"] * 4
    np.testing.assert_allclose(cmp["C"][2:], BUDGETS)
    assert cmp["ratio"].to_numpy() == pytest.approx(np.ones(6), abs=0.06)
    np.testing.assert_allclose(cmp["approach3"][2:], [_n_opt_true(C) for C in BUDGETS], rtol=1e-3)
    assert cmp["agree"].notna().all()
    # approach 2 on sizes scaled x3 puts every N_opt 3x higher: the intervals are disjoint
    far = analysis.compare_approaches(
        analysis.isoflop(
            df.assign(params_non_embedding=df["params_non_embedding"] * 3), n_bootstrap=50
        ),
        f,
    )
    assert far["ratio"][2:].to_numpy() == pytest.approx(np.full(4, 1 / 3), rel=0.08)
    assert (far["agree"][2:] == 0).all()


# ------------------------------------------------------------------------- weak identification


@pytest.mark.slow
def test_a_well_identified_law_has_no_warnings():
    """Negative control: 13 sizes over 3 decades, 0.5% noise, a true floor E = 1.7."""
    rng = np.random.default_rng(3)
    x = np.geomspace(1e4, 1e7, 13)
    y = (1.7 + 300 * x**-0.3) * np.exp(0.005 * rng.standard_normal(13))
    f = analysis.fit(None, "saturating", x, y, n_bootstrap=200)
    assert f.warnings == [], f.warnings


@pytest.mark.slow
def test_weakly_identified_laws_say_why():
    x = np.geomspace(1e4, 1e7, 9)
    # no floor in the data (E = 0 is the truth): E runs to its bound
    f = analysis.fit(None, "saturating", x, 5 * x**-0.2, n_bootstrap=50)
    assert any("E is at its bound 0" in w for w in f.warnings), f.warnings
    # a loss that grows with N is not a decaying law: alpha is held at the end of its range
    f = analysis.fit(None, "saturating", x, 1 + 0.01 * x**0.2, n_bootstrap=0)
    assert any("alpha" in w and "end of its range (0, 4)" in w for w in f.warnings), f.warnings
    # 5 sizes for 3 parameters: 2 points of slack
    f = analysis.fit(None, "saturating", x[:5], 2 + 30 * x[:5] ** -0.3, n_bootstrap=0)
    assert any("only 2 distinct point(s) beyond the 3 parameters" in w for w in f.warnings)


@pytest.mark.slow
def test_resamples_with_too_few_distinct_sizes_are_rejected_and_counted():
    """4 sizes, 3 parameters: a resample of the 4 rows keeps all 4 sizes with probability
    4!/4^4 = 0.094, and every other resample would interpolate: about 90.6% are rejected."""
    x = np.geomspace(1e4, 1e6, 4)
    f = analysis.fit(None, "saturating", x, 2 + 30 * x**-0.3, n_bootstrap=400)
    rejected = f.diagnostics["n_bootstrap_degenerate"] / 400
    assert 0.87 < rejected < 0.94 and f.n_converged <= 400 - f.diagnostics["n_bootstrap_degenerate"]


def test_row_weights_count_like_repeated_rows():
    """The objective is a weighted sum over rows: weight 2 on a row equals that row twice (the
    same objective, so the same optimum), and a different weighting moves the fit."""
    rng = np.random.default_rng(0)
    x = np.geomspace(1e4, 1e7, 9)
    y = (1.7 + 300 * x**-0.3) * np.exp(0.02 * rng.standard_normal(9))
    w = np.ones(9)
    w[[2, 6]] = [2.0, 3.0]
    weighted = analysis.fit(None, "saturating", x, y, n_bootstrap=0, weights=w)
    rep = np.r_[np.arange(9), [2, 6, 6]]
    repeated = analysis.fit(None, "saturating", x[rep], y[rep], n_bootstrap=0)
    for k in ("E", "A", "alpha"):
        assert weighted.params[k] == pytest.approx(repeated.params[k], rel=1e-6)
    plain = analysis.fit(None, "saturating", x, y, n_bootstrap=0)
    assert abs(plain.params["alpha"] - weighted.params["alpha"]) > 1e-4
    # weight 0 drops a row (the shapes stay: the extrapolation check holds sizes out this way)
    dropped = analysis.fit(None, "saturating", x, y, n_bootstrap=0, weights=np.r_[w[:-1], 0.0])
    subset = analysis.fit(None, "saturating", x[:-1], y[:-1], n_bootstrap=0, weights=w[:-1])
    for k in ("E", "A", "alpha"):
        assert dropped.params[k] == pytest.approx(subset.params[k], rel=1e-6)
        assert dropped.intervals[k] == pytest.approx(subset.intervals[k], rel=1e-4)
    assert dropped.n_points == 8
    with pytest.raises(AnalysisError, match="weights .* finite values >= 0"):
        analysis.fit(None, "saturating", x, y, weights=np.r_[w[:-1], -1.0])


@pytest.mark.slow
def test_select_form_ranks_the_generating_law_first():
    """AICc picks the law that generated the data: a floor (saturating) over a pure power law,
    and the pure power law (fewer parameters) when there is no floor; a form the table cannot
    identify is ranked last with the reason."""
    rng = np.random.default_rng(1)
    x = np.geomspace(1e4, 1e7, 13)
    noise = np.exp(0.005 * rng.standard_normal(13))
    df = pd.DataFrame({"N": x, "loss": (1.7 + 300 * x**-0.3) * noise, "tokens": 1e9})
    t = analysis.select_form(
        df, ("power", "saturating", "chinchilla"), x="N", y="loss", d="tokens", n_bootstrap=0
    )
    assert list(t.form) == ["saturating", "power", "chinchilla"]
    assert t.delta_aicc[1] > 10 and np.isinf(t.aicc[2]) and "not identified" in t.error[2]
    assert t.extrap_error[0] < 0.02 < t.extrap_error[1]  # the floor also predicts better
    df["loss"] = 5 * x**-0.2 * noise
    t = analysis.select_form(df, ("saturating", "power"), x="N", y="loss", n_bootstrap=0)
    assert t.form[0] == "power" and t.delta_aicc[1] > 0


def test_solver_runs_beyond_one_call_each_get_what_they_get_alone():
    """The compiled solver runs ``laws._LANES`` lanes per call: 130 runs (65 resamples x 2
    starts: two calls, the second padded with copies) give every run the result it gets when
    run alone (one lane, padded to a whole call), in the right place.  Every resample has its
    own weights, data and mask, so a run handed another's inputs would not match."""
    from jscale import laws

    form = laws._get_form("affine")
    rng = np.random.default_rng(0)
    x = np.geomspace(1e4, 1e8, 10)
    u, v = form._prep(x, np.ones_like(x), np.log(x).mean(), 0.0)
    B, S = 65, 2
    assert B * S > laws._LANES
    lys = np.log(3.0 + 2e-6 * x) * (1 + 0.01 * rng.standard_normal((B, x.size)))
    theta0 = rng.normal(0.0, 1.0, (B, S, 2)) + np.log([3.0, 100.0])
    w = rng.poisson(1.0, (B, x.size)).astype(float) + 0.1  # bootstrap-like weights per resample
    mask = np.ones((B, 2))
    mask[1::3, 0] = 0.0  # every third resample, from the second, keeps c at its start
    solve = laws._solver(form, max_iter=300, gtol=1e-9, ftol=1e-12)
    with jax.enable_x64(True):  # as analysis.fit runs it
        together = solve(theta0, w, mask, u, v, lys, 1e9, x.size)
        assert together["theta"].shape == (B, S, 2) and together["theta"].dtype == np.float64
        assert np.ptp(together["theta"][:, :, 1]) > 1e-3  # the resamples really differ
        np.testing.assert_array_equal(together["theta"][1::3, :, 0], theta0[1::3, :, 0])
        for b, s in [(0, 0), (40, 1), (63, 1), (64, 0), (64, 1)]:  # lanes 0, 81, 127, 128, 129
            alone = solve(theta0[b : b + 1, s : s + 1], w[b : b + 1], mask[b : b + 1], u, v,
                          lys[b : b + 1], 1e9, x.size)  # fmt: skip
            for k in ("theta", "f", "n_iter"):
                np.testing.assert_allclose(together[k][b, s], alone[k][0, 0], rtol=1e-12, err_msg=k)
        assert together["converged"][0, 0] and together["converged"][64, 1]
