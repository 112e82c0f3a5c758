"""Paper figures and the fit table render headless from synthetic results tables (a known
law plus small noise): several precisions, one, latency columns missing, too few sizes for
a fit; every file is a valid non-empty PNG / PDF; the Pareto frontier matches brute force;
the tables carry the right groups and recover the known exponent; the CLI writes them."""

import os
import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from jscale import figures
from jscale.cli import main
from jscale.results import write_record

SIZES = (2e4, 6e4, 2e5, 6e5, 2e6, 6e6)
ALPHA = {"fp32": 0.30, "bf16": 0.30, "int8": 0.28, "w8a8": 0.26}
E, A = 1.2, 40.0


def synthetic_results(
    precisions=("fp32", "bf16", "int8", "w8a8"), sizes=SIZES, seeds=(0, 1, 2), latency=True, rng=0
) -> pd.DataFrame:
    """A results table: loss E + A N^-alpha with 0.5% noise per precision, latency a fixed
    floor plus a linear term, memory from bytes per parameter; one row per point."""
    rng = np.random.default_rng(rng)
    bpp = {"fp32": 4, "bf16": 2, "int8": 1.1, "w8a8": 1.05}
    rows = []
    for n in sizes:
        for s in seeds:
            for p in precisions:
                a = ALPHA.get(p, 0.25)
                loss = (E + A * n**-a) * (1 + 0.005 * rng.standard_normal())
                dec = (0.4 + 2e-6 * n * bpp.get(p, 2) / 4) * (1 + 0.03 * rng.standard_normal())
                pre = (3.0 + 6e-5 * n * (1 + bpp.get(p, 2)) / 5) * (
                    1 + 0.03 * rng.standard_normal()
                )
                r = dict(
                    inference_precision=p,
                    train_precision="fp32",
                    seed=s,
                    params_non_embedding=int(n),
                    params_total=int(n + 16384),
                    train_tokens=int(20 * n),
                    eval_loss_nats=loss,
                    eval_loss_se_nats=0.004,
                    eval_bits_per_byte=loss / np.log(2),
                    weight_bytes=int(n * bpp.get(p, 2)),
                    kv_cache_bytes=int(2 * 256 * n**0.5 * 4),
                    batch=1,
                    prompt_tokens=128,
                    gen_tokens=32,
                    device_kind="cpu",
                )
                if latency:
                    r.update(
                        decode_ms_per_token_median=dec,
                        decode_ms_per_token_q1=0.97 * dec,
                        decode_ms_per_token_q3=1.04 * dec,
                        prefill_ms_median=pre,
                        prefill_ms_q1=0.97 * pre,
                        prefill_ms_q3=1.03 * pre,
                        decode_bound_ms_per_token=1e-6 * n * bpp.get(p, 2) / 4,
                        prefill_bound_ms=2e-5 * n,
                    )
                rows.append(r)
    return pd.DataFrame(rows)


# The token and compute axes: a known Chinchilla law, an IsoFLOP design (3 budgets x 6 of 8
# sizes, D = C / 6N), 2 seeds on 2 sizes, 4 precisions, latency timed once per (size, precision).
LAW = {"E": 1.6, "A": 50.0, "alpha": 0.32, "B": 300.0, "beta": 0.28}
A_OPT = LAW["beta"] / (LAW["alpha"] + LAW["beta"])  # N_opt ~ C^a
BUDGETS = (3e14, 3e15, 3e16)
LADDER = np.geomspace(2e4, 3e6, 8)
SHIFT = {"fp32": 1.0, "bf16": 1.001, "int8": 1.006, "w8a8": 1.015}


def chin_law(N, D):
    return LAW["E"] + LAW["A"] * N ** -LAW["alpha"] + LAW["B"] * D ** -LAW["beta"]


def n_opt_true(C):
    """argmin over N of L(N, C / 6N), by brute force on a fine grid."""
    g = np.geomspace(1e2, 1e10, 400_001)
    return g[np.argmin(chin_law(g, C / (6 * g)))]


