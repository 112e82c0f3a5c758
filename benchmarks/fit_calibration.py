"""Are the fit's 95% intervals calibrated?  A simulation study with a known truth.

For each design (sizes log-spaced over 3 decades, log-normal noise on the loss), draw
``--datasets`` noisy tables from L = E + A N^-alpha (E = 1.7, A = 300, alpha = 0.3), fit the
saturating form with ``--bootstrap`` row resamples, and count how often the interval of each
parameter contains its true value (coverage; nominal 95%), with the median interval width beside
the width a calibrated interval would have (3.92 x the SD of the estimates over datasets: the
estimator's true spread), and how many fits jscale flagged (``Fit.warnings``).  Coverage above
95% with a width ratio above 1 means the intervals are too wide; below, too narrow.

    python benchmarks/fit_calibration.py                          # 4 designs x 100 datasets
    python benchmarks/fit_calibration.py --datasets 200 --sizes 7 13 --noise 0.01 0.03
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np

from jscale import analysis

TRUTH = {"E": 1.7, "A": 300.0, "alpha": 0.3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[7, 13])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.01, 0.03])
    ap.add_argument("--datasets", type=int, default=100)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(
        f"# Interval calibration, {datetime.date.today()}: saturating form, truth {TRUTH}, "
        f"{a.datasets} datasets per design, {a.bootstrap} row resamples, nominal 95%\n"
    )
    print(
        "| sizes | noise | param | coverage | median width | 3.92 x SD of estimates | "
        "width ratio | flagged fits | s per fit |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(a.seed)
    for n in a.sizes:
        x = np.geomspace(1e4, 1e7, n)
        clean = TRUTH["E"] + TRUTH["A"] * x ** -TRUTH["alpha"]
        for sd in a.noise:
            est, cover, width, flagged = (
                {k: [] for k in TRUTH},
                {k: 0 for k in TRUTH},
                {k: [] for k in TRUTH},
                0,
            )
            t0 = time.perf_counter()
            for i in range(a.datasets):
                y = clean * np.exp(sd * rng.standard_normal(n))
                f = analysis.fit(None, "saturating", x, y, n_bootstrap=a.bootstrap, seed=i)
                flagged += bool(f.warnings)
                for k, true in TRUTH.items():
                    lo, hi = f.intervals[k]
                    est[k].append(f.params[k])
                    cover[k] += bool(lo <= true <= hi)
                    width[k].append(hi - lo)
            per_fit = (time.perf_counter() - t0) / a.datasets
            for k in TRUTH:
                spread = 3.92 * np.std(est[k])
                w = float(np.nanmedian(width[k]))
                print(
                    f"| {n} | {sd:.0%} | {k} | {cover[k] / a.datasets:.0%} | {w:.3g} | "
                    f"{spread:.3g} | {w / spread:.2f} | {flagged}/{a.datasets} | "
                    f"{per_fit:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
