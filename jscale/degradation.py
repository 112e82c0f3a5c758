"""The precision law: what post-training quantization costs in held-out loss, as a function of
model size N, training tokens D and the bits P of the weight format, fitted on any results
table (no model code).

The measured cost of a format is the paired loss delta against fp32 on the same held-out
windows (``delta_loss_vs_fp32_nats``, with its paired standard error).  Following Kumar et al.
(2024, "Scaling laws for precision"), post-training quantization degradation grows with the
tokens a model was trained on and shrinks with its size and its bits:

    delta(N, D, P) = C * (D / D0)^gD * (N / N0)^-gN * exp(-(P - P0) / g)        (``full``)

with N0, D0, P0 reference values inside the data (the table's geometric means and the median
bits), so C is the cost at a point the data pin.  ``no_D`` fixes gD = 0 and ``no_N`` fixes gN
= 0.  The fit is weighted least squares on the deltas themselves (weights 1 / SE^2), not on
their logs, so a format whose cost is at noise level (bf16: deltas of either sign) still
counts; the form is chosen by AICc (fewest parameters within 2 of the lowest).

Which formats: one law in P can only describe formats that differ in bits alone, so the fit
uses the integer weight-only formats and bf16 by default (``DEFAULT_FORMATS``: bf16, int8,
int4 in any group size), and reports the others (fp8, the activation-quantized w8a8 and fp8a8)
as out-of-family predictions.  Checks: leave-one-format-out (refit without a format, predict
its deltas) and leave-largest-out (refit without the largest size).  Intervals: percentiles over
bootstrap resamples of models (clusters of (N, seed): a model's precisions share its
weights), with a warning for every exponent whose interval includes 0 or runs to a bound.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from jscale.laws import AnalysisError
from jscale.schema import DELTA, PRECISION, TOKENS, N

DELTA_SE_COLUMNS = ("delta_loss_vs_fp32_se_docs_nats", "delta_loss_vs_fp32_se_nats")
BITS = {"fp32": 32, "bf16": 16, "int8": 8, "w8a8": 8, "fp8": 8, "fp8a8": 8, "int4": 4}
DEFAULT_FORMATS = ("bf16", "int8", "int4")  # int4 covers int4-gG
FORMS = {
    "full": ("lnC", "gD", "gN", "inv_g"),
    "no_D": ("lnC", "gN", "inv_g"),
    "no_N": ("lnC", "gD", "inv_g"),
    # one resolved bit width: its N and D dependence only (g is not identified)
    "one_P": ("lnC", "gD", "gN"),
    "one_P_no_D": ("lnC", "gN"),
    "one_P_no_N": ("lnC", "gD"),
}
LAWS = {
    "full": "delta = C (D/D0)^gD (N/N0)^-gN exp(-(P - P0)/g)",
    "no_D": "delta = C (N/N0)^-gN exp(-(P - P0)/g)",
    "no_N": "delta = C (D/D0)^gD exp(-(P - P0)/g)",
    "one_P": "delta = C (D/D0)^gD (N/N0)^-gN (one bit width)",
    "one_P_no_D": "delta = C (N/N0)^-gN (one bit width)",
    "one_P_no_N": "delta = C (D/D0)^gD (one bit width)",
}
P_FORMS = ("full", "no_D", "no_N")
ONE_P_FORMS = ("one_P", "one_P_no_D", "one_P_no_N")
# A format enters the law when its typical row is resolved: median delta / SE at least this.
RESOLVED_Z = 3.0
_BOUNDS = {"gD": (-3.0, 3.0), "gN": (-3.0, 3.0), "inv_g": (0.0, 5.0), "lnC": (-50.0, 20.0)}
PARSIMONY_AICC = 2.0


def bits_of(precision: str) -> int | None:
    """Bits per weight of a precision name (``int4-g32`` -> 4); None when unknown."""
    return BITS.get(family(precision))


def family(precision: str) -> str:
    """``int4-g32`` -> ``int4``: the format family of a precision name."""
    return str(precision).split("-")[0]


@dataclasses.dataclass
class PrecisionLaw:
    """A fitted precision law.  ``form`` and ``law`` (text); ``params`` (C in nats at the
    reference point, gD, gN, g in bits; an absent exponent is 0); ``intervals`` (percentile,
    ``level``); ``reference`` (N0, D0, P0); ``selection`` (every form's AICc); ``loo_format``
    (per held-out format: mean measured and predicted delta, relative error); ``largest_out``
    (the same for the largest size); ``out_of_family`` (formats not fitted, predicted from their
    bits); ``warnings``; ``rows`` (the deltas fitted, with the law's prediction);
    ``n_bootstrap``, ``level``, ``unit`` (what the bootstrap resampled); ``unresolved`` (the
    formats left out because their cost is at the noise level: mean delta, typical SE, median
    delta / SE)."""

    form: str
    law: str
    params: dict
    intervals: dict
    reference: dict
    formats: tuple
    selection: pd.DataFrame
    loo_format: pd.DataFrame
    largest_out: pd.DataFrame
    out_of_family: pd.DataFrame
    warnings: list
    rows: pd.DataFrame
    n_bootstrap: int
    level: float
    unit: str
    unresolved: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)

    def predict(self, n, d, bits) -> np.ndarray:
        """The law's delta (nats/token) at ``n`` params, ``d`` tokens and ``bits``."""
        return _predict(self.form, self._theta(), self.reference, n, d, bits)

    def _theta(self) -> np.ndarray:
        g = self.params["g"]
        p = dict(self.params, lnC=math.log(self.params["C"]), inv_g=1 / g if g else 0.0)
        return np.array([p[k] for k in FORMS[self.form]])


def _predict(form: str, theta, ref: dict, n, d, bits) -> np.ndarray:
    t = dict(zip(FORMS[form], theta))
    z = t["lnC"] - t.get("inv_g", 0.0) * (np.asarray(bits, float) - ref["P0"])
    if "gD" in t:
        z = z + t["gD"] * np.log(np.asarray(d, float) / ref["D0"])
    if "gN" in t:
        z = z - t["gN"] * np.log(np.asarray(n, float) / ref["N0"])
    return np.exp(np.clip(z, -700, 700))


def _fit_once(form: str, X: dict, w: np.ndarray, ref: dict, theta0=None):
    """Weighted least squares by Levenberg-Marquardt on ``sum w (delta - f)^2``; returns
    ``(theta, wrss)``."""
    names = FORMS[form]
    y, n, d, p = X["y"], X["n"], X["d"], X["p"]
    lo = np.array([_BOUNDS[k][0] for k in names])
    hi = np.array([_BOUNDS[k][1] for k in names])
    if theta0 is None:
        pos = y > 0
        mean = np.average(y[pos], weights=w[pos]) if pos.any() else 1e-3
        theta0 = [math.log(max(mean, 1e-12))] + [0.5 if k == "inv_g" else 0.1 for k in names[1:]]
    th = np.clip(np.asarray(theta0, float), lo, hi)

    def resid_jac(th):
        f = _predict(form, th, ref, n, d, p)
        cols = []
        for k in names:
            if k == "lnC":
                cols.append(f)
            elif k == "gD":
                cols.append(f * np.log(d / ref["D0"]))
            elif k == "gN":
                cols.append(-f * np.log(n / ref["N0"]))
            else:
                cols.append(-f * (p - ref["P0"]))
        sw = np.sqrt(w)
        return sw * (y - f), sw[:, None] * np.stack(cols, axis=1)

    lam = 1e-3
    r, J = resid_jac(th)
    cost = float(r @ r)
    for _ in range(200):
        A = J.T @ J
        g = J.T @ r
        step = np.linalg.solve(A + lam * np.diag(np.diag(A) + 1e-12), g)
        cand = np.clip(th + step, lo, hi)
        r2, J2 = resid_jac(cand)
        c2 = float(r2 @ r2)
        if c2 < cost:
            done = cost - c2 < 1e-12 * max(cost, 1e-30)
            th, r, J, cost, lam = cand, r2, J2, c2, lam / 3
            if done:
                break
        else:
            lam *= 4
            if lam > 1e12:
                break
    return th, cost


def _table(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    need = [N, TOKENS, PRECISION, DELTA]
    missing = [c for c in need if c not in df]
    if missing:
        raise AnalysisError(f"precision law: the table lacks column(s) {', '.join(missing)}")
    se = next((c for c in DELTA_SE_COLUMNS if c in df and df[c].notna().any()), None)
    if se is None:
        raise AnalysisError(
            f"precision law: the table lacks the paired SE ({' or '.join(DELTA_SE_COLUMNS)})"
        )
    t = df[df[PRECISION] != "fp32"].copy()
    t["bits"] = (t["weight_bits"] if "weight_bits" in t else t[PRECISION].map(bits_of)).astype(
        float
    )
    t["se"] = t[se].astype(float)
    t = t[t["bits"].notna() & t[DELTA].notna() & (t["se"] > 0) & (t[N] > 0) & (t[TOKENS] > 0)]
    t["family"] = t[PRECISION].map(family)
    return t.reset_index(drop=True), se


def _data(t: pd.DataFrame) -> dict:
    return {
        "y": t[DELTA].to_numpy(float),
        "n": t[N].to_numpy(float),
        "d": t[TOKENS].to_numpy(float),
        "p": t["bits"].to_numpy(float),
    }


def _aicc(wrss: float, n: int, k: int) -> float:
    if n <= k + 1:
        return math.inf
    return n * math.log(max(wrss, 1e-300) / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def _errors(t, fit_rows, pred_rows, form, ref, by) -> pd.DataFrame:
    """Refit on ``fit_rows`` and predict ``pred_rows``: mean measured and predicted delta per
    ``by`` group, and the relative error of the mean."""
    th, _ = _fit_once(form, _data(fit_rows), 1 / fit_rows["se"].to_numpy() ** 2, ref)
    pr = pred_rows.assign(pred=_predict(form, th, ref, *(_data(pred_rows)[k] for k in "ndp")))
    out = pr.groupby(by).agg(delta=(DELTA, "mean"), predicted=("pred", "mean"), n=(DELTA, "size"))
    out["rel_error"] = out["predicted"] / out["delta"] - 1
    return out.reset_index()


def fit_precision_law(
    df: pd.DataFrame,
    *,
    formats=DEFAULT_FORMATS,
    forms=tuple(FORMS),
    n_bootstrap: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> PrecisionLaw:
    """Fit the precision law (module docstring) on ``df``'s rows of the precisions whose family
    (``int4`` for ``int4-g32``) is in ``formats``; choose among ``forms`` by AICc; bootstrap
    ``n_bootstrap`` resamples of models.  Raises ``AnalysisError`` when the table lacks the
    columns, or the rows do not identify the law (fewer than 2 bit widths, 2 sizes, or more
    rows than parameters + 2)."""
    if not isinstance(n_bootstrap, int) or isinstance(n_bootstrap, bool) or n_bootstrap < 0:
        raise AnalysisError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    bad = [f for f in forms if f not in FORMS]
    if bad:
        raise AnalysisError(f"unknown precision-law form(s) {bad}; known: {', '.join(FORMS)}")
    every, se_col = _table(df)
    t = every[every["family"].isin(formats)].reset_index(drop=True)
    if t["bits"].nunique() < 2 or t[N].nunique() < 2 or len(t) < 6:
        raise AnalysisError(
            f"precision law: needs >= 2 bit widths and >= 2 sizes among {', '.join(formats)} "
            f"(got bits {sorted(t['bits'].unique())}, {t[N].nunique()} sizes, {len(t)} rows)"
        )
    z = (t[DELTA] / t["se"]).groupby(t[PRECISION]).median()
    resolved = z[z >= RESOLVED_Z].index
    unresolved = t[~t[PRECISION].isin(resolved)]
    noise = (
        unresolved.groupby(PRECISION)
        .agg(delta=(DELTA, "mean"), se=("se", lambda v: float(np.sqrt((v**2).mean()))))
        .assign(median_z=lambda f: z.reindex(f.index))
        .reset_index()
    )
    t = t[t[PRECISION].isin(resolved)].reset_index(drop=True)
    notes = [
        f"{getattr(r, PRECISION)}: not fitted, its cost is at the noise level (median delta / SE "
        f"{r.median_z:.2g} < {RESOLVED_Z:g}; mean delta {r.delta:+.2g} nats, typical SE "
        f"{r.se:.2g})"
        for r in noise.itertuples()
    ]
    if t.empty or t[N].nunique() < 2:
        raise AnalysisError(
            "precision law: no format's cost is resolved above the noise (median delta / SE "
            f">= {RESOLVED_Z:g}): {'; '.join(notes)}"
        )
    if t["bits"].nunique() < 2:
        forms = ONE_P_FORMS
        notes.append(
            f"g (the bits dependence) is not identified: only {', '.join(sorted(resolved))} "
            f"({int(t['bits'].iloc[0])} bits) is resolved; its N and D dependence is fitted alone"
        )
    else:
        forms = tuple(f for f in forms if f in P_FORMS)
    ref = {
        "N0": float(np.exp(np.log(t[N]).mean())),
        "D0": float(np.exp(np.log(t[TOKENS]).mean())),
        "P0": float(np.median(t["bits"])),
    }
    X, w = _data(t), 1 / t["se"].to_numpy() ** 2
    rows = []
    fits = {}
    for form in forms:
        th, wrss = _fit_once(form, X, w, ref)
        fits[form] = th
        k = len(FORMS[form])
        rows.append({"form": form, "n_params": k, "wrss": wrss, "aicc": _aicc(wrss, len(t), k)})
    sel = pd.DataFrame(rows).sort_values("aicc", kind="stable").reset_index(drop=True)
    sel["delta_aicc"] = sel["aicc"] - sel["aicc"].iloc[0]
    close = sel[sel["delta_aicc"] <= PARSIMONY_AICC]
    form = close.sort_values(["n_params", "aicc"], kind="stable").iloc[0]["form"]
    th = fits[form]

    # bootstrap over models: (N, seed) clusters when the table has seeds, else N
    keys = [c for c in (N, "seed") if c in t]
    gid = t.groupby(keys, sort=True).ngroup().to_numpy()
    n_g = gid.max() + 1
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_bootstrap):
        counts = np.bincount(rng.integers(0, n_g, n_g), minlength=n_g)
        wb = w * counts[gid]
        if (counts[gid] > 0).sum() < len(FORMS[form]) + 1:
            continue
        boots.append(_fit_once(form, X, wb, ref, theta0=th)[0])
    boots = np.array(boots) if boots else np.empty((0, len(th)))

    def named(v):
        p = dict(zip(FORMS[form], v))
        return {
            "C": math.exp(p["lnC"]),
            "gD": p.get("gD", 0.0),
            "gN": p.get("gN", 0.0),
            "g": (1 / p["inv_g"] if p["inv_g"] > 0 else math.inf) if "inv_g" in p else math.nan,
        }

    params = named(th)
    a = (1 - level) / 2
    intervals = {}
    for k in params:
        if (
            len(boots) >= 20
            and (k != "gD" or "gD" in FORMS[form])
            and (k != "gN" or "gN" in FORMS[form])
            and (k != "g" or "inv_g" in FORMS[form])
        ):
            vals = np.array([named(b)[k] for b in boots])
            intervals[k] = tuple(float(x) for x in np.quantile(vals, [a, 1 - a]))
        else:
            intervals[k] = (math.nan, math.nan)
    warnings = list(notes)
    for k, (lo, hi) in intervals.items():
        if k in ("gD", "gN") and k in FORMS[form] and lo <= 0 <= hi:
            warnings.append(f"{k}: the {level:.0%} interval [{lo:.3g}, {hi:.3g}] includes 0")
    for k in FORMS[form]:
        v = dict(zip(FORMS[form], th))[k]
        if np.isclose(v, _BOUNDS[k][0]) or np.isclose(v, _BOUNDS[k][1]):
            warnings.append(f"{k} = {v:.3g} is at its bound {_BOUNDS[k]}")

    fam = t["family"]
    p_law = form in P_FORMS
    loo = [
        _errors(t, t[fam != f], t[fam == f], form, ref, PRECISION)
        for f in sorted(fam.unique())
        if p_law and t.loc[fam != f, "bits"].nunique() >= 2
    ]
    loo = pd.concat(loo, ignore_index=True) if loo else pd.DataFrame()
    for f in sorted(fam.unique()) if p_law else ():
        if t.loc[fam != f, "bits"].nunique() < 2:
            warnings.append(f"leave-one-format-out: without {f} one bit width is left (no check)")
    big = t[N].max()
    largest = _errors(t, t[t[N] < big], t[t[N] == big], form, ref, PRECISION)
    others = every[~every["family"].isin(formats)]
    oof = pd.DataFrame()
    if len(others) and p_law:
        pr = others.assign(pred=_predict(form, th, ref, *(_data(others)[k] for k in "ndp")))
        oof = pr.groupby(PRECISION).agg(
            bits=("bits", "first"), delta=(DELTA, "mean"), predicted=("pred", "mean")
        )
        oof["rel_error"] = oof["predicted"] / oof["delta"] - 1
        oof = oof.reset_index()
    return PrecisionLaw(
        form=form,
        law=LAWS[form],
        params=params,
        intervals=intervals,
        reference=ref,
        formats=tuple(sorted(t[PRECISION].unique())),
        selection=sel,
        loo_format=loo,
        largest_out=largest,
        out_of_family=oof,
        warnings=warnings,
        rows=t.assign(predicted=_predict(form, th, ref, X["n"], X["d"], X["p"]), se_column=se_col),
        n_bootstrap=len(boots),
        level=level,
        unit="models (" + ", ".join(keys) + ")",
        unresolved=noise,
    )