def axes_results(seeds_on=(2,), seed_sd=0.004, noise=0.001, rng=0, latency=True):
    """One row per (budget, size, seed, precision): every budget takes the 6 ladder sizes nearest
    its optimum; sizes ``LADDER[i]`` for i in ``seeds_on`` and the next have 2 seeds. Seed noise
    is shared by all budget branches of one (size, seed) model (lognormal, sd ``seed_sd``),
    plus ``noise`` per model-budget; precisions scale the loss by ``SHIFT``."""
    rng = np.random.default_rng(rng)
    two = {LADDER[i] for s in seeds_on for i in (s, s + 1)}
    model = {(n, s): rng.normal(0, seed_sd) for n in LADDER for s in (0, 1)}
    rows, timed = [], {}
    for C in BUDGETS:
        near = LADDER[np.argsort(np.abs(np.log(LADDER / n_opt_true(C))))[:6]]
        for n in np.sort(near):
            D = C / (6 * n)
            for s in (0, 1) if n in two else (0,):
                base = chin_law(n, D) * np.exp(model[(n, s)] + noise * rng.standard_normal())
                for p, k in SHIFT.items():
                    pid = f"N{n:.0f}-D{D:.0f}-seed{s}-{p}"
                    loss = base * k
                    r = dict(
                        point_id=pid,
                        inference_precision=p,
                        train_precision="fp32",
                        seed=s,
                        lr_peak=1e-3,
                        params_non_embedding=float(n),
                        train_tokens=D,
                        train_tokens_target=int(round(D)),
                        compute_budget_flops=C,
                        train_flops_6nd=6 * n * D,
                        eval_loss_nats=loss,
                        eval_loss_se_nats=0.002,
                        select_loss_nats=loss * (1 + 0.001 * rng.standard_normal()),
                        delta_loss_vs_fp32_nats=base * (k - 1),
                        delta_loss_vs_fp32_se_nats=0.0005,
                        weight_bytes=int(n * {"fp32": 4, "bf16": 2}.get(p, 1)),
                        kv_cache_bytes=int(2 * 256 * n**0.5 * 4),
                        device_kind="cpu",
                    )
                    if latency:
                        first = timed.setdefault((n, p), pid)  # timed once per (size, precision)
                        dec = (0.4 + 2e-6 * n) * (1 + 0.02 * np.sin(n))  # copies: the same value
                        r.update(
                            latency_from_point_id=first,
                            decode_ms_per_token_median=dec,
                            decode_ms_per_token_q1=0.97 * dec,
                            decode_ms_per_token_q3=1.03 * dec,
                            prefill_ms_median=3 + 6e-5 * n,
                            prefill_ms_q1=0.97 * (3 + 6e-5 * n),
                            prefill_ms_q3=1.03 * (3 + 6e-5 * n),
                        )
                    rows.append(r)
    return pd.DataFrame(rows)


# the figures a table without a token axis (and without loss curves) cannot give
AXES_FIGS = ("isoflop_curves", "loss_vs_tokens", "compute_optimal", "loss_curves")


def _curves_of(df):
    """Loss curves for the models of a results table: the known law along each run's tokens."""
    rows = []
    for (n, d, s), _ in df.groupby(["params_non_embedding", "train_tokens", "seed"]):
        for f in (0.1, 0.3, 1.0):
            rows.append(
                {
                    "train_key": f"N{n}-D{d}-seed{s}",
                    "params_non_embedding": n,
                    "tokens": f * d,
                    "heldout_loss_nats": chin_law(n, f * d),
                    "phase": "trunk" if f < 1 else "cooldown",
                }
            )
    return pd.DataFrame(rows)


# precision_cost needs paired deltas, which the synthetic tables do not have
NO_DELTAS = (*AXES_FIGS, "precision_cost")
BASIC_FIGS = tuple(f for f in figures.FIGURES if f not in NO_DELTAS)

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def assert_valid(path):
    data = path.read_bytes()
    assert len(data) > 1000, path
    if path.suffix == ".png":
        assert data[:8] == PNG_SIG, path
        img = matplotlib.image.imread(path)
        assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 300, (path, img.shape)
        assert img[..., :3].std() > 0.01, f"{path} is blank"
    elif path.suffix == ".pdf":
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF"), path
    else:
        raise AssertionError(f"unexpected file {path}")


