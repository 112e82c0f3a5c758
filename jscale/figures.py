"""Paper figures and the fit table, from any results table.

Every figure function takes the results DataFrame (``jscale.results.load_results``) and
returns a ``matplotlib.figure.Figure``; ``render_all`` writes them all as PNG and vector
PDF, with the fit table as Markdown and LaTeX, and says what it wrote and what it skipped
and why.  A figure whose columns are missing is skipped with a message naming them; a fit
that fails (too few sizes in a group) leaves its points drawn without the law.

Units: parameters are counts (non-embedding ``N``), losses nats/token, latencies
milliseconds (per generated token for decode, per prompt for prefill), memory bytes
(plotted in MB = 10^6 bytes).

One style everywhere: ``precision_style`` maps each inference precision to a fixed colour
(seaborn's colour-blind-safe palette) and marker, fp32, bf16, int8, w8a8 first and any
other precision after them in sorted order.  The seaborn theme is applied only inside a
context while a figure is built, so importing or using this module leaves the caller's
global matplotlib settings alone.  Figures are built with ``matplotlib.figure.Figure``
(no pyplot), so nothing here needs a display.

This module imports nothing of the model or training code.
"""

from __future__ import annotations

import contextlib
import math
import os
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D

from jscale import analysis, degradation
from jscale.schema import (
    COMPUTE,
    DECODE,
    DELTA,
    DELTA_SE,
    LOSS,
    LOSS_SE,
    LOSS_SE_DOCS,
    LR,
    PRECISION,
    PREFILL,
    SEED,
    SELECT,
    TOKENS,
    TOKENS_TARGET,
    N,
)

PRECISION_ORDER = ("fp32", "bf16", "int8", "w8a8", "int4", "fp8", "fp8a8")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LEVEL = 0.95
DPI = 300
N_LABEL = "non-embedding parameters N"
FIGURES = (
    "loss_vs_params",
    "latency_vs_params",
    "loss_vs_latency",
    "loss_vs_memory",
    "precision_cost",
    "memory_vs_params",
    "fit_diagnostics",
    "isoflop_curves",
    "loss_vs_tokens",
    "compute_optimal",
    "loss_curves",
)
TIMED = "latency_from_point_id"  # the row whose measurement a latency value copies


class FigureError(ValueError):
    """A results table that cannot give this figure (e.g. missing columns)."""


@dataclass(frozen=True)
class Quantity:
    """A fitted quantity: its column, law and axis label (with units)."""

    name: str
    column: str
    form: str
    label: str
    law: str


# Each quantity's law is chosen per table from its candidate forms (``CANDIDATES``) by AICc on
# the reference precision's rows (``analysis.select_form``), and that one form is fitted on every
# precision. Latency candidates are physical: ``affine`` t = c + k N is a fixed per-call
# overhead (dispatch, the embedding and head) plus bytes moved over an effective bandwidth
# (bytes grow as N); ``power`` and ``offset_power`` let the data say otherwise.
LAWS = {
    "saturating": "L = E + A N^-alpha",
    "power": "y = k N^b",
    "offset_power": "t = c + k N^b",
    "affine": "t = c + k N",
    "chinchilla": "L = E + A N^-alpha + B D^-beta",
    "chinchilla_no_floor": "L = A N^-alpha + B D^-beta",
}
QUANTITIES = (
    Quantity("loss", LOSS, "saturating", "held-out loss (nats/token)", LAWS["saturating"]),
    Quantity("decode", DECODE, "affine", "decode latency (ms/token)", LAWS["affine"]),
    Quantity("prefill", PREFILL, "affine", "prefill latency (ms/prompt)", LAWS["affine"]),
)
_Q = {q.name: q for q in QUANTITIES}
# The loss law on a table with a token axis (several budgets per size): L in N and D, fitted on
# every budget. A law in N alone would mix models trained for different tokens per parameter.
ND_BOOTSTRAP_STARTS = 1  # L-BFGS starts per L(N, D) resample, but on the reference precision
LOSS_ND = Quantity(
    "loss", LOSS, "chinchilla", "held-out loss (nats/token)", "L = E + A N^-alpha + B D^-beta"
)


# ----------------------------------------------------------------------------- style


def precision_style(precisions) -> dict[str, dict]:
    """Precision -> ``{"color", "marker"}``: ``PRECISION_ORDER`` fixed first, others after
    them in sorted order (deterministic for a given set), from seaborn's colorblind palette."""
    extra = sorted(set(map(str, precisions)) - set(PRECISION_ORDER))
    names = list(PRECISION_ORDER) + extra
    pal = sns.color_palette("colorblind", max(10, len(names)))
    return {
        p: {"color": pal[i % len(pal)], "marker": MARKERS[i % len(MARKERS)]}
        for i, p in enumerate(names)
    }


@contextlib.contextmanager
def theme():
    """The figures' seaborn theme, applied only inside the ``with`` block."""
    with (
        sns.axes_style("whitegrid"),
        sns.plotting_context("paper", font_scale=1.25),
        mpl.rc_context(
            {
                "axes.titlesize": "medium",
                "legend.frameon": False,
                "pdf.fonttype": 42,
                "ps.fonttype": 42,
                "grid.linewidth": 0.6,
                "axes.grid.which": "major",
                "savefig.dpi": DPI,
            }
        ),
    ):
        yield


def _groups(df: pd.DataFrame) -> list[str]:
    present = set(df[PRECISION].astype(str))
    return [p for p in precision_style(present) if p in present]


def _require(df: pd.DataFrame, figure: str, cols) -> None:
    missing = [c for c in cols if c not in df.columns or df[c].isna().all()]
    if missing:
        raise FigureError(
            f"{figure}: the results table lacks column{'s' * (len(missing) > 1)} "
            f"{', '.join(missing)}"
        )


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with an ``inference_precision`` column of strings (``all`` when absent)."""
    df = df.copy()
    if PRECISION not in df:
        df[PRECISION] = "all"
    df[PRECISION] = df[PRECISION].astype(str)
    return df


def _fmt_n(v: float) -> str:
    """A parameter count in short form: 12k, 1.5M, 2B."""
    for div, s in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{s}"
    return f"{v:.3g}"


def _log_axis(ax, which: str, fmt=None) -> None:
    """Log scale with readable ticks: decades when the data span them, otherwise a few
    round values labelled plainly (a loss from 2.5 to 4 has no decade tick at all)."""
    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    if lo <= 0 or not np.isfinite([lo, hi]).all():
        return
    if hi / lo >= 100:
        return  # matplotlib's decade ticks, 10^k
    if hi / lo >= 10:  # one to two decades: 1, 2, 5 in each
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.FuncFormatter(fmt or (lambda v, _: f"{v:g}")))
        axis.set_minor_formatter(ticker.NullFormatter())
        return
    ticks = [
        t
        for t in ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        if lo <= t <= hi and t > 0
    ]
    if len(ticks) < 2:
        ticks = [
            t for t in ticker.MaxNLocator(nbins=8).tick_values(lo, hi) if lo <= t <= hi and t > 0
        ]
    axis.set_major_locator(ticker.FixedLocator(ticks))
    axis.set_major_formatter(ticker.FuncFormatter(fmt or (lambda v, _: f"{v:g}")))
    axis.set_minor_formatter(ticker.NullFormatter())


def _n_fmt(v, _):
    return _fmt_n(v)


def _footnote(df: pd.DataFrame) -> str:
    bits = []
    for col, name in (
        ("device_kind", "device"),
        ("latency_batch", "batch"),
        ("prompt_tokens", "prompt tokens"),
        ("gen_tokens", "generated tokens"),
    ):
        if col in df and df[col].notna().any():
            vals = sorted({str(v) for v in df[col].dropna()})
            bits.append(f"{name} {', '.join(vals[:3])}{'...' if len(vals) > 3 else ''}")
    if "seed" in df:
        bits.append(f"{df['seed'].nunique()} seed{'s' * (df['seed'].nunique() > 1)}")
    if "train_precision" in df and df["train_precision"].nunique() > 1:
        bits.append(
            f"train precisions "
            f"{', '.join(sorted(df['train_precision'].astype(str).unique()))} pooled"
        )
    return "; ".join(bits)


def _new_figure(
    df: pd.DataFrame,
    ncols: int,
    width: float = 4.2,
    height: float = 3.4,
    legend: float = 1.6,
    note: str = "",
):
    """A constrained-layout figure with ``legend`` inches on the right for the legend and the
    footnote (device, batch, prompt and generated tokens, seeds; then ``note``) at the bottom
    left."""
    fig = Figure(figsize=(width * ncols + legend, height + 0.3), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    note = "; ".join(b for b in (_footnote(df), note) if b)
    if note:  # as the figure's x label, so the layout reserves room for it; wrapped to fit
        chars = int(16 * (width * ncols + legend))  # x-small text: about 16 characters per inch
        note = "\n".join(textwrap.wrap(note, chars)) if "\n" not in note else note
        fig.supxlabel(note, x=0.01, ha="left", fontsize="x-small", color="0.35")
    return fig, list(axes)


def _legend(fig: Figure, handles, title: str | None = None) -> None:
    """One legend for the whole figure, outside the axes on the right: it covers no data.  A
    legend taller than the figure (many precisions, each with its exponents) makes the figure
    taller, so no entry is cut off and none runs into the footnote."""
    leg = fig.legend(
        handles=handles,
        loc="outside right upper",
        title=title,
        fontsize="small",
        title_fontsize="small",
        alignment="left",
    )
    points = FontProperties(size="small").get_size_in_points()
    lines = sum(1 + h.get_label().count("\n") for h in handles) + (title or "").count("\n") + 1
    guess = (1.3 * lines + 0.6 * len(handles) + 2) * points / 72 + 0.6  # inches, generous
    if guess < fig.get_size_inches()[1]:
        return  # fits: skip the measuring draw (a whole draw of the figure)
    fig.draw_without_rendering()
    note = fig._supxlabel.get_window_extent().height if fig._supxlabel is not None else 0.0
    need = (leg.get_window_extent().height + note) / fig.dpi + 0.25  # inches, with margins
    width, height = fig.get_size_inches()
    if need > height:
        fig.set_size_inches(width, need)


def _handle(style: dict, label: str, line: bool = True) -> Line2D:
    return Line2D(
        [],
        [],
        color=style["color"],
        marker=style["marker"],
        linestyle="-" if line else "none",
        markersize=6,
        label=label,
    )


def _points(ax, d: pd.DataFrame, x: str, y: str, style: dict, yerr=None, hollow=False) -> None:
    kw = dict(
        color=style["color"],
        marker=style["marker"],
        linestyle="none",
        markersize=5.5,
        markeredgecolor=style["color"] if hollow else "white",
        markeredgewidth=1.0 if hollow else 0.5,
        alpha=0.9,
        zorder=3,
    )
    if hollow:
        kw["markerfacecolor"] = "none"
    if yerr is not None:
        ax.errorbar(d[x], d[y], yerr=yerr, elinewidth=0.9, capsize=2, ecolor=style["color"], **kw)
    else:
        ax.plot(d[x], d[y], **kw)


def _grid(x: np.ndarray, n: int = 200, extend: float = 0.15) -> np.ndarray:
    """A dense log-spaced grid over the data, extended by ``extend`` decades on both sides."""
    lo, hi = np.log10(np.nanmin(x)), np.log10(np.nanmax(x))
    return np.logspace(lo - extend, hi + extend, n)


def _ylim_to(ax, values, pad: float = 1.25) -> None:
    """Limit the (log) y axis to ``values`` (points and fitted lines) padded by ``pad``: a wide
    bootstrap band is clipped rather than squashing the data."""
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v):
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, v.min() / pad), min(hi, v.max() * pad))


def _draw_fit(
    ax, fit, x: np.ndarray, style: dict, level: float = LEVEL, band: bool = True
) -> np.ndarray:
    """The law as a line over a dense grid beyond the data, and its bootstrap band; returns
    the line's values (for the axis limits)."""
    return _draw_pred(ax, fit.predict(_grid(x), level=level), style, band)


def _draw_pred(ax, pred: pd.DataFrame, style: dict, band: bool = True) -> np.ndarray:
    """A prediction table (``Fit.predict``: x, y, y_lo, y_hi) as a line and its band."""
    ax.plot(pred["x"], pred["y"], color=style["color"], linewidth=1.4, zorder=2)
    if band:
        ax.fill_between(
            pred["x"],
            pred["y_lo"],
            pred["y_hi"],
            color=style["color"],
            alpha=0.18,
            linewidth=0,
            zorder=1,
        )
    return pred["y"].to_numpy(float)


def _fmt(v: float) -> str:
    """Three significant figures; scientific outside [1e-3, 1e4)."""
    if not np.isfinite(v):
        return "nan"
    if v != 0 and not 1e-3 <= abs(v) < 1e4:
        return f"{v:.2e}"
    d = 0 if v == 0 else max(0, 2 - math.floor(math.log10(abs(v))))
    return f"{v:.{d}f}"


def _fmt_ci(est: float, lo: float, hi: float) -> str:
    return f"{_fmt(est)} [{_fmt(lo)}, {_fmt(hi)}]"


# ----------------------------------------------------------------------------- fits


# ----------------------------------------------------------------------------- rows per fit


def _budget_col(df: pd.DataFrame) -> str | None:
    """The token-budget column: ``train_tokens_target`` (the budget label) when the table has
    it, else ``train_tokens``; None without either."""
    for c in (TOKENS_TARGET, TOKENS):
        if c in df and df[c].notna().any():
            return c
    return None


def _multi_budget(df: pd.DataFrame) -> bool:
    """Whether some size was trained for several token budgets (the table has a token axis)."""
    b = _budget_col(df)
    return b is not None and N in df and bool((df.groupby(N)[b].nunique() > 1).any())


def _loss_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the loss-vs-N figures draw as points: with several token budgets per size, only
    each size's largest budget (its longest-trained models); otherwise every row."""
    if not _multi_budget(df):
        return df
    b = _budget_col(df)
    return df[df[b] == df.groupby(N)[b].transform("max")]


def _d_col(df: pd.DataFrame) -> str | None:
    """The D column of an L(N, D) fit: ``train_tokens`` (tokens actually trained on) when the
    table has it, else the budget label ``train_tokens_target``."""
    return TOKENS if TOKENS in df and df[TOKENS].notna().any() else _budget_col(df)


def _loss_design(df: pd.DataFrame) -> tuple[pd.DataFrame, Quantity, str | None]:
    """The rows, the law and the D column of the per-precision loss fit, on lr-selected rows:
    with a token axis (``_multi_budget``) the ``chinchilla`` L(N, D) on every row with a D (an
    L(N) on each size's largest budget would mix tokens per parameter, in an IsoFLOP design
    very different ones); otherwise the ``saturating`` L(N) on every row."""
    if _multi_budget(df):
        dc = _d_col(df)
        return df[df[dc].notna()], LOSS_ND, dc
    return df, _Q["loss"], None


