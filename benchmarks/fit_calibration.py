"""Are the fit's 95% intervals calibrated?  A simulation study with a known truth.

For each design, draw ``--datasets`` noisy tables (log-normal noise on y) from a known law, fit
them, and count how often each method's interval of each parameter contains its true value
(coverage; nominal 95%), with the median interval width beside the width a calibrated interval
would have (3.92 x the SD of the estimates over datasets: the estimator's true spread), and how
many fits jscale flagged (``Fit.warnings``). Coverage above 95% with a width ratio above 1 means
the intervals are too wide; below, too narrow.

Designs:
- ``saturating``: L = 1.7 + 300 N^-0.3 at 7 or 13 sizes log-spaced over 3 decades (1e4-1e7).
- ``isoflop``: L = E + A/N^alpha + B/D^beta with the Besiroglu et al. (2024) estimates
  (E 1.82, A 482, alpha 0.348, B 2085, beta 0.366), 4 compute budgets 1e18-1e21 FLOPs, 6 sizes
  per budget log-spaced over 1/8-8x the true compute-optimal N, D = C / (6 N): 24 points.
- ``clustered``: the same law on a token-axis design like the sweeps': 8 sizes 1e7-1e9, each
  trained once and branched at 5, 20 and 80 tokens per parameter (24 rows, 8 clusters); the
  noise of a row is a per-model effect (the model's share, half the variance) plus its own.

Methods (``analysis.fit``):
- ``profile``: the default for independent rows: least squares on log y with
  profile-likelihood intervals (Student-t calibrated);
- ``bootstrap (lsq)``: the same fit's resampling percentile intervals (rows; on ``clustered``,
  whole models), ``Fit.bootstrap_intervals``;
- ``wild (lsq)``: least squares, the design fixed, residuals (leverage-adjusted) multiplied by
  random weights per row (per model on ``clustered``; Webb's six-point weights below 12
  clusters), studentized: bootstrap-t intervals with cluster-robust SEs;
- ``bootstrap (huber 1e-3)``: Hoffmann et al.'s Huber loss, delta 1e-3, with resampling
  percentiles (rows, or models), as the published Chinchilla replication did.

    python benchmarks/fit_calibration.py                       # every design, 100 datasets
    python benchmarks/fit_calibration.py --designs saturating --datasets 200 --noise 0.01
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np

from jscale import analysis

SAT = {"E": 1.7, "A": 300.0, "alpha": 0.3}
CHIN = {"E": 1.8172, "A": 482.01, "alpha": 0.3478, "B": 2085.43, "beta": 0.3658}
METHODS = ("profile", "bootstrap (lsq)", "wild (lsq)", "bootstrap (huber 1e-3)")


def designs(names, sizes):
    """(label, form, truth, x, d, cluster labels or None) per design."""
    out = []
    if "saturating" in names:
        for n in sizes:
            x = np.geomspace(1e4, 1e7, n)
            out.append((f"saturating, {n} sizes", "saturating", SAT, x, None, None))
    if "isoflop" in names:
        t = CHIN
        G = (t["alpha"] * t["A"] / (t["beta"] * t["B"])) ** (1 / (t["alpha"] + t["beta"]))
        a = t["beta"] / (t["alpha"] + t["beta"])
        xs, ds = [], []
        for C in np.geomspace(1e18, 1e21, 4):
            n_opt = G * (C / 6) ** a
            n = np.geomspace(n_opt / 8, n_opt * 8, 6)
            xs.append(n)
            ds.append(C / (6 * n))
        x, d = np.concatenate(xs), np.concatenate(ds)
        out.append(("chinchilla, IsoFLOP 4 x 6", "chinchilla", CHIN, x, d, None))
    if "clustered" in names:
        n = np.repeat(np.geomspace(1e7, 1e9, 8), 3)
        d = n * np.tile([5.0, 20.0, 80.0], 8)
        out.append(("chinchilla, 8 models x 3 budgets", "chinchilla", CHIN, n, d, n.copy()))
    return out


def law(truth, x, d):
    y = truth["E"] + truth["A"] * x ** -truth["alpha"]
    return y + truth["B"] * d ** -truth["beta"] if d is not None else y


def noise(rng, sd, n, cluster):
    """Log-normal noise of SD ``sd``; with clusters, half its variance shared per cluster."""
    if cluster is None:
        return sd * rng.standard_normal(n)
    ids = np.unique(cluster, return_inverse=True)[1]
    shared = rng.standard_normal(ids.max() + 1)[ids]
    return sd * np.sqrt(0.5) * (shared + rng.standard_normal(n))


KWARGS = {
    "profile": dict(interval="profile", n_bootstrap=0),
    "bootstrap (lsq)": dict(interval="bootstrap"),
    "wild (lsq)": dict(interval="wild"),
    "bootstrap (huber 1e-3)": dict(huber_delta=1e-3),
}


def fits(form, x, y, d, cl, B, seed, methods):
    """{method: (Fit, intervals, seconds)} for one table."""
    out = {}
    for m in methods:
        kw = dict(n_bootstrap=B, seed=seed, cluster=cl) | KWARGS[m]
        t0 = time.perf_counter()
        f = analysis.fit(None, form, x, y, d, **kw)
        out[m] = (f, f.intervals, time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--designs", nargs="+", default=["saturating", "isoflop", "clustered"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[7, 13])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.01, 0.03])
    ap.add_argument("--datasets", type=int, default=100)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    a = ap.parse_args()
    print(
        f"# Interval calibration, {datetime.date.today()}: {a.datasets} datasets per design, "
        f"{a.bootstrap} resamples per bootstrap, nominal 95%\n"
    )
    print(
        "| design | noise | method | param | coverage | median width | 3.92 x SD of estimates "
        "| width ratio | flagged fits | s per fit |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(a.seed)
    for label, form, truth, x, d, cl in designs(a.designs, a.sizes):
        clean = law(truth, x, d)
        for sd in a.noise:
            est = {m: {k: [] for k in truth} for m in a.methods}
            cover = {m: {k: 0 for k in truth} for m in a.methods}
            width = {m: {k: [] for k in truth} for m in a.methods}
            flagged = {m: 0 for m in a.methods}
            secs = {m: 0.0 for m in a.methods}
            for i in range(a.datasets):
                y = clean * np.exp(noise(rng, sd, len(x), cl))
                for m, (g, iv, s) in fits(form, x, y, d, cl, a.bootstrap, i, a.methods).items():
                    flagged[m] += bool(g.warnings)
                    secs[m] += s
                    for k, true in truth.items():
                        lo, hi = iv[k]
                        est[m][k].append(g.params[k])
                        cover[m][k] += bool(lo <= true <= hi)
                        width[m][k].append(hi - lo)
            for m in a.methods:
                for k in truth:
                    spread = 3.92 * np.std(est[m][k])
                    w = float(np.nanmedian(width[m][k]))
                    print(
                        f"| {label} | {sd:.0%} | {m} | {k} | {cover[m][k] / a.datasets:.0%} | "
                        f"{w:.3g} | {spread:.3g} | {w / spread:.2f} | "
                        f"{flagged[m]}/{a.datasets} | {secs[m] / a.datasets:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