def table_alpha(md: str, precision: str) -> float:
    """The alpha estimate in the loss table's row for ``precision``."""
    loss = md.split("**held-out loss")[1].split("\n\n**")[0]
    head = next(line for line in loss.splitlines() if line.startswith("| precision"))
    col = [c.strip() for c in head.split("|")].index("alpha")
    row = next(line for line in loss.splitlines() if line.startswith(f"| {precision} |"))
    return float([c.strip() for c in row.split("|")][col].split()[0])


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    out = tmp_path_factory.mktemp("four")
    logged = []
    r = figures.render_all(synthetic_results(), out, n_bootstrap=100, log=logged.append)
    return out, r, logged


@pytest.mark.slow
@pytest.mark.xdist_group("four")  # one worker builds the module fixture
def test_several_precisions_every_figure_and_table(four):
    out, r, logged = four
    # no warnings: only the notes saying how far each latency check extrapolates
    assert [n for n in r.notes if "the extrapolation check predicts" not in n] == []
    skipped = dict(r.skipped)  # one token budget, no compute budget: the axes figures are skipped
    assert set(skipped) == set(NO_DELTAS)
    assert "delta_loss_vs_fp32_nats" in skipped["precision_cost"]
    assert skipped["isoflop_curves"] == "the results table lacks column compute_budget_flops"
    assert "more than one token budget" in skipped["loss_vs_tokens"]
    assert "neither an IsoFLOP fit" in skipped["compute_optimal"]
    assert "no loss curves" in skipped["loss_curves"]
    names = sorted(p.name for p in r.written)
    assert names == sorted(
        [f"{f}.{x}" for f in BASIC_FIGS for x in ("png", "pdf")] + ["fits.md", "fits.tex"]
    )
    for p in r.written:
        assert p.exists() and (p.suffix not in (".png", ".pdf") or assert_valid(p) is None)
    assert [f"wrote {p}" for p in r.written] == [
        line for line in logged if line.startswith("wrote")
    ]


@pytest.mark.slow
@pytest.mark.xdist_group("four")  # one worker builds the module fixture
def test_tables_have_groups_and_recover_the_exponent(four):
    out, _, _ = four
    md, tex = (out / "fits.md").read_text(), (out / "fits.tex").read_text()
    for q in ("held-out loss", "decode latency", "prefill latency"):
        assert q in md and q in tex
    for p in ("fp32", "bf16", "int8", "w8a8"):
        assert (
            md.count(f"| {p} |") == 3 and tex.count(f"\n{p} & ") == 3
        )  # loss, decode, prefill rows
        assert table_alpha(md, p) == pytest.approx(ALPHA[p], abs=0.03)
    # one token budget per size: the loss law is L(N), with no D term
    assert "L = E + A N^-alpha (saturating)" in md and "chinchilla" not in md
    assert r"$L = E + A N^{-\alpha}$" in tex and r"$\beta$" not in tex
    assert (
        tex.startswith("%") and r"\toprule" in tex and r"\bottomrule" in tex and r"$\alpha$" in tex
    )
    # the fit table, and the seed spread (3 seeds of every size)
    assert tex.count(r"\begin{tabular}") == 2 and tex.count(r"\end{tabular}") == 2
    assert "**seed spread**" in md and md.count("| 3 |") == len(SIZES)
    body = tex.split(r"\toprule")[1]
    assert all(
        line.rstrip().endswith("\\\\") or line.startswith(("\\", "%")) or not line
        for line in body.splitlines()[:-2]
    )


@pytest.mark.slow
def test_one_precision(tmp_path):
    r = figures.render_all(
        synthetic_results(precisions=("bf16",), rng=1), tmp_path, n_bootstrap=100, log=None
    )
    assert {n for n, _ in r.skipped} == set(NO_DELTAS) and len(r.written) == 2 * 6 + 2
    for p in r.written:
        if p.suffix in (".png", ".pdf"):
            assert_valid(p)
    md = (tmp_path / "fits.md").read_text()
    assert "| bf16 |" in md and "| fp32 |" not in md


