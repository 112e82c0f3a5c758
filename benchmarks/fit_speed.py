r"""Chinchilla-form fit with bootstrap: jscale.analysis against the classic scipy way.

    PYTHONPATH=. python benchmarks/fit_speed.py [--csv svg_extracted_data.csv] [--runs 3] \
        [--scipy-resamples 40]

jscale: ``analysis.fit(form="chinchilla", n_bootstrap=1000, huber_delta=1e-3)`` (576-point start
grid on all rows, 8 polished, 2 starts per resample); the first call (compile + run) is reported
apart from the median of ``--runs`` warm calls; then the default fit (least squares, profile
intervals). scipy: ``scipy.optimize.minimize(method="L-BFGS-B")`` on the same summed Huber
objective in the same coordinates (bounded exponents, finite-difference gradient, scipy's
default tolerances), one start at a time: the whole 576-point grid on all rows, then
``--scipy-resamples`` bootstrap resamples with the same 2 starts each; the bootstrap time is
extrapolated linearly to 1,000 resamples. It also counts the scipy resample runs that ended within
1e-6 (max-norm, internal coordinates) of their start.

``--csv``: the Chinchilla data (``Model Size``, ``Training FLOP``, ``loss``; D = C / (6 N)); the
five highest-loss rows are dropped as in the Besiroglu et al. replication (n = 240).
"""

import argparse
import time

import numpy as np
import pandas as pd
import scipy.optimize

from jscale import analysis

PUBLISHED = {"E": 1.8172, "A": 482.01, "alpha": 0.3478, "B": 2085.43, "beta": 0.3658}


def synthetic(n=240, seed=0):
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), n))
    C = np.exp(rng.uniform(np.log(6e18), np.log(3e23), n))
    D = C / (6 * N)
    L = (
        PUBLISHED["E"]
        + PUBLISHED["A"] * N ** -PUBLISHED["alpha"]
        + PUBLISHED["B"] * D ** -PUBLISHED["beta"]
    )
    return N, D, L * np.exp(rng.normal(0, 0.02, n))


def load_csv(path):
    df = pd.read_csv(path).sort_values("loss").iloc[:-5]
    N = df["Model Size"].to_numpy(float)
    return N, df["Training FLOP"].to_numpy(float) / (6 * N), df["loss"].to_numpy(float)


def scipy_fit(theta0, u, v, ly, w, delta):
    """One L-BFGS-B run of the summed Huber objective (internal coordinates of analysis)."""

    def obj(t):
        alpha, beta = (analysis.DECAY_MAX / (1 + np.exp(-t[i])) for i in (2, 4))  # bounded
        a, b, c = t[0] + 0 * u, t[1] - alpha * u, t[3] - beta * v
        m = np.maximum(np.maximum(a, b), c)
        r = ly - (m + np.log(np.exp(a - m) + np.exp(b - m) + np.exp(c - m)))
        h = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
        return np.sum(w * h)

    return scipy.optimize.minimize(obj, theta0, method="L-BFGS-B")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scipy-resamples", type=int, default=40)
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    args = ap.parse_args()
    N, D, L = load_csv(args.csv) if args.csv else synthetic()
    print(f"data: {'csv ' + args.csv if args.csv else 'synthetic'}, n = {len(N)}")

    t = time.perf_counter()
    kw = dict(d=D, n_bootstrap=args.n_bootstrap, huber_delta=1e-3)  # the published method
    f = analysis.fit(None, "chinchilla", N, L, **kw)
    first = time.perf_counter() - t
    warm = []
    for _ in range(args.runs):
        t = time.perf_counter()
        f = analysis.fit(None, "chinchilla", N, L, **kw)
        warm.append(time.perf_counter() - t)
    print(
        f"jscale: first call (compile + run) {first:.2f} s; warm median {np.median(warm):.2f} s "
        f"(min {min(warm):.2f}, max {max(warm):.2f}, {args.runs} runs)"
    )
    print(
        f"  starts on all rows {f.diagnostics['n_starts']}, bootstrap starts per resample "
        f"{f.diagnostics['bootstrap_starts']}, "
        f"converged resamples {f.n_converged}/{f.n_bootstrap}, "
        f"main fit converged {f.converged}"
    )
    for k in f.param_names:
        lo, hi = f.intervals[k]
        print(f"  {k:6s} {f.params[k]:10.4g}  [{lo:.4g}, {hi:.4g}]  published {PUBLISHED[k]:.4g}")

    t = time.perf_counter()
    g = analysis.fit(None, "chinchilla", N, L, d=D, n_bootstrap=0)
    print(
        f"jscale default (least squares on log L, profile-likelihood intervals, no bootstrap): "
        f"{time.perf_counter() - t:.2f} s; residual SD {g.diagnostics['residual_sd_log']:.4f}"
    )
    for k in g.param_names:
        lo, hi = g.intervals[k]
        rlo, rhi = g.intervals_ref[k]
        print(
            f"  {k:6s} {g.params[k]:10.4g}  [{lo:.4g}, {hi:.4g}]   at the reference "
            f"{g.params_ref[k]:.4g} [{rlo:.4g}, {rhi:.4g}]"
        )
    print(f"  reference {g.reference}; warnings: {g.warnings or 'none'}")

    # classic: scipy L-BFGS-B, one start at a time, same coordinates and objective
    fm, delta = analysis.FORMS["chinchilla"], 1e-3
    lx0, ld0 = f._scale
    u, v = np.log(N) - lx0, np.log(D) - ld0
    ly = np.log(L)
    starts = fm._starts(float(ly.mean()))
    t = time.perf_counter()
    res = [scipy_fit(s, u, v, ly, 1.0, delta) for s in starts]
    t_grid = time.perf_counter() - t
    best = min(res, key=lambda r: r.fun).x
    rng = np.random.default_rng(0)
    near, t = 0, time.perf_counter()
    boot = []
    for _ in range(args.scipy_resamples):
        w = rng.multinomial(len(N), np.full(len(N), 1 / len(N)))
        s0 = [best, best + rng.normal(0, 0.3, 5)]
        rs = [scipy_fit(s, u, v, ly, w, delta) for s in s0]
        near += sum(np.max(np.abs(r.x - s)) < 1e-6 for r, s in zip(rs, s0))
        boot.append(min(rs, key=lambda r: r.fun).x)
    t_boot = (time.perf_counter() - t) * args.n_bootstrap / args.scipy_resamples
    total = t_grid + t_boot
    print(
        f"scipy: grid {t_grid:.2f} s ({len(starts)} starts) + bootstrap {t_boot:.1f} s "
        f"(extrapolated from {args.scipy_resamples} resamples x 2 starts) = {total:.1f} s; "
        f"ratio scipy / jscale warm = {total / np.median(warm):.1f}x"
    )
    print(
        f"  scipy resample runs that ended within 1e-6 of their start: "
        f"{near}/{2 * args.scipy_resamples}"
    )
    bu = fm._to_user(np.array(boot), lx0, ld0)
    for i, k in enumerate(f.param_names):
        lo, hi = np.percentile(bu[:, i], [2.5, 97.5])
        print(f"  scipy bootstrap {k:6s} [{lo:.4g}, {hi:.4g}]")


if __name__ == "__main__":
    main()