def _latency_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose latency was measured (``latency_from_point_id == point_id``) when the table
    says which; other rows copy a measurement and would count it several times."""
    if TIMED in df and "point_id" in df and df[TIMED].notna().any():
        return df[df[TIMED].astype(str) == df["point_id"].astype(str)]
    return df


def _auto_cluster(df: pd.DataFrame):
    """The bootstrap's cluster for loss fits: (N, seed) (one trained model with all its
    token-budget branches, which share a trunk) when the table has a token axis or several
    seeds; None (rows) otherwise."""
    if SEED in df and N in df and (_multi_budget(df) or df[SEED].nunique() > 1):
        return [N, SEED]
    return None


def _select(df: pd.DataFrame) -> tuple[pd.DataFrame, list, pd.DataFrame | None]:
    """Rows at the learning rate chosen per (size, budget) on the selection split
    (``analysis.select_lr``), notes, and the choices (None with one lr)."""
    if LR not in df or df[LR].nunique() <= 1 or N not in df:
        return df, [], None
    if SELECT not in df or df[SELECT].isna().all():
        return df, [f"several learning rates and no {SELECT}: all lrs pooled"], None
    ch = analysis.lr_choices(df)
    notes = [f"learning rate chosen per (size, budget) on {SELECT} (lowest mean over seeds)"]
    edge = ch[ch["edge"] != ""]
    for r in edge.itertuples():
        notes.append(
            f"lr {r.lr:g} chosen at N={_fmt_n(getattr(r, N))}"
            + (f", budget {getattr(r, TOKENS_TARGET):.3g}" if TOKENS_TARGET in ch else "")
            + f" is at the {r.edge} edge of the grid tried: the optimum may lie outside it"
        )
    return analysis.select_lr(df), notes, ch


def _ref_precision(df: pd.DataFrame) -> str | None:
    """The precision the loss-axis fits use: fp32 when present, else the first in the order."""
    g = _groups(df) if len(df) else []
    return g[0] if g else None


# ----------------------------------------------------------------------------- fits


@dataclass
class Fits:
    """Every law fitted for the figures and the table, fitted once and shared.

    ``fits[quantity][precision]`` is an ``analysis`` fit; ``extrapolation[quantity][precision]``
    the leave-``k``-largest-sizes-out check (columns x, y, y_pred, y_lo, y_hi, rel_error,
    n_fit_points); ``notes`` one line per fit that could not be made, and why.

    The token and compute axes (on the ``precision_ref`` rows, fp32 when present):
    ``isoflop`` (``analysis.IsoFLOP``, approach 2), ``chinchilla`` (a ``chinchilla`` fit of
    L(N, D), approach 3), ``comparison`` (``analysis.compare_approaches``), ``seed_spread`` (one
    row per replicated (N, budget): N, budget, n_seeds, mean, sd of the loss in nats/token),
    ``lr_choices`` (``analysis.lr_choices``, None with one lr). ``loss_form`` is the loss law
    fitted per precision (``saturating`` L(N), or ``chinchilla`` L(N, D) on a table with a token
    axis, with D from column ``loss_d``); ``loss_basis`` says which rows it saw,
    ``latency_basis`` which rows the latency laws saw; ``loss_unit`` and ``latency_unit`` what
    their bootstraps resampled.  ``selection[quantity]``: ``analysis.select_form`` of the
    candidate forms (``CANDIDATES``) on the reference precision's rows: AICc and leave-largest-
    out error, so the table says whether the form drawn is the one the data support.
    ``precision_law``: the loss cost of the formats, ``degradation.fit_precision_law`` of the
    paired deltas against fp32 (None when the table has fewer than two bit widths).
    """

    fits: dict = field(default_factory=dict)
    extrapolation: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    n_bootstrap: int = 1000
    level: float = LEVEL
    k: int = 2
    isoflop: object = None
    chinchilla: object = None
    comparison: object = None
    seed_spread: object = None
    lr_choices: object = None
    selection: dict = field(default_factory=dict)
    forms: dict = field(default_factory=dict)
    latency_regime: dict = field(default_factory=dict)
    form_reasons: dict = field(default_factory=dict)
    # latency quantity -> precision -> (form, {candidate: error predicting the largest fitted
    # size from the smaller ones}, sizes held out; 0: not chosen out of sample): each
    # precision's own form, on a latency ladder (``_precision_form``)
    precision_forms: dict = field(default_factory=dict)
    size_differences: object = None
    precision_law: object = None  # jscale.degradation.PrecisionLaw, when the formats identify it
    precision_ref: str | None = None
    loss_form: str = "saturating"
    loss_d: str | None = None
    loss_basis: str = "every row"
    latency_basis: str = "every row"
    loss_unit: str = "rows"
    latency_unit: str = "rows"

    def get(self, quantity: str, precision: str):
        return self.fits.get(quantity, {}).get(precision)


def _seed_spread(d: pd.DataFrame) -> pd.DataFrame | None:
    b = _budget_col(d)
    if SEED not in d or b is None or d[SEED].nunique() < 2:
        return None
    g = d.groupby([N, b])[LOSS].agg(n_seeds="count", mean="mean", sd="std").reset_index()
    g = g[g["n_seeds"] >= 2].rename(columns={b: "budget"})
    return g.reset_index(drop=True) if len(g) else None


def _fit_axes(df: pd.DataFrame, out: Fits, n_bootstrap: int, seed: int, level: float, qs) -> None:
    """IsoFLOP, chinchilla, their comparison and the seed spread on the reference precision."""
    ref = _ref_precision(df)
    out.precision_ref = ref
    if ref is None or N not in df or LOSS not in df:
        return
    d = df[(df[PRECISION] == ref) & df[N].notna() & df[LOSS].notna()]
    cl = _auto_cluster(d)
    if "isoflop" in qs and COMPUTE in d and d[COMPUTE].notna().any():
        dc = d[d[COMPUTE].notna()]
        n_sizes = dc.groupby(COMPUTE)[N].nunique()
        few = n_sizes[n_sizes < 3]
        for c, k in few.items():
            out.notes.append(
                f"isoflop: budget C={c:.3g} has {k} size{'s' * (k > 1)} (needs 3); left out"
            )
        dc = dc[~dc[COMPUTE].isin(few.index)]
        if len(dc):
            try:
                out.isoflop = analysis.isoflop(
                    dc, n_bootstrap=n_bootstrap, cluster=cl, seed=seed, level=level
                )
            except (ValueError, ArithmeticError) as e:
                out.notes.append(f"isoflop: no fit ({e})")
        if out.isoflop is not None:
            for r in out.isoflop.budgets.itertuples():
                if not r.interior:
                    out.notes.append(
                        f"isoflop: budget C={r.C:.3g} has no interior minimum ({r.reason}); "
                        "left out of the frontier"
                    )
            if not out.isoflop.frontier_ok:
                out.notes.append(f"isoflop: no frontier ({out.isoflop.frontier_note})")
    if "chinchilla" in qs and _multi_budget(d) and TOKENS in d:
        dd = d.dropna(subset=[TOKENS])
        same = out.get("loss", ref)  # the per-precision loss law, when it is this very fit
        form = same.form if same is not None and same.form in analysis.ND_FORMS else "chinchilla"
        if (
            same is not None
            and same.form in analysis.ND_FORMS
            and out.loss_d == TOKENS
            and same.n_points == len(dd)
            and same.n_bootstrap == n_bootstrap
            and same.level == level
            and same.bootstrap_unit == analysis._cluster_name(dd, cl)
        ):
            out.chinchilla = same
        else:
            try:
                out.chinchilla = analysis.fit(
                    dd,
                    form=form,
                    d=TOKENS,
                    n_bootstrap=n_bootstrap,
                    seed=seed,
                    level=level,
                    cluster=cl,
                )
            except (ValueError, ArithmeticError, RuntimeError) as e:
                out.notes.append(f"chinchilla: no L(N, D) fit ({e})")
    if out.isoflop is not None and out.chinchilla is not None:
        out.comparison = analysis.compare_approaches(out.isoflop, out.chinchilla)
    out.seed_spread = _seed_spread(d)


def fit_all(
    df: pd.DataFrame,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
    k: int = 2,
    quantities=("loss", "decode", "prefill", "isoflop", "chinchilla", "precision_law"),
    log=None,
    documents: pd.DataFrame | None = None,
    ladder: pd.DataFrame | None = None,
) -> Fits:
    """Fit each quantity's law (``QUANTITIES``) per inference precision, with ``n_bootstrap``
    bootstrap resamples, and the extrapolation check that holds out the ``k`` largest sizes;
    with ``"isoflop"`` and ``"chinchilla"`` in ``quantities``, the compute-optimal fits too
    (where the table has a compute budget / a token axis). Failures become ``notes`` (and are
    passed to ``log``).

    Rows: with several learning rates, those chosen on the selection split
    (``analysis.select_lr``). The loss law is the saturating L(N) = E + A N^-alpha on every row,
    or, when the table has a token axis (some size trained for several budgets), the Chinchilla
    L(N, D) = E + A N^-alpha + B D^-beta on every row (a law in N alone would mix models trained
    for different tokens per parameter, and in an IsoFLOP design D/N differs from size to size:
    its alpha would describe the design's path, not N). Its extrapolation check holds out every
    budget of the ``k`` largest sizes. Latency laws see only the timed rows
    (``latency_from_point_id == point_id``). Loss bootstraps resample (N, seed) clusters when
    the table has a token axis or several seeds (the budget branches of one model share a
    trunk), rows otherwise; latency bootstraps resample rows. On the reference precision the
    L(N, D) loss law is the approach 3 fit (``chinchilla``): it is fitted once.

    ``ladder``: the sweep's latency ladder (``jscale.load_ladder``: random-weight models timed
    in every precision over decades of N).  When given, the latency laws are fitted on it
    instead of on the trained models, whose few small sizes sit in cache."""
    df = _prepare(df)
    lad = _prepare(ladder) if ladder is not None and len(ladder) else None
    out = Fits(n_bootstrap=n_bootstrap, level=level, k=k)
    if N not in df:
        out.notes.append(f"no fits: the results table lacks column {N}")
        return out
    df, lr_notes, out.lr_choices = _select(df)
    out.notes += lr_notes
    loss_df, loss_q, out.loss_d = _loss_design(df)
    out.loss_form = loss_q.form
    if loss_q.form in analysis.ND_FORMS:
        out.loss_basis = f"every token budget (D = {out.loss_d})"
    if lad is not None:
        out.latency_basis = (
            f"the latency ladder ({lad[N].nunique()} random-weight models, N "
            f"{_fmt_n(lad[N].min())} .. {_fmt_n(lad[N].max())})"
        )
    elif _latency_rows(df) is not df:
        out.latency_basis = "the timed rows (latency_from_point_id == point_id)"
    cl, ref = _auto_cluster(loss_df), _ref_precision(df)
    out.precision_ref = ref
    out.loss_unit = analysis._cluster_name(loss_df, cl)
    for qname in (q for q in quantities if q in _Q):
        q = loss_q if qname == "loss" else _Q[qname]
        src = lad if qname != "loss" and lad is not None else df
        if q.column not in src or src[q.column].isna().all():
            out.notes.append(f"{qname}: no fit, the results table lacks column {q.column}")
            continue
        rows = loss_df if qname == "loss" else (lad if lad is not None else _latency_rows(df))
        ckw = {"cluster": cl} if qname == "loss" and cl is not None else {}
        dkw = {"d": out.loss_d} if qname == "loss" and out.loss_d else {}
        if qname != "loss":
            rows = (
                _ladder_region(rows, qname, out)
                if lad is not None
                else _above_cache(rows, qname, out)
            )
        on_ref = rows[(rows[PRECISION] == ref) & rows[N].notna() & rows[q.column].notna()]
        q = _choose_form(on_ref, q, out, dkw)
        out.forms[qname] = q
        if qname == "loss":
            out.loss_form = q.form
        per_precision = lad is not None and qname in ("decode", "prefill")
        q_ref = q
        for prec in _groups(src):
            q, k_top = q_ref, k
            d = rows[(rows[PRECISION] == prec) & rows[N].notna() & rows[q.column].notna()]
            if per_precision:  # each precision's latency bends its own way (docs/latency.md)
                form, inner, k_chose = _precision_form(d, q, k)
                out.precision_forms.setdefault(qname, {})[prec] = (form, inner, k_chose)
                k_top = k_chose or k  # the check predicts the sizes the choice left out
                q = replace(q, form=form, law=LAWS[form])
            # L(N, D) resamples are ~3x dearer than L(N): one L-BFGS start per resample (the
            # full-data optimum) except on the reference precision, whose fit is also approach 3
            # (``chinchilla``) and keeps the default; the intervals barely move (docs/figures.md)
            nd = q.form in analysis.ND_FORMS
            one = {"bootstrap_starts": ND_BOOTSTRAP_STARTS} if nd else {}
            skw = one if prec != ref else {}
            try:
                f = analysis.fit(
                    d,
                    form=q.form,
                    x=N,
                    y=q.column,
                    n_bootstrap=n_bootstrap,
                    seed=seed,
                    level=level,
                    **ckw,
                    **dkw,
                    **skw,
                )
                out.fits.setdefault(qname, {})[prec] = f
                out.notes += [f"{qname} {prec}: weakly identified: {w}" for w in f.warnings]
            except (ValueError, ArithmeticError, RuntimeError) as e:
                out.notes.append(
                    f"{qname} {prec}: no {q.form} fit ({e}); points drawn without the law"
                )
                continue
            for kk in range(k_top, 0, -1):  # hold out fewer sizes when k leave too few to fit
                try:
                    # the band of a prediction is drawn for the loss only; latency needs just y_pred
                    nb = n_bootstrap if qname == "loss" else 0
                    with np.errstate(over="ignore"):  # the held-out fit's params are not used
                        ex = analysis.extrapolation_check(
                            d,
                            form=q.form,
                            x=N,
                            y=q.column,
                            k=kk,
                            n_bootstrap=nb,
                            seed=seed,
                            level=level,
                            **(ckw if nb else {}),
                            **dkw,
                            **one,
                        )
                except (ValueError, ArithmeticError, RuntimeError) as e:
                    err = e
                    continue
                out.extrapolation.setdefault(qname, {})[prec] = ex.assign(k=kk)
                worst = float(np.max(np.abs(ex["y_pred"] / ex["y"] - 1)))
                if qname != "loss" and worst > PREDICTS_WITHIN:
                    out.notes.append(
                        f"{qname} {prec}: the law fitted without the {kk} largest size(s) misses "
                        f"them by {worst:.0%} (more than {PREDICTS_WITHIN:.0%}): it describes "
                        "the ladder, it does not predict beyond it (efficiency changes with N)"
                    )
                if kk < k:
                    out.notes.append(
                        f"{qname} {prec}: extrapolation check holds out the {kk} largest "
                        f"size{'s' * (kk > 1)}, not {k} (too few sizes)"
                    )
                break
            else:
                out.notes.append(f"{qname} {prec}: no extrapolation check ({err})")
        if per_precision and out.precision_forms.get(qname):
            _precision_form_reason(out, qname, k)
        if qname != "loss":
            _extrapolation_reach(out, qname, rows)
    _fit_axes(df, out, n_bootstrap, seed, level, quantities)
    if "precision_law" in quantities:
        _fit_precision_law(loss_df, out, n_bootstrap, seed, level)
    if documents is not None and len(documents) and out.precision_ref is not None:
        ref = loss_df[loss_df[PRECISION] == out.precision_ref]
        try:
            out.size_differences = analysis.paired_differences(ref, documents)
        except (ValueError, KeyError) as e:
            out.notes.append(f"paired size differences: none ({e})")
    if log is not None:
        for n in out.notes:
            log(n)
    return out


def _extrapolation_reach(out: Fits, qname: str, rows: pd.DataFrame) -> None:
    """A note saying how far the latency extrapolation checks of ``qname`` reach: the held-out
    sizes as multiples of the largest size fitted without them (per distinct held-out set; the
    precisions of a ladder share one)."""
    seen = set()
    for ex in out.extrapolation.get(qname, {}).values():
        held = tuple(sorted(ex["x"].unique()))
        if not held or held in seen:
            continue
        seen.add(held)
        fitted = rows.loc[rows[N] < held[0], N]
        if not len(fitted):
            continue
        top = float(fitted.max())
        reach = " and ".join(f"{_fmt_n(x)} ({x / top:.1f}x)" for x in held)
        out.notes.append(
            f"{qname}: the extrapolation check predicts N = {reach}, from sizes up to {_fmt_n(top)}"
        )


def _fit_precision_law(df: pd.DataFrame, out: Fits, n_bootstrap: int, seed: int, level) -> None:
    """``out.precision_law`` from the table's paired deltas when it has two of the law's formats
    (``degradation.DEFAULT_FORMATS``; else nothing to fit, silently); a note when the fit is
    refused."""
    if DELTA not in df or PRECISION not in df:
        return
    fams = {degradation.family(p) for p in df[PRECISION].unique()}
    if len(fams & set(degradation.DEFAULT_FORMATS)) < 2:
        return
    try:  # at most 500 resamples: percentile intervals of a 2-4 parameter fit need no more
        out.precision_law = degradation.fit_precision_law(
            df, n_bootstrap=min(n_bootstrap, 500), seed=seed, level=level
        )
    except analysis.AnalysisError as e:
        out.notes.append(f"precision law: no fit ({e})")
        return
    out.notes += [f"precision law: {w}" for w in out.precision_law.warnings]


PREDICTS_WITHIN = 0.15  # a latency law whose held-out error is larger is flagged as not predictive
LATENCY_MIN_ABOVE_CACHE = 4  # sizes above the cache a latency law needs to leave the rest out
LADDER_MIN_SIZES = 5  # ladder sizes a latency law needs to leave the others out
# A latency law is fitted on the top of the ladder: the large-class sizes within this factor of
# the largest (1.3 decades).  Below it latency is set by other things than streaming the weights
# (per-call dispatch, caches, kernels still ramping up: the efficiency panel shows where), and
# a law bent by them does not extrapolate upward, which is what a latency law is for.
LADDER_FIT_SPAN = 20.0


def _top_of_ladder(rows: pd.DataFrame) -> pd.Series:
    """Per row, whether it is on the top of the ladder: the large formulation class, N within
    ``LADDER_FIT_SPAN`` of the largest large-class N."""
    large = rows["formulation_class"] == "large"
    if not large.any():
        return large
    return large & (rows[N] >= rows.loc[large, N].max() / LADDER_FIT_SPAN)


def _ladder_region(rows: pd.DataFrame, qname: str, out: Fits) -> pd.DataFrame:
    """The ladder rows a latency law is fitted on: the top of the ladder (the ``large``
    formulation class, ``formulation_class``, with N within ``LADDER_FIT_SPAN`` of the
    largest) when every precision has ``LADDER_MIN_SIZES`` sizes there; else the whole large
    class when it has that many; else all rows.  ``out.latency_regime[qname]`` and a note say
    which."""
    if "formulation_class" not in rows or rows["formulation_class"].isna().all():
        out.latency_regime[qname] = "every ladder size"
        return rows
    precs = rows[PRECISION].unique()

    def enough(part):
        return part.groupby(PRECISION)[N].nunique().reindex(precs).fillna(0).min() >= (
            LADDER_MIN_SIZES
        )

    large = rows[rows["formulation_class"] == "large"]
    top = rows[_top_of_ladder(rows)]
    drawn = rows[N].nunique()
    if len(top) and enough(top):
        out.latency_regime[qname] = "top of the ladder"
        out.notes.append(
            f"{qname}: fitted on the top of the ladder, the {top[N].nunique()} sizes from "
            f"{_fmt_n(top[N].min())} (within {LADDER_FIT_SPAN:g}x of the largest; large "
            f"formulation class); the {drawn - top[N].nunique()} smaller ones are drawn, not "
            "fitted: below, dispatch, caches and kernel ramp-up set the latency"
        )
        return top
    if not enough(large):
        out.latency_regime[qname] = "every ladder size"
        out.notes.append(
            f"{qname}: fewer than {LADDER_MIN_SIZES} large-class ladder sizes per precision: "
            "the law is fitted on every size, across the change of formulation"
        )
        return rows
    out.latency_regime[qname] = "large class"
    out.notes.append(
        f"{qname}: fitted on the {large[N].nunique()} ladder sizes of the large formulation class "
        f"(N >= {_fmt_n(large[N].min())}: one autotuned formulation per precision, weights "
        f"streamed); the {drawn - large[N].nunique()} small ones are drawn, not fitted (fewer "
        f"than {LADDER_MIN_SIZES} sizes within {LADDER_FIT_SPAN:g}x of the largest)"
    )
    return large


def _above_cache(rows: pd.DataFrame, qname: str, out: Fits) -> pd.DataFrame:
    """The latency rows a law is fitted on: those above the measured cache
    (``analysis.cache_resident``) when every precision has ``LATENCY_MIN_ABOVE_CACHE`` sizes
    there, else all of them; either way ``out.latency_regime[qname]`` and a note say which."""
    cr = analysis.cache_resident(rows)
    if cr is None:
        out.latency_regime[qname] = "cache not measured"
        return rows
    cache = rows["roofline_cache_bytes"].max()
    if not cr.any():
        out.latency_regime[qname] = "above the cache"
        return rows
    above = rows[~cr]
    n_above = above.groupby(PRECISION)[N].nunique().reindex(rows[PRECISION].unique()).fillna(0)
    if n_above.min() >= LATENCY_MIN_ABOVE_CACHE:
        out.latency_regime[qname] = "above the cache"
        out.notes.append(
            f"{qname}: fitted on the models above the measured cache ({cache / 2**20:.0f} MiB); "
            f"{int(cr.sum())} cache-resident row(s) drawn, not fitted"
        )
        return above
    out.latency_regime[qname] = "cache-resident"
    out.notes.append(
        f"{qname}: {int(cr.sum())} of {len(rows)} timed models fit in the measured cache "
        f"({cache / 2**20:.0f} MiB; weights + KV cache), too few above it to fit there: the law "
        "describes per-call overhead and cache reads, and does not extrapolate past the cache"
    )
    return rows


# The forms each quantity's law is chosen from (``Fits.selection``), the default first.
CANDIDATES = {
    "loss": ("saturating", "power"),
    "decode": ("affine", "power", "offset_power"),
    "prefill": ("affine", "power", "offset_power"),
}
# The loss law on a token axis: with a floor E, or without one where the data do not bound it
# (a short ladder far above its floor); the same compute-optimal allocation either way.
CANDIDATES_ND = ("chinchilla", "chinchilla_no_floor")


FORM_TIE = 0.02  # latency forms whose held-out errors are this close: the simpler one is used


def _two_point_error(xs, ys, form: str) -> float:
    """Relative error predicting ``ys[-1]`` at ``xs[-1]`` from the two points before it, through
    which a two-parameter latency form passes exactly (``affine``: the line; ``power``: the
    log-log line); NaN for other forms."""
    (x1, x2, x3), (y1, y2, y3) = xs[-3:], ys[-3:]
    if form == "affine":
        pred = y2 + (y2 - y1) / (x2 - x1) * (x3 - x2)
    elif form == "power":
        pred = y2 * (x3 / x2) ** (np.log(y2 / y1) / np.log(x2 / x1))
    else:
        return float("nan")
    return float(pred / y3 - 1)


def _precision_form(d: pd.DataFrame, q: Quantity, k: int) -> tuple[str, dict, int]:
    """One precision's latency form, chosen without its ``kk`` largest sizes (which the
    extrapolation check then predicts, so that check stays out of sample; ``kk`` is the
    largest of ``k .. 1`` that leaves 3 sizes): each candidate of ``CANDIDATES[q.name]``
    predicts the largest of the remaining sizes from the smaller ones (a fit when they leave a
    degree of freedom, else the exact two-point law of ``_two_point_error``); the lowest
    absolute error wins, within 2 points the fewest parameters, then the first candidate
    (``affine``: the physics of streamed weights).  ``(form, {candidate: signed error or
    NaN}, kk)``; ``(q.form, errors, 0)`` when no candidate could be checked (fewer than 4
    sizes, or every check failed): then the form was chosen on every size."""
    per_size = d.groupby(N)[q.column].median().sort_index()
    xs, ys = per_size.index.to_numpy(float), per_size.to_numpy(float)
    kk = min(k, len(xs) - 3)
    if kk < 1:
        return q.form, {}, 0
    fit_x, fit_y = xs[: len(xs) - kk], ys[: len(ys) - kk]
    errs = {}
    for form in CANDIDATES.get(q.name, (q.form,)):
        n_par = len(analysis._get_form(form).param_names)
        if len(fit_x) - 1 > n_par:
            try:
                with np.errstate(over="ignore"):
                    ex = analysis.extrapolation_check(
                        pd.DataFrame({N: fit_x, "y": fit_y}), form, x=N, y="y", k=1, n_bootstrap=0
                    )
                errs[form] = float(ex["rel_error"].iloc[0])
            except (ValueError, ArithmeticError, RuntimeError):
                errs[form] = float("nan")
        else:
            errs[form] = (
                _two_point_error(fit_x, fit_y, form) if len(fit_x) - 1 == n_par else float("nan")
            )
    ok = {f: abs(e) for f, e in errs.items() if np.isfinite(e)}
    if not ok:
        return q.form, errs, 0
    best = min(ok.values())
    close = [f for f in errs if f in ok and ok[f] <= best + FORM_TIE]  # candidate order
    return min(close, key=lambda f: len(analysis._get_form(f).param_names)), errs, kk


def _precision_form_reason(out: Fits, qname: str, k: int) -> None:
    """``out.form_reasons[qname]``: each precision's form and the errors that chose it."""
    bits = []
    for prec, (form, inner, kk) in out.precision_forms[qname].items():
        errs = ", ".join(f"{f} {e:+.0%}" for f, e in inner.items() if np.isfinite(e))
        if prec not in out.fits.get(qname, {}):
            bits.append(f"{prec} {form}, not fitted (see its note)")
            continue
        if not kk:
            bits.append(
                f"{prec} {form} (too few sizes to choose without the held-out ones: the "
                f"reference precision's form, chosen on every size, so its check is not "
                "out of sample)"
            )
            continue
        held = "" if kk == k else f"; its {kk} largest held out"
        bits.append(f"{prec} {form}" + (f" ({errs}{held})" if errs else ""))
    out.form_reasons[qname] = (
        "per precision, the form that best predicts its largest fitted size from the smaller "
        f"ones (the {k} largest, which the extrapolation check predicts, are not used; within "
        "2 points, the fewest parameters, then the first candidate): " + "; ".join(bits)
    )