@pytest.mark.slow
def test_latency_columns_missing_skips_only_latency_figures(tmp_path, capsys):
    r = figures.render_all(
        synthetic_results(precisions=("fp32", "int8"), latency=False), tmp_path, n_bootstrap=100
    )
    skipped = dict(r.skipped)
    assert set(skipped) == {"latency_vs_params", "loss_vs_latency", *NO_DELTAS}
    assert "decode_ms_per_token_median" in skipped["loss_vs_latency"]
    out = capsys.readouterr().out
    assert (
        "skipped loss_vs_latency: the results table lacks column decode_ms_per_token_median" in out
    )
    for name in ("loss_vs_params", "memory_vs_params", "fit_diagnostics"):
        assert_valid(tmp_path / f"{name}.png")
        assert_valid(tmp_path / f"{name}.pdf")
    assert not (tmp_path / "latency_vs_params.png").exists()
    md = (tmp_path / "fits.md").read_text()
    assert "held-out loss" in md and "decode latency (ms/token)**" not in md


@pytest.mark.slow
def test_too_few_sizes_draws_points_without_the_law(tmp_path):
    df = synthetic_results(precisions=("fp32", "w8a8"), sizes=(1e4, 1e5), seeds=(0,))
    r = figures.render_all(df, tmp_path, n_bootstrap=100, log=None)
    assert {n for n, _ in r.skipped} == set(NO_DELTAS)
    assert any(n.startswith("loss fp32: no saturating fit") for n in r.notes), r.notes
    for p in r.written:
        if p.suffix in (".png", ".pdf"):
            assert_valid(p)
    assert "(no law could be fitted)" in (tmp_path / "fits.md").read_text()


def test_figure_functions_return_figures_and_name_missing_columns():
    df = synthetic_results(
        precisions=("fp32",)
    )  # 6 sizes x 3 seeds like the others: compiled fits reused
    fits = figures.fit_all(df, n_bootstrap=100)
    for fn in (figures.loss_vs_params, figures.latency_vs_params, figures.fit_diagnostics):
        assert isinstance(fn(df, fits=fits), matplotlib.figure.Figure)
    for fn in (figures.loss_vs_latency, figures.memory_vs_params):
        assert isinstance(fn(df), matplotlib.figure.Figure)
    with pytest.raises(figures.FigureError, match="lacks columns weight_bytes, kv_cache_bytes"):
        figures.memory_vs_params(df.drop(columns=["weight_bytes", "kv_cache_bytes"]))
    # only prefill: one panel
    fig = figures.latency_vs_params(
        df.drop(columns=[c for c in df if c.startswith("decode")]), fits=fits
    )
    assert len(fig.axes) == 1


def test_style_is_fixed_and_does_not_leak():
    s = figures.precision_style(["w8a8", "zz4", "fp32", "aa2"])
    fixed = ["fp32", "bf16", "int8", "w8a8", "int4", "fp8", "fp8a8"]
    assert list(s) == [*fixed, "aa2", "zz4"]
    assert s == figures.precision_style(["aa2", "zz4"])  # the same for any order and subset
    assert len({tuple(v["color"]) for v in s.values()}) == len(s) and len(
        {v["marker"] for v in s.values()}
    ) == len(s)
    before = dict(matplotlib.rcParams)
    figures.loss_vs_latency(synthetic_results(precisions=("fp32",), seeds=(0,)))
    assert dict(matplotlib.rcParams) == before


def test_pareto_frontier_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 25))
        lat = rng.integers(0, 6, n).astype(float)  # many ties
        loss = rng.integers(0, 6, n).astype(float)
        if trial % 3 == 0:
            lat[rng.integers(0, n)] = np.nan
        mask = figures.pareto_frontier(lat, loss)
        for i in range(n):
            dominated = any(
                lat[j] <= lat[i] and loss[j] <= loss[i] and (lat[j] < lat[i] or loss[j] < loss[i])
                for j in range(n)
                if np.isfinite(lat[j])
            )
            assert mask[i] == (np.isfinite(lat[i]) and not dominated), (lat, loss, i)
    assert figures.pareto_frontier([], []).tolist() == []
    with pytest.raises(ValueError):
        figures.pareto_frontier([1, 2], [1])


def test_tex_escape():
    assert figures.tex_escape("w8_a8 & 5% #1 {x} ~^\\") == (
        r"w8\_a8 \& 5\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{}"
    )


