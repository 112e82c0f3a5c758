"""Paper figures and the fit table render headless from synthetic results tables (a known
law plus small noise): several precisions, one, latency columns missing, too few sizes for
a fit; every file is a valid non-empty PNG / PDF; the Pareto frontier matches brute force;
the tables carry the right groups and recover the known exponent; the CLI writes them."""

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
    assert r.skipped == [] and r.notes == []
    names = sorted(p.name for p in r.written)
    assert names == sorted(
        [f"{f}.{x}" for f in figures.FIGURES for x in ("png", "pdf")] + ["fits.md", "fits.tex"]
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
    assert (
        tex.startswith("%") and r"\toprule" in tex and r"\bottomrule" in tex and r"$\alpha$" in tex
    )
    assert tex.count(r"\begin{tabular}") == 1 and tex.count(r"\end{tabular}") == 1
    body = tex.split(r"\toprule")[1]
    assert all(
        line.rstrip().endswith("\\\\") or line.startswith("\\") or not line
        for line in body.splitlines()[:-2]
    )


@pytest.mark.slow
def test_one_precision(tmp_path):
    r = figures.render_all(
        synthetic_results(precisions=("bf16",), rng=1), tmp_path, n_bootstrap=100, log=None
    )
    assert r.skipped == [] and len(r.written) == 2 * len(figures.FIGURES) + 2
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
    assert set(skipped) == {"latency_vs_params", "loss_vs_latency"}
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
    assert r.skipped == []
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
    assert list(s)[:6] == ["fp32", "bf16", "int8", "w8a8", "aa2", "zz4"]
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
    for name in figures.FIGURES:
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