PARSIMONY_AICC = 2.0  # a simpler form within this AICc of the best is preferred


def _choose_form(d: pd.DataFrame, q: Quantity, out: Fits, dkw: dict) -> Quantity:
    """``q`` with the form chosen from its candidates on ``d`` (the reference precision's rows):
    the fewest parameters among the forms within ``PARSIMONY_AICC`` of the lowest AICc (the
    data cannot tell those apart; the simplest is the best identified). The ranking goes to
    ``out.selection`` and the choice, with its reason, to ``out.notes``."""
    cands = CANDIDATES_ND if q.form in analysis.ND_FORMS else CANDIDATES.get(q.name, ())
    if q.form not in cands or len(d) == 0:
        return q
    t = analysis.select_form(d, cands, x=N, y=q.column, k=out.k, **dkw)
    out.selection[q.name] = t
    ok = t[(t["error"] == "") & np.isfinite(t["aicc"])]
    if not len(ok):
        return q
    checked = ok[ok["extrap_error"].notna()]
    if q.name in ("decode", "prefill") and len(checked):
        # a latency law is for predicting beyond the ladder: the form whose leave-largest-out
        # error on the reference precision is lowest (within 2 points: the fewest parameters);
        # the other precisions' errors are then out-of-sample checks of that choice.  A form
        # too rich to fit without the largest sizes cannot show that it extrapolates: left out
        err = checked["extrap_error"].abs()
        close = checked[err <= err.min() + FORM_TIE]
        best = close.sort_values(["n_params", "aicc"], kind="stable").iloc[0]
        why = (
            f"lowest leave-{out.k}-largest-out error on {out.precision_ref} "
            f"({abs(best.extrap_error):.0%}; a latency law is for extrapolation)"
        )
        out.form_reasons[q.name] = f"{best.form} ({LAWS[best.form]}): {why}"
        return replace(q, form=best.form, law=LAWS[best.form])
    close = ok[ok["delta_aicc"] <= PARSIMONY_AICC]
    best = close.sort_values(["n_params", "aicc"], kind="stable").iloc[0]
    if best.form == ok.iloc[0].form:
        why = f"lowest AICc on {out.precision_ref}"
        if len(ok) > 1:
            why += f" (next: {ok.iloc[1].form}, delta AICc {ok.iloc[1].delta_aicc:.1f})"
    else:
        why = (
            f"fewest parameters within {PARSIMONY_AICC:g} AICc of the lowest on "
            f"{out.precision_ref} ({ok.iloc[0].form}, delta AICc {best.delta_aicc:.1f})"
        )
    out.form_reasons[q.name] = f"{best.form} ({LAWS[best.form]}): {why}"
    return replace(q, form=best.form, law=LAWS[best.form])