def test_figures_module_does_not_import_model_code():
    code = (
        "import sys, jscale.figures; bad = [m for m in ('jscale.model', 'jscale.train', 'flax') "
        "if m in sys.modules]; assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_cli_fit_and_figures(tmp_path, capsys):
    res = tmp_path / "run"
    for i, row in enumerate(synthetic_results(precisions=("fp32", "int8")).to_dict("records")):
        write_record(res, f"point{i:03d}", row)
    assert (
        main(["fit", str(res), "--bootstrap", "100"]) == 2
    )  # a synthetic table: not the full schema
    assert "does not match jscale.schema" in capsys.readouterr().err
    assert main(["fit", str(res), "--bootstrap", "100", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "| fp32 |" in out and "| int8 |" in out and "held-out loss" in out
    assert (
        main(
            [
                "figures",
                str(res),
                "--out",
                str(tmp_path / "figs"),
                "--bootstrap",
                "100",
                "--format",
                "png",
                "--no-check",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for name in BASIC_FIGS:
        assert f"wrote {tmp_path / 'figs' / name}.png" in out
        assert_valid(tmp_path / "figs" / f"{name}.png")
    assert not list((tmp_path / "figs").glob("*.pdf"))
    # a CSV table works too
    csv = tmp_path / "t.csv"
    synthetic_results(precisions=("bf16",), latency=False).to_csv(csv, index=False)
    assert (
        main(
            ["figures", str(csv), "--out", str(tmp_path / "c"), "--bootstrap", "100", "--no-check"]
        )
        == 0
    )
    assert "skipped latency_vs_params: the results table lacks columns" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv in (
        ["figures", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
        ["fit", str(tmp_path / "nope")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("jscale: error:") and str(tmp_path) in err[0], (
            err
        )
    csv = tmp_path / "no_n.csv"
    synthetic_results(seeds=(0,)).drop(columns=["params_non_embedding"]).to_csv(csv, index=False)
    assert main(["fit", str(csv)]) == 2
    assert re.search(r"missing columns: .*params_non_embedding", capsys.readouterr().err)
    assert main(["fit", str(csv), "--no-check"]) == 2
    assert "lacks column params_non_embedding" in capsys.readouterr().err


def test_loss_figure_shows_each_precisions_paired_cost():
    df = synthetic_results(precisions=("fp32", "int8"))
    cost = {"fp32": 0.0, "int8": 0.0123}
    df["delta_loss_vs_fp32_nats"] = df["inference_precision"].map(cost)
    df["delta_loss_vs_fp32_se_nats"] = 0.001
    fits = figures.fit_all(df, n_bootstrap=100, quantities=("loss",))
    fig = figures.loss_vs_params(df, fits=fits)
    assert len(fig.axes) == 2
    ys = [np.unique(np.asarray(line.get_ydata(), float)) for line in fig.axes[1].get_lines()]
    assert any(
        len(y) == 1 and y[0] == pytest.approx(0.0123) for y in ys
    )  # int8's cost, drawn as given
    assert (
        len(figures.loss_vs_params(df.drop(columns=["delta_loss_vs_fp32_nats"]), fits=fits).axes)
        == 1
    )


# ------------------------------------------------------------------------- token and compute axes


@pytest.mark.slow
@pytest.mark.xdist_group("axes")
def test_axes_table_fits_each_law_on_the_right_rows(axes):
    """Latency laws see only the timed rows (one per size and precision: 8 sizes); the loss law
    is L(N, D) on every row (every budget of every model), not an L(N) on a mix of tokens per
    parameter."""
    df, f, _, _ = axes
    assert len(df) > 4 * 10 * 2  # several budget rows per size and precision
    for p in SHIFT:
        assert f.get("decode", p).n_points == len(LADDER)
        assert f.get("loss", p).form == "chinchilla"
        assert f.get("loss", p).n_points == (df["inference_precision"] == p).sum()
    assert f.latency_basis.startswith("the timed rows") and f.latency_unit == "rows"
    assert f.loss_form == "chinchilla" and f.loss_d == "train_tokens"
    assert f.loss_basis == "every token budget (D = train_tokens)"
    assert f.loss_unit == "clusters of (params_non_embedding, seed)"


def test_lr_axis_is_chosen_on_the_selection_split():
    """A second learning rate whose selection loss is worse for every model (and whose test loss
    is better): the fits see only the first lr."""
    df = axes_results()
    bad = df.assign(lr_peak=3e-3, select_loss_nats=df["select_loss_nats"] + 0.5)
    bad["eval_loss_nats"] -= 0.3
    f = figures.fit_all(pd.concat([df, bad]), n_bootstrap=20, quantities=("decode",))
    assert set(f.lr_choices["lr"]) == {1e-3} and set(f.lr_choices["edge"]) == {"low"}
    assert any("low edge of the grid" in n for n in f.notes)
    assert f.get("decode", "fp32").n_points == len(LADDER)


@pytest.fixture(scope="module")
def axes(tmp_path_factory):
    out = tmp_path_factory.mktemp("axes")
    df = axes_results()
    fits = figures.fit_all(df, n_bootstrap=60)
    r = figures.render_all(df, out, fits=fits, log=None, curves=_curves_of(df))
    return df, fits, out, r


@pytest.mark.slow
@pytest.mark.xdist_group("axes")
def test_axes_table_draws_every_figure(axes):
    df, fits, out, r = axes
    assert r.skipped == []
    assert sorted(p.name for p in r.written) == sorted(
        [f"{f}.{x}" for f in figures.FIGURES for x in ("png", "pdf")] + ["fits.md", "fits.tex"]
    )
    for p in r.written:
        if p.suffix in (".png", ".pdf"):
            assert_valid(p)
    fig = figures.isoflop_curves(df, fits=fits)
    assert len(fig.axes) == 2 and "FLOPs" in fig.axes[1].get_xlabel()
    assert len(figures.compute_optimal(df, fits=fits).axes) == 3


@pytest.mark.slow
@pytest.mark.xdist_group("axes")
def test_axes_fits_recover_the_known_law(axes):
    """Approaches 2 and 3 recover the compute-optimal exponent of the generating law, and their
    N_opt at each budget is near the brute-force optimum."""
    _, fits, _, _ = axes
    iso, cmp = fits.isoflop, fits.comparison
    assert iso.frontier_ok and iso.n_interior == len(BUDGETS)
    assert iso.a == pytest.approx(A_OPT, abs=0.05)
    c3 = figures.analysis.chinchilla_frontier(fits.chinchilla)
    assert c3["a"] == pytest.approx(A_OPT, abs=0.05) and c3["a_lo"] <= A_OPT <= c3["a_hi"]
    n_true = np.array([n_opt_true(C) for C in BUDGETS])
    rows = cmp[cmp["quantity"] == "N_opt"]
    np.testing.assert_allclose(rows["approach2"], n_true, rtol=0.15)
    np.testing.assert_allclose(rows["approach3"], n_true, rtol=0.15)
    assert fits.chinchilla.bootstrap_unit == "clusters of (params_non_embedding, seed)"


@pytest.mark.slow
@pytest.mark.xdist_group("axes")
def test_axes_table_sections(axes):
    df, fits, out, _ = axes
    md, tex = (out / "fits.md").read_text(), (out / "fits.tex").read_text()
    assert "**compute-optimal allocation**" in md and "| a (N_opt ∝ C^a) |" in md
    assert md.count("| N_opt at C = ") == len(BUDGETS) and "ratio 3/2" in md
    assert (
        "profile-likelihood interval, cluster-robust over models (params_non_embedding, seed)" in md
    )
    assert "fitted on every token budget (D = train_tokens)" in md
    assert "fitted on the timed rows" in md
    # the seed spread: SD (ddof 1) over the two seeds of each replicated fp32 model, by numpy
    fp = df[df["inference_precision"] == "fp32"]
    ref = {}
    for (n, d), g in fp.groupby(["params_non_embedding", "train_tokens_target"]):
        if len(g) == 2:
            ref[(n, d)] = float(np.std(g["eval_loss_nats"].to_numpy(), ddof=1))
    sp = fits.seed_spread
    assert len(sp) == len(ref) == md.count("| 2 |")
    for r in sp.itertuples():
        assert r.sd == pytest.approx(ref[(getattr(r, "params_non_embedding"), r.budget)], rel=1e-9)
    assert tex.count(r"\begin{tabular}") == 3 and "approach 2 (IsoFLOP)" in tex


@pytest.mark.slow
@pytest.mark.xdist_group("axes")
def test_multi_budget_loss_law_is_chinchilla_and_recovers_the_known_law(axes):
    """On a table with a token axis (an IsoFLOP design generated from a known L(N, D), each
    precision a multiple of it: the same alpha and beta) the per-precision loss law is L(N, D),
    recovers alpha and beta, and the table names that form and its parameters; the fp32 fit is
    the approach 3 fit (fitted once)."""
    df, fits, out, _ = axes
    for p in SHIFT:
        f = fits.get("loss", p)
        assert f.form == "chinchilla" and f.bootstrap_unit.startswith("clusters of")
        assert f.params["alpha"] == pytest.approx(LAW["alpha"], abs=0.05), p
        assert f.params["beta"] == pytest.approx(LAW["beta"], abs=0.05), p
        lo, hi = f.intervals["alpha"]
        assert lo < hi and hi - lo < 0.5, p  # an interval, not a flat line of nonsense
        ex = fits.extrapolation["loss"][p]
        assert "d" in ex and ex["d"].nunique() > 1  # every budget of the held-out sizes
        assert ex["rel_error"].abs().max() < 0.02, p
    assert fits.chinchilla is fits.get("loss", "fp32")
    md, tex = (out / "fits.md").read_text(), (out / "fits.tex").read_text()
    loss = md.split("**held-out loss")[1].split("\n\n**")[0]
    assert "L = E + A N^-alpha + B D^-beta (chinchilla)" in loss
    assert "| precision | E | A | alpha | B | beta | n |" in loss
    assert table_alpha(md, "int8") == pytest.approx(LAW["alpha"], abs=0.05)
    assert r"$L = E + A N^{-\alpha} + B D^{-\beta}$" in tex and r"$\beta$" in tex


@pytest.mark.slow
@pytest.mark.xdist_group("axes")
def test_multi_budget_loss_figure_draws_l_n_d_along_the_points(axes):
    """The loss figure draws each size's largest budget as points and L(N, D) along them: at the
    points' sizes the line is the law at the points' own D; the legend gives alpha and beta."""
    df, fits, _, _ = axes
    fig = figures.loss_vs_params(df, fits=fits)
    ax = fig.axes[0]
    top = figures._loss_table(df)[0]
    fp = top[top["inference_precision"] == "fp32"]
    f = fits.get("loss", "fp32")
    line = next(ln for ln in ax.get_lines() if len(ln.get_xdata()) > 50)  # fp32's, drawn first
    x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    assert x.min() == pytest.approx(fp["params_non_embedding"].min())
    assert x.max() == pytest.approx(fp["params_non_embedding"].max())
    for n, g in fp.groupby("params_non_embedding"):
        want = f.predict([n], [np.exp(np.log(g["train_tokens"]).mean())])["y"].iloc[0]
        assert np.interp(np.log(n), np.log(x), y) == pytest.approx(want, rel=1e-9)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert all("beta" in t for t in texts) and len(texts) == len(SHIFT)
    assert "L(N, D)" in fig.legends[0].get_title().get_text()
    diag = figures.fit_diagnostics(df, fits=fits)  # residuals of every row, every budget held out
    assert len(diag.axes) == 2


def test_loss_envelope_is_the_running_minimum_over_compute_and_the_curves_figure_renders(tmp_path):
    """Approach 1 on two hand-made runs: the envelope keeps exactly the points no smaller-compute
    point beats (computed by hand), and loss_curves draws them; without curves render_all skips
    the figure with a reason."""
    curves = pd.DataFrame(
        {
            "train_key": ["a"] * 3 + ["b"] * 3,
            "params_non_embedding": [10.0] * 3 + [100.0] * 3,
            "tokens": [1, 10, 100, 1, 10, 100],
            "heldout_loss_nats": [3.0, 2.5, 2.2, 2.8, 2.4, 1.9],
            "phase": ["trunk", "trunk", "cooldown"] * 2,
        }
    )
    env = figures.loss_envelope(curves)
    # compute 6 N tokens: a at 60, 600, 6000; b at 600, 6000, 60000.  By hand: 3.0 at 60, then
    # a's 2.5 beats b's 2.8 at 600, a's 2.2 beats b's 2.4 at 6000, b's 1.9 at 60000
    assert list(env.compute_flops) == [60, 600, 6000, 60000]
    assert list(env.heldout_loss_nats) == [3.0, 2.5, 2.2, 1.9]
    assert list(env.params_non_embedding) == [10, 10, 10, 100]
    fig = figures.loss_curves(curves)
    fig.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 10_000
    with pytest.raises(figures.FigureError, match="lacks"):
        figures.loss_curves(curves.drop(columns="tokens"))


@pytest.mark.slow
@pytest.mark.xdist_group("four")
def test_form_selection_names_the_generating_latency_law(four):
    """The synthetic latency is a fixed overhead plus a linear term (t = c + k N, an offset power
    law with b = 1): offset_power and affine fit it alike, and the law used is the two-parameter
    affine, for decode and prefill, named in the table."""
    out, _, logged = four
    text = (out / "fits.md").read_text()
    sec = text[text.index("**form selection**") :]
    rows = [
        r.split("|")[1:-1]
        for r in sec.splitlines()
        if r.startswith("| decode") or r.startswith("| prefill")
    ]
    used = {q.strip(): form.split("(")[0].strip() for q, form, *_ in rows if "*" in form}
    assert used == {"decode": "affine", "prefill": "affine"}
    assert "t = c + k N (affine)" in text and "- decode: affine" in text


def test_latency_laws_are_fitted_above_the_measured_cache():
    """With the measured cache in the records: models whose weights + KV cache fit in it are
    left out of the latency law when every precision has 4 sizes above it (a note says so), and
    with too few above it the law is fitted on all and says it is cache-resident."""
    df = synthetic_results(precisions=("fp32", "int8"), seeds=(0,))
    moved = df["weight_bytes"] + df["kv_cache_bytes"]
    cut = np.sort(moved[df.inference_precision == "fp32"].unique())[1]  # 2 fp32 sizes inside
    f = figures.fit_all(
        df.assign(roofline_cache_bytes=float(cut)), n_bootstrap=0, quantities=("decode",)
    )
    above = df[moved > cut]
    assert f.latency_regime["decode"] == "above the cache"
    assert f.get("decode", "fp32").n_points == (above.inference_precision == "fp32").sum()
    assert any("fitted on the models above the measured cache" in n for n in f.notes)
    g = figures.Fits()
    rows = figures._above_cache(df.assign(roofline_cache_bytes=float(moved.max())), "decode", g)
    assert g.latency_regime["decode"] == "cache-resident" and len(rows) == len(df)
    assert any("does not extrapolate past the cache" in n for n in g.notes)


def test_precision_cost_draws_the_law_through_the_fitted_formats(tmp_path):
    """Deltas from a known precision law (tests/test_degradation.py): the figure renders, the
    law it draws is the fitted one, and the loss-memory frontier holds the lowest loss at each
    memory budget."""
    sys.path.insert(0, os.path.dirname(__file__))
    from test_degradation import _table

    t = _table()
    base = 2.0 + 10 * t["params_non_embedding"] ** -0.3
    t = t.assign(
        eval_loss_nats=base + t["delta_loss_vs_fp32_nats"],
        weight_bits=t["inference_precision"].map({"bf16": 16, "int8": 8, "int4": 4, "fp8": 8}),
    )
    fp32 = t[t.inference_precision == "int8"].assign(
        inference_precision="fp32", delta_loss_vs_fp32_nats=0.0, weight_bits=32
    )
    df = pd.concat([fp32, t], ignore_index=True)
    df["param_bytes"] = df["params_non_embedding"] * df["weight_bits"] / 8
    fits = figures.fit_all(df, n_bootstrap=50, quantities=("precision_law",))
    law = fits.precision_law
    assert law is not None and law.form == "full"
    assert law.params["g"] == pytest.approx(1.5, rel=0.05)
    fig = figures.precision_cost(df, fits=fits)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 50]
    assert len(lines) == 3  # bf16, int8, int4: fp8 is not fitted
    fig.savefig(tmp_path / "c.png")
    assert_valid(tmp_path / "c.png")
    fig = figures.loss_vs_memory(df)
    fig.savefig(tmp_path / "m.png")
    assert_valid(tmp_path / "m.png")
    md = figures.fit_table_markdown(fits)
    assert "**precision law**" in md and "leave this format out" in md and "| fp8 |" in md