def _fits_for(df, fits: Fits | None, quantities, n_bootstrap: int, seed: int) -> Fits:
    if fits is not None:
        return fits
    return fit_all(df, n_bootstrap=n_bootstrap, seed=seed, quantities=quantities, log=print)


def _alpha_label(fit, prec: str) -> str:
    if fit is None:
        return f"{prec}: no fit"
    lo, hi = fit.intervals["alpha"]
    label = rf"{prec}: $\alpha$ = {_fmt_ci(fit.params['alpha'], lo, hi)}"
    if "beta" in fit.params:
        lo, hi = fit.intervals["beta"]
        label += "\n" + " " * (len(prec) + 4) + rf"$\beta$ = {_fmt_ci(fit.params['beta'], lo, hi)}"
    if fit.warnings:  # the reasons are in fits.md and the log
        label += f"\n{' ' * (len(prec) + 4)}(weakly identified: {len(fit.warnings)} warning(s))"
    return label


# ----------------------------------------------------------------------------- figures


def _loss_table(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows the loss-vs-N figures draw as points (lr chosen on the selection split, as
    ``fit_all`` does; each size's largest token budget when some size has several) and a
    footnote saying so ("" when every row)."""
    df = _prepare(df).dropna(subset=[N, LOSS])
    df = _select(df)[0]
    rows = _loss_rows(df)
    if rows is df:
        return rows, ""
    note = "points: each size's largest token budget"
    if COMPUTE in df and df[COMPUTE].notna().any():  # IsoFLOP: D/N differs from size to size
        note += " (IsoFLOP design: D/N varies by size)"
    return rows, note


def _fit_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows ``fit_all`` fitted the loss law on (every precision; in its order)."""
    df = _select(_prepare(df))[0]
    return _loss_design(df)[0].dropna(subset=[N, LOSS])


def _path_d(n, d) -> tuple[np.ndarray, np.ndarray]:
    """A dense grid of N over the points' sizes (the sizes themselves included, so the line
    passes through L at each point's own D) and D along it: log D interpolated linearly in log N
    between the points' own D (the geometric mean over a size's points)."""
    g = pd.DataFrame({"n": np.asarray(n, float), "ld": np.log(np.asarray(d, float))})
    g = g.groupby("n")["ld"].mean()
    grid = np.union1d(_grid(g.index.to_numpy(), extend=0.0), g.index.to_numpy())  # corners kept
    return grid, np.exp(np.interp(np.log(grid), np.log(g.index.to_numpy()), g.to_numpy()))


def loss_vs_params(
    df: pd.DataFrame, *, fits: Fits | None = None, n_bootstrap: int = 1000, seed: int = 0
) -> Figure:
    """(a) Held-out loss (nats/token) vs non-embedding parameters N, log-log, per inference
    precision: every row as a point (± its standard error when ``eval_loss_se_nats`` is
    there), the fitted saturating law L = E + A N^-alpha and its bootstrap band; the legend
    gives alpha with its interval.  With a token axis (several budgets per size) the points are
    each size's largest budget and the law is the L(N, D) = E + A N^-alpha + B D^-beta fitted on
    every budget, drawn along those points' D (log D interpolated in log N between them) with
    its band; the legend gives alpha and beta.  With several precisions and a
    ``delta_loss_vs_fp32_nats`` column, a second panel shows each precision's loss minus fp32's
    (paired, nats/token)."""
    _require(df, "loss_vs_params", [N, LOSS])
    fits = _fits_for(df, fits, ("loss",), n_bootstrap, seed)
    df, basis = _loss_table(df)
    nd = fits.loss_form in analysis.ND_FORMS
    if nd:
        basis = "; ".join(
            b for b in (basis, f"law L(N, D) fitted on every token budget (D = {fits.loss_d})") if b
        )
    style = precision_style(df[PRECISION])
    delta = DELTA
    with_delta = delta in df and df[delta].notna().any() and df[PRECISION].nunique() > 1
    with theme():
        se_col, se_note = _se_column(df, LOSS_SE_DOCS, LOSS_SE)
        basis = "; ".join(b for b in (basis, se_note) if b)
        fig, axes = _new_figure(
            df, 2 if with_delta else 1, width=4.8, height=3.6, legend=3.2, note=basis
        )
        ax = axes[0]
        if with_delta:  # the precisions' laws overlap on a log loss axis: show what each costs
            _delta_panel(axes[1], df, delta, style)
        handles, shown = [], [df[LOSS]]
        for prec in _groups(df):
            d, st, f = df[df[PRECISION] == prec], style[prec], fits.get("loss", prec)
            _points(
                ax,
                d,
                N,
                LOSS,
                st,
                yerr=d[se_col] if se_col in d and d[se_col].notna().all() else None,
            )
            if f is not None and f.form in analysis.ND_FORMS and fits.loss_d in d:
                shown.append(_draw_path(ax, f, d[N], d[fits.loss_d], st, fits.level))
            elif f is not None and f.form not in analysis.ND_FORMS:
                shown.append(_draw_fit(ax, f, d[N].to_numpy(float), st, fits.level))
            else:
                f = None
            handles.append(_handle(st, _alpha_label(f, prec), line=f is not None))
        ax.set_xlabel(N_LABEL)
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title("Loss vs size")
        _ylim_to(ax, np.concatenate([np.asarray(v, float) for v in shown]))
        _log_axis(ax, "x", _n_fmt)
        _log_axis(ax, "y")
        if nd:
            title = (
                rf"fit $L = E + A N^{{-\alpha}} + B D^{{-\beta}}$"
                "\non every token budget, "
                f"{fits.level:.0%} bootstrap band;"
                "\ncurve: L(N, D) along each size's\nlargest budget (the points);"
                "\n"
                rf"precision: $\alpha$, $\beta$ [{fits.level:.0%} interval]"
            )
        else:
            title = (
                rf"fit $L = E + A N^{{-\alpha}}$, {fits.level:.0%} bootstrap band;"
                "\n"
                + ("on each size's largest token budget;\n" if basis else "")
                + rf"precision: $\alpha$ [{fits.level:.0%} interval]"
            )
        _legend(fig, handles, title=title)
    return fig


def _draw_path(ax, fit, n, d, style: dict, level: float = LEVEL) -> np.ndarray:
    """An L(N, D) law along the points' path (N, D): N on a dense grid over the points' sizes,
    D interpolated between theirs (``_path_d``), with its bootstrap band; returns the line."""
    grid, dg = _path_d(n, d)
    return _draw_pred(ax, fit.predict(grid, dg, level=level), style)


def _se_column(df: pd.DataFrame, clustered: str, plain: str) -> tuple[str, str]:
    """The standard-error column the error bars use, and a footnote saying what noise it holds:
    clustered by held-out file when the records have it, else over held-out windows."""
    if clustered in df and df[clustered].notna().all():
        return clustered, "error bars: SE of the held-out sample, clustered by file"
    return plain, "error bars: SE over held-out windows (not clustered by file)"


def _delta_panel(ax, df: pd.DataFrame, delta: str, style: dict) -> None:
    """Loss minus the fp32 loss of the same params on the same held-out sequences (nats/token)
    vs N, with its paired standard error: the cost of each precision, on a linear axis."""
    se = _se_column(df, "delta_loss_vs_fp32_se_docs_nats", DELTA_SE)[0]
    for prec in _groups(df):
        d = df[df[PRECISION] == prec].dropna(subset=[delta])
        if len(d):
            _points(
                ax,
                d,
                N,
                delta,
                style[prec],
                yerr=d[se] if se in d and d[se].notna().all() else None,
            )
            ax.plot(d[N], d[delta], color=style[prec]["color"], linewidth=0.8, alpha=0.6, zorder=2)
    ax.axhline(0, color="0.3", linewidth=0.8, zorder=1)
    ax.set_xlabel(N_LABEL)
    ax.set_ylabel("loss − fp32 loss (nats/token)")
    ax.set_title("Cost of each precision (± paired SE)")
    _log_axis(ax, "x", _n_fmt)


def _fitted_mask(d: pd.DataFrame, regime: str | None) -> pd.Series:
    """Which latency rows the law of ``regime`` (``Fits.latency_regime``) was fitted on."""
    if regime == "large class" and "formulation_class" in d:
        return d["formulation_class"] == "large"
    if regime == "top of the ladder" and "formulation_class" in d:
        return _top_of_ladder(d)
    if regime == "above the cache":
        cr = analysis.cache_resident(d)
        if cr is not None:
            return ~cr
    return pd.Series(True, index=d.index)


def latency_vs_params(
    df: pd.DataFrame,
    *,
    fits: Fits | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ladder: pd.DataFrame | None = None,
) -> Figure:
    """(b) Per-token decode latency (ms/token) and prefill latency (ms/prompt) vs N per
    precision, log-log: medians with q1..q3 bars, the fitted law (the form chosen per quantity,
    ``Fits.forms``, or on a ladder per precision, ``Fits.precision_forms``; drawn over the
    sizes it was fitted on), and the roofline lower bound
    (``decode_bound_ms_per_token``, ``prefill_bound_ms``) dashed in the same colour.

    With ``ladder`` (``jscale.load_ladder``): the points are the latency ladder's
    random-weight models (hollow where the law was not fitted: below the top of the ladder, or the
    small formulation class),
    the trained models' own measurements are crosses, and a third panel shows the decode
    efficiency (roofline bound / measured) vs N.  Without: the trained models, hollow where
    cache-resident (``analysis.cache_resident``).  Draws the panels whose columns exist."""
    src = _prepare(ladder) if ladder is not None and len(ladder) else None
    panels = [
        (q, b, lo, hi)
        for q, b, lo, hi in (
            (
                "decode",
                "decode_bound_ms_per_token",
                "decode_ms_per_token_q1",
                "decode_ms_per_token_q3",
            ),
            ("prefill", "prefill_bound_ms", "prefill_ms_q1", "prefill_ms_q3"),
        )
        if _Q[q].column in (src if src is not None else df)
        and (src if src is not None else df)[_Q[q].column].notna().any()
    ]
    if not panels:
        _require(df, "latency_vs_params", [DECODE, PREFILL])
    _require(df, "latency_vs_params", [N])
    df = _prepare(df)
    if fits is None:
        fits = fit_all(
            df,
            n_bootstrap=n_bootstrap,
            seed=seed,
            quantities=tuple(p[0] for p in panels),
            log=print,
            ladder=src,
        )
    trained = _latency_rows(_select(df)[0])  # each measurement once
    points = src if src is not None else trained
    eff = src is not None and "decode_efficiency" in src and src["decode_efficiency"].notna().any()
    style = precision_style(pd.concat([points[PRECISION], trained[PRECISION]]))
    with theme():
        fig, axes = _new_figure(points, len(panels) + eff)
        handles, any_hollow = [], False
        for ax, (qn, bound, q1, q3) in zip(axes, panels):
            q = _Q[qn]
            dq = points.dropna(subset=[N, q.column])
            shown = [dq[q.column]] + [dq[c] for c in (bound, q1, q3) if c in dq]
            for prec in _groups(dq):
                d, st, f = dq[dq[PRECISION] == prec], style[prec], fits.get(qn, prec)
                yerr = None
                if q1 in d and q3 in d and d[[q1, q3]].notna().all().all():
                    yerr = np.clip(np.vstack([d[q.column] - d[q1], d[q3] - d[q.column]]), 0, None)
                fitted = _fitted_mask(d, fits.latency_regime.get(qn))
                if src is None:  # trained models only: hollow = cache-resident
                    cr = analysis.cache_resident(d)
                    fitted = ~cr if cr is not None else pd.Series(True, index=d.index)
                for part, hollow in ((fitted, False), (~fitted, True)):
                    if part.any():
                        e = None if yerr is None else yerr[:, part.to_numpy()]
                        _points(ax, d[part], N, q.column, st, yerr=e, hollow=hollow)
                any_hollow |= bool((~fitted).any())
                if src is not None and q.column in trained:
                    t = trained[(trained[PRECISION] == prec)].dropna(subset=[N, q.column])
                    if len(t):
                        ax.plot(
                            t[N],
                            t[q.column],
                            linestyle="none",
                            marker="x",
                            markersize=4.5,
                            color=st["color"],
                            alpha=0.8,
                            zorder=3,
                        )
                        shown.append(t[q.column])
                if f is not None:
                    fx = d[_fitted_mask(d, fits.latency_regime.get(qn))][N].to_numpy(float)
                    shown.append(_draw_fit(ax, f, fx, st, fits.level))
                if bound in d and d[bound].notna().any():
                    b = d.groupby(N)[bound].mean().sort_index()
                    ax.plot(
                        b.index,
                        b.to_numpy(),
                        color=st["color"],
                        linestyle="--",
                        linewidth=1.1,
                        zorder=2,
                    )
                if ax is axes[0]:
                    weak = any(
                        getattr(fits.get(qq, prec), "warnings", None)
                        for qq in ("decode", "prefill")
                    )
                    label = prec if f is not None else f"{prec} (no fit)"
                    handles.append(
                        _handle(
                            st, label + (" (weakly identified)" if weak else ""), line=f is not None
                        )
                    )
            ax.set_xlabel(N_LABEL)
            ax.set_ylabel(q.label)
            ax.set_title(
                "Decode (per generated token)" if qn == "decode" else "Prefill (per prompt)"
            )
            _ylim_to(ax, np.concatenate([np.asarray(v, float) for v in shown]))
            _log_axis(ax, "x", _n_fmt)
            _log_axis(ax, "y")
        if eff:
            ax = axes[-1]
            for prec in _groups(src):
                d = src[src[PRECISION] == prec].dropna(subset=[N, "decode_efficiency"])
                d = d.sort_values(N)
                ax.plot(
                    d[N],
                    d["decode_efficiency"],
                    color=style[prec]["color"],
                    marker=style[prec]["marker"],
                    markersize=4.5,
                    linewidth=1.0,
                )
            ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle=":")
            ax.set_xlabel(N_LABEL)
            ax.set_ylabel("decode efficiency (bound / measured)")
            ax.set_title("Decode vs the read-bandwidth bound")
            _log_axis(ax, "x", _n_fmt)
            ax.set_ylim(0, max(1.1, float(np.nanmax(src["decode_efficiency"])) * 1.05))
        handles += [
            Line2D([], [], color="0.3", linestyle="-", label=f"fit {_law_tex(fits)}"),
            Line2D([], [], color="0.3", linestyle="--", label="roofline bound (DRAM)"),
            Line2D([], [], color="0.3", marker="o", linestyle="none", label="median, q1..q3"),
        ]
        if src is not None:
            handles.append(
                Line2D(
                    [],
                    [],
                    color="0.3",
                    marker="x",
                    linestyle="none",
                    label="trained models\n(their own timing)",
                )
            )
        if any_hollow:
            if src is not None:
                regime = fits.latency_regime.get("decode")
                label = {
                    "top of the ladder": "not fitted (below the\ntop of the ladder)",
                    "large class": "not fitted (small\nformulation class)",
                }.get(regime, "not fitted")
            else:
                mib = df["roofline_cache_bytes"].max() / 2**20
                label = f"cache-resident (weights + KV\n<= measured cache, {mib:.0f} MiB)"
            handles.append(
                Line2D(
                    [],
                    [],
                    color="0.3",
                    marker="o",
                    markerfacecolor="none",
                    linestyle="none",
                    label=label,
                )
            )
        _legend(fig, handles, title="precision")
    return fig


def _law_tex(fits: Fits) -> str:
    """The latency laws drawn, as legend text ("$t = c + k N$", or one per panel, or the forms
    used when the precisions have their own)."""
    per = {
        qn: sorted({f.form for f in fits.fits.get(qn, {}).values()}) for qn in ("decode", "prefill")
    }
    forms = list(dict.fromkeys(f for v in per.values() for f in v))

    def tex(form):
        return _TEX_LAW.get(form, LAWS.get(form, form))

    if len(forms) <= 1:
        return tex(forms[0] if forms else "affine")
    if all(len(v) <= 1 for v in per.values()):
        return ", ".join(f"{tex(v[0])} ({qn})" for qn, v in per.items() if v)
    return " or ".join(map(tex, forms)) + "\n(form per precision: fits.md)"


def pareto_frontier(latency, loss) -> np.ndarray:
    """Boolean mask of the points on the Pareto frontier of (latency, loss), both lower is
    better: a point is on it when no other point has latency <= and loss <= with one of
    them strictly lower (so it has the lowest loss at or below its latency).  Identical
    points are all kept; points with a NaN are never on it."""
    lat = np.asarray(latency, dtype=float)
    los = np.asarray(loss, dtype=float)
    if lat.shape != los.shape or lat.ndim != 1:
        raise ValueError(
            f"latency and loss must be 1-D of one length, got {lat.shape} and {los.shape}"
        )
    mask = np.zeros(lat.shape, bool)
    ok = np.flatnonzero(np.isfinite(lat) & np.isfinite(los))
    best, best_lat = np.inf, np.nan
    for i in ok[np.lexsort((los[ok], lat[ok]))]:  # by latency, then loss
        if los[i] < best:
            mask[i], best, best_lat = True, los[i], lat[i]
        elif los[i] == best and lat[i] == best_lat:
            mask[i] = True  # a copy of the frontier point just taken
    return mask


def loss_vs_latency(df: pd.DataFrame) -> Figure:
    """(c) Held-out loss (nats/token) vs decode latency (ms/token), every size and precision,
    log-log, with the Pareto frontier (the lowest loss at or below each latency) as a step
    line across all points; frontier points are labelled with their N."""
    _require(df, "loss_vs_latency", [LOSS, DECODE])
    df = _prepare(df).dropna(subset=[LOSS, DECODE])
    note = ""
    if N in df:
        df, note = _loss_table(df)
    df = df.reset_index(drop=True)
    style = precision_style(df[PRECISION])
    with theme():
        fig, (ax,) = _new_figure(df, 1, width=4.8, height=3.6, note=note)
        handles = []
        for prec in _groups(df):
            d, st = df[df[PRECISION] == prec], style[prec]
            _points(ax, d, DECODE, LOSS, st)
            handles.append(_handle(st, prec, line=False))
        front = df[pareto_frontier(df[DECODE], df[LOSS])].sort_values(DECODE)
        xs = np.append(front[DECODE].to_numpy(), df[DECODE].max())
        ys = np.append(front[LOSS].to_numpy(), front[LOSS].iloc[-1])
        ax.step(xs, ys, where="post", color="0.15", linewidth=1.2, zorder=2.5)
        if N in front:
            for r in front.drop_duplicates(subset=[N]).itertuples():  # one label per size
                ax.annotate(
                    _fmt_n(getattr(r, N)),
                    (getattr(r, DECODE), getattr(r, LOSS)),
                    xytext=(4, 4),
                    textcoords="offset points",
                    fontsize="x-small",
                    color="0.25",
                )
        ax.set_xlabel("decode latency (ms/token)")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title("Loss vs decode latency")
        _log_axis(ax, "x")
        _log_axis(ax, "y")
        handles.append(
            Line2D([], [], color="0.15", linewidth=1.2, label="Pareto frontier\n(labels: N)")
        )
        _legend(fig, handles, title="precision")
    return fig


def loss_vs_memory(df: pd.DataFrame) -> Figure:
    """Held-out loss (nats/token) vs the weights' real bytes (MB = 10^6 bytes), every size and
    precision, log-log, with the Pareto frontier (the lowest loss at or below each size in
    memory) across all formats: the best loss under a memory budget reads off the step line."""
    col = next(
        (c for c in ("param_bytes", "weight_bytes") if c in df and df[c].notna().any()), None
    )
    _require(df, "loss_vs_memory", [LOSS, col or "param_bytes"])
    df = _prepare(df).dropna(subset=[LOSS, col])
    note = ""
    if N in df:
        df, note = _loss_table(df)
    df = df.reset_index(drop=True).assign(_mb=lambda t: t[col] / 1e6)
    style = precision_style(df[PRECISION])
    with theme():
        fig, (ax,) = _new_figure(df, 1, width=4.8, height=3.6, note=note)
        handles = []
        for prec in _groups(df):
            _points(ax, df[df[PRECISION] == prec], "_mb", LOSS, style[prec])
            handles.append(_handle(style[prec], prec, line=False))
        front = df[pareto_frontier(df["_mb"], df[LOSS])].sort_values("_mb")
        xs = np.append(front["_mb"].to_numpy(), df["_mb"].max())
        ys = np.append(front[LOSS].to_numpy(), front[LOSS].iloc[-1])
        ax.step(xs, ys, where="post", color="0.15", linewidth=1.2, zorder=2.5)
        ax.set_xlabel(f"{'params' if col == 'param_bytes' else 'weights'} as stored (MB)")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title("Loss vs memory")
        _log_axis(ax, "x")
        _log_axis(ax, "y")
        handles.append(Line2D([], [], color="0.15", linewidth=1.2, label="Pareto frontier"))
        _legend(fig, handles, title="precision")
    return fig


def precision_cost(df: pd.DataFrame, *, fits: Fits | None = None) -> Figure:
    """What each format costs: the paired loss delta against fp32 (nats/token, ± its paired SE:
    held-out sampling noise, clustered by file when the records have it) vs N (left) and vs
    training tokens per parameter (right), on a symmetric-log axis (deltas near 0 may be
    negative), with the precision law (``Fits.precision_law``) through each fitted format:
    at the data's median tokens per parameter (left) and at its reference size N0 (right)."""
    _require(df, "precision_cost", [N, DELTA, TOKENS])
    df = _prepare(df)
    d = df[(df[PRECISION] != "fp32")].dropna(subset=[DELTA, N, TOKENS])
    if d.empty:
        raise FigureError("precision_cost: no precision other than fp32")
    if fits is None:
        fits = fit_all(df, n_bootstrap=200, quantities=("precision_law",))
    law = fits.precision_law
    se, what = _se_column(d, "delta_loss_vs_fp32_se_docs_nats", DELTA_SE)
    d = d.assign(_tpp=d[TOKENS] / d[N])
    style = precision_style(d[PRECISION])
    note = what + "; "
    note += (
        f"lines: the precision law ({law.form}), fitted on {', '.join(law.formats)}"
        if law is not None
        else f"no precision law (it needs two of {', '.join(degradation.DEFAULT_FORMATS)})"
    )
    with theme():
        fig, axes = _new_figure(df, 2, note=note)
        handles = []
        tpp = float(np.median(d["_tpp"]))
        for prec in _groups(d):
            g, st = d[d[PRECISION] == prec], style[prec]
            yerr = g[se] if se in g and g[se].notna().all() else None
            _points(axes[0], g, N, DELTA, st, yerr=yerr)
            _points(axes[1], g, "_tpp", DELTA, st, yerr=yerr)
            fitted = law is not None and prec in law.formats
            handles.append(
                _handle(st, prec + ("" if fitted or law is None else " (not fitted)"), line=fitted)
            )
            if fitted:
                bits = g["weight_bits"].iloc[0] if "weight_bits" in g else None
                bits = float(degradation.bits_of(prec) if pd.isna(bits) else bits)
                n = np.geomspace(g[N].min(), g[N].max(), 50)
                axes[0].plot(n, law.predict(n, tpp * n, bits), color=st["color"], linewidth=1.2)
                x = np.geomspace(d["_tpp"].min(), d["_tpp"].max(), 50)
                n0 = law.reference["N0"]
                axes[1].plot(x, law.predict(n0, x * n0, bits), color=st["color"], linewidth=1.2)
        for ax in axes:
            ax.set_yscale("symlog", linthresh=1e-4, linscale=0.5)
            ax.axhline(0, color="0.3", linewidth=0.8, zorder=1)
            ax.set_ylabel("loss − fp32 loss (nats/token)")
        axes[0].set_xlabel(N_LABEL)
        axes[0].set_title(f"Cost vs N (law at D/N = {tpp:.2g})")
        _log_axis(axes[0], "x", _n_fmt)
        axes[1].set_xlabel("training tokens per parameter D/N")
        n0 = _fmt_n(law.reference["N0"]) if law is not None else "-"
        axes[1].set_title(f"Cost vs D/N (law at N = {n0})")
        _log_axis(axes[1], "x")
        _legend(fig, handles, title="precision")
    return fig


def memory_vs_params(df: pd.DataFrame) -> Figure:
    """(d) Weight bytes and KV-cache bytes (plotted in MB = 10^6 bytes) vs N per precision,
    log-log.  Draws the panels whose columns exist; needs at least one."""
    panels = [
        (c, t)
        for c, t in (("weight_bytes", "weights"), ("kv_cache_bytes", "KV cache"))
        if c in df and df[c].notna().any()
    ]
    if not panels:
        _require(df, "memory_vs_params", ["weight_bytes", "kv_cache_bytes"])
    _require(df, "memory_vs_params", [N])
    df = _prepare(df)
    style = precision_style(df[PRECISION])
    with theme():
        fig, axes = _new_figure(df, len(panels))
        handles = []
        for ax, (col, title) in zip(axes, panels):
            dc = df.dropna(subset=[N, col])
            for i, prec in enumerate(_groups(dc)):
                d, st = dc[dc[PRECISION] == prec], style[prec]
                m = (d.groupby(N)[col].mean() / 1e6).sort_index()
                # later precisions drawn smaller, so coinciding ones (same KV cache) stay visible
                ax.plot(
                    m.index,
                    m.to_numpy(),
                    color=st["color"],
                    marker=st["marker"],
                    markersize=max(8.5 - 1.5 * i, 3),
                    markeredgecolor="white",
                    markeredgewidth=0.5,
                    linewidth=1.1,
                    alpha=0.9,
                )
                if ax is axes[0]:
                    handles.append(_handle(st, prec))
            ax.set_xlabel(N_LABEL)
            ax.set_ylabel(f"{title} (MB)")
            ax.set_title(title[0].upper() + title[1:])
            _log_axis(ax, "x", _n_fmt)
            _log_axis(ax, "y")
        _legend(fig, handles, title="precision")
    return fig


def fit_diagnostics(
    df: pd.DataFrame, *, fits: Fits | None = None, n_bootstrap: int = 1000, seed: int = 0
) -> Figure:
    """(e) The loss fit's checks, per precision: residuals log L - log L_fit vs N (left), and
    the extrapolation check (right): the law fitted without the k largest sizes predicts
    them; plotted as the relative error prediction/actual - 1 (%) with the prediction's
    interval.  With an L(N, D) loss law (a table with a token axis) the residuals are of every
    row (every budget) and the held-out points are every budget of the held-out sizes, side by
    side within each size's slot, small budget to large."""
    _require(df, "fit_diagnostics", [N, LOSS])
    fits = _fits_for(df, fits, ("loss",), n_bootstrap, seed)
    df = _fit_rows(df)  # the rows the loss law was fitted on, in its order
    nd = fits.loss_form in analysis.ND_FORMS
    basis = (
        f"L(N, D) fitted on every token budget (D = {fits.loss_d}): residuals of every row;\n"
        "held-out points: every budget of each held-out size, smaller D to the left"
        if nd
        else ""
    )
    style = precision_style(df[PRECISION])
    with theme():
        fig, (ax, bx) = _new_figure(df, 2, note=basis)
        handles = []
        groups = _groups(df)
        offsets = dict(
            zip(groups, np.linspace(-0.03, 0.03, len(groups)) if len(groups) > 1 else [0.0])
        )
        dodge = dict(
            zip(groups, np.linspace(-0.25, 0.25, len(groups)) if len(groups) > 1 else [0.0])
        )
        width = 0.5 / max(len(groups), 1) if len(groups) > 1 else 0.4  # of one precision's group
        held = sorted(
            {
                float(v)
                for e in fits.extrapolation.get("loss", {}).values()
                if len(e)
                for v in e["x"]
            }
        )
        slot = {v: i for i, v in enumerate(held)}  # one slot per held-out size, labelled with its N
        for prec in groups:
            d, st, f = df[df[PRECISION] == prec], style[prec], fits.get("loss", prec)
            if f is not None and len(f.residuals_log) == len(d):
                r = pd.DataFrame(
                    {
                        N: d[N].to_numpy(float) * 10 ** offsets[prec],  # dodged apart
                        "res": np.asarray(f.residuals_log, float),
                    }
                )
                _points(ax, r, N, "res", st)
            ex = fits.extrapolation.get("loss", {}).get(prec)
            if ex is not None and len(ex):
                y = ex["y"].to_numpy(float)
                rel = 100 * (ex["y_pred"].to_numpy(float) / y - 1)
                lo = 100 * (ex["y_lo"].to_numpy(float) / y - 1)
                hi = 100 * (ex["y_hi"].to_numpy(float) / y - 1)
                xx = (
                    np.array([slot[float(v)] for v in ex["x"]]) + dodge[prec]
                )  # precisions side by side
                if "d" in ex:  # budgets side by side within a precision, small D to large
                    rank = ex.groupby("x")["d"].rank(method="dense").to_numpy(float) - 1
                    many = ex.groupby("x")["d"].transform("nunique").to_numpy(float)
                    xx = xx + width * (rank - (many - 1) / 2) / np.maximum(many, 1)
                _points(
                    bx,
                    pd.DataFrame({"x": xx, "rel": rel}),
                    "x",
                    "rel",
                    st,
                    yerr=np.clip(np.vstack([rel - lo, hi - rel]), 0, None),
                )
            handles.append(_handle(st, prec if f is not None else f"{prec} (no fit)", line=False))
        for a in (ax, bx):
            a.axhline(0, color="0.3", linewidth=0.9, zorder=1)
        ax.set_xlabel(N_LABEL)
        _log_axis(ax, "x", _n_fmt)
        bx.set_xticks(range(len(held)), [_fmt_n(v) for v in held])
        bx.set_xlim(-0.6, max(len(held), 1) - 0.4)
        bx.set_xlabel("held-out size: non-embedding parameters N")
        ax.set_ylabel(r"residual $\log L - \log L_\mathrm{fit}$")
        ax.set_title("Loss-law residuals")
        bx.set_ylabel("prediction / actual − 1 (%)")
        ks = sorted(
            {int(e["k"].iloc[0]) for e in fits.extrapolation.get("loss", {}).values() if len(e)}
            or {fits.k}
        )
        bx.set_title(
            f"Extrapolation: {'/'.join(map(str, ks))} largest size{'s' * (ks[-1] > 1)} held out"
        )
        if not fits.extrapolation.get("loss"):
            bx.text(
                0.5,
                0.5,
                "no extrapolation check\n(too few sizes)",
                transform=bx.transAxes,
                ha="center",
                va="center",
                color="0.4",
            )
        _legend(
            fig,
            handles
            + [
                Line2D(
                    [],
                    [],
                    color="0.3",
                    marker="o",
                    linestyle="none",
                    label=f"prediction, {fits.level:.0%} band",
                )
            ],
            title="precision",
        )
    return fig


# ----------------------------------------------------------------------------- compute axes


def _budget_colors(n: int) -> list:
    """``n`` ordered colours (viridis without its pale yellow end), small to large budget."""
    return sns.color_palette("viridis", n + 1)[:n]


def _fmt_c(c: float) -> str:
    """A FLOP count as 3e+18 -> '3e18'."""
    m, e = f"{c:.2g}".split("e") if "e" in f"{c:.2g}" else (f"{c:.2g}", "0")
    return f"{m}e{int(e)}"


def _ref_rows(df: pd.DataFrame, fits: Fits) -> pd.DataFrame:
    """The rows of the reference precision (as the compute-axis fits saw them)."""
    df = _select(_prepare(df))[0]
    return df[df[PRECISION] == fits.precision_ref] if fits.precision_ref else df.iloc[:0]


def isoflop_curves(
    df: pd.DataFrame, *, fits: Fits | None = None, n_bootstrap: int = 1000, seed: int = 0
) -> Figure:
    """(f) IsoFLOP profiles (approach 2), on the reference precision's rows (fp32 when present).
    Left: loss (nats/token) vs N per compute budget C (one colour each), every model a faint
    marker (seed replicates separately), the fitted parabola in ln N, and its minimum (star) with
    the bootstrap interval of N_opt as a horizontal bar; a budget without an interior minimum is
    dashed, without a star. Right: N_opt vs C, log-log, with the fitted frontier
    N_opt = k C^a and its bootstrap band. Needs ``compute_budget_flops`` with 3+ sizes per
    budget."""
    _require(df, "isoflop_curves", [N, LOSS, COMPUTE])
    fits = _fits_for(df, fits, ("isoflop",), n_bootstrap, seed)
    iso = fits.isoflop
    if iso is None:
        why = next((n for n in fits.notes if n.startswith("isoflop")), "no IsoFLOP fit")
        raise FigureError(f"isoflop_curves: {why}")
    d = _ref_rows(df, fits).dropna(subset=[N, LOSS, COMPUTE])
    tab = iso.budgets
    colors = dict(zip(tab["C"], _budget_colors(len(tab))))
    with theme():
        fig, (ax, bx) = _new_figure(
            d,
            2,
            width=4.6,
            height=3.6,
            legend=2.6,
            note=f"{fits.precision_ref} inference; N_opt intervals: {iso.bootstrap_unit}",
        )
        handles = []
        for r in tab.itertuples():
            col = colors[r.C]
            dc = d[np.isclose(d[COMPUTE], r.C, rtol=1e-9)]
            ax.plot(dc[N], dc[LOSS], "o", color=col, alpha=0.45, markersize=4.5, markeredgewidth=0)
            grid = np.geomspace(r.N_min / 1.3, r.N_max * 1.3, 120)
            ax.plot(
                grid,
                iso.parabola(r.C, grid),
                color=col,
                linewidth=1.4,
                linestyle="-" if r.interior else "--",
            )
            label = f"C = {_fmt_c(r.C)} FLOPs"
            if r.interior:
                xerr = np.array([[r.N_opt - r.N_lo], [r.N_hi - r.N_opt]])
                ax.errorbar(
                    [r.N_opt],
                    [r.L_opt],
                    xerr=np.clip(np.nan_to_num(xerr), 0, None),
                    color=col,
                    marker="*",
                    markersize=11,
                    markeredgecolor="black",
                    markeredgewidth=0.6,
                    capsize=3,
                    elinewidth=1.2,
                    zorder=4,
                )
                bx.errorbar(
                    [r.C],
                    [r.N_opt],
                    yerr=np.clip(
                        np.nan_to_num(np.array([[r.N_opt - r.N_lo], [r.N_hi - r.N_opt]])), 0, None
                    ),
                    color=col,
                    marker="*",
                    markersize=11,
                    markeredgecolor="black",
                    markeredgewidth=0.6,
                    capsize=3,
                    linestyle="none",
                    zorder=4,
                )
            else:
                label += "\n(no interior minimum)"
            handles.append(
                Line2D(
                    [],
                    [],
                    color=col,
                    marker="o",
                    linestyle="-" if r.interior else "--",
                    label=label,
                )
            )
        ax.set_xlabel(N_LABEL)
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title("IsoFLOP profiles")
        _log_axis(ax, "x", _n_fmt)
        if iso.frontier_ok:
            cg = np.geomspace(tab["C"].min() / 2, tab["C"].max() * 2, 60)
            fr = iso.optimal(cg)
            bx.plot(fr["C"], fr["N_opt"], color="0.2", linewidth=1.3, zorder=2)
            if fr["N_lo"].notna().all():
                bx.fill_between(
                    fr["C"], fr["N_lo"], fr["N_hi"], color="0.2", alpha=0.15, linewidth=0
                )
            lo, hi = iso.a_interval
            flabel = (
                r"frontier $N_\mathrm{opt} \propto C^{a}$"
                + "\n"
                + rf"$a$ = {_fmt_ci(iso.a, lo, hi)}"
            )
        else:
            bx.text(
                0.5,
                0.5,
                f"no frontier\n({iso.frontier_note})",
                transform=bx.transAxes,
                ha="center",
                va="center",
                color="0.4",
                wrap=True,
            )
            flabel = "no frontier"
        bx.set_xlabel("compute budget C (FLOPs)")
        bx.set_ylabel(r"compute-optimal $N_\mathrm{opt}$ (parameters)")
        bx.set_title("IsoFLOP minima and frontier")
        bx.set_xscale("log")
        _log_axis(bx, "y", _n_fmt)
        handles += [
            Line2D(
                [],
                [],
                color="0.3",
                marker="*",
                markersize=10,
                markeredgecolor="black",
                linestyle="none",
                label=f"minimum, {fits.level:.0%} interval",
            ),
            Line2D([], [], color="0.2", linewidth=1.3, label=flabel),
        ]
        _legend(fig, handles, title="budget (faint: one model each)")
    return fig


def loss_vs_tokens(
    df: pd.DataFrame, *, fits: Fits | None = None, n_bootstrap: int = 1000, seed: int = 0
) -> Figure:
    """(g) Loss (nats/token) vs training tokens D, log-log, one colour per size N, on the
    reference precision's rows (fp32 when present): every model a faint marker (seed replicates
    separately), the mean over seeds per (N, D) a solid marker with ± the seed SD when there
    are several, and the fitted L(N, D) = E + A/N^alpha + B/D^beta (approach 3) as a line per
    size with its bootstrap band. Needs several token budgets for some size."""
    _require(df, "loss_vs_tokens", [N, LOSS, TOKENS])
    d0 = _select(_prepare(df))[0]
    if not _multi_budget(d0):
        raise FigureError("loss_vs_tokens: no size was trained for more than one token budget")
    fits = _fits_for(df, fits, ("chinchilla",), n_bootstrap, seed)
    d = _ref_rows(df, fits).dropna(subset=[N, LOSS, TOKENS])
    f = fits.chinchilla
    sizes = np.sort(d[N].unique())
    pal = dict(zip(sizes, sns.color_palette("crest", len(sizes))))
    with theme():
        fig, (ax,) = _new_figure(
            d,
            1,
            width=5.4,
            height=3.8,
            legend=3.0,
            note=f"{fits.precision_ref} inference"
            + (f"; band resamples {f.bootstrap_unit}" if f is not None else ""),
        )
        handles, shown = [], [d[LOSS]]
        for n in sizes:
            dn, col = d[d[N] == n], pal[n]
            ax.plot(
                dn[TOKENS], dn[LOSS], "o", color=col, alpha=0.35, markersize=4, markeredgewidth=0
            )
            m = dn.groupby(TOKENS)[LOSS].agg(["mean", "std", "count"]).reset_index()
            sd = np.where(m["count"] > 1, m["std"], np.nan)
            ax.errorbar(
                m[TOKENS],
                m["mean"],
                yerr=np.nan_to_num(sd) if np.isfinite(sd).any() else None,
                color=col,
                marker="o",
                markersize=5.5,
                markeredgecolor="white",
                markeredgewidth=0.5,
                linestyle="none",
                capsize=2,
                zorder=3,
            )
            if f is not None:
                dg = _grid(dn[TOKENS].to_numpy(float), 80, 0.1)
                p = f.predict(np.full_like(dg, n), dg, level=fits.level)
                ax.plot(dg, p["y"], color=col, linewidth=1.3, zorder=2)
                ax.fill_between(dg, p["y_lo"], p["y_hi"], color=col, alpha=0.15, linewidth=0)
                shown.append(p["y"])
            handles.append(Line2D([], [], color=col, marker="o", label=f"N = {_fmt_n(n)}"))
        ax.set_xlabel("training tokens D")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title("Loss vs training tokens")
        _ylim_to(ax, np.concatenate([np.asarray(v, float) for v in shown]), pad=1.08)
        _log_axis(ax, "x", _n_fmt)
        _log_axis(ax, "y")
        if f is not None:
            a, b = f.params["alpha"], f.params["beta"]
            title = (
                r"fit $L = E + A N^{-\alpha} + B D^{-\beta}$"
                + "\n"
                + rf"$\alpha$ = {_fmt_ci(a, *f.intervals['alpha'])}"
                + "\n"
                + rf"$\beta$ = {_fmt_ci(b, *f.intervals['beta'])}"
                + "\n"
                + f"band: {fits.level:.0%} bootstrap; bars: ±1 SD over seeds"
            )
        else:
            title = "no L(N, D) fit; bars: ±1 SD over seeds"
        handles.append(
            Line2D([], [], color="0.4", marker="o", alpha=0.35, linestyle="none", label="one model")
        )
        _legend(fig, handles, title=title)
    return fig


def compute_optimal(
    df: pd.DataFrame, *, fits: Fits | None = None, n_bootstrap: int = 1000, seed: int = 0
) -> Figure:
    """(h) The compute-optimal allocation vs compute budget C (FLOPs), log-log: N_opt
    (parameters), D_opt (tokens) and tokens per parameter D_opt/N_opt. Approach 2 (IsoFLOP
    minima) as points with their bootstrap intervals (hollow: no interior minimum, not used in
    the frontier) and its frontier as a dashed line; approach 3 (the L(N, D) fit) as a solid line
    with its bootstrap band. Needs at least one of the two."""
    _require(df, "compute_optimal", [N, LOSS])
    fits = _fits_for(df, fits, ("isoflop", "chinchilla"), n_bootstrap, seed)
    iso, f = fits.isoflop, fits.chinchilla
    if iso is None and f is None:
        raise FigureError(
            "compute_optimal: neither an IsoFLOP fit (needs compute_budget_flops) nor an L(N, D) "
            "fit (needs several token budgets per size)"
        )
    d = _ref_rows(df, fits)
    if iso is not None:
        cs = iso.budgets["C"].to_numpy(float)
    else:
        cs = np.unique(
            pd.to_numeric(d.get(COMPUTE, pd.Series(dtype=float)), errors="coerce").dropna()
        )
        if not len(cs):
            cs = np.unique(6.0 * d[N].to_numpy(float) * d[TOKENS].to_numpy(float))
    cg = np.geomspace(cs.min() / 3, cs.max() * 3, 80)
    k6 = iso.flops_per_param_token if iso is not None else 6.0

    def ratio(C, n):  # tokens per parameter at budget C and size n
        return C / (k6 * n * n)

    with theme():
        fig, axes = _new_figure(
            d,
            3,
            width=3.6,
            height=3.4,
            legend=3.0,
            note=f"{fits.precision_ref} inference; C = 6 N D",
        )
        handles = []
        if f is not None:
            ch = analysis.chinchilla_frontier(f, cg, k6)["optimal"]
            lines = (ch["N_opt"], ch["D_opt"], ratio(cg, ch["N_opt"]))
            bands = (
                (ch["N_lo"], ch["N_hi"]),
                (ch["D_lo"], ch["D_hi"]),
                (ratio(cg, ch["N_hi"]), ratio(cg, ch["N_lo"])),
            )
            for ax, y, (lo, hi) in zip(axes, lines, bands):
                ax.plot(cg, y, color="C0", linewidth=1.5, zorder=2)
                if np.isfinite(np.asarray(lo, float)).all():
                    ax.fill_between(cg, lo, hi, color="C0", alpha=0.18, linewidth=0)
            c3 = analysis.chinchilla_frontier(f, (), k6)
            handles.append(
                Line2D(
                    [],
                    [],
                    color="C0",
                    linewidth=1.5,
                    label="approach 3: L(N, D) fit\n"
                    + rf"$a$ = {_fmt_ci(c3['a'], c3['a_lo'], c3['a_hi'])}, {fits.level:.0%} band",
                )
            )
        if iso is not None:
            t = iso.budgets
            for interior, face in ((True, "C1"), (False, "none")):
                r = t[t["interior"] == interior]
                if not len(r):
                    continue
                C = r["C"].to_numpy(float)
                ys = (
                    (r["N_opt"], r["N_lo"], r["N_hi"]),
                    (r["D_opt"], r["D_lo"], r["D_hi"]),
                    (ratio(C, r["N_opt"]), ratio(C, r["N_hi"]), ratio(C, r["N_lo"])),
                )
                for ax, (y, lo, hi) in zip(axes, ys):
                    y, lo, hi = (np.asarray(v, float) for v in (y, lo, hi))
                    err = np.clip(np.nan_to_num(np.vstack([y - lo, hi - y])), 0, None)
                    ax.errorbar(
                        C,
                        y,
                        yerr=err,
                        color="C1",
                        markerfacecolor=face,
                        marker="s",
                        markersize=6,
                        linestyle="none",
                        capsize=3,
                        zorder=4,
                    )
            if iso.frontier_ok:
                fr = iso.optimal(cg)
                for ax, y in zip(axes, (fr["N_opt"], fr["D_opt"], ratio(cg, fr["N_opt"]))):
                    ax.plot(cg, y, color="C1", linestyle="--", linewidth=1.3, zorder=3)
                lab = rf"$a$ = {_fmt_ci(iso.a, *iso.a_interval)}"
            else:
                lab = "no frontier"
            handles.append(
                Line2D(
                    [],
                    [],
                    color="C1",
                    marker="s",
                    linestyle="--",
                    label=f"approach 2: IsoFLOP minima\n{lab}, {fits.level:.0%} intervals",
                )
            )
            if not t["interior"].all():
                handles.append(
                    Line2D(
                        [],
                        [],
                        color="C1",
                        marker="s",
                        markerfacecolor="none",
                        linestyle="none",
                        label="no interior minimum\n(not in the frontier)",
                    )
                )
        for ax, lab, title in zip(
            axes,
            (
                r"$N_\mathrm{opt}$ (parameters)",
                r"$D_\mathrm{opt}$ (tokens)",
                "tokens per parameter D/N",
            ),
            ("Compute-optimal size", "Compute-optimal tokens", "Tokens per parameter"),
        ):
            ax.set_xlabel("compute budget C (FLOPs)")
            ax.set_ylabel(lab)
            ax.set_title(title)
            ax.set_xscale("log")
            _log_axis(ax, "y", _n_fmt if "N" in lab or "D_" in lab else None)
        _legend(fig, handles, title=r"$N_\mathrm{opt} \propto C^{a}$")
    return fig


# ----------------------------------------------------------------------------- tables


def _pct(frac: float) -> str:
    """A signed percentage: one decimal up to 1e4 %, then scientific (a failed extrapolation
    can be off by many orders of magnitude)."""
    p = 100 * frac
    return f"{p:+.1f}" if abs(p) < 1e4 else f"{p:+.1e}"


def _quantity(fits: Fits, q: Quantity) -> Quantity:
    """``q`` as fitted: the form chosen for it (``Fits.forms``; the loss law is the chinchilla
    L(N, D) on a table with a token axis)."""
    return fits.forms.get(q.name, q)


def _table_rows(fits: Fits) -> list[tuple[Quantity, list[dict]]]:
    out = []
    for q in QUANTITIES:
        q = _quantity(fits, q)
        rows = []
        for prec, f in fits.fits.get(q.name, {}).items():
            ex = fits.extrapolation.get(q.name, {}).get(prec)
            rel = (
                (ex["y_pred"] / ex["y"] - 1).to_numpy()
                if ex is not None and len(ex)
                else np.array([np.nan])
            )
            err = float(rel[np.argmax(np.abs(rel))])  # the worst of the held-out sizes, signed
            kk = int(ex["k"].iloc[0]) if ex is not None and len(ex) else fits.k
            rows.append(
                {
                    "precision": prec,
                    # coefficients at the reference size, where the data pin them
                    "params": [(p, f.params_ref[p], *f.intervals_ref[p]) for p in f.param_names],
                    "reference": f.reference,
                    "method": f.interval_method,
                    "clusters": f.n_clusters,
                    "scaled": [
                        p
                        for p in f.param_names
                        if not np.isclose(f.params[p], f.params_ref[p], rtol=1e-9, atol=0)
                    ],
                    "n": int(f.n_points),
                    "r2": float(f.r2_log),
                    "extrap": err,
                    "k_note": "" if kk == fits.k else f" (k={kk})",
                }
            )
        forms = [fits.fits[q.name][r["precision"]].form for r in rows]
        for form in dict.fromkeys(forms):  # one block per form (latency: chosen per precision)
            block = [r for r, f in zip(rows, forms) if f == form]
            out.append((q if form == q.form else replace(q, form=form, law=LAWS[form]), block))
    return out


def _unit_words(fits: Fits, q: Quantity) -> str:
    """What a quantity's bootstrap resampled, in words."""
    unit = fits.loss_unit if q.name == "loss" else fits.latency_unit
    return _unit_text(unit)


def _unit_text(unit: str) -> str:
    if unit.startswith("wild bootstrap-t over clusters of"):
        return unit.replace("clusters of", "models") + " (seed and model noise)"
    if unit.startswith("clusters of"):
        return unit.replace("clusters of", "models") + " (seed and model noise)"
    if unit.startswith("wild residual signs per model"):
        return unit + " (seed and model noise)"
    return unit


def _interval_words(fits: Fits, q: Quantity, rows) -> str:
    """What the intervals of a quantity's table are."""
    methods = {r["method"] for r in rows}
    if methods == {"profile"}:
        if any(r["clusters"] for r in rows):
            return (
                f"{fits.level:.0%} profile-likelihood interval, cluster-robust over "
                f"{_unit_words(fits, q)}, t with clusters - 1 degrees of freedom"
            )
        return (
            f"{fits.level:.0%} profile-likelihood interval (least squares on log y, t-calibrated)"
        )
    unit = _unit_words(fits, q)
    if methods == {"wild"}:
        return f"{fits.level:.0%} {unit}, {fits.n_bootstrap} resamples"
    return f"{fits.level:.0%} bootstrap interval, {fits.n_bootstrap} resamples of {unit}"


def _method_words(f) -> str:
    """How one fit's parameter intervals were made, in words."""
    if f.interval_method == "profile":
        return "profile-likelihood intervals" + (", cluster-robust" if f.n_clusters else "")
    if f.interval_method == "wild":
        return "wild bootstrap-t intervals"
    return f"{f.interval_method} intervals"


def _reference_words(rows) -> str:
    """Where the scaled coefficients of a table are given: at the data's reference size."""
    scaled = sorted({p for r in rows for p in r["scaled"]})
    if not scaled:
        return ""
    ref = rows[0]["reference"]
    at = f"N = {_fmt_n(ref['x'])}" + (f", D = {_fmt_n(ref['d'])}" if "d" in ref else "")
    return f"; {', '.join(scaled)} at the reference size {at} (the data's geometric mean)"


def _basis_words(fits: Fits, q: Quantity) -> str:
    if q.name == "loss" and fits.loss_basis != "every row":
        return f"; fitted on {fits.loss_basis}"
    if q.name != "loss" and fits.latency_basis != "every row":
        return f"; fitted on {fits.latency_basis}"
    return ""


def _axes_rows(fits: Fits) -> list[tuple[str, str, str, str]]:
    """(quantity, approach 2, approach 3, ratio) cells of the compute-optimal section."""
    iso, f, cmp = fits.isoflop, fits.chinchilla, fits.comparison
    rows = []
    if cmp is not None:
        for r in cmp.itertuples():
            name = (
                "a (N_opt ∝ C^a)"
                if r.quantity == "a"
                else "b (D_opt ∝ C^b)"
                if r.quantity == "b"
                else f"N_opt at C = {_fmt_c(r.C)}"
            )
            two = _fmt_ci(r.approach2, r.approach2_lo, r.approach2_hi)
            if r.quantity == "N_opt" and not r.interior:
                two += " (not interior)"
            ratio = _fmt(r.ratio) + (" (intervals disjoint)" if r.agree == 0 else "")
            rows.append((name, two, _fmt_ci(r.approach3, r.approach3_lo, r.approach3_hi), ratio))
        return rows
    if iso is not None:
        rows.append(("a (N_opt ∝ C^a)", _fmt_ci(iso.a, *iso.a_interval), "–", "–"))
        rows.append(("b (D_opt ∝ C^b)", _fmt_ci(iso.b, *iso.b_interval), "–", "–"))
        for r in iso.budgets.itertuples():
            two = _fmt_ci(r.N_opt, r.N_lo, r.N_hi) + ("" if r.interior else " (not interior)")
            rows.append((f"N_opt at C = {_fmt_c(r.C)}", two, "–", "–"))
    elif f is not None:
        c3 = analysis.chinchilla_frontier(f)
        rows.append(("a (N_opt ∝ C^a)", "–", _fmt_ci(c3["a"], c3["a_lo"], c3["a_hi"]), "–"))
        rows.append(("b (D_opt ∝ C^b)", "–", _fmt_ci(c3["b"], c3["b_lo"], c3["b_hi"]), "–"))
    return rows


def _axes_header(fits: Fits) -> str:
    bits = []
    if fits.isoflop is not None:
        bits.append(
            f"approach 2 = IsoFLOP parabolas in ln N per budget, "
            f"{fits.isoflop.n_interior} of {len(fits.isoflop.budgets)} budgets interior, "
            f"intervals: {_unit_text(fits.isoflop.bootstrap_unit)}"
        )
    if fits.chinchilla is not None:
        f = fits.chinchilla
        bits.append(
            f"approach 3 = {LAWS.get(f.form, f.form)} fit, "
            + ", ".join(f"{p} = {_fmt_ci(f.params[p], *f.intervals[p])}" for p in f.param_names)
            + f", {f.n_points} points ({_method_words(f)}); its a, b and N_opt intervals: "
            f"percentiles over {f.n_converged} resamples of {_unit_text(f.bootstrap_unit)}"
        )
    return (
        f"**compute-optimal allocation** ({fits.precision_ref} inference, C = 6 N D; "
        f"estimate [{fits.level:.0%} interval]): " + "; ".join(bits) + "\n"
    )


def _seed_rows(fits: Fits) -> list[tuple[str, str, str, str, str]]:
    sp = fits.seed_spread
    if sp is None:
        return []
    return [
        (_fmt_n(r[N]), _fmt_n(r["budget"]), str(int(r["n_seeds"])), _fmt(r["mean"]), _fmt(r["sd"]))
        for _, r in sp.iterrows()
    ]


def _axes_markdown(fits: Fits) -> list[str]:
    parts = []
    rows = _axes_rows(fits)
    if rows:
        parts.append(_axes_header(fits))
        parts.append("| quantity | approach 2 (IsoFLOP) | approach 3 (L(N, D) fit) | ratio 3/2 |")
        parts.append("|---|---:|---:|---:|")
        parts += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        parts.append("")
    seeds = _seed_rows(fits)
    if seeds:
        parts.append(
            f"**seed spread** ({fits.precision_ref} inference): SD of the held-out loss "
            "(nats/token) across seeds at each replicated (size, token budget)\n"
        )
        parts.append("| N | token budget | seeds | mean loss | SD over seeds |")
        parts.append("|---:|---:|---:|---:|---:|")
        parts += ["| " + " | ".join(r) + " |" for r in seeds]
        parts.append("")
    return parts


def _as_fits(obj, n_bootstrap: int, seed: int) -> Fits:
    return obj if isinstance(obj, Fits) else fit_all(obj, n_bootstrap=n_bootstrap, seed=seed)


def fit_table_markdown(obj, *, n_bootstrap: int = 1000, seed: int = 0) -> str:
    """The fitted parameters with their bootstrap intervals, as Markdown: one table per
    quantity (loss, decode and prefill latency) and form (a latency ladder's precisions may
    each have their own, ``Fits.precision_forms``), one row per precision, with the number of
    points, R^2 in log space and the mean extrapolation error (prediction/actual - 1 on the
    k largest sizes, fitted without them).  ``obj`` is a results DataFrame or ``Fits``."""
    fits = _as_fits(obj, n_bootstrap, seed)
    parts = []
    for q, rows in _table_rows(fits):
        names = [p[0] for p in rows[0]["params"]]
        parts.append(
            f"**{q.label}**: {q.law} ({q.form}); estimate [{_interval_words(fits, q, rows)}]"
            f"{_basis_words(fits, q)}{_reference_words(rows)}\n"
        )
        parts.append(
            "| precision | "
            + " | ".join(names)
            + f" | n | R² (log) | extrap. error (worst of {fits.k} largest) |"
        )
        parts.append("|---|" + "---:|" * (len(names) + 3))
        for r in rows:
            cells = [_fmt_ci(e, lo, hi) for _, e, lo, hi in r["params"]]
            ext = "–" if not np.isfinite(r["extrap"]) else f"{_pct(r['extrap'])}%{r['k_note']}"
            if q.name != "loss" and abs(r["extrap"]) > PREDICTS_WITHIN:
                ext += " (not predictive)"
            parts.append(
                f"| {r['precision']} | "
                + " | ".join(cells)
                + f" | {r['n']} | {r['r2']:.4f} | {ext} |"
            )
        parts.append("")
    if not parts:
        parts = ["(no law could be fitted)", ""]
    parts += _axes_markdown(fits)
    parts += _selection_markdown(fits)
    parts += _differences_markdown(fits)
    parts += _precision_law_markdown(fits)
    parts += [f"- {n}" for n in fits.notes]
    return "\n".join(parts).rstrip() + "\n"


def _precision_law_markdown(fits: Fits) -> list[str]:
    law = fits.precision_law
    if law is None:
        return []
    r, p, iv = law.reference, law.params, law.intervals

    def ci(k):
        v, (lo, hi) = p[k], iv[k]
        if k == "g" and not np.isfinite(v):
            return "not identified"
        if k in ("gD", "gN") and v == 0 and not np.isfinite(lo):
            return "0 (fixed)"
        return f"{v:.3g}" + (f" [{lo:.3g}, {hi:.3g}]" if np.isfinite(lo) else "")

    parts = [
        f"**precision law** (the loss cost of post-training quantization: paired deltas vs fp32, "
        f"weights 1/SE² of `{law.rows['se_column'].iloc[0]}`): {law.law} ({law.form}); fitted "
        f"on the formats whose cost is resolved above the noise ({', '.join(law.formats)}; "
        f"{len(law.rows)} rows); reference N0 = {_fmt_n(r['N0'])}, D0 = {_fmt_n(r['D0'])} "
        f"tokens, P0 = {r['P0']:g} bits; [{law.level:.0%} percentile interval over "
        f"{law.n_bootstrap} resamples of {law.unit}]",
        "",
        "| C (nats at N0, D0, P0) | gD | gN | g (bits) |",
        "|---:|---:|---:|---:|",
        f"| {ci('C')} | {ci('gD')} | {ci('gN')} | {ci('g')} |",
        "",
        "| form | parameters | weighted RSS | AICc | delta AICc |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in law.selection.itertuples():
        star = " *" if row.form == law.form else ""
        parts.append(
            f"| {row.form}{star} | {row.n_params} | {row.wrss:.4g} | {row.aicc:.1f} | "
            f"{row.delta_aicc:.1f} |"
        )
    parts += [
        "",
        "| check | precision | mean delta (nats) | predicted | error |",
        "|---|---|---:|---:|---:|",
    ]
    for name, t in (
        ("leave this format out", law.loo_format),
        (f"leave the largest size out ({_fmt_n(law.rows[N].max())})", law.largest_out),
        ("not fitted (out of family: predicted from its bits)", law.out_of_family),
    ):
        for row in t.itertuples() if len(t) else ():
            parts.append(
                f"| {name} | {getattr(row, PRECISION)} | {row.delta:+.3g} | "
                f"{row.predicted:+.3g} | {_pct(row.rel_error)}% |"
            )
    for row in law.unresolved.itertuples() if len(law.unresolved) else ():
        parts.append(
            f"| not fitted (at the noise level: median delta/SE {row.median_z:.2g}) | "
            f"{getattr(row, PRECISION)} | {row.delta:+.3g} (SE {row.se:.2g}) | – | – |"
        )
    parts.append("")
    return parts


def _differences_markdown(fits: Fits) -> list[str]:
    t = fits.size_differences
    if t is None or not len(t):
        return []
    budget = next((c for c in (COMPUTE, TOKENS_TARGET) if c in t.columns), None)
    parts = [
        f"**adjacent sizes, paired** ({fits.precision_ref}): held-out loss of the larger minus "
        "the smaller model (nats/token), both scored on the same windows; SEs clustered by "
        "held-out document. Paired SE is what a difference between two sizes carries; unpaired "
        f"is the two models' own SEs combined (median ratio {np.nanmedian(t['se_ratio']):.2g}x)\n",
        "| "
        + (("budget (FLOPs) | " if budget == COMPUTE else "budget (tokens) | ") if budget else "")
        + ("seed | " if SEED in t.columns else "")
        + "N small → large | delta | paired SE | unpaired SE | delta / paired SE |",
        "|" + "---:|" * (5 + bool(budget) + (SEED in t.columns)),
    ]
    for r in t.to_dict("records"):
        cells = ([_fmt_n(r[budget])] if budget else []) + (
            [str(int(r[SEED]))] if SEED in t.columns else []
        )
        cells += [
            f"{_fmt_n(r['x_small'])} → {_fmt_n(r['x_large'])}",
            f"{r['delta_nats']:+.4f}",
            f"{r['se_paired_nats']:.4f}",
            f"{r['se_unpaired_nats']:.4f}",
            f"{r['z']:+.1f}",
        ]
        parts.append("| " + " | ".join(cells) + " |")
    return parts + [""]


def _selection_markdown(fits: Fits) -> list[str]:
    if not fits.selection:
        return []
    parts = [
        f"**form selection** ({fits.precision_ref}; no bootstrap): each quantity's candidate "
        "forms, best AICc (on log y) first, with the worst error predicting the "
        f"{fits.k} largest sizes from the rest; the form used (*): the notes below the table "
        "say how it was chosen\n",
        "| quantity | form (parameters) | AICc | delta AICc | extrap. error | warnings |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for qname, t in fits.selection.items():
        used = fits.forms.get(qname)
        if qname in fits.precision_forms and fits.precision_ref in fits.precision_forms[qname]:
            used = replace(used, form=fits.precision_forms[qname][fits.precision_ref][0])
        for r in t.itertuples():
            if r.error:
                parts.append(f"| {qname} | {r.form} | – | – | ({r.error}) | – |")
                continue
            ext = f"{100 * r.extrap_error:.1f}%" if np.isfinite(r.extrap_error) else "–"
            star = " *" if used is not None and used.form == r.form else ""
            parts.append(
                f"| {qname} | {r.form} ({int(r.n_params)}){star} | {r.aicc:.1f} | "
                f"{r.delta_aicc:.1f} | {ext} | {int(r.n_warnings)} |"
            )
    parts.append("")
    parts += [f"- {q}: {why}" for q, why in fits.form_reasons.items()]
    return parts + [""]


_TEX_ESC = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_TEX_PARAM = {
    "alpha": r"$\alpha$",
    "E": "$E$",
    "A": "$A$",
    "B": "$B$",
    "beta": r"$\beta$",
    "c": "$c$",
    "k": "$k$",
    "b": "$b$",
}
_TEX_LAW = {
    "saturating": r"$L = E + A N^{-\alpha}$",
    "chinchilla": r"$L = E + A N^{-\alpha} + B D^{-\beta}$",
    "chinchilla_no_floor": r"$L = A N^{-\alpha} + B D^{-\beta}$",
    "offset_power": r"$t = c + k N^{b}$",
    "power": r"$y = k N^{b}$",
    "affine": r"$t = c + k N$",
}


def tex_escape(s: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_TEX_ESC.get(ch, ch) for ch in str(s))


def _tex_num(v: float) -> str:
    s = _fmt(v)
    if "e" in s:
        m, e = s.split("e")
        return rf"${m}\times10^{{{int(e)}}}$"
    return "--" if s == "nan" else f"${s}$"


def _tex_ci(est: float, lo: float, hi: float) -> str:
    return f"{_tex_num(est)} [{_tex_num(lo)}, {_tex_num(hi)}]"


def fit_table_latex(obj, *, n_bootstrap: int = 1000, seed: int = 0) -> str:
    """The same table as ``fit_table_markdown`` as one LaTeX ``tabular`` (booktabs: needs
    ``\\usepackage{booktabs}``), a block per quantity and form; text is escaped."""
    fits = _as_fits(obj, n_bootstrap, seed)
    blocks = _table_rows(fits)
    width = max((len(rows[0]["params"]) for _, rows in blocks), default=0)
    ncol = 1 + width + 3
    lines = [
        "% jscale fit table: estimate [interval]; each block's interval and reference size below",
        r"\begin{tabular}{l" + "c" * width + "rrr}",
        r"\toprule",
    ]
    for bi, (q, rows) in enumerate(blocks):
        names = [p[0] for p in rows[0]["params"]]
        law = _TEX_LAW.get(q.form, tex_escape(q.law))
        if bi:
            lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{ncol}}}{{l}}{{\textbf{{{tex_escape(q.label)}}}: {law}}} \\")
        lines.append(
            "% intervals: "
            + _interval_words(fits, q, rows)
            + _reference_words(rows).replace(";", ",", 1)
        )
        head = (
            ["precision"]
            + [_TEX_PARAM.get(n, tex_escape(n)) for n in names]
            + [""] * (width - len(names))
        )
        head += ["$n$", r"$R^2$ (log)", rf"extrap.\ error (worst of {fits.k} largest)"]
        lines += [r"\midrule", " & ".join(head) + r" \\", r"\midrule"]
        for r in rows:
            cells = [_tex_ci(e, lo, hi) for _, e, lo, hi in r["params"]]
            cells = [tex_escape(r["precision"])] + cells + [""] * (width - len(names))
            ext = "--" if not np.isfinite(r["extrap"]) else rf"${_pct(r['extrap'])}\%${r['k_note']}"
            cells += [str(r["n"]), f"{r['r2']:.4f}", ext]
            lines.append(" & ".join(cells) + r" \\")
    if not blocks:
        lines.append(r"\multicolumn{1}{l}{no law could be fitted} \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    rows = _axes_rows(fits)
    if rows:
        lines += [
            "",
            "% " + _axes_header(fits).strip().replace("**", ""),
            r"\begin{tabular}{lccr}",
            r"\toprule",
            r"quantity & approach 2 (IsoFLOP) & approach 3 ($L(N, D)$ fit) & ratio 3/2 \\",
            r"\midrule",
        ]
        for a, b, c, d in rows:
            a = tex_escape(a).replace("∝", r"$\propto$")
            cells = [a] + [tex_escape(v).replace("–", "--") for v in (b, c, d)]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
    seeds = _seed_rows(fits)
    if seeds:
        lines += [
            "",
            f"% seed spread ({tex_escape(str(fits.precision_ref))} inference): SD of the held-out "
            "loss (nats/token) across seeds",
            r"\begin{tabular}{rrrrr}",
            r"\toprule",
            r"$N$ & token budget & seeds & mean loss & SD over seeds \\",
            r"\midrule",
        ]
        lines += [" & ".join(r) + r" \\" for r in seeds]
        lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


CURVE_COLS = ("params_non_embedding", "tokens", "heldout_loss_nats", "train_key")


def _curves_figure(curves):
    if curves is None:
        raise FigureError("loss_curves: no loss curves given (a sweep directory's curves/)")
    return loss_curves(curves)


def loss_envelope(curves: pd.DataFrame) -> pd.DataFrame:
    """The lower envelope of held-out loss against training compute over every run (Hoffmann et
    al. 2022, approach 1): the points (``compute_flops`` = 6 N tokens, ``heldout_loss_nats``) no
    earlier-compute point of any run beats, in compute order."""
    d = curves.dropna(subset=["heldout_loss_nats"]).assign(
        compute_flops=lambda t: 6.0 * t["params_non_embedding"] * t["tokens"]
    )
    d = d[d["compute_flops"] > 0].sort_values(["compute_flops", "heldout_loss_nats"])
    best = d["heldout_loss_nats"].cummin()
    return d[d["heldout_loss_nats"] <= best][
        ["compute_flops", "heldout_loss_nats", "params_non_embedding", "tokens"]
    ]


def loss_curves(curves: pd.DataFrame) -> Figure:
    """(i) Every run's loss curve: held-out loss (nats/token, on the model-selection split) vs
    training compute 6 N tokens (FLOPs), log-log, one line per run coloured by its size N (a WSD
    branch's line is its trunk's, then its cooldown), and the lower envelope over all runs
    (``loss_envelope``: Hoffmann et al.'s approach 1).  A run still falling at its end, or one
    that diverged, shows here.  ``curves``: ``jscale.load_curves(DIR)``."""
    missing = [c for c in CURVE_COLS if c not in curves]
    if missing:
        raise FigureError(f"loss_curves: the curves table lacks {', '.join(missing)}")
    d = curves.dropna(subset=["heldout_loss_nats"])
    d = d[d["tokens"] > 0]
    if d.empty:
        raise FigureError("loss_curves: no curve has a held-out point")
    sizes = sorted(d["params_non_embedding"].unique())
    colors = dict(zip(sizes, sns.color_palette("viridis", len(sizes))))
    with theme():
        fig = Figure(figsize=(6.4 + 2.2, 4.0), layout="constrained")
        ax = fig.subplots()
        fig.supxlabel(
            "held-out loss on 8192 tokens of the model-selection split (never the test split); "
            "compute = 6 N tokens",
            fontsize=7,
            color="0.35",
            x=0.01,
            ha="left",
        )
        for _, run in d.groupby("train_key"):
            run = run.sort_values("tokens")
            n = run["params_non_embedding"].iloc[0]
            ax.plot(
                6.0 * n * run["tokens"],
                run["heldout_loss_nats"],
                color=colors[n],
                linewidth=0.9,
                alpha=0.75,
                zorder=2,
            )
        env = loss_envelope(d)
        ax.step(
            env["compute_flops"],
            env["heldout_loss_nats"],
            where="post",
            color="black",
            linewidth=1.6,
            zorder=3,
        )
        ax.set_xlabel("training compute C = 6 N D (FLOPs)")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title("Loss curves and their lower envelope")
        _log_axis(ax, "x")
        _log_axis(ax, "y")
        handles = [
            Line2D([], [], color=colors[n], linewidth=1.4, label=f"N = {_fmt_n(n)}") for n in sizes
        ] + [Line2D([], [], color="black", linewidth=1.6, label="lower envelope (approach 1)")]
        _legend(fig, handles, title="one line per run")
    return fig


# ----------------------------------------------------------------------------- render_all


@dataclass
class Rendered:
    """What ``render_all`` did: files written, figures skipped (name, reason), fit notes."""

    written: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def render_all(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    formats=("png", "pdf"),
    n_bootstrap: int = 1000,
    seed: int = 0,
    k: int = 2,
    log=print,
    fits: Fits | None = None,
    curves: pd.DataFrame | None = None,
    documents: pd.DataFrame | None = None,
    ladder: pd.DataFrame | None = None,
) -> Rendered:
    """Write every figure (``FIGURES``) as ``out_dir/<name>.<fmt>`` (PNG at 300 dpi, vector
    PDF) and the fit table as ``fits.md`` and ``fits.tex``.  A figure whose columns are
    missing is skipped with a message; the rest are drawn.  ``log`` (default ``print``)
    gets one line per file written, figure skipped and fit that failed.  ``fits``: laws already
    fitted by ``fit_all`` on this table (default: fitted here).  ``curves``: the sweep's loss
    curves (``jscale.load_curves``), for ``loss_curves`` (skipped without them).
    ``documents``: the held-out loss per document (``jscale.load_document_losses``), for the
    table of paired differences between sizes (``Fits.size_differences``).  ``ladder``: the
    sweep's latency ladder (``jscale.load_ladder``), which the latency laws are fitted on."""
    formats = tuple(f.strip().lower() for f in formats if f.strip())
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        raise FigureError(f"formats must be png, pdf or svg, got {', '.join(formats) or 'none'}")
    log = log or (lambda s: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = Rendered()
    if fits is None:
        fits = fit_all(
            df, n_bootstrap=n_bootstrap, seed=seed, k=k, documents=documents, ladder=ladder
        )
    res.notes = list(fits.notes)
    for n in fits.notes:
        log(f"note: {n}")
    makers = {
        "loss_vs_params": lambda: loss_vs_params(df, fits=fits),
        "latency_vs_params": lambda: latency_vs_params(df, fits=fits, ladder=ladder),
        "loss_vs_latency": lambda: loss_vs_latency(df),
        "loss_vs_memory": lambda: loss_vs_memory(df),
        "precision_cost": lambda: precision_cost(df, fits=fits),
        "memory_vs_params": lambda: memory_vs_params(df),
        "fit_diagnostics": lambda: fit_diagnostics(df, fits=fits),
        "isoflop_curves": lambda: isoflop_curves(df, fits=fits),
        "loss_vs_tokens": lambda: loss_vs_tokens(df, fits=fits),
        "compute_optimal": lambda: compute_optimal(df, fits=fits),
        "loss_curves": lambda: _curves_figure(curves),
    }
    for name in FIGURES:
        try:
            fig = makers[name]()
        except FigureError as e:
            why = str(e).removeprefix(f"{name}: ")
            res.skipped.append((name, why))
            log(f"skipped {name}: {why}")
            continue
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            fig.savefig(
                path, dpi=DPI, metadata={"CreationDate": None} if fmt == "pdf" else None
            )  # reproducible PDF
            res.written.append(path)
            log(f"wrote {path}")
    for name, text in (("fits.md", fit_table_markdown(fits)), ("fits.tex", fit_table_latex(fits))):
        path = out / name
        path.write_text(text)
        res.written.append(path)
        log(f"wrote {path}")
    return res
